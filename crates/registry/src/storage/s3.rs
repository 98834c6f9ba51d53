//! S3-compatible object storage (through the `object_store` crate), so that several
//! registry replicas can serve one store.
//!
//! Keys under the configured prefix:
//!
//! ```text
//! blobs/sha256/<64 hex>                                  blob bytes
//! touched/sha256/<64 hex>                                empty; its time is the blob's last touch
//! repositories/<name>/_layers/sha256/<hex>               link: blob readable in <name>
//! repositories/<name>/_manifests/revisions/sha256/<hex>  manifest of <name>; holds its media type
//! repositories/<name>/_manifests/tags/<tag>              holds the digest the tag points at
//! repositories/<name>/_referrers/sha256/<subject hex>/<referrer hex>
//!                                                        descriptor JSON of a referrer
//! uploads/<uuid>/state.json                              repository, offset, start time, parts
//! uploads/<uuid>/part-<n>-<random>                       bytes of one append
//! ```
//!
//! How the filesystem's guarantees carry over:
//! - Every object is written by a single PUT (or a multipart upload, invisible until it is
//!   completed), which S3 makes visible atomically and durably before answering.
//! - Each append of an upload session is stored as its own part object; `state.json`
//!   (rewritten after the part is stored) lists the parts that count, so a part written by
//!   an append that failed before updating the state is ignored. Part names are unique, so
//!   two replicas appending to one session at once cannot make the state name bytes that a
//!   replica's cached hash did not see.
//! - A blob is written under `blobs/` only after its bytes were hashed and matched the
//!   digest: by a server-side copy of the single part (hash known from the appends), or by
//!   streaming the parts into a multipart upload that is completed only when the hash of
//!   the bytes streamed matches (aborted otherwise).
//! - S3 cannot change an object's modification time, so touching a blob writes an empty
//!   marker under `touched/`; a blob's time is the later of the two.
//!
//! Where this is weaker than [`super::FsStorage`]: see the "Limitations" section of
//! [`S3Storage`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use gantry_oci::{Digest, DigestHasher};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use serde::{Deserialize, Serialize};

use super::upload_locks::{SessionState, UploadLocks};
use super::{
    digest_record, BlobMeta, ByteStream, Storage, StorageError, StorageResult, UploadInfo,
};

/// Size of the parts of multipart uploads (S3 wants at least 5 MiB for all but the last);
/// appends and blobs up to this size are written with one PUT.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Multipart parts uploaded concurrently by one writer.
const PART_CONCURRENCY: usize = 4;
/// Largest object S3 copies with one CopyObject request.
const MAX_COPY: u64 = 5 * 1024 * 1024 * 1024;
/// Referrer descriptors read concurrently.
const READ_CONCURRENCY: usize = 16;

/// `[storage] kind = "s3"`: an S3-compatible bucket.
///
/// ```toml
/// [storage]
/// kind = "s3"
/// bucket = "gantry"
/// endpoint = "http://127.0.0.1:9000"  # omit for AWS
/// region = "us-east-1"
/// access_key_id = "…"                 # omit both to use AWS_* environment variables
/// secret_access_key = "…"
/// allow_http = true                   # needed for an http:// endpoint
/// prefix = "registry"                 # key prefix inside the bucket (optional)
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name (must exist).
    pub bucket: String,
    /// Endpoint URL of an S3-compatible server; AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region (`us-east-1` when absent and not in the environment).
    #[serde(default)]
    pub region: Option<String>,
    /// Access key id; with `secret_access_key`. Absent: `AWS_ACCESS_KEY_ID` and the rest of
    /// the AWS environment (instance metadata, web identity) are used.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Allow a plain-HTTP endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// Key prefix inside the bucket, so that one bucket can hold several registries.
    #[serde(default)]
    pub prefix: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "<hidden>");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("allow_http", &self.allow_http)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Storage in an S3-compatible bucket (see the module documentation for the layout).
