//! Gantry's remote-snapshot fast path: a layer whose descriptor names a Gantry chunk index
//! is built here, from the files of earlier snapshots on this node plus only the chunks the
//! node lacks (fetched through `gantry agent`), verified against the image config's
//! diff_id, and committed; containerd is told it already exists and skips fetching and
//! applying the layer.
//!
//! What it needs from containerd: the CRI plugin's snapshot labels
//! (`disable_snapshot_annotations = false`): `containerd.io/snapshot/cri.image-ref`,
//! `cri.manifest-digest` and `cri.layer-digest` name the manifest, through which the agent
//! finds the layer's chunk index and the config's diff_id. Anything missing, any check that
//! fails, any error: the active snapshot is removed and the layer takes the normal path.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use gantry_layer::ChunkIndex;
use gantry_oci::{media_types, Digest, Reference};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fastpath::{
    FastPath, FastPathOutcome, RemoteLayer, CRI_IMAGE_REF_LABEL, CRI_LAYER_DIGEST_LABEL,
    TARGET_SNAPSHOT_REF_LABEL,
};
use crate::store::{Kind, Store};
use crate::unpack::{Assembler, Keep, LayerMap, Piece, Stats, StreamHasher};

/// CRI's label on a layer's prepare: the digest of the (platform) manifest being pulled.
pub const CRI_MANIFEST_DIGEST_LABEL: &str = "containerd.io/snapshot/cri.manifest-digest";
/// Our label on a snapshot the fast path committed: the layer's digest.
pub const GANTRY_LAYER_LABEL: &str = "containerd.io/snapshot/gantry.layer";

/// Key prefix of the active snapshots the fast path builds layers in.
const TMP_PREFIX: &str = "gantry-fast-tmp/";

/// Longest manifest or config accepted from the agent.
const MAX_DOCUMENT: usize = 4 << 20;
/// Longest run of missing chunks fetched in one range request.
const MAX_RUN: u64 = 4 << 20;
/// Range requests through the agent at once.
const IN_FLIGHT: usize = 8;
/// Compressed bytes fetched ahead of the writer at most (with [`QUEUED_KIB`], what bounds
/// memory on a cold pull).
const LOOKAHEAD: u64 = 16 << 20;

/// Inflated bytes (KiB) waiting for the writer or the hasher at most: what lets the hasher
/// run ahead of the writer without holding a large update in memory.
const QUEUED_KIB: u64 = 48 << 10;

/// What the fast path did, summed over the layers it built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FastPathTotals {
    /// Layers built and committed by the fast path.
    pub layers: u64,
    /// Layers it looked at and left to the normal path after an error or failed check.
    pub fallbacks: u64,
    /// File bytes shared with earlier snapshots without a copy (reflink).
    pub reused_bytes: u64,
    /// File bytes copied from earlier snapshots.
    pub copied_bytes: u64,
    /// File bytes written from fetched chunks.
    pub written_bytes: u64,
    /// Compressed chunk bytes fetched through the agent.
    pub fetched_bytes: u64,
    /// Seconds spent building layers.
    pub seconds: f64,
}

/// The chunks of a layer map, to find chunks the node holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ChunkList {
    layer: String,
    /// (chunk id hex, offset in the tar stream, length).
    chunks: Vec<(String, u64, u64)>,
}

/// What the fast path needs of an image's manifest and config.
struct ImageDocs {
    /// The manifest's layer descriptors.
    layers: Vec<serde_json::Value>,
    /// The config's diff_ids, by layer position (`None` where one does not parse).
    diff_ids: Vec<Option<Digest>>,
    /// The config's digest.
    config_digest: Digest,
}

/// A fast-path snapshot's layer map and chunk list, loaded.
type Loaded = Arc<(LayerMap, ChunkList)>;

/// A committed fast-path snapshot whose files can serve chunks.
struct Held {
    dir: PathBuf,
    loaded: Loaded,
}

/// Held while one layer (by parent and target chain id) is being built.
type BuildLock = Arc<tokio::sync::Mutex<()>>;

