//! Filesystem storage.
//!
//! Layout under the root directory:
//!
//! ```text
//! blobs/sha256/<first 2 hex>/<64 hex>                  blob bytes (layers, configs, manifests)
//! repositories/<name>/_layers/sha256/<hex>             link: blob readable in <name>
//! repositories/<name>/_manifests/revisions/sha256/<hex> manifest of <name>; holds its media type
//! repositories/<name>/_manifests/tags/<tag>            holds the digest the tag points at
//! repositories/<name>/_referrers/sha256/<subject hex>/<referrer hex>
//!                                                      descriptor JSON of a referrer
//! uploads/<uuid>/data                                  bytes received so far
//! uploads/<uuid>/state.json                            repository, persisted offset, start time
//! tmp/                                                 staging for atomic writes; emptied at open
//! ```
//!
//! Repository path components never start with `_` (see [`gantry_oci::names`]), so `_layers`,
//! `_manifests` and `_referrers` cannot collide with a nested repository.
//!
//! Durability: every blob, link, manifest, tag and referrer file becomes visible by
//! `rename` from a fully written and fsynced file, followed by an fsync of the directory it
//! was renamed into (and of the parents of any directory created on the way), all before
//! the client is answered. A blob is renamed into `blobs/` only after its bytes were hashed
//! and matched the digest. An upload's offset is written to `state.json` only after the
//! data up to that offset was fsynced; bytes past the persisted offset (a chunk that was
//! being received during a crash) are cut off at the next append. Upload sessions
//! themselves survive a process crash but are not made durable against power loss (no
//! directory fsync): a lost session or offset only makes the client upload again.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use gantry_oci::{Digest, DigestHasher};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::upload_locks::{SessionState, UploadLocks};
use super::{
    digest_record, BlobMeta, ByteStream, Storage, StorageError, StorageResult, UploadInfo,
};

/// Buffer of whole-file reads (hashing an upload that has no running hash).
const READ_CHUNK: usize = 256 * 1024;
/// How many bytes a blob read yields per stream item: one blocking read each, so large
/// enough that the hop to the blocking pool is cheap next to the copy.
const STREAM_CHUNK: u64 = 1024 * 1024;
/// Write buffer of an upload append.
const WRITE_BUFFER: usize = 1024 * 1024;

/// Storage in a local directory (see the module documentation for the layout).
///
/// One process at a time: [`FsStorage::open`] takes an exclusive lock on `<root>/lock`
/// (released by the kernel when the process dies), because the staging area is emptied
/// at open and garbage collection's lock is in memory.
pub struct FsStorage {
    root: PathBuf,
    _lock: std::fs::File,
    /// Per-upload locks, each with the running hash of the bytes persisted so far (so that
    /// finishing an upload need not read it back).
    uploads: UploadLocks<RunningHash>,
}

#[derive(Default)]
struct RunningHash {
    /// Offset the hasher has seen, valid only with `hasher`.
    offset: u64,
    hasher: Option<DigestHasher>,
}

