//! Real containerd pulling through the agent (its `hosts.toml` mirror) from a real
//! `gantry serve`: the first pull, the update (only new chunks move), and the refusals —
//! a corrupted chunk never served, a private repository never leaked from the cache.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use gantry_agent::{AgentConfig, RunningAgent, UpstreamSpec};
use gantry_client::{push_layout, NoProgress, OciLayout, PushOptions, RegistryClient};
use gantry_oci::Reference;
use gantry_test_support::{
    assert_success, metric, registry_client as client, sample_images, tempdir,
    write_busybox_oci_layout, Containerd, GantryServe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn push(c: &RegistryClient, layout: &Path, reference: &str) -> gantry_client::PushReport {
    let dest: Reference = reference.parse().unwrap();
    push_layout(
        c,
        &OciLayout::open(layout).unwrap(),
        None,
        &dest,
        &PushOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap()
}

async fn agent(root: &Path, registry_host: &str, upstream_url: &str) -> RunningAgent {
    gantry_agent::bind(&AgentConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        root: root.to_path_buf(),
        upstreams: vec![UpstreamSpec {
            host: registry_host.to_string(),
            url: upstream_url.to_string(),
        }],
        max_bytes: 0,
        fetch_jobs: 4,
    })
    .await
    .unwrap()
}

/// Runs a blocking closure (containerd's `ctr`) off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn sha256_of(path: &Path) -> String {
    use sha2::{Digest as _, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_v1_then_only_the_new_chunks_of_v2_through_the_agent() {
    let base = tempdir();
    write_busybox_oci_layout(base.path(), "latest");
    let images = blocking({
        let base = base.path().to_path_buf();
        move || sample_images(40_000_000, 10_000_000, Some(&base))
    })
    .await;
    let serve = GantryServe::open().await;
    let host = serve.host();
    let c = client(&host, None);
    let v1 = push(&c, &images.v1, &format!("{host}/studio/game:v1")).await;
    let agent_dir = tempdir();
    let agent = agent(agent_dir.path(), &host, &format!("http://{host}")).await;

    let ctd = Arc::new(Containerd::start());
    let hosts = ctd.hosts_dir();
    gantry_agent::hosts::install(&hosts, &host, &format!("http://{host}"), &agent.url()).unwrap();
    let (r1, r2) = (
        format!("{host}/studio/game:v1"),
        format!("{host}/studio/game:v2"),
    );
    let out = blocking({
        let (ctd, r1, hosts) = (ctd.clone(), r1.clone(), hosts.clone());
        move || ctd.pull(&r1, Some(&hosts), false, None)
    })
    .await;
    assert_success("ctr images pull v1 through the agent", &out);
    assert_eq!(ctd.image_digest(&r1), v1.manifest_digest.to_string());
    let metrics_url = format!("{}/metrics", agent.url());
    let after_v1 = metric(&metrics_url, "gantry_agent_upstream_bytes_total").await;
    assert!(after_v1 > 0.0, "the first pull came from upstream");

    // v2: the update at test scale.
    let v2 = push(&c, &images.v2, &format!("{host}/studio/game:v2")).await;
    let out = blocking({
        let (ctd, r2, hosts) = (ctd.clone(), r2.clone(), hosts.clone());
        move || ctd.pull(&r2, Some(&hosts), false, None)
    })
    .await;
    assert_success("ctr images pull v2 through the agent", &out);
    assert_eq!(
        ctd.image_digest(&r2),
        v2.manifest_digest.to_string(),
        "containerd records the digest a direct pull gives"
    );
    let fetched = metric(&metrics_url, "gantry_agent_upstream_bytes_total").await - after_v1;
    let reused = metric(&metrics_url, "gantry_agent_reused_bytes_total").await;
    eprintln!(
        "v2 through the agent: fetched {fetched} bytes upstream, reused {reused}; update's own size {}; ratio {:.3}",
        images.update_bytes,
        fetched / images.update_bytes as f64
    );
    assert!(
        fetched <= 1.25 * images.update_bytes as f64,
        "fetched {fetched} bytes upstream for an update of {} bytes (limit 1.25x)",
        images.update_bytes
    );

    // The container runs v2: a changed pak has v2's bytes.
    let changed = images
        .files_changed
        .iter()
        .find(|f| f.starts_with("paks/") && f.ends_with(".pak"))
        .expect("the update changed a pak")
        .clone();
    let inside = format!(
        "/BinLinux64.Dedicated/{}",
        changed.trim_start_matches("paks/")
    );
    let want = sha256_of(&images.game.join(&changed));
    let out = blocking({
        let (ctd, r2) = (ctd.clone(), r2.clone());
        move || ctd.run(&r2, &["/bin/sh", "-c", &format!("sha256sum {inside}")])
    })
    .await;
    assert_success("ctr run v2", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&want),
        "the container's {changed} is v2's: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(agent);
}

/// A TCP proxy that, once armed, flips one byte inside the body of every answer to a
/// Range request (`corrupt_all`) or of the first one only.
async fn corrupting_proxy(
    upstream: SocketAddr,
    corrupt_all: bool,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flipped = Arc::new(AtomicUsize::new(0));
    let count = flipped.clone();
    let done_once = Arc::new(AtomicBool::new(false));
    let armed = Arc::new(AtomicBool::new(false));
    let is_armed = armed.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let count = count.clone();
            let done_once = done_once.clone();
            let is_armed = is_armed.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                // Requests go through unchanged; we note whether the last one asked for a range.
                let range_asked = Arc::new(AtomicBool::new(false));
                let seen = range_asked.clone();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                        if text.contains("\r\nrange: bytes=") {
                            seen.store(true, Ordering::SeqCst);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    // Set when a 206 answer's headers ended exactly at a segment's end.
                    let mut flip_next = false;
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if flip_next {
                            buf[0] ^= 0xff;
                            flip_next = false;
                        } else if buf[..n].starts_with(b"HTTP/1.1 206") {
                            let wanted = range_asked.swap(false, Ordering::SeqCst)
                                && is_armed.load(Ordering::SeqCst)
                                && (corrupt_all || !done_once.swap(true, Ordering::SeqCst));
                            if wanted {
                                count.fetch_add(1, Ordering::SeqCst);
                                match buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                                    Some(end) if end + 4 < n => buf[end + 4] ^= 0xff,
                                    _ => flip_next = true,
                                }
                            }
                        }
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
    (addr, flipped, armed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_from_upstream_is_detected_refetched_and_never_served() {
    let images = blocking(|| sample_images(6_000_000, 600_000, None)).await;
    let serve = GantryServe::open().await;
    let host = serve.host();
    let c = client(&host, None);
    push(&c, &images.v1, &format!("{host}/studio/game:v1")).await;
    let v2 = push(&c, &images.v2, &format!("{host}/studio/game:v2")).await;
    let paks = v2.blobs.iter().find(|b| b.label == "paks").unwrap().digest;
    let v1_manifest = OciLayout::open(&images.v1)
        .unwrap()
        .resolve(None, "linux", "amd64")
        .unwrap();

    for corrupt_all in [false, true] {
        let (proxy, flipped, armed) = corrupting_proxy(serve.server.addr(), corrupt_all).await;
        let dir = tempdir();
        let agent = agent(dir.path(), &host, &format!("http://{proxy}")).await;
        let http = reqwest::Client::new();
        let get = |path: String| {
            let http = http.clone();
            let url = format!("{}{path}?ns={host}", agent.url());
            async move { http.get(url).send().await.unwrap() }
        };
        // The node holds v1 (manifest and layers through the agent).
        get("/v2/studio/game/manifests/v1".into()).await;
        for l in v1_manifest.manifest.layers() {
            let r = get(format!("/v2/studio/game/blobs/{}", l.digest())).await;
            assert!(r.status().is_success());
            r.bytes().await.unwrap();
        }
        get("/v2/studio/game/manifests/v2".into()).await;
        armed.store(true, Ordering::SeqCst);
        let before = flipped.load(Ordering::SeqCst);
        let r = get(format!("/v2/studio/game/blobs/{paks}")).await;
        assert!(
            flipped.load(Ordering::SeqCst) > before,
            "the proxy corrupted no range answer; agent status: {:?}",
            agent.state().metrics.status()
        );
        let failures = metric(
            &format!("{}/metrics", agent.url()),
            "gantry_agent_verification_failures_total",
        )
        .await;
        assert!(failures >= 1.0, "the corruption was detected");
        if corrupt_all {
            assert_eq!(
                r.status(),
                502,
                "a chunk that fails twice fails the request"
            );
            let body = r.text().await.unwrap();
            assert!(body.contains("expected"), "{body}");
            assert!(
                !agent.state().store.has(&paks),
                "nothing unverified is stored"
            );
        } else {
            assert!(r.status().is_success(), "refetched once and served");
            let bytes = r.bytes().await.unwrap();
            assert_eq!(
                gantry_oci::Digest::of(&bytes),
                paks,
                "the served blob is exact"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_blob_held_by_the_agent_is_refused_to_a_client_without_credentials() {
    let base = tempdir();
    let img = write_busybox_oci_layout(base.path(), "latest");
    let serve = GantryServe::with_auth().await;
    let host = serve.host();
    let alice = client(&host, Some(("alice", "alicepw")));
    push(&alice, base.path(), &format!("{host}/team/busybox:1")).await;
    let agent_dir = tempdir();
    let agent = agent(agent_dir.path(), &host, &format!("http://{host}")).await;

    // alice pulls through the agent with containerd (the token flow runs through it).
    let ctd = Arc::new(Containerd::start());
    let hosts = ctd.hosts_dir();
    gantry_agent::hosts::install(&hosts, &host, &format!("http://{host}"), &agent.url()).unwrap();
    let reference = format!("{host}/team/busybox:1");
    let out = blocking({
        let (ctd, r, hosts) = (ctd.clone(), reference.clone(), hosts.clone());
        move || ctd.pull(&r, Some(&hosts), false, Some("alice:alicepw"))
    })
    .await;
    assert_success("ctr pull as alice through the agent", &out);
    let layer: gantry_oci::Digest = img.layer_digest.parse().unwrap();
    assert!(
        agent.state().store.has(&layer),
        "the agent holds the layer now"
    );

    // Without credentials: refused although the blob is held, with the registry's challenge.
    let url = format!("{}/v2/team/busybox/blobs/{layer}?ns={host}", agent.url());
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer realm=")),
        "the upstream challenge reaches the client"
    );
    // And a second containerd without credentials cannot pull it.
    let other = Arc::new(Containerd::start());
    let hosts2 = other.hosts_dir();
    gantry_agent::hosts::install(&hosts2, &host, &format!("http://{host}"), &agent.url()).unwrap();
    let out = blocking({
        let (other, r, hosts2) = (other.clone(), reference.clone(), hosts2.clone());
        move || other.pull(&r, Some(&hosts2), false, None)
    })
    .await;
    assert!(
        !out.status.success(),
        "anonymous pull through the agent must fail"
    );
}