///
/// Several processes may serve one bucket at once: every piece of state (blobs, metadata,
/// upload sessions and their offsets) lives in the bucket, so an upload started on one
/// replica can be continued and finished on another.
///
/// # Limitations compared with the filesystem
/// - Garbage collection's lock is in memory, per process: a collection on one replica does
///   not exclude a push on another. Only the grace period protects a blob that another
///   replica uploaded but whose manifest is not pushed yet (or that it just linked or
///   mounted). Run GC on one replica, with a grace period much longer than a push.
/// - Upload sessions are locked per process: two replicas appending to one session at the
///   same time (a misbehaving client) may lose one append; the digest check at the end
///   still refuses wrong bytes.
/// - Times come from the server's `Last-Modified`, with one-second resolution and the
///   server's clock; replicas compare them with their own clocks (grace period, stale
///   uploads), so clocks must be roughly in sync.
/// - A multipart upload whose abort failed (crash, network) leaves invisible parts that
///   cost storage: configure the bucket's lifecycle rule `AbortIncompleteMultipartUpload`.
/// - Listing (tags, catalog, garbage collection) reads every key under a prefix.
pub struct S3Storage {
    store: Arc<dyn ObjectStore>,
    /// Key prefix, empty or ending with `/`.
    prefix: String,
    /// Number of path parts of `prefix`.
    prefix_parts: usize,
    /// Per-upload locks with the running hash of the bytes stored so far.
    uploads: UploadLocks<RunningHash>,
}

#[derive(Default)]
struct RunningHash {
    /// Offset and last part the hasher has seen; valid only with `hasher`.
    offset: u64,
    last_part: Option<String>,
    hasher: Option<DigestHasher>,
}

impl SessionState for RunningHash {
    fn is_empty(&self) -> bool {
        self.hasher.is_none()
    }
}

#[derive(Serialize, Deserialize)]
struct UploadState {
    repository: String,
    offset: u64,
    started_ms: u64,
    parts: Vec<UploadPart>,
}

#[derive(Clone, Serialize, Deserialize)]
struct UploadPart {
    name: String,
    len: u64,
}

fn s3_err(context: impl Into<String>, e: object_store::Error) -> StorageError {
    StorageError::io(context, std::io::Error::other(e))
}

fn system_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn modified(meta: &ObjectMeta) -> SystemTime {
    SystemTime::from(meta.last_modified)
}

/// Writes one object: buffered and PUT once when small, multipart when it grows past
/// [`PART_SIZE`] (invisible until [`ObjectWriter::finish`]).
enum ObjectWriter {
    Buffer(Vec<Bytes>, usize),
    Multipart(WriteMultipart),
}

impl ObjectWriter {
    fn new() -> Self {
        ObjectWriter::Buffer(Vec::new(), 0)
    }

    async fn write(
        &mut self,
        store: &dyn ObjectStore,
        key: &Path,
        chunk: Bytes,
    ) -> Result<(), object_store::Error> {
        match self {
            ObjectWriter::Buffer(parts, len) => {
                *len += chunk.len();
                parts.push(chunk);
                if *len >= PART_SIZE {
                    let upload = store.put_multipart(key).await?;
                    let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                    for b in parts.drain(..) {
                        w.put(b);
                    }
                    *self = ObjectWriter::Multipart(w);
                }
            }
            ObjectWriter::Multipart(w) => {
                w.wait_for_capacity(PART_CONCURRENCY).await?;
                w.put(chunk);
            }
        }
        Ok(())
    }

    async fn finish(self, store: &dyn ObjectStore, key: &Path) -> Result<(), object_store::Error> {
        match self {
            ObjectWriter::Buffer(parts, _) => {
                store.put(key, parts.into_iter().collect()).await?;
            }
            ObjectWriter::Multipart(w) => {
                w.finish().await?;
            }
        }
        Ok(())
    }

    async fn abort(self) {
        if let ObjectWriter::Multipart(w) = self {
            if let Err(e) = w.abort().await {
                tracing::warn!(error = %e, "aborting a multipart upload");
            }
        }
    }
}