impl SessionState for RunningHash {
    fn is_empty(&self) -> bool {
        self.hasher.is_none()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct UploadState {
    repository: String,
    offset: u64,
    started_ms: u64,
}

impl FsStorage {
    /// Opens (creating if needed) storage rooted at `root`, and empties its staging area.
    /// Fails with [`StorageError::Locked`] while another process has it open.
    pub fn open(root: impl Into<PathBuf>) -> StorageResult<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| StorageError::io(format!("create {}", root.display()), e))?;
        let lock_path = root.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_ctx("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StorageError::Locked(root)),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StorageError::io(format!("lock {}", lock_path.display()), e))
            }
        }
        for sub in ["blobs/sha256", "repositories", "uploads", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|e| StorageError::io(format!("create {}", dir.display()), e))?;
        }
        let tmp = root.join("tmp");
        let entries = std::fs::read_dir(&tmp)
            .map_err(|e| StorageError::io(format!("list {}", tmp.display()), e))?;
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(FsStorage {
            root,
            _lock: lock,
            uploads: UploadLocks::new(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a blob's file.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join("repositories").join(repo)
    }

    fn link_path(&self, repo: &str, digest: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_layers/sha256")
            .join(digest.hex())
    }

    fn manifest_path(&self, repo: &str, digest: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_manifests/revisions/sha256")
            .join(digest.hex())
    }

    fn tags_dir(&self, repo: &str) -> PathBuf {
        self.repo_dir(repo).join("_manifests/tags")
    }

    fn referrers_dir(&self, repo: &str, subject: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_referrers/sha256")
            .join(subject.hex())
    }

    fn chunk_indexes_dir(&self, repo: &str) -> PathBuf {
        self.repo_dir(repo).join("_gantry/chunk-indexes/sha256")
    }

    fn upload_dir(&self, id: &str) -> StorageResult<PathBuf> {
        // Only ids this storage generated (hyphenated lowercase UUIDs) name a directory.
        match uuid::Uuid::parse_str(id) {
            Ok(u) if u.hyphenated().to_string() == id => Ok(self.root.join("uploads").join(id)),
            _ => Err(StorageError::UploadNotFound(id.to_string())),
        }
    }

    async fn read_state(
        &self,
        repo: Option<&str>,
        id: &str,
    ) -> StorageResult<(UploadState, SystemTime)> {
        let dir = self.upload_dir(id)?;
        let path = dir.join("state.json");
        let id_owned = id.to_string();
        let (bytes, modified) = blocking(move || {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StorageError::UploadNotFound(id_owned))
                }
                Err(e) => return Err(StorageError::io(format!("read {}", path.display()), e)),
            };
            // An upload whose data was already moved into the blob store (a crash between
            // the rename and the removal of the session) is over.
            if !dir.join("data").exists() {
                return Err(StorageError::UploadNotFound(id_owned));
            }
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            Ok((bytes, modified))
        })
        .await?;
        let state: UploadState = serde_json::from_slice(&bytes)
            .map_err(|_| StorageError::Corrupt(format!("uploads/{id}/state.json")))?;
        if let Some(repo) = repo {
            if state.repository != repo {
                return Err(StorageError::UploadNotFound(id.to_string()));
            }
        }
        Ok((state, modified))
    }

    async fn write_state(&self, id: &str, state: &UploadState) -> StorageResult<()> {
        let dir = self.upload_dir(id)?;
        let bytes = serde_json::to_vec(state)
            .map_err(|e| StorageError::io("serialize upload state", std::io::Error::other(e)))?;
        // The data up to the offset is fsynced before this. The directory is not: if the
        // rename is lost to a power failure, the older offset comes back and the bytes
        // after it are cut off at the next append, so the state never runs ahead of the data.
        blocking(move || {
            let tmp = dir.join("state.json.tmp");
            write_file_synced(&tmp, &bytes)?;
            rename(&tmp, &dir.join("state.json"))
        })
        .await
    }

    async fn write_small(&self, target: PathBuf, bytes: Vec<u8>) -> StorageResult<()> {
        let tmp_dir = self.root.join("tmp");
        blocking(move || write_atomic(&tmp_dir, &target, &bytes)).await
    }
}

fn to_meta(m: &std::fs::Metadata) -> BlobMeta {
    BlobMeta {
        size: m.len(),
        modified: m.modified().unwrap_or(UNIX_EPOCH),
    }
}

fn system_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T, F>(f: F) -> StorageResult<T>
where
    F: FnOnce() -> StorageResult<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::io("blocking storage task", std::io::Error::other(e)))?
}

fn io_ctx(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let context = format!("{what} {}", path.display());
    move |e| StorageError::io(context, e)
}

fn fsync_dir(dir: &Path) -> StorageResult<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_ctx("fsync directory", dir))
}

/// Creates `dir` and missing parents, fsyncing the parent of each directory it creates so
/// that the new entry survives a crash.
fn ensure_dir(dir: &Path) -> StorageResult<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                fsync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StorageError::io(format!("create {}", dir.display()), e)),
    }
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> StorageResult<()> {
    let mut f = std::fs::File::create(path).map_err(io_ctx("create", path))?;
    f.write_all(bytes).map_err(io_ctx("write", path))?;
    f.sync_all().map_err(io_ctx("fsync", path))
}

fn rename(from: &Path, to: &Path) -> StorageResult<()> {
    std::fs::rename(from, to)
        .map_err(|e| StorageError::io(format!("rename {} to {}", from.display(), to.display()), e))
}

