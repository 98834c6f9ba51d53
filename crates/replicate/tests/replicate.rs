//! Replication between two in-process `gantry serve`s on loopback: pushed tags reach the
//! remote carrying about the update's own size, a remote that is down catches up when it
//! returns, and a restarted source compares every tag again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_oci::Digest;
use gantry_registry::{Registry, ReplicationConfig};
use gantry_test_support::{push_layout_to, registry_client, sample_images, GantryServe, NetnsLink};
use serde_json::Value;

fn replication_to(remote_host: &str) -> ReplicationConfig {
    ReplicationConfig {
        url: format!("http://{remote_host}"),
        name: Some("eu".into()),
        repositories: vec!["studio/**".into()],
        username: None,
        password_file: None,
        ca_file: None,
        interval: Duration::from_secs(3600),
    }
}

/// The digest `repo:tag` points at on `host`, if any.
async fn tag_on(host: &str, repo: &str, tag: &str) -> Option<Digest> {
    registry_client(host, None)
        .head_manifest(repo, tag)
        .await
        .unwrap_or_else(|e| panic!("HEAD {repo}:{tag} on {host}: {e}"))
}

/// Waits until `repo:tag` on `host` points at `digest`.
async fn wait_for_tag(host: &str, repo: &str, tag: &str, digest: Digest, within: Duration) {
    let start = Instant::now();
    loop {
        if tag_on(host, repo, tag).await == Some(digest) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{repo}:{tag} did not reach {host} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(source: &GantryServe) -> Value {
    let text = reqwest::get(format!("{}/gantry/v1/replication", source.server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let view: Value = serde_json::from_str(&text).unwrap();
    view["targets"][0].clone()
}

fn stop(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.abort();
    }
}

/// What `registry` holds under `repo:tag`.
async fn local_tag(registry: &Arc<Registry>, repo: &str, tag: &str) -> Digest {
    registry
        .storage()
        .get_tag(repo, tag)
        .await
        .unwrap()
        .expect("tag pushed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_tags_reach_the_remote_and_an_update_costs_about_its_own_size() {
    let images = tokio::task::spawn_blocking(|| sample_images(20_000_000, 4_000_000, None))
        .await
        .unwrap();
    let remote = GantryServe::open().await;
    let source = GantryServe::open().await;
    let (src, dst) = (source.host(), remote.host());
    let registry = source.server.registry().clone();
    let tasks = gantry_replicate::start(registry.clone(), &[replication_to(&dst)]).unwrap();
    let client = registry_client(&src, None);

    push_layout_to(&client, &images.v1, &format!("{src}/studio/game:v1")).await;
    push_layout_to(&client, &images.v1, &format!("{src}/other/game:v1")).await;
    let v1 = local_tag(&registry, "studio/game", "v1").await;
    wait_for_tag(&dst, "studio/game", "v1", v1, Duration::from_secs(60)).await;

    let before = remote.metric("gantry_registry_bytes_received_total").await;
    push_layout_to(&client, &images.v2, &format!("{src}/studio/game:v2")).await;
    let v2 = local_tag(&registry, "studio/game", "v2").await;
    wait_for_tag(&dst, "studio/game", "v2", v2, Duration::from_secs(60)).await;
    let received = remote.metric("gantry_registry_bytes_received_total").await - before;
    eprintln!(
        "v2 replicated: the remote received {received} bytes for an update of {} ({:.3}x)",
        images.update_bytes,
        received / images.update_bytes as f64
    );
    assert!(
        received <= 1.25 * images.update_bytes as f64,
        "the remote received {received} bytes for an update of {} (limit 1.25x)",
        images.update_bytes
    );

    // The chunk index came along as a referrer, so the remote can answer chunk lookups
    // and serve nodes the chunk way too.
    let referrers = registry_client(&dst, None)
        .referrers(
            "studio/game",
            &v2,
            Some(gantry_oci::media_types::CHUNK_INDEX_ARTIFACT),
        )
        .await
        .unwrap();
    assert_eq!(referrers.len(), 1, "the chunk-index referrer of v2");
    // A repository the rule does not match stays here.
    assert_eq!(tag_on(&dst, "other/game", "v1").await, None);

    // The same tag moved to another image follows; it is never moved back.
    push_layout_to(&client, &images.v1, &format!("{src}/studio/game:v2")).await;
    wait_for_tag(&dst, "studio/game", "v2", v1, Duration::from_secs(60)).await;

    let s = status(&source).await;
    assert_eq!(s["name"], "eu");
    assert_eq!(s["pending"].as_array().map(Vec::len), Some(0), "{s}");
    assert!(s["copied"].as_u64().unwrap() >= 3, "{s}");
    assert_eq!(s["failing"], false);
    assert_eq!(s["last_copied"]["image"], "studio/game:v2", "{s}");
    let m = source.metric("gantry_registry_replications_total").await;
    assert!(m >= 3.0, "replications counted: {m}");
    stop(tasks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_was_down_catches_up_and_a_restarted_source_compares_again() {
    let images = tokio::task::spawn_blocking(|| sample_images(8_000_000, 1_000_000, None))
        .await
        .unwrap();
    let GantryServe {
        server: remote_server,
        dir: remote_dir,
    } = GantryServe::open().await;
    let dst = remote_server.addr().to_string();
    let source = GantryServe::open().await;
    let src = source.host();
    let registry = source.server.registry().clone();
    let client = registry_client(&src, None);

    // The remote is down when v1 is pushed: the copy fails, is retried, and is shown.
    remote_server.shutdown().await.unwrap();
    let tasks = gantry_replicate::start(registry.clone(), &[replication_to(&dst)]).unwrap();
    push_layout_to(&client, &images.v1, &format!("{src}/studio/game:v1")).await;
    let v1 = local_tag(&registry, "studio/game", "v1").await;
    let start = Instant::now();
    let s = loop {
        let s = status(&source).await;
        if s["failures"].as_u64().unwrap_or(0) >= 2 {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no retry seen: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s["failing"], true, "{s}");
    assert_eq!(s["pending"][0], "studio/game:v1", "{s}");
    assert!(
        s["last_failure"]["error"]
            .as_str()
            .unwrap_or("")
            .contains(&dst),
        "the error names the remote: {s}"
    );

    // It comes back on the same address and storage: the retry gets v1 there.
    let remote = gantry_registry::bind(&gantry_registry::Config {
        addr: dst.parse().unwrap(),
        root: remote_dir.path().to_path_buf(),
        ..gantry_registry::Config::default()
    })
    .await
    .unwrap();
    wait_for_tag(&dst, "studio/game", "v1", v1, Duration::from_secs(90)).await;
    let s = status(&source).await;
    assert_eq!(s["failing"], false, "{s}");

    // The source stops (its replication with it); v2 is pushed meanwhile; a new start
    // compares every tag and copies v2.
    stop(tasks);
    push_layout_to(&client, &images.v2, &format!("{src}/studio/game:v2")).await;
    let v2 = local_tag(&registry, "studio/game", "v2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tag_on(&dst, "studio/game", "v2").await, None);
    let tasks = gantry_replicate::start(registry.clone(), &[replication_to(&dst)]).unwrap();
    wait_for_tag(&dst, "studio/game", "v2", v2, Duration::from_secs(60)).await;
    let s = status(&source).await;
    assert!(s["in_sync"].as_u64().unwrap() >= 1, "v1 found in sync: {s}");
    stop(tasks);
    drop(remote);
}

/// A `gantry serve` listening inside a network namespace (another region, reached over a
/// limited link), on its own thread; [`RemoteSite::kill`] drops it at once, cutting what
/// it was receiving.
struct RemoteSite {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RemoteSite {
    fn start(link: &Arc<NetnsLink>, root: &std::path::Path, addr: std::net::SocketAddr) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (link, root) = (link.clone(), root.to_path_buf());
        let thread = std::thread::spawn(move || {
            link.enter();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let config = gantry_registry::Config {
                    addr,
                    root,
                    ..gantry_registry::Config::default()
                };
                // The address may take a moment to be free again after a kill.
                let mut tries = 0;
                let server = loop {
                    match gantry_registry::bind(&config).await {
                        Ok(s) => break s,
                        Err(e) if tries < 50 => {
                            tries += 1;
                            eprintln!("remote bind: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("remote gantry serve on {addr}: {e}"),
                    }
                };
                ready_tx.send(()).unwrap();
                let _ = stop_rx.await;
                drop(server);
            });
            // Dropping the runtime ends every connection in flight.
            drop(rt);
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the remote started");
        RemoteSite {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for RemoteSite {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The setup: the remote region in its own network namespace behind `tc tbf`; the
/// update crosses the link once (about its own size), and a remote killed while it
/// receives an update converges once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_region_behind_a_limited_link_gets_the_update_for_about_its_size() {
    let images = tokio::task::spawn_blocking(|| sample_images(20_000_000, 4_000_000, None))
        .await
        .unwrap();
    let link = Arc::new(NetnsLink::new(None));
    let remote_root = tempfile::tempdir().unwrap();
    let addr = std::net::SocketAddr::from((link.ns_ip, 5000));
    let dst = addr.to_string();
    let remote = RemoteSite::start(&link, remote_root.path(), addr);
    let source = GantryServe::open().await;
    let src = source.host();
    let registry = source.server.registry().clone();
    let tasks = gantry_replicate::start(registry.clone(), &[replication_to(&dst)]).unwrap();
    let client = registry_client(&src, None);

    push_layout_to(&client, &images.v1, &format!("{src}/studio/game:v1")).await;
    let v1 = local_tag(&registry, "studio/game", "v1").await;
    wait_for_tag(&dst, "studio/game", "v1", v1, Duration::from_secs(120)).await;

    // The inter-region link from now on: 8 Mbit/s each way.
    link.set_rate("8mbit");
    let before = link.bytes_to_namespace();
    push_layout_to(&client, &images.v2, &format!("{src}/studio/game:v2")).await;
    let v2 = local_tag(&registry, "studio/game", "v2").await;
    wait_for_tag(&dst, "studio/game", "v2", v2, Duration::from_secs(120)).await;
    let carried = link.bytes_to_namespace() - before;
    eprintln!(
        "v2 replicated over the 8 Mbit link: {carried} bytes toward the remote (IP and TCP \
         headers, HTTP requests included) for an update of {} ({:.3}x)",
        images.update_bytes,
        carried as f64 / images.update_bytes as f64
    );
    assert!(
        carried as f64 <= 1.3 * images.update_bytes as f64,
        "the link carried {carried} bytes for an update of {} (limit 1.3x, headers included)",
        images.update_bytes
    );

    // v3 (an engine update): the remote is killed as soon as the copy is under way.
    let v3_layout = tokio::task::spawn_blocking({
        let images = images;
        move || {
            let v3 = images.engine_update();
            (images, v3)
        }
    })
    .await
    .unwrap();
    let (_images, v3_layout) = v3_layout;
    let before = link.bytes_to_namespace();
    push_layout_to(&client, &v3_layout, &format!("{src}/studio/game:v3")).await;
    let v3 = local_tag(&registry, "studio/game", "v3").await;
    let start = Instant::now();
    while link.bytes_to_namespace() - before < 20_000 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the copy of v3 did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    remote.kill();
    assert_ne!(
        registry_client(&src, None)
            .head_manifest("studio/game", "v3")
            .await
            .unwrap(),
        None
    );
    let start = Instant::now();
    loop {
        let s = status(&source).await;
        if s["failing"] == true {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the killed remote was not noticed: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let remote = RemoteSite::start(&link, remote_root.path(), addr);
    wait_for_tag(&dst, "studio/game", "v3", v3, Duration::from_secs(120)).await;
    let s = status(&source).await;
    assert_eq!(s["failing"], false, "{s}");
    assert_eq!(s["pending"].as_array().map(Vec::len), Some(0), "{s}");
    // Every tag is there, each at its image.
    for (tag, digest) in [("v1", v1), ("v2", v2), ("v3", v3)] {
        assert_eq!(
            tag_on(&dst, "studio/game", tag).await,
            Some(digest),
            "{tag}"
        );
    }
    stop(tasks);
    drop(remote);
}

/// An image index: each platform's image (pushed by digest only, no tag of its own) is
/// copied with its chunk index, then the index under its tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_index_is_copied_platform_by_platform() {
    let images = tokio::task::spawn_blocking(|| sample_images(8_000_000, 1_000_000, None))
        .await
        .unwrap();
    let remote = GantryServe::open().await;
    let source = GantryServe::open().await;
    let (src, dst) = (source.host(), remote.host());
    let client = registry_client(&src, None);
    let mut children = Vec::new();
    for (layout, arch) in [(&images.v1, "amd64"), (&images.v2, "arm64")] {
        let digest = gantry_client::OciLayout::open(layout)
            .unwrap()
            .resolve_for_host(None)
            .unwrap()
            .digest;
        let report = push_layout_to(&client, layout, &format!("{src}/studio/multi@{digest}")).await;
        assert_eq!(report.manifest_digest, digest);
        let size = registry_client(&src, None)
            .get_manifest("studio/multi", &digest.to_string())
            .await
            .unwrap()
            .bytes
            .len();
        children.push(serde_json::json!({
            "mediaType": gantry_oci::media_types::OCI_MANIFEST,
            "digest": digest.to_string(),
            "size": size,
            "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": gantry_oci::media_types::OCI_INDEX,
        "manifests": children,
    }))
    .unwrap();
    client
        .put_manifest(
            "studio/multi",
            "multi",
            gantry_oci::media_types::OCI_INDEX,
            index.clone().into(),
        )
        .await
        .unwrap();
    let registry = source.server.registry().clone();
    let tasks = gantry_replicate::start(registry.clone(), &[replication_to(&dst)]).unwrap();
    wait_for_tag(
        &dst,
        "studio/multi",
        "multi",
        Digest::of(&index),
        Duration::from_secs(60),
    )
    .await;
    let there = registry_client(&dst, None);
    for child in &children {
        let digest: Digest = child["digest"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            there
                .head_manifest("studio/multi", &digest.to_string())
                .await
                .unwrap(),
            Some(digest)
        );
        let referrers = there
            .referrers(
                "studio/multi",
                &digest,
                Some(gantry_oci::media_types::CHUNK_INDEX_ARTIFACT),
            )
            .await
            .unwrap();
        assert_eq!(referrers.len(), 1, "the chunk index of {digest}");
    }
    stop(tasks);
}