impl S3Storage {
    /// Connects to the bucket of `config` and checks that it can be listed.
    pub async fn connect(config: &S3Config) -> StorageResult<Self> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&config.bucket);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token);
        }
        builder = builder.with_allow_http(config.allow_http);
        let store = builder
            .build()
            .map_err(|e| s3_err(format!("configure S3 bucket {}", config.bucket), e))?;
        let storage = S3Storage::new(Arc::new(store), &config.prefix);
        let probe = storage.key("blobs");
        storage
            .store
            .list_with_delimiter(Some(&probe))
            .await
            .map_err(|e| s3_err(format!("list bucket {}", config.bucket), e))?;
        Ok(storage)
    }

    /// Storage over any object store, under key `prefix` (may be empty).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        let prefix_path = Path::from(prefix);
        let prefix_parts = prefix_path.parts().count();
        let prefix = if prefix_parts == 0 {
            String::new()
        } else {
            format!("{prefix_path}/")
        };
        S3Storage {
            store,
            prefix,
            prefix_parts,
            uploads: UploadLocks::new(),
        }
    }

    fn key(&self, rel: &str) -> Path {
        Path::from(format!("{}{rel}", self.prefix))
    }

    /// Path parts of `location` after the prefix.
    fn rel_parts(&self, location: &Path) -> Vec<String> {
        location
            .parts()
            .skip(self.prefix_parts)
            .map(|p| p.as_ref().to_string())
            .collect()
    }

    fn blob_key(&self, digest: &Digest) -> Path {
        self.key(&format!("blobs/sha256/{}", digest.hex()))
    }

    fn touch_key(&self, digest: &Digest) -> Path {
        self.key(&format!("touched/sha256/{}", digest.hex()))
    }

    fn repo_key(&self, repo: &str, rest: &str) -> Path {
        self.key(&format!("repositories/{repo}/{rest}"))
    }

    fn link_key(&self, repo: &str, digest: &Digest) -> Path {
        self.repo_key(repo, &format!("_layers/sha256/{}", digest.hex()))
    }

    fn manifest_key(&self, repo: &str, digest: &Digest) -> Path {
        self.repo_key(
            repo,
            &format!("_manifests/revisions/sha256/{}", digest.hex()),
        )
    }

    fn tag_key(&self, repo: &str, tag: &str) -> Path {
        self.repo_key(repo, &format!("_manifests/tags/{tag}"))
    }

    fn referrers_key(&self, repo: &str, subject: &Digest) -> Path {
        self.repo_key(repo, &format!("_referrers/sha256/{}", subject.hex()))
    }

    fn chunk_indexes_key(&self, repo: &str) -> Path {
        self.repo_key(repo, "_gantry/chunk-indexes/sha256")
    }

    fn upload_key(&self, id: &str) -> StorageResult<Path> {
        // Only ids this storage generated (hyphenated lowercase UUIDs) name a session.
        match uuid::Uuid::parse_str(id) {
            Ok(u) if u.hyphenated().to_string() == id => Ok(self.key(&format!("uploads/{id}"))),
            _ => Err(StorageError::UploadNotFound(id.to_string())),
        }
    }

    async fn head(&self, key: &Path) -> StorageResult<Option<ObjectMeta>> {
        match self.store.head(key).await {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err(format!("head {key}"), e)),
        }
    }

    async fn get_small(&self, key: &Path) -> StorageResult<Option<(Bytes, ObjectMeta)>> {
        let result = match self.store.get(key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(s3_err(format!("get {key}"), e)),
        };
        let meta = result.meta.clone();
        match result.bytes().await {
            Ok(b) => Ok(Some((b, meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err(format!("get {key}"), e)),
        }
    }

    async fn put_small(&self, key: &Path, bytes: impl Into<PutPayload>) -> StorageResult<()> {
        self.store
            .put(key, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| s3_err(format!("put {key}"), e))
    }

    async fn delete(&self, key: &Path) -> StorageResult<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_err(format!("delete {key}"), e)),
        }
    }

    /// Deletes `key`; `false` when it was not there.
    async fn delete_existing(&self, key: &Path) -> StorageResult<bool> {
        if self.head(key).await?.is_none() {
            return Ok(false);
        }
        self.delete(key).await?;
        Ok(true)
    }

    /// Every object under `prefix` (recursively).
    async fn list(&self, prefix: &Path) -> StorageResult<Vec<ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| s3_err(format!("list {prefix}"), e))
    }

    /// Last path parts of the objects under `prefix`, sorted.
    async fn names(&self, prefix: &Path) -> StorageResult<Vec<String>> {
        let mut names: Vec<String> = self
            .list(prefix)
            .await?
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn digests(&self, prefix: &Path) -> StorageResult<Vec<Digest>> {
        Ok(self
            .names(prefix)
            .await?
            .iter()
            .filter_map(|n| Digest::from_hex(n).ok())
            .collect())
    }

    async fn delete_prefix(&self, prefix: &Path) -> StorageResult<()> {
        for meta in self.list(prefix).await? {
            self.delete(&meta.location).await?;
        }
        Ok(())
    }

    async fn read_state(
        &self,
        repo: Option<&str>,
        id: &str,
    ) -> StorageResult<(UploadState, SystemTime)> {
        let key = self.upload_key(id)?.join("state.json");
        let Some((bytes, meta)) = self.get_small(&key).await? else {
            return Err(StorageError::UploadNotFound(id.to_string()));
        };
        let state: UploadState = serde_json::from_slice(&bytes)
            .map_err(|_| StorageError::Corrupt(format!("uploads/{id}/state.json")))?;
        if let Some(repo) = repo {
            if state.repository != repo {
                return Err(StorageError::UploadNotFound(id.to_string()));
            }
        }
        Ok((state, modified(&meta)))
    }

    async fn write_state(&self, id: &str, state: &UploadState) -> StorageResult<()> {
        let key = self.upload_key(id)?.join("state.json");
        let bytes = serde_json::to_vec(state)
            .map_err(|e| StorageError::io("serialize upload state", std::io::Error::other(e)))?;
        self.put_small(&key, bytes).await
    }

    /// Streams the parts of an upload, in order.
    async fn part_stream(
        &self,
        id: &str,
        part: &UploadPart,
    ) -> StorageResult<futures::stream::BoxStream<'static, Result<Bytes, object_store::Error>>>
    {
        let key = self.upload_key(id)?.join(part.name.as_str());
        match self.store.get(&key).await {
            Ok(r) if r.meta.size == part.len => Ok(r.into_stream()),
            Ok(r) => Err(StorageError::Corrupt(format!(
                "{key} holds {} bytes, state says {}",
                r.meta.size, part.len
            ))),
            Err(object_store::Error::NotFound { .. }) => {
                Err(StorageError::UploadNotFound(id.to_string()))
            }
            Err(e) => Err(s3_err(format!("get {key}"), e)),
        }
    }

    /// Hashes the bytes of an upload's parts.
    async fn hash_parts(&self, id: &str, parts: &[UploadPart]) -> StorageResult<Digest> {
        let mut hasher = DigestHasher::new();
        for part in parts {
            let mut stream = self.part_stream(id, part).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| s3_err(format!("read upload {id}"), e))?;
                hasher.update(&chunk);
            }
        }
        Ok(hasher.finish())
    }

    /// Writes the concatenated parts to `target`, making it visible only when their bytes
    /// hash to `expected`.
    async fn compose(
        &self,
        id: &str,
        parts: &[UploadPart],
        target: &Path,
        expected: &Digest,
    ) -> StorageResult<()> {
        let mut writer = ObjectWriter::new();
        let mut hasher = DigestHasher::new();
        let result: StorageResult<()> = async {
            for part in parts {
                let mut stream = self.part_stream(id, part).await?;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| s3_err(format!("read upload {id}"), e))?;
                    hasher.update(&chunk);
                    writer
                        .write(self.store.as_ref(), target, chunk)
                        .await
                        .map_err(|e| s3_err(format!("write {target}"), e))?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            writer.abort().await;
            return Err(e);
        }
        let actual = hasher.finish();
        if actual != *expected {
            writer.abort().await;
            return Err(StorageError::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        writer
            .finish(self.store.as_ref(), target)
            .await
            .map_err(|e| s3_err(format!("write {target}"), e))
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn stat_blob(&self, digest: &Digest) -> StorageResult<Option<BlobMeta>> {
        let blob_key = self.blob_key(digest);
        let touch_key = self.touch_key(digest);
        let (blob, touched) = futures::join!(self.head(&blob_key), self.head(&touch_key));
        let Some(blob) = blob? else {
            return Ok(None);
        };
        let mut time = modified(&blob);
        if let Some(t) = touched? {
            time = time.max(modified(&t));
        }
        Ok(Some(BlobMeta {
            size: blob.size,
            modified: time,
        }))
    }

    async fn read_blob(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> StorageResult<ByteStream> {
        let key = self.blob_key(digest);
        let not_found = |e: object_store::Error| match e {
            object_store::Error::NotFound { .. } => StorageError::BlobNotFound(*digest),
            e => s3_err(format!("get {key}"), e),
        };
        let Some((start, len)) = range else {
            let result = self.store.get(&key).await.map_err(not_found)?;
            return Ok(Box::pin(
                result.into_stream().map_err(std::io::Error::other),
            ));
        };
        let Some(end) = start.checked_add(len) else {
            let size = self.head(&key).await?.map(|m| m.size).unwrap_or(0);
            return Err(StorageError::Range { start, len, size });
        };
        if len == 0 {
            // S3 has no empty range: check the bounds and answer nothing.
            let Some(meta) = self.head(&key).await? else {
                return Err(StorageError::BlobNotFound(*digest));
            };
            if start > meta.size {
                return Err(StorageError::Range {
                    start,
                    len,
                    size: meta.size,
                });
            }
            return Ok(Box::pin(futures::stream::empty()));
        }
        let options = GetOptions {
            range: Some((start..end).into()),
            ..GetOptions::default()
        };
        match self.store.get_opts(&key, options).await {
            // S3 shortens a range that runs past the end: refuse it as the filesystem does.
            Ok(result) if result.meta.size < end => Err(StorageError::Range {
                start,
                len,
                size: result.meta.size,
            }),
            Ok(result) => Ok(Box::pin(
                result.into_stream().map_err(std::io::Error::other),
            )),
            Err(object_store::Error::NotFound { .. }) => Err(StorageError::BlobNotFound(*digest)),
            Err(e) => match self.head(&key).await? {
                // A range starting past the end is refused by the server (416).
                None => Err(StorageError::BlobNotFound(*digest)),
                Some(meta) if end > meta.size => Err(StorageError::Range {
                    start,
                    len,
                    size: meta.size,
                }),
                Some(_) => Err(s3_err(format!("get {key}"), e)),
            },
        }
    }

    async fn read_blob_bytes(&self, digest: &Digest, max: u64) -> StorageResult<Bytes> {
        let key = self.blob_key(digest);
        let result = match self.store.get(&key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StorageError::BlobNotFound(*digest))
            }
            Err(e) => return Err(s3_err(format!("get {key}"), e)),
        };
        let size = result.meta.size;
        if size > max {
            return Err(StorageError::Range {
                start: 0,
                len: max,
                size,
            });
        }
        result
            .bytes()
            .await
            .map_err(|e| s3_err(format!("get {key}"), e))
    }

    async fn put_blob_bytes(&self, digest: &Digest, bytes: Bytes) -> StorageResult<BlobMeta> {
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StorageError::DigestMismatch {
                expected: *digest,
                actual,
            });
        }
        let key = self.blob_key(digest);
        if self.head(&key).await?.is_some() {
            self.touch_blob(digest).await?;
        } else {
            self.put_small(&key, bytes).await?;
        }
        self.stat_blob(digest)
            .await?
            .ok_or(StorageError::BlobNotFound(*digest))
    }

    async fn touch_blob(&self, digest: &Digest) -> StorageResult<()> {
        if self.head(&self.blob_key(digest)).await?.is_none() {
            return Err(StorageError::BlobNotFound(*digest));
        }
        self.put_small(&self.touch_key(digest), PutPayload::new())
            .await
    }

    async fn delete_blob(&self, digest: &Digest) -> StorageResult<bool> {
        let existed = self.delete_existing(&self.blob_key(digest)).await?;
        self.delete(&self.touch_key(digest)).await?;
        Ok(existed)
    }

    async fn list_blobs(&self) -> StorageResult<Vec<(Digest, BlobMeta)>> {
        let (blobs_key, touched_key) = (self.key("blobs/sha256"), self.key("touched/sha256"));
        let (blobs, touched) = futures::join!(self.list(&blobs_key), self.list(&touched_key));
        let touched: HashMap<Digest, SystemTime> = touched?
            .iter()
            .filter_map(|m| {
                let d = Digest::from_hex(m.location.filename()?).ok()?;
                Some((d, modified(m)))
            })
            .collect();
        Ok(blobs?
            .iter()
            .filter_map(|m| {
                let digest = Digest::from_hex(m.location.filename()?).ok()?;
                let mut time = modified(m);
                if let Some(t) = touched.get(&digest) {
                    time = time.max(*t);
                }
                Some((
                    digest,
                    BlobMeta {
                        size: m.size,
                        modified: time,
                    },
                ))
            })
            .collect())
    }

    async fn link_blob(&self, repo: &str, digest: &Digest) -> StorageResult<()> {
        self.put_small(&self.link_key(repo, digest), digest.to_string())
            .await
    }

    async fn blob_linked(&self, repo: &str, digest: &Digest) -> StorageResult<bool> {
        Ok(self.head(&self.link_key(repo, digest)).await?.is_some())
    }

    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> StorageResult<bool> {
        self.delete_existing(&self.link_key(repo, digest)).await
    }

    async fn list_blob_links(&self, repo: &str) -> StorageResult<Vec<Digest>> {
        self.digests(&self.repo_key(repo, "_layers/sha256")).await
    }

    async fn put_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        media_type: &str,
    ) -> StorageResult<()> {
        self.put_small(
            &self.manifest_key(repo, digest),
            Bytes::copy_from_slice(media_type.as_bytes()),
        )
        .await
    }

    async fn manifest_media_type(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> StorageResult<Option<String>> {
        Ok(self
            .get_small(&self.manifest_key(repo, digest))
            .await?
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> StorageResult<bool> {
        self.delete_existing(&self.manifest_key(repo, digest)).await
    }

    async fn list_manifests(&self, repo: &str) -> StorageResult<Vec<Digest>> {
        self.digests(&self.repo_key(repo, "_manifests/revisions/sha256"))
            .await
    }

    async fn put_tag(&self, repo: &str, tag: &str, digest: &Digest) -> StorageResult<()> {
        self.put_small(&self.tag_key(repo, tag), digest.to_string())
            .await
    }

    async fn get_tag(&self, repo: &str, tag: &str) -> StorageResult<Option<Digest>> {
        match self.get_small(&self.tag_key(repo, tag)).await? {
            None => Ok(None),
            Some((b, _)) => digest_record(&b, || format!("tag {repo}:{tag}")).map(Some),
        }
    }

    async fn delete_tag(&self, repo: &str, tag: &str) -> StorageResult<bool> {
        self.delete_existing(&self.tag_key(repo, tag)).await
    }

    async fn list_tags(&self, repo: &str) -> StorageResult<Vec<String>> {
        Ok(self
            .names(&self.repo_key(repo, "_manifests/tags"))
            .await?
            .into_iter()
            .filter(|n| gantry_oci::names::valid_tag(n))
            .collect())
    }

    async fn put_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
        descriptor: Bytes,
    ) -> StorageResult<()> {
        let key = self
            .referrers_key(repo, subject)
            .join(referrer.hex().as_str());
        self.put_small(&key, descriptor).await
    }

    async fn delete_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> StorageResult<()> {
        let key = self
            .referrers_key(repo, subject)
            .join(referrer.hex().as_str());
        self.delete(&key).await
    }

    async fn list_referrers(&self, repo: &str, subject: &Digest) -> StorageResult<Vec<Bytes>> {
        let dir = self.referrers_key(repo, subject);
        let digests = self.digests(&dir).await?;
        let reads = futures::stream::iter(digests.into_iter().map(|d| {
            let key = dir.clone().join(d.hex().as_str());
            async move { self.get_small(&key).await }
        }))
        .buffered(READ_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
        Ok(reads.into_iter().flatten().map(|(b, _)| b).collect())
    }

    async fn put_chunk_index(
        &self,
        repo: &str,
        layer: &Digest,
        index: &Digest,
    ) -> StorageResult<()> {
        let key = self.chunk_indexes_key(repo).join(layer.hex().as_str());
        self.put_small(&key, index.to_string()).await
    }

    async fn list_chunk_indexes(&self, repo: &str) -> StorageResult<Vec<(Digest, Digest)>> {
        let dir = self.chunk_indexes_key(repo);
        let layers = self.digests(&dir).await?;
        let reads = futures::stream::iter(layers.into_iter().map(|layer| {
            let key = dir.clone().join(layer.hex().as_str());
            async move { self.get_small(&key).await.map(|r| (layer, r)) }
        }))
        .buffered(READ_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
        let mut out = Vec::new();
        for (layer, read) in reads {
            let Some((bytes, _)) = read else { continue };
            let index = digest_record(&bytes, || format!("chunk index record {repo}/{layer}"))?;
            out.push((layer, index));
        }
        out.sort();
        Ok(out)
    }

    async fn repository_exists(&self, repo: &str) -> StorageResult<bool> {
        for sub in ["_layers", "_manifests"] {
            let prefix = self.repo_key(repo, sub);
            let first = self.store.list(Some(&prefix)).next().await;
            match first {
                Some(Ok(_)) => return Ok(true),
                Some(Err(e)) => return Err(s3_err(format!("list {prefix}"), e)),
                None => {}
            }
        }
        Ok(false)
    }

    async fn list_repositories(&self) -> StorageResult<Vec<String>> {
        let mut repos = BTreeSet::new();
        for meta in self.list(&self.key("repositories")).await? {
            let parts = self.rel_parts(&meta.location);
            // repositories/<components…>/_layers|_manifests/…
            if let Some(i) = parts
                .iter()
                .position(|p| p == "_layers" || p == "_manifests")
            {
                if i > 1 {
                    repos.insert(parts[1..i].join("/"));
                }
            }
        }
        Ok(repos.into_iter().collect())
    }

    async fn create_upload(&self, repo: &str) -> StorageResult<UploadInfo> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let now = SystemTime::now();
        let state = UploadState {
            repository: repo.to_string(),
            offset: 0,
            started_ms: system_ms(now),
            parts: Vec::new(),
        };
        self.write_state(&id, &state).await?;
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
        let session = self.upload_key(id)?;
        let mut running = self.uploads.lock(id).await;
        let (mut state, _) = self.read_state(Some(repo), id).await?;
        if state.offset != start {
            return Err(StorageError::OutOfOrder {
                id: id.to_string(),
                requested: start,
                current: state.offset,
            });
        }
        let mut hasher = match running.hasher.take() {
            Some(h)
                if running.offset == state.offset
                    && running.last_part.as_deref()
                        == state.parts.last().map(|p| p.name.as_str()) =>
            {
                Some(h)
            }
            _ => None,
        };
        let name = format!(
            "part-{:06}-{}",
            state.parts.len(),
            uuid::Uuid::new_v4().simple()
        );
        let key = session.clone().join(name.as_str());
        let mut writer = ObjectWriter::new();
        let mut offset = state.offset;
        let mut body_error = None;
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => {
                    if offset + chunk.len() as u64 > limit {
                        // Refuse the whole chunk: the session stays where it was.
                        writer.abort().await;
                        return Err(StorageError::TooLarge {
                            id: id.to_string(),
                            limit,
                        });
                    }
                    if let Some(h) = hasher.as_mut() {
                        h.update(&chunk);
                    }
                    offset += chunk.len() as u64;
                    if let Err(e) = writer.write(self.store.as_ref(), &key, chunk).await {
                        writer.abort().await;
                        return Err(s3_err(format!("write {key}"), e));
                    }
                }
                Err(e) => {
                    body_error = Some(e);
                    break;
                }
            }
        }
        if offset != state.offset {
            writer
                .finish(self.store.as_ref(), &key)
                .await
                .map_err(|e| s3_err(format!("write {key}"), e))?;
            state.parts.push(UploadPart {
                name: name.clone(),
                len: offset - state.offset,
            });
            state.offset = offset;
            self.write_state(id, &state).await?;
        } else {
            writer.abort().await;
        }
        running.offset = offset;
        running.last_part = state.parts.last().map(|p| p.name.clone());
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
        let session = self.upload_key(id)?;
        let mut running = self.uploads.lock(id).await;
        let (state, _) = self.read_state(Some(repo), id).await?;
        let cached = match running.hasher.take() {
            Some(h)
                if running.offset == state.offset
                    && running.last_part.as_deref()
                        == state.parts.last().map(|p| p.name.as_str()) =>
            {
                Some(h.finish())
            }
            _ => None,
        };
        let blob = self.blob_key(digest);
        let result: StorageResult<()> = async {
            let exists = self.head(&blob).await?.is_some();
            let known = match cached {
                Some(d) => Some(d),
                // Already stored: only check the bytes.
                None if exists => Some(self.hash_parts(id, &state.parts).await?),
                None => None,
            };
            if let Some(actual) = known {
                if actual != *digest {
                    return Err(StorageError::DigestMismatch {
                        expected: *digest,
                        actual,
                    });
                }
            }
            if exists {
                // The grace period of the garbage collector starts now.
                return self.touch_blob(digest).await;
            }
            match (&state.parts[..], known) {
                // Verified: one server-side copy.
                ([part], Some(_)) if part.len <= MAX_COPY => {
                    let from = session.clone().join(part.name.as_str());
                    self.store
                        .copy(&from, &blob)
                        .await
                        .map_err(|e| s3_err(format!("copy {from} to {blob}"), e))
                }
                // Hashed while written; completed only when it matches.
                (parts, _) => self.compose(id, parts, &blob, digest).await,
            }
        }
        .await;
        match &result {
            Ok(()) | Err(StorageError::DigestMismatch { .. }) => {
                self.delete_prefix(&session).await?;
            }
            Err(_) => {}
        }
        running.forget();
        result?;
        self.stat_blob(digest)
            .await?
            .ok_or(StorageError::BlobNotFound(*digest))
    }

    async fn cancel_upload(&self, repo: &str, id: &str) -> StorageResult<bool> {
        let session = self.upload_key(id)?;
        let running = self.uploads.lock(id).await;
        match self.read_state(Some(repo), id).await {
            Ok(_) => {}
            Err(StorageError::UploadNotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.delete_prefix(&session).await?;
        running.forget();
        Ok(true)
    }

    async fn list_uploads(&self) -> StorageResult<Vec<UploadInfo>> {
        let base = self.key("uploads");
        let listing = self
            .store
            .list_with_delimiter(Some(&base))
            .await
            .map_err(|e| s3_err(format!("list {base}"), e))?;
        let mut out = Vec::new();
        for dir in listing.common_prefixes {
            let Some(id) = dir.filename() else { continue };
            match self.read_state(None, id).await {
                Ok((state, updated)) => out.push(UploadInfo {
                    id: id.to_string(),
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
        // The newest object of a session tells when it last made progress; a session torn
        // by a crash (parts without state) counts from its parts.
        let mut newest: BTreeMap<String, SystemTime> = BTreeMap::new();
        for meta in self.list(&self.key("uploads")).await? {
            let parts = self.rel_parts(&meta.location);
            let Some(id) = parts.get(1) else { continue };
            let t = modified(&meta);
            let e = newest.entry(id.clone()).or_insert(t);
            *e = (*e).max(t);
        }
        let mut purged = 0;
        for (id, time) in newest {
            if time >= before {
                continue;
            }
            let Ok(session) = self.upload_key(&id) else {
                // Not ours: leave it alone.
                continue;
            };
            let guard = self.uploads.lock(&id).await;
            // Look again under the session's lock: an append may have landed meanwhile.
            let objects = self.list(&session).await?;
            let stale = objects.iter().all(|m| modified(m) < before);
            if stale {
                for meta in objects {
                    self.delete(&meta.location).await?;
                }
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