/// The fast path of `gantry snapshotter`.
pub struct GantryFastPath {
    agent: String,
    http: reqwest::Client,
    reflink: bool,
    /// Manifests and configs read, by manifest digest (a few images at most).
    images: Mutex<HashMap<Digest, Arc<ImageDocs>>>,
    /// Layer maps and chunk lists loaded, by snapshot name.
    maps: Arc<Mutex<HashMap<String, Loaded>>>,
    /// One build at a time per (parent, target).
    building: tokio::sync::Mutex<HashMap<(String, String), BuildLock>>,
    totals: Mutex<FastPathTotals>,
    /// Whether the leftovers of an earlier process were removed.
    cleaned: std::sync::atomic::AtomicBool,
}

impl GantryFastPath {
    /// A fast path fetching through the agent at `agent` (`http://127.0.0.1:5050`).
    pub fn new(agent: &str) -> GantryFastPath {
        GantryFastPath {
            agent: agent.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            reflink: true,
            images: Mutex::new(HashMap::new()),
            maps: Arc::new(Mutex::new(HashMap::new())),
            building: tokio::sync::Mutex::new(HashMap::new()),
            totals: Mutex::new(FastPathTotals::default()),
            cleaned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// What it did so far.
    pub fn current(&self) -> FastPathTotals {
        self.totals.lock().map(|t| *t).unwrap_or_default()
    }

    fn add(&self, f: impl FnOnce(&mut FastPathTotals)) {
        if let Ok(mut t) = self.totals.lock() {
            f(&mut t);
        }
    }

    async fn get(&self, url: &str, limit: Option<usize>) -> Result<Bytes> {
        let fail = |m: String| Error::FastPath(format!("GET {url}: {m}"));
        let resp = self
            .http
            .get(url)
            .header(
                "accept",
                format!(
                    "{}, {}",
                    media_types::OCI_MANIFEST,
                    "application/vnd.docker.distribution.manifest.v2+json"
                ),
            )
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(resp.status().to_string()));
        }
        if let (Some(limit), Some(len)) = (limit, resp.content_length()) {
            if len > limit as u64 {
                return Err(fail(format!("{len} bytes, more than {limit}")));
            }
        }
        let body = resp.bytes().await.map_err(|e| fail(e.to_string()))?;
        if limit.is_some_and(|l| body.len() > l) {
            return Err(fail("body too large".into()));
        }
        Ok(body)
    }

    /// GETs `digest` (a manifest or a blob) through the agent and checks it hashes to it.
    /// At most `limit` bytes.
    async fn verified(
        &self,
        src: &Source,
        what: &str,
        digest: &Digest,
        limit: usize,
    ) -> Result<Bytes> {
        let url = format!(
            "{}/v2/{}/{what}/{digest}?ns={}",
            self.agent, src.repository, src.registry
        );
        let body = self.get(&url, Some(limit)).await?;
        if Digest::of(&body) != *digest {
            return Err(Error::FastPath(format!("{url} does not hash to {digest}")));
        }
        Ok(body)
    }

