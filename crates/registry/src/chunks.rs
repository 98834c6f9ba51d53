//! What the registry knows about the chunks of the layers each repository holds: the
//! answer to the chunk lookup of delta push v2 ([`gantry_oci::delta_push`]), which lets a
//! client push only a layer's new chunks without naming a base image.
//!
//! The registry learns from the chunk indexes pushed with an image: a layer descriptor's
//! `dev.gantry.chunk-index` annotation, or a chunk-index referrer (what a client that
//! pushes the image alone, such as skopeo, leaves for a later push to add). An index is
//! trusted only after it was checked against its layer: every chunk hashed at the offset
//! the index gives, the lengths adding up to the blob. Only then is a record written
//! (`_gantry/chunk-indexes/` of the repository, in the storage, so it survives a restart
//! and works on every backend), and only recorded indexes answer lookups. A forged index
//! is refused and never answers.
//!
//! Checks run in the background after the manifest push (two at a time; an index already
//! recorded, being checked, or refused before is not checked again); a lookup for a
//! repository waits (up to 30 s) for the checks in progress there on this instance, so a
//! push right after another sees its chunks. Each lookup lists the repository's records
//! (cheap) and rebuilds its in-memory table when they changed, so records written by
//! another instance on the same storage are seen too.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gantry_layer::ChunkIndex;
use gantry_oci::delta_push::ChunkLocation;
use gantry_oci::{media_types, Digest, DigestHasher};
use tokio::sync::{Notify, Semaphore};

use crate::storage::{Storage, StorageError};

/// Largest chunk index read.
const MAX_INDEX_BYTES: u64 = gantry_layer::MAX_INDEX_BLOB_BYTES;
/// Bytes hashed per step on the blocking pool.
const STEP: usize = 8 << 20;
/// Index checks running at once.
const CHECKS_AT_ONCE: usize = 2;
/// How long a lookup waits for the checks in progress in its repository (well under a
/// client's read timeout, so the answer from what is checked arrives).
const LOOKUP_WAIT: Duration = Duration::from_secs(30);
/// Refused index digests remembered (all forgotten when full).
const REFUSED_REMEMBERED: usize = 10_000;
/// Repositories whose chunk tables are kept in memory (all dropped when full).
const CACHED_REPOSITORIES: usize = 64;

/// A chunk index named by a manifest: the index blob and, when the manifest says, the
/// layer it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The index blob.
    pub index: Digest,
    /// The layer, when the manifest names it (the index names it too; both must agree).
    pub layer: Option<Digest>,
}

/// The chunk indexes a manifest names: its layers' `dev.gantry.chunk-index` annotations,
/// or the layers of a chunk-index referrer. Anything else names none.
pub fn candidates(manifest: &[u8]) -> Vec<Candidate> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return Vec::new();
    };
    let layers = v["layers"].as_array().cloned().unwrap_or_default();
    let digest = |x: &serde_json::Value| x.as_str().and_then(|s| s.parse::<Digest>().ok());
    let annotation =
        |l: &serde_json::Value| digest(&l["annotations"][media_types::ANNOTATION_CHUNK_INDEX]);
    if v["artifactType"].as_str() == Some(media_types::CHUNK_INDEX_ARTIFACT) {
        layers
            .iter()
            .filter(|l| l["mediaType"].as_str() == Some(media_types::CHUNK_INDEX_BLOB))
            .filter_map(|l| {
                Some(Candidate {
                    index: digest(&l["digest"])?,
                    layer: annotation(l),
                })
            })
            .collect()
    } else {
        layers
            .iter()
            .filter_map(|l| {
                Some(Candidate {
                    index: annotation(l)?,
                    layer: Some(digest(&l["digest"])?),
                })
            })
            .collect()
    }
}

/// Chunk id → where the repository holds it (one location per layer holding it, in
/// record order; a layer unlinked since is skipped at lookup).
type Table = HashMap<Digest, Vec<ChunkLocation>>;

/// A repository's table and the records it was built from.
struct Cached {
    records: Vec<(Digest, Digest)>,
    table: Arc<Table>,
}

/// The registry's chunk knowledge: checks and records indexes, answers lookups.
pub struct ChunkKnowledge {
    storage: Arc<dyn Storage>,
    shared: Arc<Shared>,
}

struct Shared {
    /// Chunk tables of recently asked repositories.
    tables: Mutex<HashMap<String, Cached>>,
    /// Learning tasks in progress per repository.
    pending: Mutex<HashMap<String, usize>>,
    /// Woken when a learning task ends.
    settled: Notify,
    checks: Semaphore,
    /// (repository, index) checks in progress.
    checking: Mutex<HashSet<(String, Digest)>>,
    /// (repository, index, layer named) refused (a forged index pushed again is not
    /// hashed again).
    refused: Mutex<HashSet<(String, Digest, Option<Digest>)>>,
}

