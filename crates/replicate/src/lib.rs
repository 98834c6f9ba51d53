//! Replication for `gantry serve` (`[[replication]]` in its config): every tag pushed to a
//! matching repository is copied to each remote registry, as `gantry copy` would copy it —
//! blobs the remote holds are skipped, a layer with a chunk index sends only the chunks the
//! remote lacks (delta push), and the remote verifies every blob against its digest. The
//! bytes are read from this registry's own storage, never from a temporary layout.
//!
//! Each remote has one task and one queue of `repository:tag`, in push order. A tag is
//! copied as it points *now*: a newer push of the same tag replaces the older one in the
//! queue, so a remote never moves a tag back to an older image. What is in the queue is
//! compared with the remote first (a manifest HEAD), so an image the remote already has
//! costs one request. A failed copy goes to the back of the queue and the task waits
//! (1 s, doubling up to 1 min) before the next attempt, so a remote that is down is retried
//! until it returns. Nothing is kept on disk: at start, and every `interval`, every
//! matching tag is compared with the remote, so what a restart or an outage left behind
//! is caught up.
//!
//! State goes to [`gantry_registry::replication::ReplicationStatus`] (served at
//! `/gantry/v1/replication`) and the `gantry_registry_replication_*` metrics.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use gantry_client::credentials::Credential;
use gantry_client::{
    push_from_source, BlobSource, ClientError, ClientOptions, ClientResult, NoProgress,
    PushOptions, RegistryClient,
};
use gantry_oci::spec::{Descriptor, ImageIndex};
use gantry_oci::{media_types, Digest, Reference};
use gantry_registry::replication::{PushEvent, ReplicationEvent};
use gantry_registry::{Registry, ReplicationConfig, Storage};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// First wait after a failed copy; doubled after each further failure.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Largest manifest read from storage (the registry refuses larger ones at push).
const MAX_MANIFEST_BYTES: u64 = gantry_oci::MAX_MANIFEST_BYTES as u64;

/// Why replication cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// An entry of `[[replication]]` is unusable.
    #[error("[[replication]] {url}: {message}")]
    Config {
        /// The remote's URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The password file cannot be read.
    #[error("[[replication]] {url}: cannot read password_file {path}: {source}")]
    PasswordFile {
        /// The remote's URL.
        url: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The client for the remote cannot be made (a bad CA file, say).
    #[error("[[replication]] {url}: {source}")]
    Client {
        /// The remote's URL.
        url: String,
        /// Why.
        #[source]
        source: Box<ClientError>,
    },
}

/// One remote of `[[replication]]`, ready to be copied to.
struct Remote {
    name: String,
    host: String,
    config: ReplicationConfig,
    client: RegistryClient,
}

/// Starts one replication task per entry of `configs`, reading what is pushed to
/// `registry`. The tasks run until the runtime stops.
pub fn start(
    registry: Arc<Registry>,
    configs: &[ReplicationConfig],
) -> Result<Vec<JoinHandle<()>>, ReplicateError> {
    let mut tasks = Vec::new();
    for config in configs {
        let remote = remote(config)?;
        // Subscribed before the first comparison, so no push falls between the two.
        let pushes = registry.subscribe_pushes_for(&remote.name);
        registry.replication().update(&remote.name, |s| {
            s.url = config.url.clone();
        });
        tracing::info!(remote = %remote.name, url = %config.url, "replicating pushed tags");
        tasks.push(tokio::spawn(run(registry.clone(), remote, pushes)));
    }
    Ok(tasks)
}

fn remote(config: &ReplicationConfig) -> Result<Remote, ReplicateError> {
    let url = config.url.clone();
    let (host, plain_http) = config.host().map_err(|message| ReplicateError::Config {
        url: url.clone(),
        message,
    })?;
    let credential = match (&config.username, &config.password_file) {
        (Some(user), Some(path)) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| ReplicateError::PasswordFile {
                    url: url.clone(),
                    path: path.clone(),
                    source,
                })?;
            let password = text.lines().next().unwrap_or_default().to_string();
            Some(Credential::new(user.clone(), password))
        }
        _ => None,
    };
    let options = ClientOptions {
        insecure: plain_http,
        ca_certs: config.ca_file.iter().cloned().collect(),
        credential,
        no_stored_credentials: false,
        retries: 2,
    };
    let client = RegistryClient::new(&host, &options).map_err(|source| ReplicateError::Client {
        url,
        source: Box::new(source),
    })?;
    Ok(Remote {
        name: config.display_name(),
        host,
        config: config.clone(),
        client,
    })
}