    /// The manifest's layer descriptors and the config's diff_ids, fetched once per
    /// manifest (every layer of an image is prepared separately).
    async fn image(&self, src: &Source) -> Result<Arc<ImageDocs>> {
        if let Some(d) = self
            .images
            .lock()
            .ok()
            .and_then(|m| m.get(&src.manifest).cloned())
        {
            return Ok(d);
        }
        let manifest = self
            .verified(src, "manifests", &src.manifest, MAX_DOCUMENT)
            .await?;
        let m: serde_json::Value = serde_json::from_slice(&manifest)
            .map_err(|e| Error::FastPath(format!("manifest {}: {e}", src.manifest)))?;
        let config_digest: Digest = m["config"]["digest"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::FastPath(format!("manifest {} names no config", src.manifest)))?;
        let config = self
            .verified(src, "blobs", &config_digest, MAX_DOCUMENT)
            .await?;
        let c: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| Error::FastPath(format!("config {config_digest}: {e}")))?;
        let docs = Arc::new(ImageDocs {
            layers: m["layers"].as_array().cloned().unwrap_or_default(),
            diff_ids: c["rootfs"]["diff_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|d| d.as_str().and_then(|s| s.parse().ok()))
                        .collect()
                })
                .unwrap_or_default(),
            config_digest,
        });
        if let Ok(mut images) = self.images.lock() {
            if images.len() >= 16 {
                images.clear();
            }
            images.insert(src.manifest, docs.clone());
        }
        Ok(docs)
    }

    /// The layer's chunk index and the config's diff_id, checked against each other and
    /// against the layer's descriptor.
    async fn describe(&self, src: &Source) -> Result<Option<(ChunkIndex, Digest)>> {
        let docs = self.image(src).await?;
        let Some(pos) = docs
            .layers
            .iter()
            .position(|l| l["digest"].as_str() == Some(src.layer.to_string().as_str()))
        else {
            return Err(Error::FastPath(format!(
                "manifest {} has no layer {}",
                src.manifest, src.layer
            )));
        };
        let desc = &docs.layers[pos];
        let Some(index_digest) = desc["annotations"][media_types::ANNOTATION_CHUNK_INDEX]
            .as_str()
            .and_then(|s| s.parse::<Digest>().ok())
        else {
            return Ok(None);
        };
        let config_digest = docs.config_digest;
        let diff_id: Digest = docs.diff_ids.get(pos).copied().flatten().ok_or_else(|| {
            Error::FastPath(format!("config {config_digest} has no diff_id {pos}"))
        })?;
        let blob = self
            .verified(
                src,
                "blobs",
                &index_digest,
                gantry_layer::MAX_INDEX_BLOB_BYTES as usize,
            )
            .await?;
        let index = ChunkIndex::from_blob(&blob)
            .map_err(|e| Error::FastPath(format!("chunk index {index_digest}: {e}")))?;
        let size = desc["size"].as_u64();
        if index.layer_digest != src.layer
            || Some(index.layer_size) != size
            || index.diff_id != diff_id
        {
            return Err(Error::FastPath(format!(
                "chunk index {index_digest} describes layer {} ({} bytes, diff_id {}), \
                 not {} ({size:?} bytes, diff_id {diff_id})",
                index.layer_digest, index.layer_size, index.diff_id, src.layer
            )));
        }
        Ok(Some((index, diff_id)))
    }

    async fn build(&self, store: &Arc<Store>, layer: &RemoteLayer, src: &Source) -> Result<bool> {
        let t0 = Instant::now();
        let described = self.describe(src).await?;
        tracing::debug!(seconds = t0.elapsed().as_secs_f64(), "described");
        let Some((index, diff_id)) = described else {
            return Ok(false);
        };
        // The chain id containerd will look the snapshot up by must be this layer's.
        let parent_chain = if layer.parent.is_empty() {
            None
        } else {
            let p = {
                let store = store.clone();
                let parent = layer.parent.clone();
                tokio::task::spawn_blocking(move || store.stat(&parent)).await??
            };
            let chain = p
                .labels
                .get(TARGET_SNAPSHOT_REF_LABEL)
                .cloned()
                .or_else(|| p.name.rsplit('/').next().map(String::from))
                .unwrap_or_default();
            Some(chain)
        };
        let expected = match &parent_chain {
            None => diff_id.to_string(),
            Some(p) => Digest::of(format!("{p} {diff_id}").as_bytes()).to_string(),
        };
        if expected != layer.target {
            return Err(Error::FastPath(format!(
                "layer {} with diff_id {diff_id} on parent chain {parent_chain:?} is chain {expected}, \
                 but containerd asked for {}",
                src.layer, layer.target
            )));
        }
        let started = Instant::now();
        let tmp_key = format!("{TMP_PREFIX}{}", layer.key);
        let name = format!("gantry-fast/{}", layer.key);
        let mut labels: BTreeMap<String, String> = layer.labels.clone();
        labels.insert(TARGET_SNAPSHOT_REF_LABEL.into(), layer.target.clone());
        labels.insert(GANTRY_LAYER_LABEL.into(), src.layer.to_string());
        {
            let store = store.clone();
            let (k, p, l) = (tmp_key.clone(), layer.parent.clone(), labels.clone());
            tokio::task::spawn_blocking(move || store.prepare(&k, &p, l)).await??;
        }
        let result = self.assemble(store, &tmp_key, &index, &diff_id, src).await;
        let outcome = match result {
            Ok(stats) => {
                let store2 = store.clone();
                let (n, k) = (name.clone(), tmp_key.clone());
                let t0 = Instant::now();
                let committed =
                    tokio::task::spawn_blocking(move || store2.commit(&n, &k, labels)).await?;
                tracing::debug!(seconds = t0.elapsed().as_secs_f64(), "snapshot committed");
                committed.map(|_| stats)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(stats) => {
                let secs = started.elapsed().as_secs_f64();
                self.add(|t| {
                    t.layers += 1;
                    t.reused_bytes += stats.reused_bytes;
                    t.copied_bytes += stats.copied_bytes;
                    t.written_bytes += stats.written_bytes;
                    t.seconds += secs;
                });
                tracing::info!(
                    layer = %src.layer,
                    seconds = secs,
                    reused = stats.reused_bytes,
                    copied = stats.copied_bytes,
                    written = stats.written_bytes,
                    "fast path committed the layer"
                );
                Ok(true)
            }
            Err(e) => {
                let store = store.clone();
                let removed = tokio::task::spawn_blocking(move || discard(&store, &tmp_key)).await;
                if let Ok(Err(r)) | Err(r) = removed.map_err(Error::from) {
                    tracing::warn!("could not remove a failed fast-path snapshot: {r}");
                }
                Err(e)
            }
        }
    }

    /// Fills the active snapshot `key` with the layer and checks its diff_id; saves the
    /// layer map beside its directory.
    async fn assemble(
        &self,
        store: &Arc<Store>,
        key: &str,
        index: &ChunkIndex,
        diff_id: &Digest,
        src: &Source,
    ) -> Result<Stats> {
        let fs = {
            let store = store.clone();
            let key = key.to_string();
            tokio::task::spawn_blocking(move || store.upper_dir(&key)).await??
        };
        let t0 = Instant::now();
        let (table, held) = {
            let store = store.clone();
            let maps = self.maps.clone();
            tokio::task::spawn_blocking(move || held_snapshots(&store, &maps)).await??
        };
        // The plan: each chunk from a held snapshot's files, or in runs fetched together.
        let mut plan: Vec<Step> = Vec::new();
        for c in index.chunks_with_offsets() {
            let hit = table.get(&c.record.id.hex()).and_then(|&(h, offset, len)| {
                let h = held.get(h)?;
                if len != c.record.uncompressed_len {
                    return None;
                }
                h.loaded.0.pieces(&h.dir, offset, len)
            });
            match hit {
                Some(pieces) => plan.push(Step::Held(pieces)),
                None => {
                    let chunk = (
                        c.compressed_offset,
                        c.record.compressed_len,
                        c.record.id,
                        c.record.uncompressed_len,
                    );
                    match plan.last_mut() {
                        Some(Step::Fetch(run))
                            if run.last().is_some_and(|l| l.0 + l.1 == chunk.0)
                                && run.iter().map(|r| r.1).sum::<u64>() + chunk.1 <= MAX_RUN =>
                        {
                            run.push(chunk)
                        }
                        _ => plan.push(Step::Fetch(vec![chunk])),
                    }
                }
            }
        }
        tracing::debug!(
            seconds = t0.elapsed().as_secs_f64(),
            steps = plan.len(),
            fetch_runs = plan.iter().filter(|s| matches!(s, Step::Fetch(_))).count(),
            "planned"
        );
        let t0 = Instant::now();
        let url = format!(
            "{}/v2/{}/blobs/{}?ns={}",
            self.agent, src.repository, src.layer, src.registry
        );
        // The writer and the diff_id hasher each take every step in order, on threads of
        // their own, so hashing held data runs ahead of the writer's copies. Inflated bytes
        // queued for either count against QUEUED_KIB until both are done with them.
        let hasher = StreamHasher::start()?;
        let budget = Arc::new(tokio::sync::Semaphore::new(QUEUED_KIB as usize));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<Piece>, Keep)>(4096);
        let dest = fs.clone();
        let reflink = self.reflink;
        let writer = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut a = Assembler::new(&dest, reflink).map_err(Error::from)?;
            let (mut waiting, mut feeding) = (0f64, 0f64);
            loop {
                let t = Instant::now();
                let Some((pieces, keep)) = rx.blocking_recv() else {
                    break;
                };
                waiting += t.elapsed().as_secs_f64();
                let t = Instant::now();
                for piece in pieces {
                    a.feed(piece)?;
                }
                drop(keep);
                feeding += t.elapsed().as_secs_f64();
            }
            let t = Instant::now();
            let done = a.finish()?;
            tracing::debug!(
                waiting,
                feeding,
                finishing = t.elapsed().as_secs_f64(),
                "writer"
            );
            Ok(done)
        });
        // Fetches start as far ahead as LOOKAHEAD compressed bytes allow, IN_FLIGHT at a
        // time; the writer and the hasher take the steps in order.
        let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let mut steps: Vec<Option<Step>> = plan.into_iter().map(Some).collect();
        let mut pending: std::collections::VecDeque<Pending> = Default::default();
        let (mut next, mut ahead, mut fetched) = (0usize, 0u64, 0u64);
        let mut failure = None;
        for i in 0..steps.len() {
            while next < steps.len() && (next <= i || ahead < LOOKAHEAD) {
                match steps[next].take() {
                    Some(Step::Held(p)) => pending.push_back(Pending::Ready(p)),
                    Some(Step::Fetch(run)) => {
                        let n: u64 = run.iter().map(|r| r.1).sum();
                        ahead += n;
                        let (http, url, permits) =
                            (self.http.clone(), url.clone(), permits.clone());
                        pending.push_back(Pending::Fetching(
                            n,
                            tokio::spawn(async move {
                                let _permit = permits.acquire_owned().await;
                                fetch_run(&http, &url, run).await
                            }),
                        ));
                    }
                    None => {}
                }
                next += 1;
            }
            let pieces = match pending.pop_front() {
                Some(Pending::Ready(p)) => Ok(p),
                Some(Pending::Fetching(n, handle)) => {
                    ahead -= n;
                    match handle.await {
                        Ok(Ok((p, got))) => {
                            fetched += got;
                            Ok(p)
                        }
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(e.into()),
                    }
                }
                None => Ok(Vec::new()),
            };
            let pieces = match pieces {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let kib: u64 = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Bytes(b) => Some(b.len() as u64),
                    Piece::File { .. } => None,
                })
                .sum::<u64>()
                .div_ceil(1024)
                .min(QUEUED_KIB);
            let keep: Keep = if kib > 0 {
                match budget.clone().acquire_many_owned(kib as u32).await {
                    Ok(permit) => Some(Arc::new(permit)),
                    Err(e) => {
                        failure = Some(Error::FastPath(format!("memory budget: {e}")));
                        break;
                    }
                }
            } else {
                None
            };
            if let Err(e) = hasher.feed(pieces.clone(), keep.clone()).await {
                failure = Some(e.into());
                break;
            }
            if tx.send((pieces, keep)).await.is_err() {
                break;
            }
        }
        for p in pending {
            if let Pending::Fetching(_, h) = p {
                h.abort();
            }
        }
        drop(tx);
        tracing::debug!(
            seconds = t0.elapsed().as_secs_f64(),
            fetched,
            "all steps sent"
        );
        let written = writer.await?;
        let hash = tokio::task::spawn_blocking(move || hasher.finish()).await?;
        tracing::debug!(seconds = t0.elapsed().as_secs_f64(), "assembled and hashed");
        self.add(|t| t.fetched_bytes += fetched);
        if let Some(e) = failure {
            return Err(e);
        }
        let hash = hash?;
        let (map, stats) = written?;
        let got = Digest::from_hex(&hex::encode(hash))
            .map_err(|e| Error::FastPath(format!("diff_id: {e}")))?;
        if got != *diff_id {
            return Err(Error::FastPath(format!(
                "layer {} unpacked to diff_id {got}, the image config says {diff_id}",
                src.layer
            )));
        }
        let list = ChunkList {
            layer: src.layer.to_string(),
            chunks: index
                .chunks_with_offsets()
                .map(|c| {
                    (
                        c.record.id.hex(),
                        c.uncompressed_offset,
                        c.record.uncompressed_len,
                    )
                })
                .collect(),
        };
        let dir = fs
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| Error::FastPath(format!("{} has no parent", fs.display())))?;
        let t0 = Instant::now();
        tokio::task::spawn_blocking(move || -> Result<()> {
            map.save(&dir.join("layer-map.json"), &dir.join("layer-map.meta"))?;
            let bytes = serde_json::to_vec(&list).map_err(|source| Error::Metadata {
                path: dir.join("chunks.json"),
                source,
            })?;
            std::fs::write(dir.join("chunks.json"), bytes)
                .map_err(|e| Error::io(format!("writing {}", dir.join("chunks.json").display()), e))
        })
        .await??;
        tracing::debug!(seconds = t0.elapsed().as_secs_f64(), "layer map saved");
        Ok(stats)
    }
}