/// Writes `bytes` to `target` so that after a crash `target` holds either its old content
/// or all of `bytes`: staged in `tmp_dir`, fsynced, renamed, directory fsynced.
fn write_atomic(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> StorageResult<()> {
    let tmp = tmp_dir.join(uuid::Uuid::new_v4().to_string());
    write_file_synced(&tmp, bytes)?;
    let parent = target
        .parent()
        .ok_or_else(|| StorageError::Corrupt(target.display().to_string()))?;
    let result = ensure_dir(parent)
        .and_then(|()| rename(&tmp, target))
        .and_then(|()| fsync_dir(parent));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn remove_if_exists(path: &Path) -> StorageResult<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::io(format!("remove {}", path.display()), e)),
    }
}

/// File names in `dir` (empty when it does not exist).
fn file_names(dir: &Path) -> StorageResult<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io(format!("list {}", dir.display()), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_ctx("list", dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn digests_in(dir: &Path) -> StorageResult<Vec<Digest>> {
    Ok(file_names(dir)?
        .iter()
        .filter_map(|n| Digest::from_hex(n).ok())
        .collect())
}

fn read_opt(path: &Path) -> StorageResult<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(format!("read {}", path.display()), e)),
    }
}

fn hash_file_prefix(path: &Path, len: u64) -> StorageResult<Digest> {
    let file = std::fs::File::open(path).map_err(io_ctx("open", path))?;
    let mut reader = std::io::BufReader::with_capacity(READ_CHUNK, file.take(len));
    let mut hasher = DigestHasher::new();
    let copied = std::io::copy(&mut reader, &mut hasher).map_err(io_ctx("read", path))?;
    if copied != len {
        return Err(StorageError::Corrupt(format!(
            "{} holds {copied} bytes, state says {len}",
            path.display()
        )));
    }
    Ok(hasher.finish())
}

fn touch(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.set_modified(SystemTime::now())
}

/// Reads `len` bytes at `at` (the file's position) into a buffer of their own: one
/// allocation, no zeroing, no second copy. A file shorter than expected is an error.
fn read_chunk(file: &mut std::fs::File, path: &Path, at: u64, len: u64) -> std::io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "{} ended at {} while reading {len} bytes at {at}",
                path.display(),
                at + buf.len() as u64
            ),
        ));
    }
    Ok(Bytes::from(buf))
}

type ChunkJob = tokio::task::JoinHandle<(std::fs::File, std::io::Result<Bytes>)>;

/// Starts reading the next chunk on the blocking pool.
fn spawn_chunk(mut file: std::fs::File, path: Arc<PathBuf>, at: u64, len: u64) -> ChunkJob {
    tokio::task::spawn_blocking(move || {
        let result = read_chunk(&mut file, &path, at, len);
        (file, result)
    })
}

/// Streams `len` bytes of `file` from `start` (its current position) in [`STREAM_CHUNK`]
/// pieces, reading the next piece on the blocking pool while the previous one is being
/// sent: disk (page cache) reads overlap the socket writes, and a slow client holds no
/// blocking thread, only at most two chunks of memory.
fn read_ahead_stream(file: std::fs::File, path: PathBuf, start: u64, len: u64) -> ByteStream {
    struct State {
        path: Arc<PathBuf>,
        /// Offset of the first byte not yet asked for.
        next: u64,
        end: u64,
        job: Option<ChunkJob>,
    }
    impl State {
        fn spawn(&mut self, file: std::fs::File) {
            if self.next < self.end {
                let n = STREAM_CHUNK.min(self.end - self.next);
                self.job = Some(spawn_chunk(file, self.path.clone(), self.next, n));
                self.next += n;
            }
        }
    }
    let mut state = State {
        path: Arc::new(path),
        next: start,
        end: start + len,
        job: None,
    };
    state.spawn(file);
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        let job = st.job.take()?;
        match job.await {
            Ok((file, Ok(chunk))) => {
                // Read the next chunk while the caller sends this one.
                st.spawn(file);
                Some((Ok(chunk), st))
            }
            // The stream ends after an error (`job` stays empty).
            Ok((_, Err(e))) => Some((Err(e), st)),
            Err(e) => Some((Err(std::io::Error::other(e)), st)),
        }
    }))
}

