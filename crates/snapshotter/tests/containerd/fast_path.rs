//! The fast path against a real `gantry serve` and `gantry agent`, driven the way
//! containerd's unpacker drives a remote snapshotter (prepare with the target chain id and
//! CRI's labels, expect "already exists"): every layer of v1 built from fetched chunks, v2
//! from v1's files plus only the missing chunks, each checked file by file against the
//! layer's own tar; and the refusals (a wrong chain id, a corrupted chunk upstream) leave
//! nothing behind and hand the layer to the normal path.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gantry_agent::{AgentConfig, RunningAgent};
use gantry_oci::Digest;
use gantry_snapshotter::fastpath::{FastPath, FastPathOutcome, RemoteLayer};
use gantry_snapshotter::store::{Kind, Store};
use gantry_snapshotter::GantryFastPath;
use gantry_test_support::{push_layout_to, registry_client, sample_images, tempdir, GantryServe};

const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";

async fn agent(root: &Path, host: &str, upstream: &str) -> RunningAgent {
    gantry_agent::bind(&AgentConfig::loopback(root, host, upstream))
        .await
        .unwrap()
}

/// The manifest of `repo:tag` on `host`: its digest, layer digests and the config's diff ids.
async fn image(host: &str, repo: &str, tag: &str) -> (Digest, Vec<Digest>, Vec<Digest>) {
    let http = reqwest::Client::new();
    let body = http
        .get(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .header("accept", gantry_oci::media_types::OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let layers: Vec<Digest> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().parse().unwrap())
        .collect();
    let config = http
        .get(format!(
            "http://{host}/v2/{repo}/blobs/{}",
            m["config"]["digest"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let c: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let diff_ids = c["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().parse().unwrap())
        .collect();
    (Digest::of(&body), layers, diff_ids)
}

fn chain_ids(diff_ids: &[Digest]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.to_string(),
            Some(p) => Digest::of(format!("{p} {d}").as_bytes()).to_string(),
        };
        out.push(next);
    }
    out
}

/// Prepares every layer of `repo:tag` as containerd's unpacker would, on top of the
/// snapshots already committed for lower layers; returns each layer's outcome and the
/// committed snapshot names.
async fn unpack(
    fast: &GantryFastPath,
    store: &Arc<Store>,
    host: &str,
    repo: &str,
    tag: &str,
    n: &mut u32,
) -> Vec<(FastPathOutcome, Option<String>)> {
    let (manifest, layers, diff_ids) = image(host, repo, tag).await;
    let chains = chain_ids(&diff_ids);
    let mut parent = String::new();
    let mut out = Vec::new();
    for (layer, chain) in layers.iter().zip(&chains) {
        *n += 1;
        let labels: BTreeMap<String, String> = [
            (SNAPSHOT_REF, chain.clone()),
            (
                "containerd.io/snapshot/cri.image-ref",
                format!("{host}/{repo}:{tag}"),
            ),
            (
                "containerd.io/snapshot/cri.manifest-digest",
                manifest.to_string(),
            ),
            ("containerd.io/snapshot/cri.layer-digest", layer.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let remote = RemoteLayer {
            key: format!("k8s.io/{n}/extract-{n} {chain}"),
            parent: parent.clone(),
            target: chain.clone(),
            labels,
        };
        let outcome = fast.prepare_remote(store, &remote).await.unwrap();
        let committed = store
            .walk(&[])
            .unwrap()
            .into_iter()
            .find(|i| {
                i.kind == Kind::Committed
                    && i.parent == parent
                    && i.labels.get(SNAPSHOT_REF) == Some(chain)
            })
            .map(|i| i.name);
        if let Some(name) = &committed {
            parent = name.clone();
        }
        out.push((outcome, committed));
    }
    out
}

/// Every entry of the layer blob's tar, checked against the snapshot directory: regular
/// files by content and mode, symlinks by target, directories by mode.
fn check_layer(blob: &Path, fs: &Path) -> usize {
    let gz = flate2::read::MultiGzDecoder::new(std::fs::File::open(blob).unwrap());
    let mut archive = tar::Archive::new(gz);
    let mut checked = 0;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let on_disk = fs.join(&path);
        let md = std::fs::symlink_metadata(&on_disk)
            .unwrap_or_else(|e| panic!("{}: {e}", on_disk.display()));
        let mode = entry.header().mode().unwrap() & 0o7777;
        use std::os::unix::fs::PermissionsExt;
        match entry.header().entry_type() {
            tar::EntryType::Regular => {
                let mut want = Vec::new();
                entry.read_to_end(&mut want).unwrap();
                assert_eq!(std::fs::read(&on_disk).unwrap(), want, "{}", path.display());
                assert_eq!(md.permissions().mode() & 0o7777, mode, "{}", path.display());
            }
            tar::EntryType::Symlink => {
                assert_eq!(
                    std::fs::read_link(&on_disk).unwrap(),
                    entry.link_name().unwrap().unwrap().into_owned()
                );
            }
            tar::EntryType::Directory => {
                assert!(md.is_dir());
                assert_eq!(md.permissions().mode() & 0o7777, mode, "{}", path.display());
            }
            _ => {}
        }
        checked += 1;
    }
    checked
}

fn blob_path(layout: &Path, d: &Digest) -> PathBuf {
    layout.join("blobs/sha256").join(d.hex())
}

/// Where snapshot roots go: the default filesystem (ext4 here: copies), or a loop-mounted
/// XFS with reflink (shares blocks).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fs {
    Default,
    Xfs,
}

/// A snapshot root on `fs`; keep both values alive for the test.
fn snapshot_root(fs: Fs) -> (Option<gantry_test_support::LoopXfs>, tempfile::TempDir) {
    match fs {
        Fs::Default => (None, tempdir()),
        Fs::Xfs => {
            let xfs = gantry_test_support::LoopXfs::mount(2048);
            let dir = tempfile::tempdir_in(xfs.path()).unwrap();
            (Some(xfs), dir)
        }
    }
}

/// On XFS unchanged file data is shared; elsewhere it is copied, never shared.
fn check_sharing(fs: Fs, shared: u64, copied: u64) {
    match fs {
        Fs::Xfs => assert!(
            shared > 0,
            "XFS shares blocks: {shared} shared, {copied} copied"
        ),
        Fs::Default => assert_eq!(shared, 0, "no reflink here: {copied} copied"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_builds_v2_from_v1_plus_the_missing_chunks_on_ext4() {
    library_case(Fs::Default).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_builds_v2_from_v1_plus_the_missing_chunks_on_xfs_with_reflink() {
    library_case(Fs::Xfs).await;
}

/// v1 built from fetched chunks, v2 from v1's files plus the missing chunks, file by file
/// against the layers' tars; two concurrent prepares of one layer build one snapshot.
async fn library_case(fs: Fs) {
    let images = tokio::task::spawn_blocking(|| sample_images(24_000_000, 4_000_000, None))
        .await
        .unwrap();
    let serve = GantryServe::open().await;
    let host = serve.host();
    let client = registry_client(&host, None);
    for (layout, tag) in [(&images.v1, "v1"), (&images.v2, "v2")] {
        push_layout_to(&client, layout, &format!("{host}/studio/game:{tag}")).await;
    }
    let agent_dir = tempdir();
    let agent = agent(agent_dir.path(), &host, &format!("http://{host}")).await;
    let (_xfs, root) = snapshot_root(fs);
    let store = Arc::new(Store::open(root.path()).unwrap());
    // What a snapshotter killed in the middle of a fast-path build leaves: its active
    // snapshot, half filled. The next process removes it before building anything.
    store
        .prepare(
            "gantry-fast-tmp/k8s.io/0/extract-killed",
            "",
            BTreeMap::new(),
        )
        .unwrap();
    std::fs::write(
        store
            .upper_dir("gantry-fast-tmp/k8s.io/0/extract-killed")
            .unwrap()
            .join("half"),
        b"x",
    )
    .unwrap();
    let fast = GantryFastPath::new(&agent.url());
    let mut n = 0;

    let v1 = unpack(&fast, &store, &host, "studio/game", "v1", &mut n).await;
    let after_v1 = fast.current();
    assert!(
        store
            .walk(&[])
            .unwrap()
            .iter()
            .all(|i| !i.name.starts_with("gantry-fast-tmp/")),
        "the killed build's snapshot is gone"
    );
    assert!(v1
        .iter()
        .all(|(o, c)| *o == FastPathOutcome::Committed && c.is_some()));
    assert_eq!(after_v1.layers, v1.len() as u64);
    assert_eq!(after_v1.fallbacks, 0);
    let (_, layers1, _) = image(&host, "studio/game", "v1").await;
    for ((_, name), d) in v1.iter().zip(&layers1) {
        let fs = store.upper_dir(name.as_ref().unwrap()).unwrap();
        assert!(check_layer(&blob_path(&images.v1, d), &fs) > 0);
    }

    let v2 = unpack(&fast, &store, &host, "studio/game", "v2", &mut n).await;
    let t = fast.current();
    assert!(v2
        .iter()
        .all(|(o, c)| *o == FastPathOutcome::Committed && c.is_some()));
    let (_, layers2, _) = image(&host, "studio/game", "v2").await;
    for ((_, name), d) in v2.iter().zip(&layers2) {
        let fs = store.upper_dir(name.as_ref().unwrap()).unwrap();
        check_layer(&blob_path(&images.v2, d), &fs);
    }
    // Unchanged layers are the same snapshots: only the changed ones were built.
    let built = t.layers - after_v1.layers;
    assert!(built >= 1 && built < v2.len() as u64, "{t:?}");
    let fetched = t.fetched_bytes - after_v1.fetched_bytes;
    let from_v1 =
        (t.reused_bytes + t.copied_bytes) - (after_v1.reused_bytes + after_v1.copied_bytes);
    eprintln!(
        "v2 by the fast path: fetched {fetched} bytes (update's own size {}), \
         {from_v1} bytes from v1's files ({} shared, {} copied), {} written",
        images.update_bytes,
        t.reused_bytes - after_v1.reused_bytes,
        t.copied_bytes - after_v1.copied_bytes,
        t.written_bytes - after_v1.written_bytes
    );
    assert!(
        fetched > 0 && fetched as f64 <= 1.5 * images.update_bytes as f64,
        "{t:?}"
    );
    assert!(from_v1 > 0, "{t:?}");

    // Two pulls of the same layer at once: one snapshot.
    let before = store.walk(&[]).unwrap().len();
    let (mut n1, mut n2) = (1000, 2000);
    let (a, b) = tokio::join!(
        unpack(&fast, &store, &host, "studio/game", "v2", &mut n1),
        unpack(&fast, &store, &host, "studio/game", "v2", &mut n2)
    );
    assert!(a
        .iter()
        .chain(&b)
        .all(|(o, _)| *o == FastPathOutcome::Committed));
    assert_eq!(store.walk(&[]).unwrap().len(), before, "no second snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_chain_or_a_corrupt_chunk_leaves_nothing_and_takes_the_normal_path() {
    let images = tokio::task::spawn_blocking(|| sample_images(6_000_000, 1_000_000, None))
        .await
        .unwrap();
    let serve = GantryServe::open().await;
    let host = serve.host();
    let client = registry_client(&host, None);
    push_layout_to(&client, &images.v1, &format!("{host}/studio/game:v1")).await;
    let agent_dir = tempdir();
    let agent = agent(agent_dir.path(), &host, &format!("http://{host}")).await;
    let root = tempdir();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let fast = GantryFastPath::new(&agent.url());
    let (manifest, layers, diff_ids) = image(&host, "studio/game", "v1").await;
    // The first layer claimed under another chain id: refused, nothing left.
    let labels: BTreeMap<String, String> = [
        (SNAPSHOT_REF, Digest::of(b"another chain").to_string()),
        (
            "containerd.io/snapshot/cri.image-ref",
            format!("{host}/studio/game:v1"),
        ),
        (
            "containerd.io/snapshot/cri.manifest-digest",
            manifest.to_string(),
        ),
        (
            "containerd.io/snapshot/cri.layer-digest",
            layers[0].to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let remote = RemoteLayer {
        key: "k8s.io/1/extract-1 x".into(),
        parent: String::new(),
        target: Digest::of(b"another chain").to_string(),
        labels,
    };
    let outcome = fast.prepare_remote(&store, &remote).await.unwrap();
    assert_eq!(outcome, FastPathOutcome::NotHandled);
    assert_eq!(fast.current().fallbacks, 1);
    assert!(
        store.walk(&[]).unwrap().is_empty(),
        "nothing committed or left active"
    );
    let snapshots = std::fs::read_dir(root.path().join("snapshots"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(snapshots, 0, "no directory left behind");
    let _ = diff_ids;

    // A chunk corrupted in the registry's storage: the agent or the fast path notices,
    // the layer falls back, nothing is committed.
    let last = &layers[layers.len() - 1];
    let blob = serve
        .dir
        .path()
        .join("blobs/sha256")
        .join(&last.hex()[..2])
        .join(last.hex());
    assert!(
        blob.is_file(),
        "the registry keeps blobs at {}",
        blob.display()
    );
    {
        let mut bytes = std::fs::read(&blob).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&blob, bytes).unwrap();
        let mut n = 10;
        let out = unpack(&fast, &store, &host, "studio/game", "v1", &mut n).await;
        let (last, committed) = out.last().unwrap();
        assert_eq!(*last, FastPathOutcome::NotHandled);
        assert!(committed.is_none());
        assert!(store
            .walk(&[])
            .unwrap()
            .iter()
            .all(|i| i.kind == Kind::Committed));
    }
}

/// Kubelet's way, end to end: containerd 1.6's CRI pulls v1 and then v2 through
/// `gantry agent` with this snapshotter's fast path; a pod runs v2 and reads a changed pak;
/// the root filesystem equals what containerd's stock overlayfs snapshotter gives for v2.
#[test]
fn cri_pulls_v2_by_the_fast_path_and_runs_it_as_stock_overlayfs_would_on_ext4() {
    cri_case(Fs::Default);
}

#[test]
fn cri_pulls_v2_by_the_fast_path_and_runs_it_as_stock_overlayfs_would_on_xfs() {
    cri_case(Fs::Xfs);
}

fn cri_case(fs: Fs) {
    use super::{diff, walk_view, Served};
    use gantry_test_support::{write_busybox_oci_layout, Containerd, CriClient, CriOptions};
    let base = tempdir();
    write_busybox_oci_layout(base.path(), "latest");
    let images = sample_images(24_000_000, 4_000_000, Some(base.path()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let serve = rt.block_on(GantryServe::open());
    let host = serve.host();
    let client = registry_client(&host, None);
    for (layout, tag) in [(&images.v1, "v1"), (&images.v2, "v2")] {
        rt.block_on(push_layout_to(
            &client,
            layout,
            &format!("{host}/studio/game:{tag}"),
        ));
    }
    let agent_dir = tempdir();
    let agent = rt.block_on(agent(agent_dir.path(), &host, &format!("http://{host}")));
    let (_xfs, root) = snapshot_root(fs);
    let sock_dir = tempdir();
    let socket = sock_dir.path().join("gantry.sock");
    let fast = Arc::new(GantryFastPath::new(&agent.url()));
    let served = Served::start_with(root.path(), &socket, fast.clone());
    let ctd = Containerd::start_cri(&CriOptions {
        snapshotter: Some("gantry".into()),
        extra_toml: gantry_snapshotter::proxy_plugin_config("gantry", &socket),
        ..CriOptions::default()
    });
    gantry_agent::hosts::install(
        &ctd.hosts_dir(),
        &host,
        &format!("http://{host}"),
        &agent.url(),
    )
    .unwrap();
    let cri = CriClient::connect(ctd.address());
    let (r1, r2) = (
        format!("{host}/studio/game:v1"),
        format!("{host}/studio/game:v2"),
    );
    cri.pull_image(&r1, None);
    let after_v1 = fast.current();
    let m1 = served.metrics.snapshot();
    // The busybox base has no chunk index: the normal path; every Gantry layer: fast.
    assert!(after_v1.layers >= 2, "{after_v1:?} {m1:?}");
    assert_eq!(after_v1.fallbacks, 0, "{after_v1:?}");
    assert_eq!(m1.layers_prepared_fast, after_v1.layers, "{m1:?}");

    cri.pull_image(&r2, None);
    let t = fast.current();
    assert_eq!(t.fallbacks, 0, "{t:?}");
    assert!(
        t.layers > after_v1.layers,
        "v2's changed layers took the fast path: {t:?}"
    );
    let fetched = t.fetched_bytes - after_v1.fetched_bytes;
    eprintln!(
        "CRI v2 by the fast path: {} layers, fetched {fetched} bytes (update's own size {}), \
         {} shared, {} copied, {} written",
        t.layers - after_v1.layers,
        images.update_bytes,
        t.reused_bytes - after_v1.reused_bytes,
        t.copied_bytes - after_v1.copied_bytes,
        t.written_bytes - after_v1.written_bytes
    );
    assert!(fetched as f64 <= 1.5 * images.update_bytes as f64, "{t:?}");
    check_sharing(
        fs,
        t.reused_bytes - after_v1.reused_bytes,
        t.copied_bytes - after_v1.copied_bytes,
    );

    // A pod of v2 reads a pak the update changed.
    let (inside, want) = images.changed_pak();
    let logs = tempdir();
    let (code, out) = cri.run_to_completion(
        "game-v2",
        &r2,
        &["/bin/sh", "-c", &format!("sha256sum {inside}")],
        logs.path(),
        std::time::Duration::from_secs(120),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with(&want), "the pod's {inside} is v2's: {out}");

    // An image whose bottom layer has a chunk index too (no base): containerd looks the
    // fast-path snapshot up with `parent==""`.
    let scratch = sample_images(4_000_000, 500_000, None);
    rt.block_on(push_layout_to(
        &client,
        &scratch.v1,
        &format!("{host}/studio/scratch:v1"),
    ));
    let before = fast.current();
    cri.pull_image(&format!("{host}/studio/scratch:v1"), None);
    let after = fast.current();
    let (_, scratch_layers, _) = rt.block_on(image(&host, "studio/scratch", "v1"));
    assert_eq!(
        after.layers - before.layers,
        scratch_layers.len() as u64,
        "every layer, the bottom one too, by the fast path: {after:?}"
    );
    assert_eq!(after.fallbacks, 0, "{after:?}");

    // The same v2 unpacked by containerd's own overlayfs snapshotter, tree for tree.
    let stock = Containerd::start();
    let out = stock.pull(&r2, None, true, None);
    gantry_test_support::assert_success("ctr pull v2 (stock overlayfs)", &out);
    let (_, _, diff_ids) = rt.block_on(image(&host, "studio/game", "v2"));
    let top = chain_ids(&diff_ids).pop().unwrap();
    let views = tempdir();
    let want = walk_view(&stock, "overlayfs", &top, &views.path().join("stock"));
    let got = walk_view(&ctd, "gantry", &top, &views.path().join("gantry"));
    assert!(want.len() > 10, "{want:?}");
    assert!(want == got, "trees differ:\n{}", diff(&want, &got));

    // An engine update on top of v2 (server binaries rebuilt, paks untouched), pulled by
    // CRI as v3: fast path again, and the same tree as stock overlayfs gives.
    let v3 = images.engine_update();
    let r3 = format!("{host}/studio/game:v3");
    rt.block_on(push_layout_to(&client, &v3, &r3));
    let before = fast.current();
    cri.pull_image(&r3, None);
    let after = fast.current();
    assert_eq!(after.fallbacks, 0, "{after:?}");
    assert!(
        after.layers > before.layers,
        "v3's engine layer took the fast path: {after:?}"
    );
    let out = stock.pull(&r3, None, true, None);
    gantry_test_support::assert_success("ctr pull v3 (stock overlayfs)", &out);
    let (_, _, diff_ids) = rt.block_on(image(&host, "studio/game", "v3"));
    let top = chain_ids(&diff_ids).pop().unwrap();
    let want = walk_view(&stock, "overlayfs", &top, &views.path().join("stock-v3"));
    let got = walk_view(&ctd, "gantry", &top, &views.path().join("gantry-v3"));
    assert!(want == got, "v3 trees differ:\n{}", diff(&want, &got));
    drop(cri);
    drop(ctd);
    drop(stock);
    drop(served);
    drop(agent);
    drop(root);
}

/// A full disk: the layer that does not fit fails with the filesystem's error, its
/// half-written snapshot is removed, and the layer is left to the normal path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_nothing_behind() {
    let images = tokio::task::spawn_blocking(|| sample_images(24_000_000, 1_000_000, None))
        .await
        .unwrap();
    let serve = GantryServe::open().await;
    let host = serve.host();
    let client = registry_client(&host, None);
    push_layout_to(&client, &images.v1, &format!("{host}/studio/game:v1")).await;
    let agent_dir = tempdir();
    let agent = agent(agent_dir.path(), &host, &format!("http://{host}")).await;
    let xfs = gantry_test_support::LoopXfs::mount(320);
    // Leave about 8 MB free: less than the sample's paks.
    let filler = xfs.path().join("filler");
    let free = || {
        let c = std::ffi::CString::new(xfs.path().as_os_str().as_encoded_bytes()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    };
    let f = std::fs::File::create(&filler).unwrap();
    let n = free().saturating_sub(8 << 20);
    let r = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, n as i64) };
    assert_eq!(r, 0, "fallocate {n} bytes");
    let root = tempfile::tempdir_in(xfs.path()).unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let fast = GantryFastPath::new(&agent.url());
    let mut k = 0;
    let out = unpack(&fast, &store, &host, "studio/game", "v1", &mut k).await;
    assert!(
        out.iter().any(|(o, _)| *o == FastPathOutcome::NotHandled),
        "some layer did not fit: {out:?}"
    );
    assert!(fast.current().fallbacks >= 1);
    let left = store.walk(&[]).unwrap();
    assert!(
        left.iter().all(|i| i.kind == Kind::Committed),
        "no half-built snapshot left: {left:?}"
    );
    let dirs = std::fs::read_dir(root.path().join("snapshots"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(dirs, left.len(), "one directory per snapshot, nothing else");
    drop(store);
    drop(root);
    drop(xfs);
}
