//! Push and pull against real registries: `gantry serve` with token auth, CNCF
//! distribution with basic auth, skopeo and buildah on the other side; delta push measured
//! at the registry's metrics.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gantry_client::{
    pull_to_layout, push_layout, BlobOutcome, NoProgress, OciLayout, PullOptions, PushOptions,
};
use gantry_layer::ChunkIndex;
use gantry_oci::{media_types, Digest, Reference};
use gantry_test_support::{
    assert_success, command, output_with_timeout, require_tool, write_busybox_oci_layout,
    DistributionRegistry,
};

const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

fn reference(host: &str, repo_tag: &str) -> Reference {
    format!("{host}/{repo_tag}").parse().unwrap()
}

fn blob_names(layout: &Path) -> BTreeSet<String> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn manifest_digest(layout: &Path) -> Digest {
    OciLayout::open(layout)
        .unwrap()
        .resolve(None, "linux", "amd64")
        .unwrap()
        .digest
}

async fn push(
    client: &gantry_client::RegistryClient,
    layout: &Path,
    dest: &Reference,
    delta_from: Option<&str>,
) -> Result<gantry_client::PushReport, gantry_client::ClientError> {
    push_layout(
        client,
        &OciLayout::open(layout).unwrap(),
        None,
        dest,
        &PushOptions {
            delta_from: delta_from.map(str::to_string),
            ..PushOptions::default()
        },
        Arc::new(NoProgress),
    )
    .await
}

