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

/// The chunk indexes of an image's layers in `layout`: (layer digest, index).
fn layer_indexes(layout: &Path) -> Vec<(Digest, ChunkIndex)> {
    let l = OciLayout::open(layout).unwrap();
    let m = l.resolve(None, "linux", "amd64").unwrap().manifest;
    m.layers()
        .iter()
        .map(|d| {
            let a = d.annotations().as_ref().unwrap();
            let digest: Digest = a[media_types::ANNOTATION_CHUNK_INDEX].parse().unwrap();
            let index = ChunkIndex::from_blob(&l.read_blob(&digest).unwrap()).unwrap();
            (Digest::from_oci(d.digest()).unwrap(), index)
        })
        .collect()
}

/// Pushes `layout` to `dest` with no delta flags and returns the report and the bytes
/// the registry received for it.
async fn push_measured(
    serve: &Serve,
    c: &gantry_client::RegistryClient,
    layout: &Path,
    dest: &str,
) -> (gantry_client::PushReport, f64) {
    let before = serve.metric("gantry_registry_bytes_received_total").await;
    let report = push(c, layout, &reference(&serve.host(), dest), None)
        .await
        .unwrap();
    let received = serve.metric("gantry_registry_bytes_received_total").await - before;
    (report, received)
}

/// Delta push engages with no flags: v2 pushed to a new tag, and in another repository to
/// the same tag as v1, costs the registry about the update's own size (the registry's
/// chunk lookup says where the repository holds each chunk; no base tag is named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_push_engages_with_no_flags_on_a_new_tag_and_on_the_same_tag() {
    let images = sample_images(20_000_000, 4_000_000, None);
    let serve = Serve::open().await;
    let host = serve.host();
    let c = client(&host, None);
    let caps = c.ping().await.unwrap();
    assert!(caps.delta_push && caps.chunk_lookup, "{caps:?}");
    for (repo, first, second) in [
        ("game/server", "v1", "build-1234"),
        ("game/same", "stable", "stable"),
    ] {
        push(
            &c,
            &images.v1,
            &reference(&host, &format!("{repo}:{first}")),
            None,
        )
        .await
        .unwrap();
        let (report, received) =
            push_measured(&serve, &c, &images.v2, &format!("{repo}:{second}")).await;
        eprintln!(
            "{repo}: v2 pushed to :{second} with no flags: registry received {received} bytes, \
             reused {}; update's own size {}; ratio {:.3}",
            report.bytes_reused,
            images.update_bytes,
            received / images.update_bytes as f64
        );
        assert!(report.delta_push, "delta push engaged by itself");
        assert!(
            received <= 1.25 * images.update_bytes as f64,
            "received {received} bytes for an update of {} (limit 1.25x)",
            images.update_bytes
        );
        let out = images
            .dir
            .path()
            .join(format!("pulled-{}", repo.replace('/', "-")));
        let pulled = pull(&c, &reference(&host, &format!("{repo}:{second}")), &out)
            .await
            .unwrap();
        assert_eq!(pulled.manifest_digest, manifest_digest(&images.v2));
        assert_eq!(blob_names(&out), blob_names(&images.v2));
    }
    // `--no-delta` turns it off: the changed layers go up whole.
    let (report, _) = {
        let before = serve.metric("gantry_registry_bytes_received_total").await;
        let report = push_layout(
            &c,
            &OciLayout::open(&images.v2).unwrap(),
            None,
            &reference(&host, "game/plain:v2"),
            &PushOptions {
                delta: false,
                ..PushOptions::default()
            },
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
        (
            report,
            serve.metric("gantry_registry_bytes_received_total").await - before,
        )
    };
    assert!(!report.delta_push && report.bytes_reused == 0, "{report:?}");
}

