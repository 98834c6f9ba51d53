//! The storage behind the registry: a content-addressed blob store plus per-repository
//! metadata (blob links, manifests, tags, referrers) and resumable upload sessions.
//!
//! The trait speaks in streams and byte ranges, never in local paths, so that an object
//! store (S3-compatible, through `object_store`) can implement it as well as the
//! filesystem ([`FsStorage`]) and an S3-compatible bucket ([`S3Storage`]).
//!
//! Rules every implementation keeps:
//! - A blob becomes visible under its digest only once its bytes are verified against that
//!   digest and durable. A reader never sees a partial blob.
//! - A repository serves only blobs linked into it ([`Storage::link_blob`]), as distribution
//!   does: knowing a digest is not enough to read a blob pushed to another repository.
//! - Upload sessions live apart from blobs; their offset is persisted after each append, so
//!   an upload can be resumed after a restart.

mod fs;
mod s3;
mod upload_locks;

pub use fs::FsStorage;
pub use s3::{S3Config, S3Storage};

use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use gantry_oci::Digest;

/// A stream of bytes read from or written to storage.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// What storage knows about a stored blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobMeta {
    /// Size in bytes.
    pub size: u64,
    /// Last time the blob was written or touched (the garbage collector's grace period
    /// counts from here).
    pub modified: SystemTime,
}

