//! `gantry serve`: an OCI Distribution Spec 1.1 registry.
//!
//! - [`storage`]: the [`Storage`] trait (content-addressed blobs, per-repository links,
//!   manifests, tags, referrers, resumable uploads) and its filesystem implementation
//!   [`FsStorage`], crash-safe by fsync + atomic rename.
//! - [`router`]: the HTTP API on axum (pull, push, chunked and resumable uploads, mount,
//!   tags, referrers, catalog, delete, Range reads), behind an [`Authorizer`] hook.
//! - [`delta`]: delta push, Gantry's extension that assembles an upload from ranges of
//!   blobs the repository already holds.
//! - [`gc`]: garbage collection of unreferenced blobs, safe against concurrent pushes.
//! - [`metrics`]: Prometheus metrics, including egress per repository and client.
//! - [`ratelimit`]: per-client request rate and failed-login limits.
//! - [`server`]: [`serve`] / [`bind`] with optional TLS (rustls), from a [`Config`].

pub mod api;
pub mod auth;
pub mod chunks;
pub mod config;
pub mod delta;
pub mod error;
pub mod fleet;
pub mod gc;
pub mod manifest;
pub mod metrics;
pub mod range;
pub mod ratelimit;
pub mod replication;
pub mod report_tokens;
pub mod route;
pub mod server;
pub mod storage;
pub mod token;
pub mod token_auth;
pub mod upload_quota;
pub mod users;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gantry_oci::Digest;

pub use api::router;
pub use auth::{Access, Action, AllowAll, AuthError, Authorizer, Principal};
pub use config::{
    AccessRule, AuthConfig, Config, ConfigError, ConnectionLimits, FleetConfig, GcConfig, Limits,
    ReplicationConfig, TlsConfig, UploadConfig,
};
pub use error::{ApiError, ErrorCode};
pub use gc::{GcOptions, GcReport};
pub use metrics::Metrics;
pub use report_tokens::{add_report_token, remove_report_token, ReportTokens};
pub use server::{bind, bind_registry, gc_blocking, shutdown_signal, RunningServer, ServeError};
pub use storage::{BlobMeta, FsStorage, Storage, StorageError, UploadInfo};
pub use token_auth::{AuthSetupError, Policy, TokenAuth};
pub use users::{add_user, Users, UsersError};

/// Settings of a [`Registry`] that do not concern the listener.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Size limits.
    pub limits: Limits,
    /// Whether DELETE is allowed.
    pub delete_enabled: bool,
    /// Garbage collection grace period (see [`GcConfig::grace_period`]).
    pub gc_grace_period: Duration,
    /// Idle upload sessions older than this are purged.
    pub upload_max_age: Duration,
    /// Limits on open upload sessions (see [`upload_quota`]).
    pub uploads: UploadConfig,
    /// The fleet view.
    pub fleet: fleet::FleetOptions,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions::from_config(&Config::default())
    }
}

impl RegistryOptions {
    /// The options a [`Config`] asks for.
    pub fn from_config(config: &Config) -> Self {
        RegistryOptions {
            limits: config.limits.clone(),
            delete_enabled: config.delete_enabled,
            gc_grace_period: config.gc.grace_period,
            upload_max_age: config.uploads.max_age,
            uploads: config.uploads.clone(),
            fleet: fleet::FleetOptions {
                config: config.fleet.clone(),
                state_file: config
                    .fleet
                    .persist
                    .then(|| config.root.join("fleet").join("state.json")),
            },
        }
    }
}

/// The registry: storage plus the rules of the API (what a push must reference, which
/// blobs a repository may serve, garbage collection's lock), metrics and authorization.
/// Shared by the HTTP handlers through an `Arc`.
pub struct Registry {
    storage: Arc<dyn Storage>,
    options: RegistryOptions,
    authorizer: Arc<dyn Authorizer>,
    /// The token issuer behind `/token`, when auth is configured.
    token_auth: Option<Arc<TokenAuth>>,
    metrics: Metrics,
    /// Requests per client IP, when limited.
    rate_limiter: Option<ratelimit::RateLimiter>,
    /// Failed logins per client IP, when limited.
    login_limiter: Option<ratelimit::LoginLimiter>,
    /// Blob bytes sent per client IP, when limited.
    egress_limiter: Option<Arc<ratelimit::EgressLimiter>>,
    /// Held shared by operations that make a blob referenced (link, mount, manifest push)
    /// and exclusively by garbage collection's sweep; see [`gc`].
    gc_lock: tokio::sync::RwLock<()>,
    /// The fleet view (status events of game servers).
    fleet: fleet::Fleet,
    /// Checked chunk indexes per repository, for the chunk lookup of delta push.
    chunks: chunks::ChunkKnowledge,
    /// Open upload sessions per repository and client.
    upload_quota: upload_quota::UploadQuota,
    /// Tags pushed, for replication.
    pushes: tokio::sync::broadcast::Sender<replication::PushEvent>,
    /// Held while a push is counted and announced, and while a subscriber joins.
    push_announce: std::sync::Mutex<()>,
    /// The state of each replication remote.
    replication: replication::ReplicationStatus,
}