/// The registry answers only from chunk indexes checked against their layers. v1 goes up
/// with skopeo (the image alone: its layers name chunk indexes the registry does not
/// hold, so nothing is known); a forged index for its largest layer, pushed as a
/// referrer, is refused and never answers; the real indexes, pushed as referrers by
/// `gantry push` of the same image, are learned; then v2 goes up with no flags as a delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_indexes_arriving_as_referrers_are_checked_and_forged_ones_refused() {
    let images = sample_images(20_000_000, 4_000_000, None);
    let serve = Serve::open().await;
    let host = serve.host();
    let c = client(&host, None);
    let repo = "game/skopeo";
    let (src, dst) = (
        format!("oci:{}:v1", images.v1.display()),
        format!("docker://{host}/{repo}:v1"),
    );
    tokio::task::spawn_blocking(move || skopeo(&["copy", "--dest-tls-verify=false", &src, &dst]))
        .await
        .unwrap();
    let v1 = layer_indexes(&images.v1);
    let (layer, real) = v1
        .iter()
        .max_by_key(|(_, i)| i.layer_size)
        .cloned()
        .unwrap();
    let ids: Vec<Digest> = real.chunks.iter().map(|c| c.id).collect();
    assert!(
        c.lookup_chunks(repo, &ids).await.unwrap().is_empty(),
        "nothing is known from an image pushed without its chunk indexes"
    );

    // A forged index: the real one with one chunk id replaced.
    let forged_id = Digest::of(b"not what the layer holds");
    let mut forged = real.clone();
    forged.chunks[1].id = forged_id;
    let blob = bytes::Bytes::from(forged.to_blob().unwrap());
    let forged_digest = Digest::of(&blob);
    c.upload_bytes(repo, &forged_digest, blob.clone())
        .await
        .unwrap();
    let empty = bytes::Bytes::from_static(media_types::EMPTY_JSON);
    c.upload_bytes(repo, &Digest::of(&empty), empty.clone())
        .await
        .unwrap();
    let v1_manifest = manifest_digest(&images.v1);
    let v1_size = OciLayout::open(&images.v1)
        .unwrap()
        .resolve(None, "linux", "amd64")
        .unwrap()
        .bytes
        .len();
    let referrer = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "artifactType": media_types::CHUNK_INDEX_ARTIFACT,
        "config": {"mediaType": media_types::OCI_EMPTY, "digest": Digest::of(&empty).to_string(), "size": empty.len()},
        "layers": [{
            "mediaType": media_types::CHUNK_INDEX_BLOB,
            "digest": forged_digest.to_string(),
            "size": blob.len(),
            "annotations": {media_types::ANNOTATION_CHUNK_INDEX: layer.to_string()}
        }],
        "subject": {"mediaType": media_types::OCI_MANIFEST, "digest": v1_manifest.to_string(), "size": v1_size}
    });
    let bytes = bytes::Bytes::from(serde_json::to_vec(&referrer).unwrap());
    c.put_manifest(
        repo,
        &Digest::of(&bytes).to_string(),
        media_types::OCI_MANIFEST,
        bytes,
    )
    .await
    .unwrap();
    // The lookup waits for the check: the forged index was refused, nothing answers.
    let found = c
        .lookup_chunks(repo, &[forged_id, ids[0], ids[2]])
        .await
        .unwrap();
    assert!(found.is_empty(), "answered from a forged index: {found:?}");

    // The real indexes arrive as referrers with `gantry push` of the same image.
    let (report, _) = push_measured(&serve, &c, &images.v1, &format!("{repo}:v1")).await;
    assert!(
        !report.referrers.is_empty(),
        "the chunk-index referrer went up"
    );
    let found = c.lookup_chunks(repo, &ids).await.unwrap();
    assert_eq!(
        found.len(),
        ids.iter().collect::<BTreeSet<_>>().len(),
        "every chunk of the layer"
    );
    for (offset, chunk) in real
        .chunks_with_offsets()
        .map(|c| (c.compressed_offset, c.record))
    {
        let at = &found[&chunk.id];
        assert_eq!(at.length, chunk.compressed_len);
        if at.digest == layer {
            assert_eq!(at.offset, offset);
        }
    }
    assert!(!found.contains_key(&forged_id));

    let (report, received) = push_measured(&serve, &c, &images.v2, &format!("{repo}:v2")).await;
    eprintln!(
        "after skopeo: v2 with no flags: registry received {received} bytes; update's own size {}; ratio {:.3}",
        images.update_bytes,
        received / images.update_bytes as f64
    );
    assert!(report.delta_push);
    assert!(
        received <= 1.25 * images.update_bytes as f64,
        "received {received} bytes for an update of {} (limit 1.25x)",
        images.update_bytes
    );
    // And the registry holds exactly v2.
    let out = images.dir.path().join("pulled-skopeo-v2");
    let pulled = pull(&c, &reference(&host, &format!("{repo}:v2")), &out)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, manifest_digest(&images.v2));
}

