//! The node's local store: verified blobs plus a map from chunk id to where the chunk's
//! bytes are in a held blob.
//!
//! ```text
//! <root>/blobs/sha256/<hex>   blobs, each verified against its digest before it got here
//! <root>/layers/<hex>         for a held layer blob: the digest of its chunk index blob
//! <root>/known/<scope>/<hex>  for a layer seen in a manifest of one repository of one
//!                             upstream (scope: sha256 of both): its chunk index digest and
//!                             the layer size the manifest gives
//! <root>/tmp/                 assemblies in progress (emptied at start: a crash never
//!                             leaves a partial blob that could be taken for whole)
//! ```
//!
//! A blob enters by [`Store::commit`]: written and fsynced in `tmp/`, verified, renamed.
//! The chunk map is rebuilt at start from `layers/` and the index blobs. A size limit evicts
//! the least recently used blobs (served or written) after each commit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use gantry_layer::ChunkIndex;
use gantry_oci::Digest;

use crate::error::AgentError;

/// Where a chunk's compressed bytes are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The held blob.
    pub blob: Digest,
    /// Offset of the chunk in it.
    pub offset: u64,
    /// Compressed length.
    pub len: u64,
}

/// Blobs younger than this (last use) are never evicted: they may be being served.
const EVICTION_GRACE: Duration = Duration::from_secs(120);

/// What a manifest said about a layer's chunk index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownIndex {
    /// Digest of the chunk index blob (the `dev.gantry.chunk-index` annotation).
    pub index: Digest,
    /// The layer's size in the manifest's descriptor.
    pub layer_size: u64,
}

/// The local store. Clones share the chunk map. Its methods do blocking file work: call
/// them from a blocking context ([`AgentError::blocking`]).
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    max_bytes: u64,
    /// Every held blob that has a chunk, by chunk id (usually one).
    chunks: Arc<RwLock<HashMap<Digest, Vec<ChunkLocation>>>>,
    /// Parsed chunk indexes by digest: a range request of `gantry snapshotter` needs the
    /// layer's index each time, and parsing a large one costs milliseconds. Content
    /// addressed, so an entry can only be stale in being unused; at most
    /// [`PARSED_INDEXES`] are kept.
    parsed: Arc<Mutex<HashMap<Digest, Arc<ChunkIndex>>>>,
}

/// Parsed chunk indexes kept in memory.
const PARSED_INDEXES: usize = 32;