/// State of an upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// Session id (a UUID).
    pub id: String,
    /// Repository the session belongs to.
    pub repository: String,
    /// Bytes received and persisted so far.
    pub offset: u64,
    /// When the session started.
    pub started: SystemTime,
    /// When the session last received bytes.
    pub updated: SystemTime,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The blob is not stored.
    #[error("blob {0} not found")]
    BlobNotFound(Digest),
    /// The upload session does not exist (never started, finished, cancelled, purged, or
    /// belongs to another repository).
    #[error("upload {0} not found")]
    UploadNotFound(String),
    /// An append did not start at the session's current offset.
    #[error("upload {id}: chunk starts at {requested} but the upload is at offset {current}")]
    OutOfOrder {
        /// Session id.
        id: String,
        /// Offset the chunk claimed to start at.
        requested: u64,
        /// The session's offset.
        current: u64,
    },
    /// The upload would exceed the size limit.
    #[error("upload {id}: more than the limit of {limit} bytes")]
    TooLarge {
        /// Session id.
        id: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The uploaded bytes do not hash to the digest the client named.
    #[error("uploaded content has digest {actual}, not {expected}")]
    DigestMismatch {
        /// Digest the client named.
        expected: Digest,
        /// Digest of the received bytes.
        actual: Digest,
    },
    /// Reading the client's request body failed (connection dropped, say). Bytes received
    /// before the failure are kept.
    #[error("reading the request body: {0}")]
    Body(#[source] std::io::Error),
    /// A requested byte range lies outside the blob.
    #[error("range {start}+{len} is outside a blob of {size} bytes")]
    Range {
        /// First byte requested.
        start: u64,
        /// Length requested.
        len: u64,
        /// Blob size.
        size: u64,
    },
    /// An I/O operation of the backend failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path or key.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the storage open.
    #[error("storage {0} is in use by another process")]
    Locked(std::path::PathBuf),
    /// Stored metadata could not be understood.
    #[error("corrupt storage metadata at {0}")]
    Corrupt(String),
}

impl StorageError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result of storage operations.
pub type StorageResult<T> = Result<T, StorageError>;

/// The registry's storage backend.
///
/// Repository names and tags passed in are already validated ([`gantry_oci::names`]).
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    // ----- blobs (global, content-addressed) -----

    /// Size and modification time of a blob, `None` when it is not stored.
    async fn stat_blob(&self, digest: &Digest) -> StorageResult<Option<BlobMeta>>;

    /// Streams `len` bytes of a blob from `start` (the whole blob for `None`).
    async fn read_blob(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> StorageResult<ByteStream>;

    /// Reads a small blob (a manifest or config) whole; fails when it exceeds `max` bytes.
    async fn read_blob_bytes(&self, digest: &Digest, max: u64) -> StorageResult<Bytes>;

    /// Stores `bytes` as a blob after checking that they hash to `digest`; a no-op (but a
    /// touch) when the blob is already stored.
    async fn put_blob_bytes(&self, digest: &Digest, bytes: Bytes) -> StorageResult<BlobMeta>;

    /// Sets a blob's modification time to now (restarts its garbage-collection grace
    /// period).
    async fn touch_blob(&self, digest: &Digest) -> StorageResult<()>;

    /// Deletes a blob from the store; `false` when it was not there.
    async fn delete_blob(&self, digest: &Digest) -> StorageResult<bool>;

    /// Every stored blob.
    async fn list_blobs(&self) -> StorageResult<Vec<(Digest, BlobMeta)>>;

    // ----- repository blob links -----

    /// Makes a stored blob readable in `repo`.
    async fn link_blob(&self, repo: &str, digest: &Digest) -> StorageResult<()>;

    /// Whether `digest` is linked into `repo`.
    async fn blob_linked(&self, repo: &str, digest: &Digest) -> StorageResult<bool>;

    /// Removes a blob link; `false` when there was none.
    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> StorageResult<bool>;

    /// Every blob linked into `repo`.
    async fn list_blob_links(&self, repo: &str) -> StorageResult<Vec<Digest>>;

    // ----- manifests -----

    /// Records that the manifest stored as blob `digest` belongs to `repo`, with its media
    /// type. The blob must be stored first.
    async fn put_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: &str,
    ) -> StorageResult<()>;

    /// The media type of manifest `digest` in `repo`, `None` when `repo` has no such
    /// manifest.
    async fn manifest_media_type(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> StorageResult<Option<String>>;

    /// Removes a manifest from `repo`; `false` when it was not there.
    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> StorageResult<bool>;

    /// Every manifest of `repo`.
    async fn list_manifests(&self, repo: &str) -> StorageResult<Vec<Digest>>;

    // ----- tags -----

    /// Points `tag` of `repo` at manifest `digest`.
    async fn put_tag(&self, repo: &str, tag: &str, digest: &Digest) -> StorageResult<()>;

    /// The manifest `tag` points at.
    async fn get_tag(&self, repo: &str, tag: &str) -> StorageResult<Option<Digest>>;

    /// Removes a tag; `false` when it was not there.
    async fn delete_tag(&self, repo: &str, tag: &str) -> StorageResult<bool>;

    /// Every tag of `repo`, sorted.
    async fn list_tags(&self, repo: &str) -> StorageResult<Vec<String>>;

    // ----- referrers -----

    /// Records that manifest `referrer` of `repo` has subject `subject`; `descriptor` is the
    /// JSON descriptor the referrers API returns for it.
    async fn put_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
        descriptor: Bytes,
    ) -> StorageResult<()>;

    /// Forgets a referrer.
    async fn delete_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> StorageResult<()>;

    /// The descriptors of every referrer of `subject` in `repo`, ordered by referrer digest.
    async fn list_referrers(&self, repo: &str, subject: &Digest) -> StorageResult<Vec<Bytes>>;

    // ----- chunk indexes (delta push v2) -----

    /// Records that chunk index `index` was checked against layer `layer` of `repo` (every
    /// chunk hashed at its offset): the chunk lookup may answer from it.
    async fn put_chunk_index(
        &self,
        repo: &str,
        layer: &Digest,
        index: &Digest,
    ) -> StorageResult<()>;

    /// Every (layer, chunk index) recorded for `repo`, ordered by layer digest.
    async fn list_chunk_indexes(&self, repo: &str) -> StorageResult<Vec<(Digest, Digest)>>;

    // ----- repositories -----

    /// Whether `repo` holds any blob link or manifest.
    async fn repository_exists(&self, repo: &str) -> StorageResult<bool>;

    /// Every repository, sorted.
    async fn list_repositories(&self) -> StorageResult<Vec<String>>;

    // ----- uploads -----

    /// Starts an upload session for `repo`.
    async fn create_upload(&self, repo: &str) -> StorageResult<UploadInfo>;

    /// The state of an upload session of `repo`.
    async fn upload_info(&self, repo: &str, id: &str) -> StorageResult<UploadInfo>;

    /// Appends `body` to the session, which must be at offset `start`; the session may not
    /// grow beyond `limit` bytes. Returns the new offset, persisted before returning. When
    /// the body fails midway, the bytes received so far are kept and the error is
    /// [`StorageError::Body`].
    async fn append_upload(
        &self,
        repo: &str,
        id: &str,
        start: u64,
        body: ByteStream,
        limit: u64,
    ) -> StorageResult<u64>;

    /// Ends the session: verifies that its bytes hash to `digest` and stores them as that
    /// blob, durably, before returning. The session is gone afterwards, also on a digest
    /// mismatch. The blob is not linked into any repository.
    async fn finish_upload(&self, repo: &str, id: &str, digest: &Digest)
        -> StorageResult<BlobMeta>;

    /// Cancels a session; `false` when it did not exist.
    async fn cancel_upload(&self, repo: &str, id: &str) -> StorageResult<bool>;

    /// Every upload session.
    async fn list_uploads(&self) -> StorageResult<Vec<UploadInfo>>;

    /// Removes upload sessions that received nothing since `before`; returns how many.
    async fn purge_uploads(&self, before: SystemTime) -> StorageResult<usize>;

    /// Upload sessions with state in memory (locks, running hashes), for tests: requests
    /// naming sessions that do not exist must leave none.
    #[doc(hidden)]
    fn upload_locks(&self) -> usize {
        0
    }
}

/// Opens the storage `config` asks for: the filesystem under `root`, or the bucket of
/// The digest a small record holds (a tag, a chunk index record), as both backends write
/// it: its text, surrounding whitespace ignored. Anything else is [`StorageError::Corrupt`]
/// naming `what`.
pub(crate) fn digest_record(bytes: &[u8], what: impl FnOnce() -> String) -> StorageResult<Digest> {
    String::from_utf8_lossy(bytes)
        .trim()
        .parse()
        .map_err(|_| StorageError::Corrupt(what()))
}

/// `[storage] kind = "s3"`.
pub async fn open(config: &crate::Config) -> StorageResult<std::sync::Arc<dyn Storage>> {
    match &config.storage {
        crate::config::StorageConfig::Fs => {
            let root = config.root.clone();
            let storage = tokio::task::spawn_blocking(move || FsStorage::open(root))
                .await
                .map_err(|e| StorageError::io("open storage", std::io::Error::other(e)))??;
            Ok(std::sync::Arc::new(storage))
        }
        crate::config::StorageConfig::S3(s3) => {
            Ok(std::sync::Arc::new(S3Storage::connect(s3).await?))
        }
    }
}