/// Chunk id → (held snapshot, offset in its tar stream, length), and the held snapshots.
type HeldChunks = (HashMap<String, (usize, u64, u64)>, Vec<Held>);

/// The committed fast-path snapshots whose files may serve chunks, with their maps. A
/// snapshot's map and chunk list are read from disk once, then kept in `cache` until the
/// snapshot is gone.
fn held_snapshots(store: &Store, cache: &Mutex<HashMap<String, Loaded>>) -> Result<HeldChunks> {
    let mut table = HashMap::new();
    let mut held = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for info in store.walk(&[])? {
        if info.kind != Kind::Committed || !info.labels.contains_key(GANTRY_LAYER_LABEL) {
            continue;
        }
        let Ok(fs) = store.upper_dir(&info.name) else {
            continue;
        };
        let Some(dir) = fs.parent().map(Path::to_path_buf) else {
            continue;
        };
        seen.insert(info.name.clone());
        let cached = cache.lock().ok().and_then(|m| m.get(&info.name).cloned());
        let loaded = match cached {
            Some(l) => l,
            None => match load_held(&dir) {
                Ok(l) => {
                    let l = Arc::new(l);
                    if let Ok(mut c) = cache.lock() {
                        c.insert(info.name.clone(), l.clone());
                    }
                    l
                }
                Err(e) => {
                    tracing::warn!(snapshot = %info.name, "layer map unreadable: {e}");
                    continue;
                }
            },
        };
        let n = held.len();
        for (id, offset, len) in &loaded.1.chunks {
            table.entry(id.clone()).or_insert((n, *offset, *len));
        }
        held.push(Held { dir: fs, loaded });
    }
    if let Ok(mut c) = cache.lock() {
        c.retain(|name, _| seen.contains(name));
    }
    Ok((table, held))
}