/// A login in flight (see [`Registry::begin_login`]). [`LoginAttempt::passed`] ends it
/// without a failure, [`LoginAttempt::failed`] with one. Dropping it unended (the client
/// went away while its password was checked; the check runs on) counts as a failure, so
/// a client cannot keep the password checkers busy by hanging up before the answer.
pub struct LoginAttempt<'a> {
    reg: &'a Registry,
    /// The client, when its logins are limited.
    ip: Option<std::net::IpAddr>,
}

impl LoginAttempt<'_> {
    /// Ends the login as failed (bad credentials).
    pub fn failed(mut self) {
        self.end(true);
    }

    /// Ends the login without a failure (the credentials were right, or the check was
    /// refused for load).
    pub fn passed(mut self) {
        self.end(false);
    }

    fn end(&mut self, failed: bool) {
        if let (Some(ip), Some(l)) = (self.ip.take(), &self.reg.login_limiter) {
            l.finish(ip, std::time::Instant::now(), failed);
        }
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        self.end(true);
    }
}

/// A manifest found by tag or digest.
#[derive(Debug, Clone)]
pub struct FoundManifest {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
}

/// Result of a successful manifest push.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    /// Digest of the manifest bytes.
    pub digest: Digest,
    /// The manifest's subject, when it has one.
    pub subject: Option<Digest>,
}

/// Tag pushes buffered for a slow replication task before it must compare every tag.
const PUSH_EVENTS_BUFFERED: usize = 4096;

impl Registry {
    /// A registry over `storage` that allows every request.
    pub fn new(storage: Arc<dyn Storage>, options: RegistryOptions) -> Self {
        let fleet_view = fleet::Fleet::new(options.fleet.clone());
        let limits = &options.limits;
        Registry {
            chunks: chunks::ChunkKnowledge::new(storage.clone()),
            upload_quota: upload_quota::UploadQuota::new(upload_quota_config(&options)),
            rate_limiter: ratelimit::RateLimiter::new(limits.requests_per_second, limits.burst),
            login_limiter: ratelimit::LoginLimiter::new(limits.login_failures, limits.login_window),
            pushes: tokio::sync::broadcast::channel(PUSH_EVENTS_BUFFERED).0,
            push_announce: std::sync::Mutex::new(()),
            replication: replication::ReplicationStatus::default(),
            egress_limiter: ratelimit::EgressLimiter::new(
                limits.client_egress_bytes_per_second,
                limits.client_egress_burst_bytes,
            )
            .map(Arc::new),
            storage,
            options,
            authorizer: Arc::new(AllowAll),
            token_auth: None,
            metrics: Metrics::new(),
            gc_lock: tokio::sync::RwLock::new(()),
            fleet: fleet_view,
        }
    }

