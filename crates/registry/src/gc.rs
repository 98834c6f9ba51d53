//! Garbage collection: deletes blobs that no manifest references.
//!
//! Manifests are never collected (they stay until deleted through the API); a deleted
//! manifest's blobs, and blobs uploaded but never referenced, are.
//!
//! Safety against concurrent pushes rests on two things:
//! 1. A grace period: a blob written, linked, mounted, or reported to a client as existing
//!    (HEAD/GET, manifest check) within the grace period is never deleted. Those operations
//!    restart a blob's grace period when more than half of it has passed, so a push that
//!    uploads or skips blobs and then pushes its manifest within half the grace period keeps
//!    them all.
//! 2. A lock: the sweep holds the registry's lock exclusively and re-checks every
//!    candidate's modification time under it, while the operations above hold it shared
//!    from their existence check until their link, mount or manifest is written. So a push
//!    either sees the blob gone (and uploads it again) or the sweep sees the touched time.
//!
//! The lock is per process: run `gc` inside the serving process (online), or offline while
//! no server uses the same storage. Upload sessions are not blobs: an upload in progress is
//! never affected.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use gantry_oci::Digest;

use crate::storage::StorageError;
use crate::{manifest, Registry};

/// How to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Blobs modified more recently than this are kept.
    pub grace_period: Duration,
    /// Report what would be deleted without deleting.
    pub dry_run: bool,
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Repositories scanned.
    pub repositories: usize,
    /// Manifests scanned.
    pub manifests: usize,
    /// Blobs in storage before the sweep.
    pub blobs: usize,
    /// Blobs referenced by a manifest (or being a manifest).
    pub referenced: usize,
    /// Unreferenced blobs kept because they are within the grace period.
    pub kept_recent: usize,
    /// Blobs deleted (or that would be, in a dry run).
    pub deleted: usize,
    /// Bytes of the deleted blobs.
    pub deleted_bytes: u64,
    /// Repository links to deleted blobs that were removed.
    pub links_removed: usize,
    /// Digests of the deleted blobs.
    pub deleted_digests: Vec<Digest>,
    /// Wall time in milliseconds.
    pub millis: u64,
}

/// Largest manifest read while marking (at least the configured limit).
const MARK_READ_LIMIT: u64 = 16 * 1024 * 1024;

impl Registry {
    /// The options that follow the registry's configured grace period.
    pub fn gc_options(&self) -> GcOptions {
        GcOptions {
            grace_period: self.options.gc_grace_period,
            dry_run: false,
        }
    }

    /// Runs one garbage collection (see the [module documentation](crate::gc)).
    pub async fn collect_garbage(&self, opts: &GcOptions) -> Result<GcReport, StorageError> {
        let started = Instant::now();
        let storage = self.storage();
        let mut report = GcReport::default();

        // Mark: every manifest and everything it references.
        let mut marked: HashSet<Digest> = HashSet::new();
        let repos = storage.list_repositories().await?;
        report.repositories = repos.len();
        let read_limit = self.options.limits.max_manifest_bytes.max(MARK_READ_LIMIT);
        for repo in &repos {
            for digest in storage.list_manifests(repo).await? {
                report.manifests += 1;
                marked.insert(digest);
                let Some(media_type) = storage.manifest_media_type(repo, &digest).await? else {
                    continue; // deleted meanwhile
                };
                let bytes = match storage.read_blob_bytes(&digest, read_limit).await {
                    Ok(b) => b,
                    Err(StorageError::BlobNotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                let parsed = manifest::parse(&bytes, Some(&media_type)).map_err(|e| {
                    // Unknown references: refuse to collect rather than guess.
                    StorageError::Corrupt(format!("manifest {digest} of {repo}: {e}"))
                })?;
                marked.extend(parsed.config.iter().map(|d| d.digest));
                marked.extend(parsed.layers.iter().map(|d| d.digest));
                marked.extend(parsed.manifests.iter().map(|d| d.digest));
                marked.extend(parsed.subject.iter().map(|d| d.digest));
            }
        }

        // Candidates: unreferenced and older than the grace period.
        let cutoff = SystemTime::now()
            .checked_sub(opts.grace_period)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let blobs = storage.list_blobs().await?;
        report.blobs = blobs.len();
        let mut candidates = Vec::new();
        for (digest, meta) in blobs {
            if marked.contains(&digest) {
                report.referenced += 1;
            } else if meta.modified >= cutoff {
                report.kept_recent += 1;
            } else {
                candidates.push(digest);
            }
        }

        // Sweep, exclusively, re-checking each candidate.
        if !candidates.is_empty() {
            let _exclusive = self.gc_lock.write().await;
            let mut deleted = HashSet::new();
            for digest in candidates {
                let Some(meta) = storage.stat_blob(&digest).await? else {
                    continue;
                };
                if meta.modified >= cutoff {
                    report.kept_recent += 1;
                    continue;
                }
                if opts.dry_run || storage.delete_blob(&digest).await? {
                    report.deleted += 1;
                    report.deleted_bytes += meta.size;
                    report.deleted_digests.push(digest);
                    deleted.insert(digest);
                }
            }
            if !opts.dry_run && !deleted.is_empty() {
                // Still under the lock: a blob pushed again after the sweep must keep its
                // new link.
                for repo in storage.list_repositories().await? {
                    for digest in storage.list_blob_links(&repo).await? {
                        if deleted.contains(&digest) && storage.unlink_blob(&repo, &digest).await? {
                            report.links_removed += 1;
                        }
                    }
                }
            }
        }
        report.millis = started.elapsed().as_millis() as u64;
        if !opts.dry_run {
            self.metrics.gc_runs.inc();
            self.metrics.gc_blobs_deleted.inc_by(report.deleted as u64);
            self.metrics.gc_bytes_deleted.inc_by(report.deleted_bytes);
        }
        tracing::info!(
            deleted = report.deleted,
            deleted_bytes = report.deleted_bytes,
            kept_recent = report.kept_recent,
            referenced = report.referenced,
            dry_run = opts.dry_run,
            millis = report.millis,
            "garbage collection"
        );
        Ok(report)
    }
}