/// `repository:tag` entries in order, each at most once.
#[derive(Default)]
struct Queue {
    order: VecDeque<(String, String)>,
    queued: HashSet<(String, String)>,
}

impl Queue {
    fn push(&mut self, repository: &str, tag: &str) {
        let key = (repository.to_string(), tag.to_string());
        if self.queued.insert(key.clone()) {
            self.order.push_back(key);
        }
    }

    fn front(&self) -> Option<(String, String)> {
        self.order.front().cloned()
    }

    fn pop(&mut self) -> Option<(String, String)> {
        let key = self.order.pop_front()?;
        self.queued.remove(&key);
        Some(key)
    }

    /// Moves the first entry to the back (it failed; the others go first).
    fn rotate(&mut self) {
        if let Some(key) = self.order.pop_front() {
            self.order.push_back(key);
        }
    }

    fn names(&self) -> Vec<String> {
        self.order.iter().map(|(r, t)| format!("{r}:{t}")).collect()
    }
}

/// What one comparison did.
enum Outcome {
    /// The remote already had the tag pointing at this manifest.
    InSync,
    /// The image was copied: blob bytes sent, and reused by the remote.
    Copied { sent: u64, reused: u64 },
    /// The tag no longer exists here.
    Gone,
}

async fn run(registry: Arc<Registry>, remote: Remote, mut pushes: Receiver<PushEvent>) {
    let mut queue = Queue::default();
    let mut backoff = MIN_BACKOFF;
    let mut next_scan = Instant::now();
    loop {
        // Take what was pushed meanwhile; a lost event means comparing every tag.
        loop {
            match pushes.try_recv() {
                Ok(ev) => enqueue(&registry, &remote, &mut queue, &ev),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(n)) => {
                    read_pushes(&registry, &remote, n);
                    next_scan = Instant::now();
                }
                Err(TryRecvError::Closed) => return,
            }
        }
        if Instant::now() >= next_scan {
            if let Err(e) = scan(&registry, &remote, &mut queue).await {
                tracing::warn!(remote = %remote.name, error = %e, "listing tags to replicate failed");
            }
            next_scan = Instant::now() + remote.config.interval;
        }
        publish_pending(&registry, &remote, &queue);
        let Some((repository, tag)) = queue.front() else {
            tokio::select! {
                ev = pushes.recv() => if !take(&registry, &remote, &mut queue, ev, &mut next_scan) {
                    return;
                },
                _ = tokio::time::sleep_until(next_scan) => {}
            }
            continue;
        };
        let image = format!("{repository}:{tag}");
        match replicate(&registry, &remote, &repository, &tag).await {
            Ok((outcome, digest)) => {
                queue.pop();
                backoff = MIN_BACKOFF;
                record(&registry, &remote, &image, digest, outcome);
            }
            Err((e, digest)) => {
                queue.rotate();
                tracing::warn!(remote = %remote.name, %image, error = %e, retry_in = ?backoff, "replication failed");
                registry
                    .metrics()
                    .replication_done(&remote.name, "failed", 0);
                registry.replication().update(&remote.name, |s| {
                    s.failing = true;
                    s.failures += 1;
                    s.last_failure = Some(event(&image, digest, Some(e.to_string())));
                });
                publish_pending(&registry, &remote, &queue);
                // Wait before the next attempt, still taking pushes.
                let until = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                loop {
                    tokio::select! {
                        ev = pushes.recv() => if !take(&registry, &remote, &mut queue, ev, &mut next_scan) {
                            return;
                        },
                        _ = tokio::time::sleep_until(until) => break,
                    }
                }
            }
        }
    }
}

/// Takes what `recv` gave: a push is queued, a lag means comparing every tag now.
/// `false` when the registry is gone.
fn take(
    registry: &Registry,
    remote: &Remote,
    queue: &mut Queue,
    ev: Result<PushEvent, RecvError>,
    next_scan: &mut Instant,
) -> bool {
    match ev {
        Ok(ev) => enqueue(registry, remote, queue, &ev),
        Err(RecvError::Lagged(n)) => {
            read_pushes(registry, remote, n);
            *next_scan = Instant::now();
        }
        Err(RecvError::Closed) => return false,
    }
    true
}

/// Takes a push read from the channel: queued if it matches, counted as read either way.
fn enqueue(registry: &Registry, remote: &Remote, queue: &mut Queue, ev: &PushEvent) {
    if remote.config.matches(&ev.repository) {
        queue.push(&ev.repository, &ev.tag);
    }
    read_pushes(registry, remote, 1);
}

/// Counts pushes read (or lost to lag, which a full comparison makes up for).
fn read_pushes(registry: &Registry, remote: &Remote, n: u64) {
    registry
        .replication()
        .update(&remote.name, |s| s.pushes_read += n);
}

