//! The client against a network that misbehaves: a connection dropped in the middle of a
//! chunked upload (the push resumes from the registry's offset without re-sending what it
//! already has), and a server that answers Range requests with the whole blob. The
//! misbehaviour comes from small test doubles (a TCP proxy that cuts one connection, a
//! blob server that ignores Range); the registry behind the proxy is the real `gantry serve`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use common::*;
use gantry_client::{push_layout, LayoutWriter, NoProgress, OciLayout, PushOptions};
use gantry_oci::spec::{DescriptorBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType};
use gantry_oci::{Digest, Reference};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to `upstream` that closes the first connection whose client-to-server
/// bytes pass `cut_after`, once.
struct CuttingProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl CuttingProxy {
    async fn start(upstream: SocketAddr, cut_after: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut sent = 0u64;
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if sent + n as u64 > cut_after && !flag.swap(true, Ordering::SeqCst) {
                                // Forward up to the cut, then drop both directions.
                                let keep = (cut_after - sent) as usize;
                                let _ = sw.write_all(&buf[..keep]).await;
                                return;
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            sent += n as u64;
                        }
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    };
                    // Whichever side ends first closes the whole connection.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        CuttingProxy { addr, cut }
    }
}

/// An OCI layout holding one image with a single incompressible layer of `size` bytes.
fn big_layout(dir: &std::path::Path, size: usize) -> (std::path::PathBuf, Digest) {
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    let path = dir.join("big");
    let writer = LayoutWriter::create(&path).unwrap();
    let layer = writer.put_bytes(&data).unwrap();
    let config_bytes: &[u8] =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config = writer.put_bytes(config_bytes).unwrap();
    let desc = |mt: MediaType, d: &Digest, n: usize| {
        DescriptorBuilder::default()
            .media_type(mt)
            .digest(d.to_oci())
            .size(n as u64)
            .build()
            .unwrap()
    };
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(desc(MediaType::ImageConfig, &config, config_bytes.len()))
        .layers(vec![desc(MediaType::ImageLayerGzip, &layer, size)])
        .build()
        .unwrap();
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let m = writer.put_bytes(&bytes).unwrap();
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![desc(MediaType::ImageManifest, &m, bytes.len())])
        .build()
        .unwrap();
    writer.commit(&index).unwrap();
    (path, layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_mid_upload_resumes_without_resending_completed_chunks() {
    let dir = gantry_test_support::tempdir();
    const SIZE: usize = 40 << 20;
    let (layout, layer) = big_layout(dir.path(), SIZE);
    let serve = Serve::open().await;
    // Cut inside the second 32 MiB PATCH.
    let proxy = CuttingProxy::start(serve.server.addr(), 36 << 20).await;
    let host = proxy.addr.to_string();
    let dest: Reference = format!("{host}/game/big:v1").parse().unwrap();
    let report = push_layout(
        &client(&host, None),
        &OciLayout::open(&layout).unwrap(),
        None,
        &dest,
        &PushOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .expect("the push survives the dropped connection");
    assert!(
        proxy.cut.load(Ordering::SeqCst),
        "the proxy did cut a connection"
    );
    let received = serve.metric("gantry_registry_bytes_received_total").await as u64;
    eprintln!("registry received {received} bytes for a {SIZE}-byte layer");
    assert!(
        received < SIZE as u64 + (1 << 20),
        "{received} bytes received: completed chunks were sent again"
    );
    // The stored blob is the layer, byte for byte.
    let c = client(&serve.host(), None);
    assert_eq!(
        c.blob_size("game/big", &layer).await.unwrap(),
        Some(SIZE as u64)
    );
    assert_eq!(report.manifest_digest, {
        OciLayout::open(&layout)
            .unwrap()
            .resolve(None, "linux", "amd64")
            .unwrap()
            .digest
    });
}

/// A blob server that ignores `Range` (always 200 with the whole blob), and on its first
/// answer stops after `drop_first_after` bytes.
async fn range_ignoring_server(
    blob: Bytes,
    drop_first_after: usize,
) -> (SocketAddr, Arc<AtomicU64>) {
    let served = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicBool::new(true));
    let counter = served.clone();
    let app = axum::Router::new().fallback(move || {
        let blob = blob.clone();
        let first = first.clone();
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            if first.swap(false, Ordering::SeqCst) {
                let head = blob.slice(..drop_first_after);
                let stream = futures::stream::iter(vec![
                    Ok::<Bytes, std::io::Error>(head),
                    Err(std::io::Error::other("connection cut by the test server")),
                ]);
                return Response::builder()
                    .status(StatusCode::OK)
                    .header("content-length", blob.len())
                    .body(Body::from_stream(stream))
                    .unwrap();
            }
            Response::builder()
                .status(StatusCode::OK)
                .header("content-length", blob.len())
                .body(Body::from(blob))
                .unwrap()
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_range_with_200_is_handled() {
    let blob: Bytes = (0..300_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let digest = Digest::of(&blob);
    let (addr, requests) = range_ignoring_server(blob.clone(), 100_000).await;
    let c = client(&addr.to_string(), None);

    // A download cut after 100 kB resumes with a Range request; the server answers 200
    // with the whole blob, and the client skips what it already has.
    let dir = gantry_test_support::tempdir();
    let path = dir.path().join("blob");
    let n = c
        .download_blob("any/repo", &digest, Some(blob.len() as u64), &path, &|_| {})
        .await
        .unwrap();
    assert_eq!(n, blob.len() as u64);
    assert_eq!(std::fs::read(&path).unwrap(), blob.to_vec());
    assert_eq!(requests.load(Ordering::SeqCst), 2, "one resume request");

    // A range read answered with the whole blob returns just the range.
    let part = c
        .read_range("any/repo", &digest, 123_456, 7_890)
        .await
        .unwrap();
    assert_eq!(part, blob.slice(123_456..123_456 + 7_890));
}