#[async_trait]
impl Storage for FsStorage {
    async fn stat_blob(&self, digest: &Digest) -> StorageResult<Option<BlobMeta>> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(to_meta(&m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(format!("stat {}", path.display()), e)),
        }
    }

    async fn read_blob(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> StorageResult<ByteStream> {
        let path = self.blob_path(digest);
        let d = *digest;
        // Open, stat and seek in one trip to the blocking pool.
        let (file, start, len) = blocking(move || {
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StorageError::BlobNotFound(d))
                }
                Err(e) => return Err(StorageError::io(format!("open {}", path.display()), e)),
            };
            let size = file.metadata().map_err(io_ctx("stat", &path))?.len();
            let (start, len) = range.unwrap_or((0, size));
            if start.checked_add(len).is_none_or(|end| end > size) {
                return Err(StorageError::Range { start, len, size });
            }
            if start > 0 {
                file.seek(std::io::SeekFrom::Start(start))
                    .map_err(io_ctx("seek", &path))?;
            }
            Ok((file, start, len))
        })
        .await?;
        Ok(read_ahead_stream(file, self.blob_path(digest), start, len))
    }

    async fn read_blob_bytes(&self, digest: &Digest, max: u64) -> StorageResult<Bytes> {
        let path = self.blob_path(digest);
        let d = *digest;
        blocking(move || {
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StorageError::BlobNotFound(d))
                }
                Err(e) => return Err(StorageError::io(format!("open {}", path.display()), e)),
            };
            let mut buf = Vec::new();
            file.take(max.saturating_add(1))
                .read_to_end(&mut buf)
                .map_err(io_ctx("read", &path))?;
            if buf.len() as u64 > max {
                return Err(StorageError::Range {
                    start: 0,
                    len: max,
                    size: buf.len() as u64,
                });
            }
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn put_blob_bytes(&self, digest: &Digest, bytes: Bytes) -> StorageResult<BlobMeta> {
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StorageError::DigestMismatch {
                expected: *digest,
                actual,
            });
        }
        let path = self.blob_path(digest);
        let tmp_dir = self.root.join("tmp");
        blocking(move || {
            if path.is_file() {
                touch(&path).map_err(io_ctx("touch", &path))?;
            } else {
                write_atomic(&tmp_dir, &path, &bytes)?;
            }
            std::fs::metadata(&path)
                .map(|m| to_meta(&m))
                .map_err(io_ctx("stat", &path))
        })
        .await
    }

    async fn touch_blob(&self, digest: &Digest) -> StorageResult<()> {
        let path = self.blob_path(digest);
        let d = *digest;
        blocking(move || match touch(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::BlobNotFound(d))
            }
            Err(e) => Err(StorageError::io(format!("touch {}", path.display()), e)),
        })
        .await
    }

    async fn delete_blob(&self, digest: &Digest) -> StorageResult<bool> {
        let path = self.blob_path(digest);
        blocking(move || remove_if_exists(&path)).await
    }

    async fn list_blobs(&self) -> StorageResult<Vec<(Digest, BlobMeta)>> {
        let base = self.root.join("blobs/sha256");
        blocking(move || {
            let mut out = Vec::new();
            for prefix in file_names(&base)? {
                let dir = base.join(&prefix);
                for name in file_names(&dir)? {
                    let Ok(digest) = Digest::from_hex(&name) else {
                        continue;
                    };
                    if !name.starts_with(&prefix) {
                        continue;
                    }
                    match std::fs::metadata(dir.join(&name)) {
                        Ok(m) if m.is_file() => out.push((digest, to_meta(&m))),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(StorageError::io(
                                format!("stat {}", dir.join(&name).display()),
                                e,
                            ))
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn link_blob(&self, repo: &str, digest: &Digest) -> StorageResult<()> {
        let path = self.link_path(repo, digest);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        self.write_small(path, digest.to_string().into_bytes())
            .await
    }

    async fn blob_linked(&self, repo: &str, digest: &Digest) -> StorageResult<bool> {
        let path = self.link_path(repo, digest);
        tokio::fs::try_exists(&path)
            .await
            .map_err(io_ctx("stat", &path))
    }

    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> StorageResult<bool> {
        let path = self.link_path(repo, digest);
        blocking(move || remove_if_exists(&path)).await
    }

    async fn list_blob_links(&self, repo: &str) -> StorageResult<Vec<Digest>> {
        let dir = self.repo_dir(repo).join("_layers/sha256");
        blocking(move || digests_in(&dir)).await
    }

    async fn put_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: &str,
    ) -> StorageResult<()> {
        let path = self.manifest_path(repo, digest);
        self.write_small(path, media_type.as_bytes().to_vec()).await
    }

    async fn manifest_media_type(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> StorageResult<Option<String>> {
        let path = self.manifest_path(repo, digest);
        let bytes = blocking(move || read_opt(&path)).await?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> StorageResult<bool> {
        let path = self.manifest_path(repo, digest);
        blocking(move || remove_if_exists(&path)).await
    }

    async fn list_manifests(&self, repo: &str) -> StorageResult<Vec<Digest>> {
        let dir = self.repo_dir(repo).join("_manifests/revisions/sha256");
        blocking(move || digests_in(&dir)).await
    }

    async fn put_tag(&self, repo: &str, tag: &str, digest: &Digest) -> StorageResult<()> {
        let path = self.tags_dir(repo).join(tag);
        self.write_small(path, digest.to_string().into_bytes())
            .await
    }

    async fn get_tag(&self, repo: &str, tag: &str) -> StorageResult<Option<Digest>> {
        let path = self.tags_dir(repo).join(tag);
        let shown = format!("{repo}:{tag}");
        let bytes = blocking(move || read_opt(&path)).await?;
        match bytes {
            None => Ok(None),
            Some(b) => digest_record(&b, || format!("tag {shown}")).map(Some),
        }
    }

    async fn delete_tag(&self, repo: &str, tag: &str) -> StorageResult<bool> {
        let path = self.tags_dir(repo).join(tag);
        blocking(move || remove_if_exists(&path)).await
    }

    async fn list_tags(&self, repo: &str) -> StorageResult<Vec<String>> {
        let dir = self.tags_dir(repo);
        blocking(move || {
            Ok(file_names(&dir)?
                .into_iter()
                .filter(|n| gantry_oci::names::valid_tag(n))
                .collect())
        })
        .await
    }

    async fn put_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
        descriptor: Bytes,
    ) -> StorageResult<()> {
        let path = self.referrers_dir(repo, subject).join(referrer.hex());
        self.write_small(path, descriptor.to_vec()).await
    }

    async fn delete_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> StorageResult<()> {
        let path = self.referrers_dir(repo, subject).join(referrer.hex());
        blocking(move || remove_if_exists(&path).map(|_| ())).await
    }

    async fn list_referrers(&self, repo: &str, subject: &Digest) -> StorageResult<Vec<Bytes>> {
        let dir = self.referrers_dir(repo, subject);
        blocking(move || {
            let mut out = Vec::new();
            for name in file_names(&dir)? {
                if Digest::from_hex(&name).is_err() {
                    continue;
                }
                if let Some(bytes) = read_opt(&dir.join(&name))? {
                    out.push(Bytes::from(bytes));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_chunk_index(
        &self,
        repo: &str,
        layer: &Digest,
        index: &Digest,
    ) -> StorageResult<()> {
        let path = self.chunk_indexes_dir(repo).join(layer.hex());
        self.write_small(path, index.to_string().into_bytes()).await
    }

    async fn list_chunk_indexes(&self, repo: &str) -> StorageResult<Vec<(Digest, Digest)>> {
        let dir = self.chunk_indexes_dir(repo);
        let shown = repo.to_string();
        blocking(move || {
            let mut out = Vec::new();
            for name in file_names(&dir)? {
                let Ok(layer) = Digest::from_hex(&name) else {
                    continue;
                };
                if let Some(bytes) = read_opt(&dir.join(&name))? {
                    let index =
                        digest_record(&bytes, || format!("chunk index record {shown}/{name}"))?;
                    out.push((layer, index));
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn repository_exists(&self, repo: &str) -> StorageResult<bool> {
        let dir = self.repo_dir(repo);
        blocking(move || Ok(dir.join("_layers").is_dir() || dir.join("_manifests").is_dir())).await
    }

    async fn list_repositories(&self) -> StorageResult<Vec<String>> {
        let base = self.root.join("repositories");
        blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![(base.clone(), String::new())];
            while let Some((dir, name)) = stack.pop() {
                let children = file_names(&dir)?;
                if !name.is_empty() && children.iter().any(|c| c == "_layers" || c == "_manifests")
                {
                    out.push(name.clone());
                }
                for child in children {
                    if child.starts_with('_') {
                        continue;
                    }
                    let path = dir.join(&child);
                    if path.is_dir() {
                        let child_name = if name.is_empty() {
                            child
                        } else {
                            format!("{name}/{child}")
                        };
                        stack.push((path, child_name));
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn create_upload(&self, repo: &str) -> StorageResult<UploadInfo> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let dir = self.upload_dir(&id)?;
        let now = SystemTime::now();
        let state = UploadState {
            repository: repo.to_string(),
            offset: 0,
            started_ms: system_ms(now),
        };
        let bytes = serde_json::to_vec(&state)
            .map_err(|e| StorageError::io("serialize upload state", std::io::Error::other(e)))?;
        // Not fsynced: a session lost to a power failure only makes the client start over.
        blocking(move || {
            std::fs::create_dir(&dir).map_err(io_ctx("create", &dir))?;
            std::fs::write(dir.join("data"), []).map_err(io_ctx("create", &dir))?;
            std::fs::write(dir.join("state.json"), &bytes).map_err(io_ctx("create", &dir))
        })
        .await?;
        Ok(UploadInfo {
            id,
            repository: repo.to_string(),
            offset: 0,
            started: now,
            updated: now,
        })
    }

    async fn upload_info(&self, repo: &str, id: &str) -> StorageResult<UploadInfo> {
        let (state, updated) = self.read_state(Some(repo), id).await?;
        Ok(UploadInfo {
            id: id.to_string(),
            repository: state.repository,
            offset: state.offset,
            started: UNIX_EPOCH + Duration::from_millis(state.started_ms),
            updated,
        })
    }

    async fn append_upload(
        &self,
        repo: &str,
        id: &str,
        start: u64,
        mut body: ByteStream,
        limit: u64,
    ) -> StorageResult<u64> {
        let dir = self.upload_dir(id)?;
        let mut running = self.uploads.lock(id).await;
        let (mut state, _) = self.read_state(Some(repo), id).await?;
        if state.offset != start {
            return Err(StorageError::OutOfOrder {
                id: id.to_string(),
                requested: start,
                current: state.offset,
            });
        }
        let data = dir.join("data");
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .await
            .map_err(io_ctx("open", &data))?;
        // Bytes past the persisted offset were never acknowledged: drop them.
        file.set_len(state.offset)
            .await
            .map_err(io_ctx("truncate", &data))?;
        let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        file.seek(std::io::SeekFrom::Start(state.offset))
            .await
            .map_err(io_ctx("seek", &data))?;
        let mut hasher = match running.hasher.take() {
            Some(h) if running.offset == state.offset => Some(h),
            _ => None,
        };
        let mut offset = state.offset;
        let mut body_error = None;
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => {
                    if offset + chunk.len() as u64 > limit {
                        // Refuse the whole chunk: the session stays where it was.
                        drop(file);
                        let f = tokio::fs::OpenOptions::new()
                            .write(true)
                            .open(&data)
                            .await
                            .map_err(io_ctx("open", &data))?;
                        f.set_len(state.offset)
                            .await
                            .map_err(io_ctx("truncate", &data))?;
                        return Err(StorageError::TooLarge {
                            id: id.to_string(),
                            limit,
                        });
                    }
                    file.write_all(&chunk)
                        .await
                        .map_err(io_ctx("write", &data))?;
                    if let Some(h) = hasher.as_mut() {
                        h.update(&chunk);
                    }
                    offset += chunk.len() as u64;
                }
                Err(e) => {
                    body_error = Some(e);
                    break;
                }
            }
        }
        file.flush().await.map_err(io_ctx("write", &data))?;
        file.get_mut()
            .sync_data()
            .await
            .map_err(io_ctx("fsync", &data))?;
        if offset != state.offset {
            state.offset = offset;
            self.write_state(id, &state).await?;
        }
        running.offset = offset;
        running.hasher = hasher;
        match body_error {
            Some(e) => Err(StorageError::Body(e)),
            None => Ok(offset),
        }
    }

    async fn finish_upload(
        &self,
        repo: &str,
        id: &str,
        digest: &Digest,
    ) -> StorageResult<BlobMeta> {
        let dir = self.upload_dir(id)?;
        let mut running = self.uploads.lock(id).await;
        let (state, _) = self.read_state(Some(repo), id).await?;
        let data = dir.join("data");
        let cached = match running.hasher.take() {
            Some(h) if running.offset == state.offset => Some(h.finish()),
            _ => None,
        };
        let offset = state.offset;
        let blob = self.blob_path(digest);
        let expected = *digest;
        let result = blocking(move || {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&data)
                .map_err(io_ctx("open", &data))?;
            if file.metadata().map_err(io_ctx("stat", &data))?.len() != offset {
                file.set_len(offset).map_err(io_ctx("truncate", &data))?;
            }
            let actual = match cached {
                Some(d) => d,
                None => hash_file_prefix(&data, offset)?,
            };
            if actual != expected {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(StorageError::DigestMismatch { expected, actual });
            }
            if !blob.is_file() {
                file.sync_all().map_err(io_ctx("fsync", &data))?;
                // The grace period of the garbage collector starts now, not at the last
                // write of a slow upload.
                file.set_modified(SystemTime::now())
                    .map_err(io_ctx("touch", &data))?;
                let parent = blob
                    .parent()
                    .ok_or_else(|| StorageError::Corrupt(blob.display().to_string()))?;
                ensure_dir(parent)?;
                rename(&data, &blob)?;
                fsync_dir(parent)?;
            } else {
                touch(&blob).map_err(io_ctx("touch", &blob))?;
            }
            drop(file);
            std::fs::remove_dir_all(&dir).map_err(io_ctx("remove", &dir))?;
            std::fs::metadata(&blob)
                .map(|m| to_meta(&m))
                .map_err(io_ctx("stat", &blob))
        })
        .await;
        running.forget();
        result
    }

    async fn cancel_upload(&self, repo: &str, id: &str) -> StorageResult<bool> {
        let dir = self.upload_dir(id)?;
        let running = self.uploads.lock(id).await;
        match self.read_state(Some(repo), id).await {
            Ok(_) => {}
            Err(StorageError::UploadNotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        blocking(move || std::fs::remove_dir_all(&dir).map_err(io_ctx("remove", &dir))).await?;
        running.forget();
        Ok(true)
    }

    async fn list_uploads(&self) -> StorageResult<Vec<UploadInfo>> {
        let base = self.root.join("uploads");
        let ids = blocking(move || file_names(&base)).await?;
        let mut out = Vec::new();
        for id in ids {
            match self.read_state(None, &id).await {
                Ok((state, updated)) => out.push(UploadInfo {
                    id,
                    repository: state.repository,
                    offset: state.offset,
                    started: UNIX_EPOCH + Duration::from_millis(state.started_ms),
                    updated,
                }),
                Err(StorageError::UploadNotFound(_)) | Err(StorageError::Corrupt(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn purge_uploads(&self, before: SystemTime) -> StorageResult<usize> {
        let base = self.root.join("uploads");
        let ids = {
            let base = base.clone();
            blocking(move || file_names(&base)).await?
        };
        let mut purged = 0;
        for id in ids {
            let Ok(dir) = self.upload_dir(&id) else {
                // Not ours (a stray file): leave it alone.
                continue;
            };
            let guard = self.uploads.lock(&id).await;
            let stale = {
                let dir = dir.clone();
                blocking(move || {
                    // The newest of the session's files tells when it last made progress; a
                    // session torn by a crash (no state or no data) counts from its directory.
                    let mut newest = std::fs::metadata(&dir)
                        .and_then(|m| m.modified())
                        .unwrap_or(UNIX_EPOCH);
                    for f in ["state.json", "data"] {
                        if let Ok(t) = std::fs::metadata(dir.join(f)).and_then(|m| m.modified()) {
                            newest = newest.max(t);
                        }
                    }
                    Ok(newest < before)
                })
                .await?
            };
            if stale {
                let d = dir.clone();
                blocking(move || match std::fs::remove_dir_all(&d) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StorageError::io(format!("remove {}", d.display()), e)),
                })
                .await?;
                purged += 1;
                guard.forget();
            }
        }
        Ok(purged)
    }

    fn upload_locks(&self) -> usize {
        self.uploads.len()
    }
}

#[cfg(test)]
mod tests {
    //! Filesystem-only checks. The behaviour every backend shares is tested for the
    //! filesystem and S3 alike in `tests/storage_suite.rs`.
    use super::*;
    use futures::stream;

    fn body(parts: &[&[u8]]) -> ByteStream {
        let items: Vec<Result<Bytes, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        Box::pin(stream::iter(items))
    }

    #[tokio::test]
    async fn blobs_live_under_a_two_hex_fan_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        let d = Digest::of(b"hello world");
        s.put_blob_bytes(&d, Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        assert!(s
            .blob_path(&d)
            .ends_with(format!("blobs/sha256/{}/{}", &d.hex()[..2], d.hex())));
        assert!(s.blob_path(&d).is_file());
    }

    #[tokio::test]
    async fn bytes_past_the_persisted_offset_are_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        let u = s.create_upload("r").await.unwrap();
        s.append_upload("r", &u.id, 0, body(&[b"part1"]), 100)
            .await
            .unwrap();
        // Garbage past the persisted offset (a chunk cut by a crash) is dropped at the next
        // append, by a restarted server that has no running hash.
        let data = dir.path().join("uploads").join(&u.id).join("data");
        let garbage = |path: &Path| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .unwrap()
                .write_all(b"GARBAGE")
                .unwrap()
        };
        garbage(&data);
        drop(s);
        let s = FsStorage::open(dir.path()).unwrap();
        s.append_upload("r", &u.id, 5, body(&[b"part2"]), 100)
            .await
            .unwrap();
        s.finish_upload("r", &u.id, &Digest::of(b"part1part2"))
            .await
            .unwrap();
        // ... and at finish.
        let u = s.create_upload("r").await.unwrap();
        s.append_upload("r", &u.id, 0, body(&[b"xy"]), 100)
            .await
            .unwrap();
        drop(s);
        let s = FsStorage::open(dir.path()).unwrap();
        garbage(&dir.path().join("uploads").join(&u.id).join("data"));
        s.finish_upload("r", &u.id, &Digest::of(b"xy"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn purge_removes_torn_sessions_and_leaves_stray_names() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        let fresh = s.create_upload("r").await.unwrap();
        // A directory torn by a crash (no state.json) is purged by its own age.
        let torn = dir
            .path()
            .join("uploads")
            .join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir(&torn).unwrap();
        let past = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(&torn)
            .unwrap()
            .set_modified(past)
            .unwrap();
        // Stray names are left alone.
        std::fs::write(dir.path().join("uploads/README"), b"x").unwrap();
        let cutoff = SystemTime::now() - Duration::from_secs(60);
        assert_eq!(s.purge_uploads(cutoff).await.unwrap(), 1);
        assert!(s.upload_info("r", &fresh.id).await.is_ok());
        assert!(!torn.exists());
        assert!(dir.path().join("uploads/README").exists());
    }

    async fn collect(mut s: ByteStream) -> std::io::Result<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut items = 0;
        while let Some(chunk) = s.next().await {
            let chunk = chunk?;
            assert!(chunk.len() as u64 <= STREAM_CHUNK);
            out.extend_from_slice(&chunk);
            items += 1;
        }
        Ok((out, items))
    }

    #[tokio::test]
    async fn large_reads_stream_in_chunks_and_keep_ranges_exact() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..(3 * STREAM_CHUNK + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let d = Digest::of(&data);
        s.put_blob_bytes(&d, Bytes::from(data.clone()))
            .await
            .unwrap();
        let (all, items) = collect(s.read_blob(&d, None).await.unwrap()).await.unwrap();
        assert!(all == data);
        assert_eq!(items, 4);
        let c = STREAM_CHUNK;
        for (start, len) in [
            (0, 1),
            (c - 10, 20),
            (c - 10, 2 * c + 20),
            (3 * c, 12_345),
            (5, 0),
            (data.len() as u64, 0),
        ] {
            let (got, _) = collect(s.read_blob(&d, Some((start, len))).await.unwrap())
                .await
                .unwrap();
            assert!(
                got[..] == data[start as usize..(start + len) as usize],
                "{start}+{len}"
            );
        }
        assert!(matches!(
            s.read_blob(&d, Some((data.len() as u64, 1))).await,
            Err(StorageError::Range { .. })
        ));
    }

    #[tokio::test]
    async fn a_blob_cut_short_under_a_reader_is_an_error_not_a_short_body() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).unwrap();
        let data = vec![3u8; (2 * STREAM_CHUNK) as usize + 1];
        let d = Digest::of(&data);
        s.put_blob_bytes(&d, Bytes::from(data)).await.unwrap();
        let stream = s.read_blob(&d, None).await.unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(s.blob_path(&d))
            .unwrap()
            .set_len(STREAM_CHUNK + 5)
            .unwrap();
        let err = collect(stream).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = FsStorage::open(dir.path()).unwrap();
        assert!(matches!(
            FsStorage::open(dir.path()),
            Err(StorageError::Locked(_))
        ));
        drop(first);
        FsStorage::open(dir.path()).unwrap();
    }
}