fn publish_pending(registry: &Registry, remote: &Remote, queue: &Queue) {
    registry
        .metrics()
        .replication_pending(&remote.name, queue.order.len());
    registry
        .replication()
        .update(&remote.name, |s| s.pending = queue.names());
}

fn event(image: &str, digest: Option<Digest>, error: Option<String>) -> ReplicationEvent {
    ReplicationEvent {
        image: image.to_string(),
        digest: digest.map(|d| d.to_string()).unwrap_or_default(),
        at_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        error,
    }
}

fn record(
    registry: &Registry,
    remote: &Remote,
    image: &str,
    digest: Option<Digest>,
    outcome: Outcome,
) {
    let metrics = registry.metrics();
    match outcome {
        Outcome::InSync => {
            metrics.replication_done(&remote.name, "in_sync", 0);
            registry.replication().update(&remote.name, |s| {
                s.failing = false;
                s.in_sync += 1;
            });
        }
        Outcome::Copied { sent, reused } => {
            metrics.replication_done(&remote.name, "copied", sent);
            tracing::info!(remote = %remote.name, %image, bytes_sent = sent, bytes_reused = reused, "replicated");
            registry.replication().update(&remote.name, |s| {
                s.failing = false;
                s.copied += 1;
                s.bytes_sent += sent;
                s.bytes_reused += reused;
                s.last_copied = Some(event(image, digest, None));
            });
        }
        Outcome::Gone => {}
    }
}

/// Queues every tag of every matching repository (each is compared with the remote).
async fn scan(
    registry: &Registry,
    remote: &Remote,
    queue: &mut Queue,
) -> Result<(), gantry_registry::StorageError> {
    let storage = registry.storage();
    for repository in storage.list_repositories().await? {
        if !remote.config.matches(&repository) {
            continue;
        }
        for tag in storage.list_tags(&repository).await? {
            queue.push(&repository, &tag);
        }
    }
    Ok(())
}

/// A storage error as the client's error, naming what was read.
fn source_error(what: String, e: impl std::fmt::Display) -> ClientError {
    ClientError::Invalid {
        what,
        message: e.to_string(),
    }
}

/// Brings `repository:tag` on the remote to the manifest it points at here. Returns what
/// was done and the manifest's digest; on failure, the error and the digest if known.
async fn replicate(
    registry: &Registry,
    remote: &Remote,
    repository: &str,
    tag: &str,
) -> Result<(Outcome, Option<Digest>), (ClientError, Option<Digest>)> {
    let storage = registry.storage().clone();
    let what = || format!("{repository}:{tag} in this registry");
    let local = match storage.get_tag(repository, tag).await {
        Ok(Some(d)) => d,
        Ok(None) => return Ok((Outcome::Gone, None)),
        Err(e) => return Err((source_error(what(), e), None)),
    };
    let fail = |e: ClientError| (e, Some(local));
    let there = remote
        .client
        .head_manifest(repository, tag)
        .await
        .map_err(fail)?;
    if there == Some(local) {
        return Ok((Outcome::InSync, Some(local)));
    }
    let source = StorageSource {
        storage: storage.clone(),
        repository: repository.to_string(),
    };
    let media_type = storage
        .manifest_media_type(repository, &local)
        .await
        .map_err(|e| fail(source_error(what(), e)))?
        .unwrap_or_else(|| media_types::OCI_MANIFEST.to_string());
    let bytes = source
        .read_small(&local, MAX_MANIFEST_BYTES)
        .await
        .map_err(fail)?;
    let dest = |tag: Option<&str>, digest: Option<Digest>| Reference {
        registry: remote.host.clone(),
        repository: repository.to_string(),
        tag: tag.map(str::to_string),
        digest,
    };
    let options = PushOptions::default();
    let (mut sent, mut reused) = (0, 0);
    if is_index(&media_type) {
        // Each platform's image by digest, then the index under the tag.
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| fail(source_error(format!("{} index", what()), e)))?;
        for child in index.manifests() {
            let digest = Digest::from_oci(child.digest())
                .map_err(|e| fail(source_error(format!("{} index", what()), e)))?;
            let child_bytes = source
                .read_small(&digest, MAX_MANIFEST_BYTES)
                .await
                .map_err(fail)?;
            let referrers = chunk_index_referrers(&source, &digest)
                .await
                .map_err(fail)?;
            let report = push_from_source(
                &remote.client,
                &source,
                child_bytes,
                referrers,
                &dest(None, Some(digest)),
                &options,
                Arc::new(NoProgress),
            )
            .await
            .map_err(fail)?;
            sent += report.bytes_sent;
            reused += report.bytes_reused;
        }
        remote
            .client
            .put_manifest(repository, tag, &media_type, bytes)
            .await
            .map_err(fail)?;
    } else {
        let referrers = chunk_index_referrers(&source, &local).await.map_err(fail)?;
        let report = push_from_source(
            &remote.client,
            &source,
            bytes,
            referrers,
            &dest(Some(tag), None),
            &options,
            Arc::new(NoProgress),
        )
        .await
        .map_err(fail)?;
        sent = report.bytes_sent;
        reused = report.bytes_reused;
    }
    Ok((Outcome::Copied { sent, reused }, Some(local)))
}