async fn pull(
    client: &gantry_client::RegistryClient,
    src: &Reference,
    target: &Path,
) -> Result<gantry_client::PullReport, gantry_client::ClientError> {
    pull_to_layout(
        client,
        src,
        target,
        &PullOptions::default(),
        Arc::new(NoProgress),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_with_token_auth_on_gantry_serve() {
    let images = sample_images(4_000_000, 100_000, None);
    let serve = Serve::with_auth().await;
    let host = serve.host();
    let dest = reference(&host, "team/game:v1");

    let err = push(&client(&host, None), &images.v1, &dest, None)
        .await
        .expect_err("anonymous push must be refused");
    let text = err.to_string();
    assert!(
        text.contains(&host) && text.contains("team/game") && text.contains("401"),
        "error should name registry, repository and status: {text}"
    );
    let err = push(
        &client(&host, Some(("alice", "wrong"))),
        &images.v1,
        &dest,
        None,
    )
    .await
    .expect_err("a wrong password must be refused");
    assert!(err.to_string().contains("authentication failed"), "{err}");

    let alice = client(&host, Some(("alice", "alicepw")));
    let report = push(&alice, &images.v1, &dest, None).await.unwrap();
    assert_eq!(report.manifest_digest, manifest_digest(&images.v1));
    assert!(report.referrers_api, "gantry serve has the referrers API");
    assert_eq!(
        report.referrers.len(),
        1,
        "the chunk-index referrer is pushed"
    );
    // A second push finds everything there.
    let again = push(&alice, &images.v1, &dest, None).await.unwrap();
    assert!(again
        .blobs
        .iter()
        .all(|b| b.outcome == BlobOutcome::Existing));
    assert_eq!(again.bytes_sent, 0);

    let out = images.dir.path().join("pulled");
    let pulled = pull(&alice, &dest, &out).await.unwrap();
    assert_eq!(pulled.manifest_digest, report.manifest_digest);
    assert_eq!(pulled.referrers.len(), 1);
    assert_eq!(
        blob_names(&out),
        blob_names(&images.v1),
        "the pulled layout holds exactly the pushed blobs, referrers included"
    );
    let err = pull(&client(&host, None), &dest, &images.dir.path().join("anon"))
        .await
        .expect_err("anonymous pull of a private repository");
    assert!(err.to_string().contains("team/game"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_with_basic_auth_on_cncf_distribution() {
    let images = sample_images(3_000_000, 100_000, None);
    let reg = DistributionRegistry::start_with_basic_auth("bob", "bobpw");
    let host = reg.host();
    let dest = reference(&host, "studio/game:v1");
    let err = push(&client(&host, None), &images.v1, &dest, None)
        .await
        .expect_err("anonymous push refused");
    assert!(err.to_string().contains("401"), "{err}");
    let bob = client(&host, Some(("bob", "bobpw")));
    let report = push(&bob, &images.v1, &dest, None).await.unwrap();
    assert_eq!(report.manifest_digest, manifest_digest(&images.v1));
    assert!(!report.delta_push, "distribution does not offer delta push");
    assert!(
        !report.referrers_api,
        "distribution 2.8 has no referrers API: the fallback tag is used"
    );
    let out = images.dir.path().join("pulled");
    let pulled = pull(&bob, &dest, &out).await.unwrap();
    assert_eq!(pulled.manifest_digest, report.manifest_digest);
    assert_eq!(
        pulled.referrers.len(),
        1,
        "chunk index found through the fallback tag"
    );
    assert_eq!(blob_names(&out), blob_names(&images.v1));
    let err = push(
        &client(&host, Some(("bob", "nope"))),
        &images.v1,
        &dest,
        None,
    )
    .await
    .expect_err("wrong password");
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_push_uploads_no_more_than_the_new_chunks() {
    let images = sample_images(8_000_000, 300_000, None);
    let serve = Serve::open().await;
    let host = serve.host();
    let c = client(&host, None);
    push(&c, &images.v1, &reference(&host, "game/server:v1"), None)
        .await
        .unwrap();
    let before = serve.metric("gantry_registry_bytes_received_total").await;
    let report = push(
        &c,
        &images.v2,
        &reference(&host, "game/server:v2"),
        Some("v1"),
    )
    .await
    .unwrap();
    let received = serve.metric("gantry_registry_bytes_received_total").await - before;
    assert!(report.delta_push);

    // What v2 has that v1 lacks, by the chunk indexes: new chunks, plus the small blobs
    // (config, new chunk indexes) and manifests.
    let chunk_ids = |layout: &Path| -> (BTreeSet<Digest>, Vec<ChunkIndex>) {
        let l = OciLayout::open(layout).unwrap();
        let m = l.resolve(None, "linux", "amd64").unwrap().manifest;
        let mut ids = BTreeSet::new();
        let mut idx = Vec::new();
        for d in m.layers() {
            let a = d.annotations().as_ref().unwrap();
            let digest: Digest = a[media_types::ANNOTATION_CHUNK_INDEX].parse().unwrap();
            let index = ChunkIndex::from_blob(&l.read_blob(&digest).unwrap()).unwrap();
            ids.extend(index.chunks.iter().map(|c| c.id));
            idx.push(index);
        }
        (ids, idx)
    };
    let (old, _) = chunk_ids(&images.v1);
    let (_, new_indexes) = chunk_ids(&images.v2);
    let mut seen = BTreeSet::new();
    let new_chunk_bytes: u64 = new_indexes
        .iter()
        .flat_map(|i| i.chunks.iter())
        .filter(|c| !old.contains(&c.id) && seen.insert(c.id))
        .map(|c| c.compressed_len)
        .sum();
    let small_blobs: u64 = report
        .blobs
        .iter()
        .filter(|b| b.outcome == BlobOutcome::Uploaded)
        .map(|b| b.size)
        .sum();
    let allowance = new_chunk_bytes + small_blobs + 64 * 1024;
    eprintln!(
        "delta push: registry received {received} bytes; new chunks {new_chunk_bytes}, \
         small blobs {small_blobs}; update's own size {}; image {}",
        images.update_bytes, report.image_bytes
    );
    assert!(
        received as u64 <= allowance,
        "registry received {received} bytes, more than the new chunks allow ({allowance})"
    );
    assert!(report.bytes_reused > 0);

    // The registry assembled exactly the layer blobs the build made.
    let out = images.dir.path().join("pulled-v2");
    let pulled = pull(&c, &reference(&host, "game/server:v2"), &out)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, manifest_digest(&images.v2));
    assert_eq!(blob_names(&out), blob_names(&images.v2));
}

fn skopeo(args: &[&str]) -> std::process::Output {
    let bin = require_tool("skopeo");
    let out = output_with_timeout(&mut command(&bin, args), TOOL_TIMEOUT);
    assert_success(format!("skopeo {}", args.join(" ")), &out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_reads_what_gantry_pushed_and_gantry_reads_what_skopeo_pushed() {
    let images = sample_images(2_000_000, 50_000, None);
    let serve = Serve::open().await;
    let host = serve.host();
    let c = client(&host, None);
    let report = push(&c, &images.v1, &reference(&host, "game/server:v1"), None)
        .await
        .unwrap();
    let src = format!("docker://{host}/game/server:v1");
    let out = tokio::task::spawn_blocking(move || skopeo(&["inspect", "--tls-verify=false", &src]))
        .await
        .unwrap();
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["Digest"], report.manifest_digest.to_string());
    let copy_dir = images.dir.path().join("skopeo-copy");
    let (src, dst) = (
        format!("docker://{host}/game/server:v1"),
        format!("oci:{}:v1", copy_dir.display()),
    );
    tokio::task::spawn_blocking(move || skopeo(&["copy", "--src-tls-verify=false", &src, &dst]))
        .await
        .unwrap();
    for layer in report
        .blobs
        .iter()
        .filter(|b| !b.label.starts_with("chunk index"))
    {
        assert!(
            copy_dir
                .join("blobs/sha256")
                .join(layer.digest.hex())
                .is_file(),
            "skopeo copied blob {} ({})",
            layer.digest,
            layer.label
        );
    }

    // The other way: skopeo pushes busybox, gantry pulls it.
    let busybox = images.dir.path().join("busybox");
    write_busybox_oci_layout(&busybox, "latest");
    let (src, dst) = (
        format!("oci:{}:latest", busybox.display()),
        format!("docker://{host}/tools/busybox:1"),
    );
    tokio::task::spawn_blocking(move || skopeo(&["copy", "--dest-tls-verify=false", &src, &dst]))
        .await
        .unwrap();
    let src = format!("docker://{host}/tools/busybox:1");
    let out = tokio::task::spawn_blocking(move || skopeo(&["inspect", "--tls-verify=false", &src]))
        .await
        .unwrap();
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pulled = pull(
        &c,
        &reference(&host, "tools/busybox:1"),
        &images.dir.path().join("bb"),
    )
    .await
    .unwrap();
    assert_eq!(
        inspected["Digest"].as_str().unwrap(),
        pulled.manifest_digest.to_string()
    );
    assert!(pulled.referrers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gantry_reads_what_buildah_pushed_to_cncf_distribution() {
    let reg = DistributionRegistry::start();
    let host = reg.host();
    // buildah names an image pulled from `oci:PATH` after PATH, which must be lowercase.
    let parent = Path::new("/tmp").join(format!("gantry-client-buildah-{}", std::process::id()));
    std::fs::create_dir_all(&parent).unwrap();
    let store = tempfile::Builder::new()
        .prefix("store")
        .rand_bytes(0)
        .tempdir_in(&parent)
        .unwrap();
    let layout = store.path().join("layout");
    write_busybox_oci_layout(&layout, "latest");
    let root = store.path().join("root");
    let runroot = store.path().join("runroot");
    let buildah = require_tool("buildah");
    let args = |rest: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--root",
            root.to_str().unwrap(),
            "--runroot",
            runroot.to_str().unwrap(),
            "--storage-driver",
            "vfs",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };
    let src = format!("oci:{}:latest", layout.display());
    let out = output_with_timeout(
        &mut command(&buildah, &args(&["pull", "--quiet", &src])),
        TOOL_TIMEOUT,
    );
    assert_success("buildah pull", &out);
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    let dest = format!("docker://{host}/buildah/busybox:v1");
    let out = output_with_timeout(
        &mut command(&buildah, &args(&["push", "--tls-verify=false", &id, &dest])),
        TOOL_TIMEOUT,
    );
    assert_success("buildah push", &out);
    let c = client(&host, None);
    let target = store.path().join("pulled");
    let pulled = pull(&c, &reference(&host, "buildah/busybox:v1"), &target)
        .await
        .unwrap();
    // Every blob of the pulled image is in the layout and verified by the pull; check
    // again by reading them through the layout reader.
    let l = OciLayout::open(&target).unwrap();
    for b in &pulled.blobs {
        l.verify_blob(&b.digest, b.size).unwrap();
    }
    assert!(pulled.blobs.len() >= 2);
    let _ = output_with_timeout(
        &mut command(&buildah, &args(&["rmi", "--all", "--force"])),
        TOOL_TIMEOUT,
    );
    drop(store);
    let _ = std::fs::remove_dir(parent);
}