/// Copies `game/server:TAG` from the registry at `ch` to the one at `rh`.
async fn copy_tag(
    c: &gantry_client::RegistryClient,
    ch: &str,
    r: &gantry_client::RegistryClient,
    rh: &str,
    tag: &str,
) -> gantry_client::PushReport {
    gantry_client::copy_image(
        c,
        &reference(ch, &format!("game/server:{tag}")),
        ("linux", "amd64"),
        r,
        &reference(rh, &format!("game/server:{tag}")),
        &PushOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap()
}

/// `gantry copy` between two registries (a central one and a region): v1 copied first,
/// then v2. The copy of v2 costs the region's link about the update's own size: the
/// destination is asked where it holds each chunk and receives only the new ones, which
/// are read from the source by range requests (no temporary layout). The region then holds
/// exactly v2, chunk-index referrer included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_between_registries_moves_only_the_chunks_the_destination_lacks() {
    let images = sample_images(20_000_000, 4_000_000, None);
    let central = Serve::open().await;
    let region = Serve::open().await;
    let (ch, rh) = (central.host(), region.host());
    let (c, r) = (client(&ch, None), client(&rh, None));
    push(&c, &images.v1, &reference(&ch, "game/server:v1"), None)
        .await
        .unwrap();
    push(&c, &images.v2, &reference(&ch, "game/server:v2"), None)
        .await
        .unwrap();
    let first = copy_tag(&c, &ch, &r, &rh, "v1").await;
    assert_eq!(first.manifest_digest, manifest_digest(&images.v1));

    let received_before = region.metric("gantry_registry_bytes_received_total").await;
    let sent_before = central.metric("gantry_registry_bytes_sent_total").await;
    let report = copy_tag(&c, &ch, &r, &rh, "v2").await;
    let received = region.metric("gantry_registry_bytes_received_total").await - received_before;
    let served = central.metric("gantry_registry_bytes_sent_total").await - sent_before;
    eprintln!(
        "copy of v2 between registries: region received {received} bytes, central served \
         {served}; update's own size {}; ratios {:.3} and {:.3}",
        images.update_bytes,
        received / images.update_bytes as f64,
        served / images.update_bytes as f64
    );
    assert!(report.delta_push, "{report:?}");
    assert!(
        received <= 1.25 * images.update_bytes as f64,
        "the region received {received} bytes for an update of {} (limit 1.25x)",
        images.update_bytes
    );
    assert!(
        served <= 1.5 * images.update_bytes as f64,
        "the central registry served {served} bytes for an update of {} (limit 1.5x: the \
         new chunks, the chunk indexes, manifests and config)",
        images.update_bytes
    );
    let out = images.dir.path().join("pulled-region-v2");
    let pulled = pull(&r, &reference(&rh, "game/server:v2"), &out)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, manifest_digest(&images.v2));
    assert_eq!(blob_names(&out), blob_names(&images.v2));
}
