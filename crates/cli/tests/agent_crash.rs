//! `gantry agent` killed with SIGKILL in the middle of assembling a layer, then restarted
//! on the same store: the partial assembly is never taken for the blob, and the next
//! request gets the exact blob. The upstream link is slowed by a small throttling TCP proxy
//! (a test double for a slow network) so the kill lands mid-assembly.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_client::{push_layout, NoProgress, OciLayout, PushOptions};
use gantry_oci::{Digest, Reference};
use gantry_test_support::{free_port, registry_client, sample_images, wait_for_tcp, GantryServe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards to `upstream`, answers at about `bytes_per_sec`.
async fn throttling_proxy(upstream: SocketAddr, bytes_per_sec: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                };
                let down = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        tokio::time::sleep(Duration::from_micros(
                            n as u64 * 1_000_000 / bytes_per_sec,
                        ))
                        .await;
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    addr
}

struct Agent(Child);

impl Agent {
    fn start(root: &Path, port: u16, host: &str, upstream: SocketAddr) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["agent", "--addr", &format!("127.0.0.1:{port}"), "--root"])
            .arg(root)
            .args(["--upstream", &format!("{host}=http://{upstream}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_tcp(("127.0.0.1", port), Duration::from_secs(30));
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_assembly_restarts_and_serves_the_exact_blob() {
    let images = tokio::task::spawn_blocking(|| sample_images(12_000_000, 500_000, None))
        .await
        .unwrap();
    let serve = GantryServe::open().await;
    let host = serve.host();
    let client = registry_client(&host, None);
    let dest: Reference = format!("{host}/studio/game:v1").parse().unwrap();
    let pushed = push_layout(
        &client,
        &OciLayout::open(&images.v1).unwrap(),
        None,
        &dest,
        &PushOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let biggest = pushed
        .blobs
        .iter()
        .filter(|b| b.label == "paks" || b.label == "engine")
        .max_by_key(|b| b.size)
        .unwrap()
        .clone();
    // Slow enough that the largest layer takes seconds to arrive.
    let proxy = throttling_proxy(serve.server.addr(), 1_000_000).await;
    let store = gantry_test_support::tempdir();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut agent = Agent::start(store.path(), port, &host, proxy);
    let manifest = http
        .get(format!("{base}/v2/studio/game/manifests/v1?ns={host}"))
        .send()
        .await
        .unwrap();
    assert!(manifest.status().is_success());

    let blob_url = format!("{base}/v2/studio/game/blobs/{}?ns={host}", biggest.digest);
    let pending = tokio::spawn({
        let http = http.clone();
        let url = blob_url.clone();
        async move { http.get(url).send().await.map(|r| r.status()) }
    });
    // Wait until the assembly has started writing, then kill the agent.
    let tmp = store.path().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no assembly started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = agent.0.kill(); // SIGKILL
    let _ = agent.0.wait();
    let _ = pending.await;
    let blob_file = store.path().join("blobs/sha256").join(biggest.digest.hex());
    assert!(
        !blob_file.exists(),
        "the killed assembly must not have produced the blob"
    );
    assert!(
        std::fs::read_dir(&tmp).unwrap().count() > 0,
        "a partial assembly was left behind by the kill"
    );

    // Restart on the same store, without the throttle: the partial file is gone and the
    // blob is served exactly.
    drop(agent);
    let agent = Agent::start(store.path(), port, &host, serve.server.addr());
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "partial assemblies are removed at start"
    );
    let resp = http.get(&blob_url).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(Digest::of(&bytes), biggest.digest);
    assert_eq!(bytes.len() as u64, biggest.size);
    drop(agent);
}