fn is_index(media_type: &str) -> bool {
    media_type == media_types::OCI_INDEX
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// The chunk-index referrers of `subject` in the source repository: descriptor and bytes.
async fn chunk_index_referrers(
    source: &StorageSource,
    subject: &Digest,
) -> ClientResult<Vec<(Descriptor, Bytes)>> {
    let what = || {
        format!(
            "referrers of {subject} in {} of this registry",
            source.repository
        )
    };
    let listed = source
        .storage
        .list_referrers(&source.repository, subject)
        .await
        .map_err(|e| source_error(what(), e))?;
    let mut out = Vec::new();
    for json in listed {
        let desc: Descriptor =
            serde_json::from_slice(&json).map_err(|e| source_error(what(), e))?;
        let is_chunk_index = desc
            .artifact_type()
            .as_ref()
            .is_some_and(|t| t.to_string() == media_types::CHUNK_INDEX_ARTIFACT);
        if !is_chunk_index {
            continue;
        }
        let digest = Digest::from_oci(desc.digest()).map_err(|e| source_error(what(), e))?;
        let bytes = source.read_small(&digest, MAX_MANIFEST_BYTES).await?;
        out.push((desc, bytes));
    }
    Ok(out)
}

/// Blobs of this registry's storage, as the source of a copy.
struct StorageSource {
    storage: Arc<dyn Storage>,
    repository: String,
}

#[async_trait::async_trait]
impl BlobSource for StorageSource {
    async fn read(&self, digest: &Digest, start: u64, len: u64) -> ClientResult<Bytes> {
        let what = || format!("blob {digest} of this registry");
        let stream = self
            .storage
            .read_blob(digest, Some((start, len)))
            .await
            .map_err(|e| source_error(what(), e))?;
        let capacity = usize::try_from(len).map_err(|e| source_error(what(), e))?;
        let mut buf = BytesMut::with_capacity(capacity);
        let mut stream = stream;
        while let Some(piece) = stream
            .try_next()
            .await
            .map_err(|e| source_error(what(), e))?
        {
            buf.extend_from_slice(&piece);
        }
        if buf.len() as u64 != len {
            return Err(source_error(
                what(),
                format!("read {} bytes at {start}, expected {len}", buf.len()),
            ));
        }
        Ok(buf.freeze())
    }

    async fn read_small(&self, digest: &Digest, max: u64) -> ClientResult<Bytes> {
        self.storage
            .read_blob_bytes(digest, max)
            .await
            .map_err(|e| source_error(format!("blob {digest} of this registry"), e))
    }

    fn describe(&self) -> String {
        format!("repository {} of this registry", self.repository)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_keeps_push_order_and_each_tag_once() {
        let mut q = Queue::default();
        q.push("a", "v1");
        q.push("b", "v1");
        q.push("a", "v1");
        q.push("a", "v2");
        assert_eq!(q.names(), ["a:v1", "b:v1", "a:v2"]);
        q.rotate();
        assert_eq!(q.names(), ["b:v1", "a:v2", "a:v1"]);
        assert_eq!(q.pop(), Some(("b".into(), "v1".into())));
        // Popped entries may be queued again (a later push of the same tag).
        q.push("b", "v1");
        assert_eq!(q.names(), ["a:v2", "a:v1", "b:v1"]);
        assert_eq!(q.front(), Some(("a".into(), "v2".into())));
    }

    #[test]
    fn a_config_with_an_unreadable_password_file_is_refused_naming_it() {
        let config = ReplicationConfig {
            url: "https://eu.example".into(),
            name: None,
            repositories: vec!["**".into()],
            username: Some("u".into()),
            password_file: Some("/nonexistent/gantry-password".into()),
            ca_file: None,
            interval: Duration::from_secs(60),
        };
        let e = remote(&config).err().expect("refused").to_string();
        assert!(
            e.contains("/nonexistent/gantry-password") && e.contains("eu.example"),
            "{e}"
        );
    }
}
