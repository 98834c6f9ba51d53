//! Replication between two in-process `gantry serve`s on loopback: pushed tags reach the
//! remote carrying about the update's own size, a remote that is down catches up when it
//! returns, and a restarted source compares every tag again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_oci::Digest;
use gantry_registry::{Registry, ReplicationConfig};
use gantry_test_support::{push_layout_to, registry_client, sample_images, GantryServe};
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