/// A fast-path snapshot's layer map and chunk list, as saved beside its directory.
fn load_held(dir: &Path) -> Result<(LayerMap, ChunkList), String> {
    let map = LayerMap::load(&dir.join("layer-map.json"), &dir.join("layer-map.meta"))
        .map_err(|e| e.to_string())?;
    let bytes = std::fs::read(dir.join("chunks.json")).map_err(|e| e.to_string())?;
    let list = serde_json::from_slice::<ChunkList>(&bytes).map_err(|e| e.to_string())?;
    Ok((map, list))
}

/// Removes the active snapshot `key` of a failed build. Its files go first: on a full disk
/// the metadata rewrite that removing the snapshot needs only fits once they are gone.
fn discard(store: &Store, key: &str) -> Result<()> {
    if let Ok(fs) = store.upper_dir(key) {
        if let Ok(entries) = std::fs::read_dir(&fs) {
            for entry in entries.flatten() {
                let p = entry.path();
                let _ = if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    store.remove(key)
}

/// A step on its way to the writer.
enum Pending {
    /// Pieces of held files.
    Ready(Vec<Piece>),
    /// A run being fetched and inflated, of this many compressed bytes.
    Fetching(u64, tokio::task::JoinHandle<Result<(Vec<Piece>, u64)>>),
}

/// A chunk to fetch: (offset in the blob, compressed length, id, uncompressed length).
type FetchChunk = (u64, u64, Digest, u64);

/// One step of a layer's plan.
enum Step {
    /// Pieces of held files.
    Held(Vec<Piece>),
    /// A run of adjacent missing chunks.
    Fetch(Vec<FetchChunk>),
}

/// Fetches a run of chunks with one range request, checks each against its id and
/// inflates it; returns the pieces and the bytes fetched.
async fn fetch_run(
    http: &reqwest::Client,
    url: &str,
    run: Vec<FetchChunk>,
) -> Result<(Vec<Piece>, u64)> {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return Ok((Vec::new(), 0));
    };
    let (start, end) = (first.0, last.0 + last.1);
    let fail = |m: String| Error::FastPath(format!("GET {url} bytes {start}-{}: {m}", end - 1));
    let resp = http
        .get(url)
        .header("range", format!("bytes={start}-{}", end - 1))
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
        return Err(fail(format!("answered {}", resp.status())));
    }
    let body = resp.bytes().await.map_err(|e| fail(e.to_string()))?;
    if body.len() as u64 != end - start {
        return Err(fail(format!("{} bytes", body.len())));
    }
    let n = body.len() as u64;
    let pieces = tokio::task::spawn_blocking(move || -> Result<Vec<Piece>> {
        let mut out = Vec::with_capacity(run.len());
        for (offset, len, id, raw_len) in run {
            let a = (offset - start) as usize;
            let member = body.slice(a..a + len as usize);
            if Digest::of(&member) != id {
                return Err(Error::FastPath(format!(
                    "chunk {id} at {offset} does not match its id"
                )));
            }
            // Sized up front: a Vec grown by doubling would hold up to twice the chunk.
            let mut raw = Vec::with_capacity(usize::try_from(raw_len).unwrap_or(0).min(64 << 20));
            flate2::read::GzDecoder::new(&member[..])
                .take(64 << 20)
                .read_to_end(&mut raw)
                .map_err(|e| Error::FastPath(format!("chunk {id}: {e}")))?;
            if raw.len() as u64 != raw_len {
                return Err(Error::FastPath(format!(
                    "chunk {id} at {offset} inflates to {} bytes; its index says {raw_len}",
                    raw.len()
                )));
            }
            out.push(Piece::Bytes(Bytes::from(raw)));
        }
        Ok(out)
    })
    .await??;
    Ok((pieces, n))
}

/// Where a layer comes from, from its prepare's labels.
struct Source {
    registry: String,
    repository: String,
    manifest: Digest,
    layer: Digest,
}

impl Source {
    fn from_labels(labels: &BTreeMap<String, String>) -> Option<Source> {
        let image: Reference = labels.get(CRI_IMAGE_REF_LABEL)?.parse().ok()?;
        Some(Source {
            registry: image.registry,
            repository: image.repository,
            manifest: labels.get(CRI_MANIFEST_DIGEST_LABEL)?.parse().ok()?,
            layer: labels.get(CRI_LAYER_DIGEST_LABEL)?.parse().ok()?,
        })
    }
}

#[async_trait::async_trait]
impl FastPath for GantryFastPath {
    fn totals(&self) -> Option<FastPathTotals> {
        Some(self.current())
    }

    async fn prepare_remote(
        &self,
        store: &Arc<Store>,
        layer: &RemoteLayer,
    ) -> Result<FastPathOutcome> {
        let Some(src) = Source::from_labels(&layer.labels) else {
            return Ok(FastPathOutcome::NotHandled);
        };
        // A build cut short by a crash left its active snapshot: remove such leftovers once,
        // before this process builds anything.
        if !self.cleaned.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let store = store.clone();
            let removed = tokio::task::spawn_blocking(move || -> Result<usize> {
                let mut n = 0;
                for info in store.walk(&[])? {
                    if info.kind == Kind::Active && info.name.starts_with(TMP_PREFIX) {
                        store.remove(&info.name)?;
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await??;
            if removed > 0 {
                tracing::info!(
                    removed,
                    "removed fast-path snapshots left by an earlier run"
                );
            }
        }
        // Two pulls of one layer at once build it once: the second finds it committed.
        let lock = {
            let mut b = self.building.lock().await;
            b.entry((layer.parent.clone(), layer.target.clone()))
                .or_default()
                .clone()
        };
        let _guard = lock.lock().await;
        let existing = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.walk(&[])).await??
        };
        if existing.iter().any(|i| {
            i.kind == Kind::Committed
                && i.parent == layer.parent
                && i.labels.get(TARGET_SNAPSHOT_REF_LABEL) == Some(&layer.target)
                && i.labels.contains_key(GANTRY_LAYER_LABEL)
        }) {
            return Ok(FastPathOutcome::Committed);
        }
        match self.build(store, layer, &src).await {
            Ok(true) => Ok(FastPathOutcome::Committed),
            Ok(false) => Ok(FastPathOutcome::NotHandled),
            Err(e) => {
                self.add(|t| t.fallbacks += 1);
                tracing::warn!(layer = %src.layer, "fast path failed, normal path instead: {e}");
                Ok(FastPathOutcome::NotHandled)
            }
        }
    }
}