impl ChunkKnowledge {
    /// Knowledge over `storage` (nothing is read until asked).
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        ChunkKnowledge {
            storage,
            shared: Arc::new(Shared {
                tables: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                settled: Notify::new(),
                checks: Semaphore::new(CHECKS_AT_ONCE),
                checking: Mutex::new(HashSet::new()),
                refused: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Checks the chunk indexes `found` names for layers of `repo` in the background and
    /// records the ones that describe their layer. Layers already recorded are skipped.
    pub fn learn(&self, repo: &str, found: Vec<Candidate>) {
        if found.is_empty() {
            return;
        }
        if let Ok(mut p) = self.shared.pending.lock() {
            *p.entry(repo.to_string()).or_default() += 1;
        }
        let (storage, shared, repo) = (self.storage.clone(), self.shared.clone(), repo.to_string());
        tokio::spawn(async move {
            learn_all(&storage, &shared, &repo, found).await;
            if let Ok(mut p) = shared.pending.lock() {
                if let Some(n) = p.get_mut(&repo) {
                    *n -= 1;
                    if *n == 0 {
                        p.remove(&repo);
                    }
                }
            }
            shared.settled.notify_waiters();
        });
    }

    /// Where `repo` holds each of `chunks` it has (after the checks in progress there).
    /// Only locations in layers still linked into `repo` are answered.
    pub async fn lookup(
        &self,
        repo: &str,
        chunks: &[Digest],
    ) -> Result<Vec<ChunkLocation>, StorageError> {
        self.settle(repo).await;
        let table = self.table(repo).await?;
        let mut linked: HashMap<Digest, bool> = HashMap::new();
        let mut found = Vec::new();
        for chunk in chunks {
            let Some(locations) = table.get(chunk) else {
                continue;
            };
            for l in locations {
                let live = match linked.get(&l.digest) {
                    Some(live) => *live,
                    None => {
                        let live = self.storage.blob_linked(repo, &l.digest).await?
                            && self.storage.stat_blob(&l.digest).await?.is_some();
                        linked.insert(l.digest, live);
                        live
                    }
                };
                if live {
                    found.push(*l);
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Waits (at most [`LOOKUP_WAIT`]) until no check is in progress in `repo`.
    async fn settle(&self, repo: &str) {
        let deadline = tokio::time::Instant::now() + LOOKUP_WAIT;
        loop {
            let notified = self.shared.settled.notified();
            let busy = self
                .shared
                .pending
                .lock()
                .map(|p| p.contains_key(repo))
                .unwrap_or(false);
            if !busy {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    repository = repo,
                    "chunk index checks still running; answering from what is checked"
                );
                return;
            }
        }
    }

    /// The chunk table of `repo`: from memory when its records have not changed since it
    /// was built, else built again from them.
    async fn table(&self, repo: &str) -> Result<Arc<Table>, StorageError> {
        let records = self.storage.list_chunk_indexes(repo).await?;
        if let Some(t) = self.shared.tables.lock().ok().and_then(|t| {
            t.get(repo)
                .filter(|c| c.records == records)
                .map(|c| c.table.clone())
        }) {
            return Ok(t);
        }
        let mut table = Table::new();
        for (layer, index_digest) in &records {
            match read_index(self.storage.as_ref(), index_digest).await {
                Ok(index) if index.layer_digest == *layer => add(&mut table, &index),
                Ok(_) => {
                    tracing::warn!(repository = repo, %layer, index = %index_digest, "chunk index record names another layer; ignored")
                }
                Err(e) => {
                    tracing::warn!(repository = repo, %layer, index = %index_digest, error = %e, "recorded chunk index unreadable; ignored")
                }
            }
        }
        let table = Arc::new(table);
        if let Ok(mut t) = self.shared.tables.lock() {
            if t.len() >= CACHED_REPOSITORIES {
                t.clear();
            }
            t.insert(
                repo.to_string(),
                Cached {
                    records,
                    table: table.clone(),
                },
            );
        }
        Ok(table)
    }
}

/// Adds the chunks of `index` to `table`: the first location of a chunk in this layer,
/// after the locations in other layers.
fn add(table: &mut Table, index: &ChunkIndex) {
    for c in index.chunks_with_offsets() {
        let locations = table.entry(c.record.id).or_default();
        if locations.iter().all(|l| l.digest != index.layer_digest) {
            locations.push(ChunkLocation {
                chunk: c.record.id,
                digest: index.layer_digest,
                offset: c.compressed_offset,
                length: c.record.compressed_len,
            });
        }
    }
}

/// Checks and records each candidate not yet recorded for `repo`, skipping indexes being
/// checked by another task or refused before.
async fn learn_all(storage: &Arc<dyn Storage>, shared: &Shared, repo: &str, found: Vec<Candidate>) {
    for c in found {
        let refused_key = (repo.to_string(), c.index, c.layer);
        let refused_before = shared
            .refused
            .lock()
            .map(|r| r.contains(&refused_key))
            .unwrap_or(false);
        if refused_before {
            continue;
        }
        let key = (repo.to_string(), c.index);
        let mine = shared
            .checking
            .lock()
            .map(|mut k| k.insert(key.clone()))
            .unwrap_or(false);
        if !mine {
            continue;
        }
        learn_one(storage, shared, repo, &c).await;
        if let Ok(mut k) = shared.checking.lock() {
            k.remove(&key);
        }
    }
}

/// Checks candidate `c` (unless its layer is recorded already) and records it when it
/// describes its layer, or remembers it as refused.
async fn learn_one(storage: &Arc<dyn Storage>, shared: &Shared, repo: &str, c: &Candidate) {
    let recorded = match storage.list_chunk_indexes(repo).await {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(repository = repo, error = %e, "cannot list chunk index records");
            return;
        }
    };
    let known = |layer: &Digest| recorded.iter().any(|(l, _)| l == layer);
    if c.layer.as_ref().is_some_and(known) {
        return;
    }
    let Ok(_permit) = shared.checks.acquire().await else {
        return;
    };
    match check(storage.as_ref(), repo, c).await {
        Ok(index) => {
            let layer = index.layer_digest;
            if known(&layer) {
                return;
            }
            if let Err(e) = storage.put_chunk_index(repo, &layer, &c.index).await {
                tracing::warn!(repository = repo, %layer, error = %e, "cannot record a checked chunk index");
                return;
            }
            tracing::info!(repository = repo, %layer, index = %c.index, chunks = index.chunks.len(), "chunk index checked against its layer");
        }
        Err(CheckError::Storage(e)) => {
            tracing::warn!(repository = repo, index = %c.index, error = %e, "chunk index not checked (storage)");
        }
        Err(e) => {
            tracing::warn!(repository = repo, index = %c.index, error = %e, "chunk index refused; delta push will not reuse it");
            if let Ok(mut r) = shared.refused.lock() {
                if r.len() >= REFUSED_REMEMBERED {
                    r.clear();
                }
                r.insert((repo.to_string(), c.index, c.layer));
            }
        }
    }
}

/// Why an index was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The index does not describe the layer.
    #[error("chunk index {index}: {message}")]
    Refused {
        /// The index blob.
        index: Digest,
        /// Why.
        message: String,
    },
}

/// Reads and parses a chunk index blob (parsing on the blocking pool).
async fn read_index(storage: &dyn Storage, digest: &Digest) -> Result<ChunkIndex, CheckError> {
    let bytes = storage.read_blob_bytes(digest, MAX_INDEX_BYTES).await?;
    let d = *digest;
    tokio::task::spawn_blocking(move || ChunkIndex::from_blob(&bytes))
        .await
        .map_err(|e| CheckError::Refused {
            index: d,
            message: format!("parsing stopped: {e}"),
        })?
        .map_err(|e| CheckError::Refused {
            index: d,
            message: e.to_string(),
        })
}

/// Checks candidate `c` against its layer in `repo`: the index parses and validates,
/// names the layer the manifest names, the layer is linked into `repo` with the size the
/// index gives, and every chunk hashes to its id at its offset.
pub async fn check(
    storage: &dyn Storage,
    repo: &str,
    c: &Candidate,
) -> Result<ChunkIndex, CheckError> {
    let refused = |message: String| CheckError::Refused {
        index: c.index,
        message,
    };
    let index = read_index(storage, &c.index).await?;
    let layer = index.layer_digest;
    if let Some(named) = c.layer.filter(|l| *l != layer) {
        return Err(refused(format!(
            "describes layer {layer}, the manifest says {named}"
        )));
    }
    if !storage.blob_linked(repo, &layer).await? {
        return Err(refused(format!(
            "layer {layer} is not in repository {repo}"
        )));
    }
    let size = storage.stat_blob(&layer).await?.map(|m| m.size);
    if size != Some(index.layer_size) {
        return Err(refused(format!(
            "gives layer {layer} {} bytes, the registry holds {}",
            index.layer_size,
            size.map_or("none".into(), |s| s.to_string())
        )));
    }
    let mut checker = Checker::new(&index);
    let mut stream = storage.read_blob(&layer, None).await?;
    let mut batch = Vec::with_capacity(STEP);
    let mut ended = false;
    while !ended {
        match stream.next().await {
            Some(piece) => {
                let piece =
                    piece.map_err(|e| StorageError::io(format!("reading layer {layer}"), e))?;
                batch.extend_from_slice(&piece);
                if batch.len() < STEP {
                    continue;
                }
            }
            None => ended = true,
        }
        let full = std::mem::replace(&mut batch, Vec::with_capacity(STEP));
        let mut c = checker;
        checker = tokio::task::spawn_blocking(move || c.feed(&full).map(|()| c))
            .await
            .map_err(|e| refused(format!("hashing stopped: {e}")))?
            .map_err(refused)?;
    }
    checker.finish().map_err(refused)?;
    Ok(index)
}

/// Hashes a layer's bytes chunk by chunk against an index.
struct Checker {
    /// (offset, length, id) of each chunk.
    chunks: Vec<(u64, u64, Digest)>,
    next: usize,
    filled: u64,
    hasher: DigestHasher,
}

impl Checker {
    fn new(index: &ChunkIndex) -> Checker {
        Checker {
            chunks: index
                .chunks_with_offsets()
                .map(|c| (c.compressed_offset, c.record.compressed_len, c.record.id))
                .collect(),
            next: 0,
            filled: 0,
            hasher: DigestHasher::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let Some(&(offset, len, id)) = self.chunks.get(self.next) else {
                return Err("the layer is longer than its chunks".into());
            };
            let take = ((len - self.filled) as usize).min(bytes.len());
            self.hasher.update(&bytes[..take]);
            self.filled += take as u64;
            bytes = &bytes[take..];
            if self.filled == len {
                let actual = std::mem::replace(&mut self.hasher, DigestHasher::new()).finish();
                if actual != id {
                    return Err(format!(
                        "chunk {} at offset {offset} hashes to {actual}, the index says {id}",
                        self.next
                    ));
                }
                self.next += 1;
                self.filled = 0;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<(), String> {
        if self.next == self.chunks.len() && self.filled == 0 {
            Ok(())
        } else {
            Err(format!(
                "the layer ends inside chunk {} of {}",
                self.next,
                self.chunks.len()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_from_annotations_and_referrers() {
        let (l, i) = (Digest::of(b"layer"), Digest::of(b"index"));
        let image = serde_json::json!({
            "schemaVersion": 2,
            "layers": [
                {"mediaType": "x", "digest": l.to_string(), "size": 1,
                 "annotations": {"dev.gantry.chunk-index": i.to_string()}},
                {"mediaType": "x", "digest": Digest::of(b"plain").to_string(), "size": 1}
            ]
        });
        assert_eq!(
            candidates(image.to_string().as_bytes()),
            vec![Candidate {
                index: i,
                layer: Some(l)
            }]
        );
        let referrer = serde_json::json!({
            "schemaVersion": 2,
            "artifactType": media_types::CHUNK_INDEX_ARTIFACT,
            "layers": [
                {"mediaType": media_types::CHUNK_INDEX_BLOB, "digest": i.to_string(), "size": 1,
                 "annotations": {"dev.gantry.chunk-index": l.to_string()}}
            ]
        });
        assert_eq!(
            candidates(referrer.to_string().as_bytes()),
            vec![Candidate {
                index: i,
                layer: Some(l)
            }]
        );
        assert!(candidates(b"not json").is_empty());
    }

    #[test]
    fn the_checker_refuses_a_wrong_chunk_a_short_layer_and_a_long_one() {
        let blob = b"aaaabbbbcc".to_vec();
        let chunks = vec![
            (0, 4, Digest::of(b"aaaa")),
            (4, 4, Digest::of(b"bbbb")),
            (8, 2, Digest::of(b"cc")),
        ];
        let checker = |chunks: &Vec<(u64, u64, Digest)>| Checker {
            chunks: chunks.clone(),
            next: 0,
            filled: 0,
            hasher: DigestHasher::new(),
        };
        // Fed in odd pieces, it passes.
        let mut c = checker(&chunks);
        c.feed(&blob[..3]).unwrap();
        c.feed(&blob[3..9]).unwrap();
        c.feed(&blob[9..]).unwrap();
        c.finish().unwrap();
        // A wrong id.
        let mut forged = chunks.clone();
        forged[1].2 = Digest::of(b"BBBB");
        let e = checker(&forged).feed(&blob).unwrap_err();
        assert!(e.contains("chunk 1 at offset 4"), "{e}");
        // Too short, too long.
        let mut c = checker(&chunks);
        c.feed(&blob[..9]).unwrap();
        assert!(c.finish().is_err());
        let mut longer = blob.clone();
        longer.push(b'x');
        assert!(checker(&chunks).feed(&longer).is_err());
    }
}