impl Store {
    /// Opens (creating) the store at `root`, empties `tmp/` and rebuilds the chunk map.
    /// `max_bytes` 0 means no limit.
    pub fn open(root: &Path, max_bytes: u64) -> Result<Store, AgentError> {
        for d in ["blobs/sha256", "layers", "known", "readable", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(AgentError::io(&p))?;
        }
        let tmp = root.join("tmp");
        for entry in std::fs::read_dir(&tmp)
            .map_err(AgentError::io(&tmp))?
            .flatten()
        {
            let _ = std::fs::remove_file(entry.path());
        }
        // Records of an older layout named a layer alone, whatever repository or upstream
        // the manifest came from: forget them (they are relearned from manifests).
        let known = root.join("known");
        for entry in std::fs::read_dir(&known)
            .map_err(AgentError::io(&known))?
            .flatten()
        {
            if entry.file_type().is_ok_and(|t| !t.is_dir()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let store = Store {
            root: root.to_path_buf(),
            max_bytes,
            chunks: Arc::new(RwLock::new(HashMap::new())),
            parsed: Arc::new(Mutex::new(HashMap::new())),
        };
        let layers = root.join("layers");
        for entry in std::fs::read_dir(&layers)
            .map_err(AgentError::io(&layers))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (Ok(layer), Ok(text)) = (
                Digest::from_hex(&name),
                std::fs::read_to_string(entry.path()),
            ) else {
                continue;
            };
            let Ok(index_digest) = text.trim().parse::<Digest>() else {
                continue;
            };
            if !store.has(&layer) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            match store.read_index(&index_digest) {
                Ok(index)
                    if index.layer_digest == layer
                        && store.size(&layer) == Some(index.layer_size) =>
                {
                    store.add_chunks(&index)
                }
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a held blob.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether a blob is held.
    pub fn has(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Size of a held blob.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.blob_path(digest))
            .ok()
            .map(|m| m.len())
    }

    /// Marks a blob as used now (for LRU eviction).
    pub fn touch(&self, digest: &Digest) {
        let _ = filetime::set_file_mtime(self.blob_path(digest), filetime::FileTime::now());
    }

    /// A new temporary file for an assembly or download, open for reading and writing
    /// (an assembly is read while it is written).
    pub fn temp_file(&self, digest: &Digest) -> Result<(PathBuf, std::fs::File), AgentError> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            self.root
                .join("tmp")
                .join(format!("{}.{}.{n}", digest.hex(), std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(AgentError::io(&path))?;
        Ok((path, file))
    }

    /// Verifies the temporary file `tmp` against `digest` and `size` (when known), fsyncs
    /// it and moves it into the store. On a mismatch the file is removed and the error
    /// names what it held.
    pub fn commit(&self, tmp: &Path, digest: &Digest, size: Option<u64>) -> Result<(), AgentError> {
        let (actual, len) = hash_file(tmp)?;
        self.commit_hashed(tmp, digest, size, actual, len)
    }

    /// [`Store::commit`] of a file already hashed while it was written (`actual`, `len`):
    /// the same checks, without reading the file again.
    pub fn commit_hashed(
        &self,
        tmp: &Path,
        digest: &Digest,
        size: Option<u64>,
        actual: Digest,
        len: u64,
    ) -> Result<(), AgentError> {
        if actual != *digest || size.is_some_and(|s| s != len) {
            let _ = std::fs::remove_file(tmp);
            return Err(AgentError::Corrupt {
                what: format!("blob {digest} ({len} bytes)"),
                expected: *digest,
                actual,
            });
        }
        let f = std::fs::File::open(tmp).map_err(AgentError::io(tmp))?;
        f.sync_all().map_err(AgentError::io(tmp))?;
        let dest = self.blob_path(digest);
        std::fs::rename(tmp, &dest).map_err(AgentError::io(&dest))?;
        if let Ok(dir) = std::fs::File::open(self.root.join("blobs/sha256")) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Stores small verified bytes (a chunk index) as a blob.
    pub fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<(), AgentError> {
        if self.has(digest) {
            return Ok(());
        }
        let (path, mut file) = self.temp_file(digest)?;
        std::io::Write::write_all(&mut file, bytes).map_err(AgentError::io(&path))?;
        drop(file);
        self.commit(&path, digest, Some(bytes.len() as u64))
    }

    /// Reads and parses a held chunk index blob (parsed once, then kept in memory).
    pub fn read_index(&self, digest: &Digest) -> Result<Arc<ChunkIndex>, AgentError> {
        if let Some(index) = self.parsed.lock().ok().and_then(|m| m.get(digest).cloned()) {
            return Ok(index);
        }
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(AgentError::io(&path))?;
        let index = ChunkIndex::from_blob(&bytes).map_err(|e| AgentError::Invalid {
            what: format!("chunk index {digest}"),
            message: e.to_string(),
        })?;
        let index = Arc::new(index);
        if let Ok(mut m) = self.parsed.lock() {
            if m.len() >= PARSED_INDEXES {
                m.clear();
            }
            m.insert(*digest, index.clone());
        }
        Ok(index)
    }

    /// Records that held layer `index.layer_digest` has chunk index `index_digest`, and
    /// adds its chunks to the map.
    pub fn record_layer(
        &self,
        index_digest: &Digest,
        index: &ChunkIndex,
    ) -> Result<(), AgentError> {
        let path = self.root.join("layers").join(index.layer_digest.hex());
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, index_digest.to_string()).map_err(AgentError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(AgentError::io(&path))?;
        self.add_chunks(index);
        Ok(())
    }

    fn add_chunks(&self, index: &ChunkIndex) {
        let Ok(mut map) = self.chunks.write() else {
            return;
        };
        for c in index.chunks_with_offsets() {
            let held = map.entry(c.record.id).or_default();
            if held.iter().all(|l| l.blob != index.layer_digest) {
                held.push(ChunkLocation {
                    blob: index.layer_digest,
                    offset: c.compressed_offset,
                    len: c.record.compressed_len,
                });
            }
        }
    }

    fn known_path(&self, upstream: &str, repository: &str, layer: &Digest) -> PathBuf {
        self.root
            .join("known")
            .join(scope(upstream, repository).hex())
            .join(layer.hex())
    }

    fn readable_path(&self, upstream: &str, repository: &str, blob: &Digest) -> PathBuf {
        self.root
            .join("readable")
            .join(scope(upstream, repository).hex())
            .join(blob.hex())
    }

    /// Remembers that `upstream` answered yes to a client of `repository` for `blob` (a
    /// `HEAD /v2/<repository>/blobs/<blob>` with the client's credentials): the repository
    /// holds the blob, so its requests may reuse the blob's chunks ([`Store::scoped`]).
    /// A manifest naming the blob is no such proof: a registry accepts a foreign layer
    /// (`urls`) it does not hold.
    pub fn record_readable(
        &self,
        upstream: &str,
        repository: &str,
        blob: &Digest,
    ) -> Result<(), AgentError> {
        let path = self.readable_path(upstream, repository, blob);
        if path.is_file() {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(AgentError::io(dir))?;
        }
        std::fs::write(&path, b"").map_err(AgentError::io(&path))
    }

    /// Remembers, from a manifest of `repository` at `upstream` (the registry host), that `layer` has chunk
    /// index `known` (kept across restarts, so a blob request after a restart still
    /// assembles by delta). Scoped to that repository and upstream: a manifest elsewhere
    /// can never choose the index another repository's pulls use.
    pub fn learn(
        &self,
        upstream: &str,
        repository: &str,
        layer: &Digest,
        known: &KnownIndex,
    ) -> Result<(), AgentError> {
        let path = self.known_path(upstream, repository, layer);
        let text = format!("{}\n{}\n", known.index, known.layer_size);
        if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(AgentError::io(dir))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(AgentError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(AgentError::io(&path))
    }

    /// The chunk index a manifest of `repository` at `upstream` named for `layer`.
    pub fn known_index(
        &self,
        upstream: &str,
        repository: &str,
        layer: &Digest,
    ) -> Option<KnownIndex> {
        let text = std::fs::read_to_string(self.known_path(upstream, repository, layer)).ok()?;
        let mut lines = text.lines();
        Some(KnownIndex {
            index: lines.next()?.trim().parse().ok()?,
            layer_size: lines.next()?.trim().parse().ok()?,
        })
    }

    /// The held chunks a request for `repository` at `upstream` may reuse: only those in
    /// blobs upstream said that repository holds ([`Store::record_readable`]). A chunk
    /// held only in another tenant's layer is fetched from upstream instead, so a forged
    /// index cannot draw another repository's bytes into an assembly.
    pub fn scoped<'a>(&'a self, upstream: &'a str, repository: &'a str) -> ScopedChunks<'a> {
        ScopedChunks {
            store: self,
            upstream,
            repository,
            readable: HashMap::new(),
        }
    }

    /// Number of chunks known.
    pub fn chunk_count(&self) -> usize {
        self.chunks.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Every held blob with its size and last use.
    pub fn blobs(&self) -> Vec<(Digest, u64, SystemTime)> {
        let dir = self.root.join("blobs/sha256");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let d = Digest::from_hex(&e.file_name().to_string_lossy()).ok()?;
                let m = e.metadata().ok()?;
                Some((d, m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
            })
            .collect()
    }

    /// Evicts least recently used blobs until the store is under its limit; returns how
    /// many were removed.
    pub fn evict(&self) -> usize {
        if self.max_bytes == 0 {
            return 0;
        }
        let mut blobs = self.blobs();
        let mut total: u64 = blobs.iter().map(|b| b.1).sum();
        if total <= self.max_bytes {
            return 0;
        }
        blobs.sort_by_key(|b| b.2);
        let now = SystemTime::now();
        let mut removed = 0;
        for (digest, size, used) in blobs {
            if total <= self.max_bytes {
                break;
            }
            if now.duration_since(used).unwrap_or_default() < EVICTION_GRACE {
                continue;
            }
            // Forget its chunks first, so no assembly starts reading a blob being removed.
            if let Ok(mut map) = self.chunks.write() {
                map.retain(|_, held| {
                    held.retain(|loc| loc.blob != digest);
                    !held.is_empty()
                });
            }
            let _ = std::fs::remove_file(self.root.join("layers").join(digest.hex()));
            if std::fs::remove_file(self.blob_path(&digest)).is_ok() {
                total -= size;
                removed += 1;
            }
        }
        removed
    }
}

/// Names the records of one repository at one upstream.
fn scope(upstream: &str, repository: &str) -> Digest {
    let mut scope = gantry_oci::DigestHasher::new();
    scope.update(upstream.as_bytes());
    scope.update(b"\0");
    scope.update(repository.as_bytes());
    scope.finish()
}

/// Held chunks as one repository at one upstream may reuse them ([`Store::scoped`]).
pub struct ScopedChunks<'a> {
    store: &'a Store,
    upstream: &'a str,
    repository: &'a str,
    /// Whether each blob asked about so far is one the repository holds.
    readable: HashMap<Digest, bool>,
}

impl ScopedChunks<'_> {
    /// Where a held blob other than `layer`, one the repository holds, has chunk `id` of
    /// `len` compressed bytes. Blocking (reads the store's records).
    pub fn find(&mut self, layer: &Digest, id: &Digest, len: u64) -> Option<ChunkLocation> {
        let candidates: Vec<ChunkLocation> = self
            .store
            .chunks
            .read()
            .ok()?
            .get(id)?
            .iter()
            .filter(|l| l.blob != *layer && l.len == len)
            .copied()
            .collect();
        candidates.into_iter().find(|l| {
            let (store, upstream, repository) = (self.store, self.upstream, self.repository);
            *self
                .readable
                .entry(l.blob)
                .or_insert_with(|| store.readable_path(upstream, repository, &l.blob).is_file())
        })
    }
}

/// sha256 and length of a file.
pub fn hash_file(path: &Path) -> Result<(Digest, u64), AgentError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(AgentError::io(path))?;
    let mut h = gantry_oci::DigestHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(AgentError::io(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finish(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_refuses_wrong_bytes_and_tmp_is_emptied_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 0).unwrap();
        let good = Digest::of(b"hello");
        let (path, mut f) = store.temp_file(&good).unwrap();
        std::io::Write::write_all(&mut f, b"hellO").unwrap();
        drop(f);
        assert!(matches!(
            store.commit(&path, &good, None),
            Err(AgentError::Corrupt { .. })
        ));
        assert!(!store.has(&good));
        store.put_bytes(&good, b"hello").unwrap();
        assert!(store.has(&good));
        // A leftover partial file is removed at the next open.
        let (leftover, _) = store.temp_file(&good).unwrap();
        drop(store);
        let _store = Store::open(dir.path(), 0).unwrap();
        assert!(!leftover.exists());
    }

    fn index_of(layer: Digest, chunks: &[&[u8]]) -> ChunkIndex {
        ChunkIndex {
            schema_version: 1,
            media_type: gantry_oci::media_types::CHUNK_INDEX_ARTIFACT.into(),
            layer_digest: layer,
            layer_size: chunks.iter().map(|c| c.len() as u64).sum(),
            diff_id: Digest::of(b"tar"),
            uncompressed_size: 1,
            compression: gantry_layer::CompressionParams {
                format: "gzip".into(),
                deflate: "zlib-rs".into(),
                level: 6,
            },
            chunker: gantry_layer::ChunkerParams::default(),
            chunks: chunks
                .iter()
                .map(|c| gantry_layer::ChunkRecord {
                    compressed_len: c.len() as u64,
                    uncompressed_len: 1,
                    id: Digest::of(c),
                })
                .collect(),
        }
    }

    #[test]
    fn held_chunks_are_reused_only_within_the_repository_that_holds_their_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 0).unwrap();
        let secret: &[u8] = b"tenant A's secret chunk";
        let shared: &[u8] = b"a chunk both tenants have";
        let (a, b) = (Digest::of(b"layer of A"), Digest::of(b"layer of B"));
        store
            .record_layer(&Digest::of(b"ia"), &index_of(a, &[secret, shared]))
            .unwrap();
        store
            .record_layer(&Digest::of(b"ib"), &index_of(b, &[shared]))
            .unwrap();
        store
            .record_readable("reg.example", "tenant-a/game", &a)
            .unwrap();
        store
            .record_readable("reg.example", "tenant-b/app", &b)
            .unwrap();
        // A manifest of tenant B naming A's layer (a foreign layer a registry accepts
        // without holding it) proves nothing.
        let forged = KnownIndex {
            index: Digest::of(b"forged"),
            layer_size: 1,
        };
        store
            .learn("reg.example", "tenant-b/app", &a, &forged)
            .unwrap();
        let new_layer = Digest::of(b"new layer");
        let (sid, shid) = (Digest::of(secret), Digest::of(shared));
        let len = |c: &[u8]| c.len() as u64;
        // Tenant B's forged index names A's chunk: not offered to B.
        let mut for_b = store.scoped("reg.example", "tenant-b/app");
        assert_eq!(for_b.find(&new_layer, &sid, len(secret)), None);
        // The chunk B's own layer holds is, from B's blob even though A's has it too.
        assert_eq!(
            for_b.find(&new_layer, &shid, len(shared)).map(|l| l.blob),
            Some(b)
        );
        // A reuses its own chunk; the same repository at another upstream does not.
        let mut for_a = store.scoped("reg.example", "tenant-a/game");
        assert_eq!(
            for_a.find(&new_layer, &sid, len(secret)).map(|l| l.blob),
            Some(a)
        );
        assert_eq!(
            store
                .scoped("other.example", "tenant-a/game")
                .find(&new_layer, &sid, len(secret)),
            None
        );
        // Never the layer being assembled itself, nor a chunk of another length.
        assert_eq!(for_a.find(&a, &sid, len(secret)), None);
        assert_eq!(for_a.find(&new_layer, &sid, 3), None);
    }

    #[test]
    fn learned_indexes_are_scoped_to_upstream_and_repository() {
        let dir = tempfile::tempdir().unwrap();
        // A record of the old layout (layer alone) is forgotten at open.
        let layer = Digest::of(b"layer");
        std::fs::create_dir_all(dir.path().join("known")).unwrap();
        let old = dir.path().join("known").join(layer.hex());
        std::fs::write(&old, Digest::of(b"i").to_string()).unwrap();
        let store = Store::open(dir.path(), 0).unwrap();
        assert!(!old.exists());
        let known = KnownIndex {
            index: Digest::of(b"index"),
            layer_size: 42,
        };
        store
            .learn("registry-a.example", "evil/app", &layer, &known)
            .unwrap();
        assert_eq!(
            store.known_index("registry-a.example", "evil/app", &layer),
            Some(known)
        );
        assert_eq!(
            store.known_index("registry-a.example", "studio/game", &layer),
            None
        );
        assert_eq!(
            store.known_index("registry-b.example", "evil/app", &layer),
            None
        );
        drop(store);
        let store = Store::open(dir.path(), 0).unwrap();
        assert_eq!(
            store.known_index("registry-a.example", "evil/app", &layer),
            Some(known)
        );
    }
}