    /// Replaces the authorizer.
    pub fn with_authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = authorizer;
        self
    }

    /// Uses configured users, rules and token auth: `auth` becomes the authorizer and
    /// answers `/token`.
    pub fn with_token_auth(mut self, auth: Arc<TokenAuth>) -> Self {
        self.authorizer = auth.clone();
        self.token_auth = Some(auth);
        self
    }

    /// The token issuer, when auth is configured.
    pub fn token_auth(&self) -> Option<&Arc<TokenAuth>> {
        self.token_auth.as_ref()
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The options.
    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// The chunk knowledge behind the chunk lookup.
    pub fn chunks(&self) -> &chunks::ChunkKnowledge {
        &self.chunks
    }

    /// The accounting of open upload sessions.
    pub fn upload_quota(&self) -> &upload_quota::UploadQuota {
        &self.upload_quota
    }

    /// The fleet view.
    pub fn fleet(&self) -> &fleet::Fleet {
        &self.fleet
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The authorizer.
    pub fn authorizer(&self) -> &Arc<dyn Authorizer> {
        &self.authorizer
    }

    /// Tags pushed from now on, in the order they were stored (for replication). A
    /// receiver that falls more than a few thousand behind gets `Lagged` and should
    /// compare every tag instead.
    pub fn subscribe_pushes(&self) -> tokio::sync::broadcast::Receiver<replication::PushEvent> {
        self.pushes.subscribe()
    }

    /// [`Registry::subscribe_pushes`] for replication remote `name`: pushes announced
    /// before it are counted as read in its status, so that only the ones it receives
    /// can be unread.
    pub fn subscribe_pushes_for(
        &self,
        name: &str,
    ) -> tokio::sync::broadcast::Receiver<replication::PushEvent> {
        let _joining = self.push_announce.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.pushes.subscribe();
        let announced = self.replication.announced();
        self.replication.update(name, |s| s.pushes_read = announced);
        rx
    }

    /// The state of each replication remote, as its task reports it.
    pub fn replication(&self) -> &replication::ReplicationStatus {
        &self.replication
    }

    /// The per-client limit on blob bytes sent, when configured.
    pub fn egress_limiter(&self) -> Option<&Arc<ratelimit::EgressLimiter>> {
        self.egress_limiter.as_ref()
    }

    /// Takes a request from `ip` out of its rate limit; when over it, how long to wait.
    pub fn check_rate(&self, ip: std::net::IpAddr) -> Result<(), Duration> {
        match &self.rate_limiter {
            Some(l) => l.check(ip, std::time::Instant::now()).inspect_err(|_| {
                self.metrics.rate_limited("requests");
            }),
            None => Ok(()),
        }
    }

    /// Starts a login (a request with a password) from `ip`: it counts against the
    /// failed-login limit until the returned attempt ends. When the address has too many
    /// failed logins, or too many in flight, how long it must wait instead.
    pub fn begin_login(&self, ip: Option<std::net::IpAddr>) -> Result<LoginAttempt<'_>, Duration> {
        let ip = match (&self.login_limiter, ip) {
            (Some(l), Some(ip)) => {
                l.begin(ip, std::time::Instant::now()).inspect_err(|_| {
                    self.metrics.rate_limited("login");
                })?;
                Some(ip)
            }
            _ => None,
        };
        Ok(LoginAttempt { reg: self, ip })
    }

    /// Restarts a blob's grace period when it is old enough that garbage collection could
    /// take it: called whenever a client learns that a blob exists (HEAD, GET, mount,
    /// manifest push), so that a push which skips an existing blob still finds it when it
    /// pushes the manifest.
    async fn keep_alive(&self, digest: &Digest, meta: &BlobMeta) -> Result<(), StorageError> {
        let age = SystemTime::now()
            .duration_since(meta.modified)
            .unwrap_or_default();
        if age > self.options.gc_grace_period / 2 {
            match self.storage.touch_blob(digest).await {
                Ok(()) | Err(StorageError::BlobNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A blob readable in `repo`: linked there and stored. Keeps it alive for a pusher.
    pub async fn repo_blob(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<BlobMeta>, StorageError> {
        if !self.storage.blob_linked(repo, digest).await? {
            return Ok(None);
        }
        let Some(meta) = self.storage.stat_blob(digest).await? else {
            return Ok(None);
        };
        let age = SystemTime::now()
            .duration_since(meta.modified)
            .unwrap_or_default();
        if age > self.options.gc_grace_period / 2 {
            // Under the shared lock, so that a sweep either ran before (and the blob is gone)
            // or runs after and sees the fresh time.
            let _shared = self.gc_lock.read().await;
            let Some(meta) = self.storage.stat_blob(digest).await? else {
                return Ok(None);
            };
            self.keep_alive(digest, &meta).await?;
            return Ok(Some(meta));
        }
        Ok(Some(meta))
    }

    /// Finishes an upload session: verifies the digest, stores the blob durably and links it
    /// into `repo`.
    pub async fn commit_upload(
        &self,
        repo: &str,
        id: &str,
        digest: &Digest,
    ) -> Result<BlobMeta, StorageError> {
        let _shared = self.gc_lock.read().await;
        let meta = self.storage.finish_upload(repo, id, digest).await?;
        self.storage.link_blob(repo, digest).await?;
        Ok(meta)
    }

    /// Mounts blob `digest` from repository `from` into `repo`; `false` when `from` does not
    /// hold it.
    pub async fn mount_blob(
        &self,
        repo: &str,
        from: &str,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        let _shared = self.gc_lock.read().await;
        if !self.storage.blob_linked(from, digest).await? {
            return Ok(false);
        }
        let Some(meta) = self.storage.stat_blob(digest).await? else {
            return Ok(false);
        };
        self.keep_alive(digest, &meta).await?;
        self.storage.link_blob(repo, digest).await?;
        Ok(true)
    }

    /// Looks up a manifest of `repo` by digest or tag.
    pub async fn find_manifest(
        &self,
        repo: &str,
        reference: &ManifestRef,
    ) -> Result<Option<FoundManifest>, StorageError> {
        let digest = match reference {
            ManifestRef::Digest(d) => *d,
            ManifestRef::Tag(t) => match self.storage.get_tag(repo, t).await? {
                Some(d) => d,
                None => return Ok(None),
            },
        };
        Ok(self
            .storage
            .manifest_media_type(repo, &digest)
            .await?
            .map(|media_type| FoundManifest { digest, media_type }))
    }

    /// Validates and stores a manifest pushed to `repo` under `reference`.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &ManifestRef,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PushedManifest, ApiError> {
        let internal = |e: StorageError| ApiError::internal(&e);
        let max = self.options.limits.max_manifest_bytes;
        if bytes.len() as u64 > max {
            return Err(manifest_too_large(bytes.len() as u64, max));
        }
        let parsed = manifest::parse(&bytes, content_type)
            .map_err(|e| ApiError::new(ErrorCode::ManifestInvalid, e.to_string()))?;
        let indexes = chunks::candidates(&bytes);
        let digest = Digest::of(&bytes);
        if let ManifestRef::Digest(expected) = reference {
            if *expected != digest {
                return Err(ApiError::new(
                    ErrorCode::DigestInvalid,
                    format!("manifest digest is {digest}, not {expected}"),
                )
                .with_detail(serde_json::json!({ "digest": expected.to_string() })));
            }
        }
        let _shared = self.gc_lock.read().await;
        for d in parsed.required_blobs() {
            let meta = match self
                .storage
                .blob_linked(repo, &d.digest)
                .await
                .map_err(internal)?
            {
                true => self.storage.stat_blob(&d.digest).await.map_err(internal)?,
                false => None,
            };
            let Some(meta) = meta else {
                return Err(ApiError::new(
                    ErrorCode::ManifestBlobUnknown,
                    format!("blob {} is not in repository {repo}", d.digest),
                )
                .with_detail(serde_json::json!({ "digest": d.digest.to_string() })));
            };
            if meta.size != d.size {
                return Err(ApiError::new(
                    ErrorCode::ManifestInvalid,
                    format!(
                        "descriptor of {} says {} bytes, the blob has {}",
                        d.digest, d.size, meta.size
                    ),
                ));
            }
            self.keep_alive(&d.digest, &meta).await.map_err(internal)?;
        }
        for child in &parsed.manifests {
            if self
                .storage
                .manifest_media_type(repo, &child.digest)
                .await
                .map_err(internal)?
                .is_none()
            {
                return Err(ApiError::new(
                    ErrorCode::ManifestBlobUnknown,
                    format!("manifest {} is not in repository {repo}", child.digest),
                )
                .with_detail(serde_json::json!({ "digest": child.digest.to_string() })));
            }
        }
        let size = bytes.len() as u64;
        self.storage
            .put_blob_bytes(&digest, bytes)
            .await
            .map_err(internal)?;
        self.storage
            .link_blob(repo, &digest)
            .await
            .map_err(internal)?;
        self.storage
            .put_manifest(repo, &digest, &parsed.media_type)
            .await
            .map_err(internal)?;
        let subject = parsed.subject.as_ref().map(|s| s.digest);
        if let Some(subject) = &subject {
            let descriptor = parsed.referrer_descriptor(&digest, size).to_string();
            self.storage
                .put_referrer(repo, subject, &digest, Bytes::from(descriptor))
                .await
                .map_err(internal)?;
        }
        if let ManifestRef::Tag(tag) = reference {
            self.storage
                .put_tag(repo, tag, &digest)
                .await
                .map_err(internal)?;
            // Counted and sent together, so a subscriber knows which pushes it will get.
            let _announcing = self.push_announce.lock().unwrap_or_else(|e| e.into_inner());
            self.replication.pushed();
            // Nobody listening (no replication) is not an error.
            let _ = self.pushes.send(replication::PushEvent {
                repository: repo.to_string(),
                tag: tag.clone(),
                digest,
            });
        }
        self.chunks.learn(repo, indexes);
        Ok(PushedManifest { digest, subject })
    }

    /// Deletes manifest `digest` of `repo` with the tags that point at it and its referrer
    /// entry; `false` when `repo` has no such manifest. Its blobs stay until garbage
    /// collection finds them unreferenced.
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool, StorageError> {
        if self
            .storage
            .manifest_media_type(repo, digest)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        for tag in self.storage.list_tags(repo).await? {
            if self.storage.get_tag(repo, &tag).await? == Some(*digest) {
                self.storage.delete_tag(repo, &tag).await?;
            }
        }
        let max = self.options.limits.max_manifest_bytes;
        if let Ok(bytes) = self.storage.read_blob_bytes(digest, max).await {
            if let Ok(m) = manifest::parse(&bytes, None) {
                if let Some(subject) = m.subject {
                    self.storage
                        .delete_referrer(repo, &subject.digest, digest)
                        .await?;
                }
            }
        }
        let existed = self.storage.delete_manifest(repo, digest).await?;
        self.storage.unlink_blob(repo, digest).await?;
        Ok(existed)
    }

    /// Removes upload sessions idle for longer than the configured maximum age.
    pub async fn purge_uploads(&self) -> Result<usize, StorageError> {
        let before = SystemTime::now()
            .checked_sub(self.options.upload_max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let n = self.storage.purge_uploads(before).await?;
        self.upload_quota.expire_idle();
        self.metrics.uploads_purged.inc_by(n as u64);
        if n > 0 {
            tracing::info!(purged = n, "removed stale upload sessions");
        }
        Ok(n)
    }
}

/// How a manifest is named in a request: by tag or by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRef {
    /// A tag.
    Tag(String),
    /// A digest.
    Digest(Digest),
}

impl ManifestRef {
    /// Parses a `<reference>` path segment: a digest when it contains `:`, else a tag.
    /// `None` when it is neither a valid digest nor a valid tag.
    pub fn parse(s: &str) -> Option<ManifestRef> {
        if s.contains(':') {
            s.parse().ok().map(ManifestRef::Digest)
        } else if gantry_oci::names::valid_tag(s) {
            Some(ManifestRef::Tag(s.to_string()))
        } else {
            None
        }
    }
}

/// The session limits of `options`, idle sessions expiring with the purge's age.
fn upload_quota_config(options: &RegistryOptions) -> UploadConfig {
    UploadConfig {
        max_age: options.upload_max_age,
        ..options.uploads.clone()
    }
}

fn manifest_too_large(size: u64, max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::SizeInvalid,
        format!("manifest of {size} bytes exceeds the limit of {max} bytes"),
    )
    .with_status(http::StatusCode::PAYLOAD_TOO_LARGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_references() {
        let d = Digest::of(b"x");
        assert_eq!(
            ManifestRef::parse(&d.to_string()),
            Some(ManifestRef::Digest(d))
        );
        assert_eq!(
            ManifestRef::parse("v1.0"),
            Some(ManifestRef::Tag("v1.0".into()))
        );
        for bad in ["", "-x", "sha256:zz", "md5:abc", "a/b", &"t".repeat(129)] {
            assert_eq!(ManifestRef::parse(bad), None, "{bad:?}");
        }
    }

    /// A login whose request is dropped before its answer (the client hung up while the
    /// password was being checked) counts as failed: otherwise a client could try
    /// passwords without limit by hanging up before each 401.
    #[test]
    fn a_login_dropped_before_its_answer_counts_as_failed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(storage::FsStorage::open(dir.path()).unwrap());
        let mut options = RegistryOptions::default();
        options.limits.login_failures = 3;
        let reg = Registry::new(storage, options);
        let ip: std::net::IpAddr = [192, 0, 2, 7].into();
        // Right passwords never count.
        for _ in 0..5 {
            reg.begin_login(Some(ip)).unwrap().passed();
        }
        // Three logins abandoned mid-check use up the limit, as three 401s would.
        for _ in 0..3 {
            drop(reg.begin_login(Some(ip)).unwrap());
        }
        assert!(
            reg.begin_login(Some(ip)).is_err(),
            "dropped logins were not counted as failures"
        );
        // Another client is not affected.
        reg.begin_login(Some([192, 0, 2, 8].into()))
            .unwrap()
            .failed();
    }

    proptest::proptest! {
        #[test]
        fn manifest_reference_parsing_never_panics(s in "\\PC{0,140}") {
            match ManifestRef::parse(&s) {
                Some(ManifestRef::Tag(t)) => proptest::prop_assert!(gantry_oci::names::valid_tag(&t)),
                Some(ManifestRef::Digest(d)) => proptest::prop_assert_eq!(d.to_string(), s),
                None => {}
            }
        }
    }
}
