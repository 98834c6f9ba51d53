//! What `gantry serve` knows of its replication (`[[replication]]`): the tags pushed here,
//! announced to whoever copies them ([`crate::Registry::subscribe_pushes`]; the copying
//! itself is the `gantry-replicate` crate), and the state of each remote, shown at
//! `GET /gantry/v1/replication` and in the `gantry_registry_replication_*` metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use gantry_oci::Digest;
use serde::Serialize;

use crate::Registry;

/// A tag pushed to this registry (what replication follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// The repository.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest it points at now.
    pub digest: Digest,
}

/// An image copied to a remote, or that failed to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationEvent {
    /// `repository:tag`.
    pub image: String,
    /// The manifest copied (or being copied).
    pub digest: String,
    /// When (seconds since the Unix epoch).
    pub at_unix: u64,
    /// For a failure, why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The state of one remote of `[[replication]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TargetStatus {
    /// The name in the config (default: the remote's host).
    pub name: String,
    /// The remote's URL.
    pub url: String,
    /// `repository:tag` of the images waiting to be compared or copied, oldest first.
    pub pending: Vec<String>,
    /// Tag pushes the remote's task has not read yet (their images may join `pending`).
    pub unread_pushes: u64,
    /// Tag pushes the remote's task has read (of every repository; see
    /// [`ReplicationStatus::pushed`]).
    #[serde(skip)]
    pub pushes_read: u64,
    /// Whether the last attempt failed and the remote is being retried.
    pub failing: bool,
    /// Images copied since the server started.
    pub copied: u64,
    /// Tags found already in sync (no copy needed).
    pub in_sync: u64,
    /// Failed attempts since the server started.
    pub failures: u64,
    /// Bytes sent to the remote (what the inter-region link carried for blobs).
    pub bytes_sent: u64,
    /// Bytes the remote assembled from what it already held (delta push).
    pub bytes_reused: u64,
    /// The last image copied.
    pub last_copied: Option<ReplicationEvent>,
    /// The last failure.
    pub last_failure: Option<ReplicationEvent>,
}

/// Every remote's state, as the replication tasks report it.
#[derive(Debug, Default)]
pub struct ReplicationStatus {
    targets: Mutex<BTreeMap<String, TargetStatus>>,
    /// Tag pushes announced so far (counted before each is sent to the tasks).
    pushes: std::sync::atomic::AtomicU64,
}

impl ReplicationStatus {
    /// Counts a tag push about to be announced, so that a remote whose task has not read
    /// it yet does not look in sync.
    pub fn pushed(&self) {
        self.pushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Tag pushes announced so far.
    pub fn announced(&self) -> u64 {
        self.pushes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether a remote is in sync: nothing waiting, nothing unread, last attempt fine.
    pub fn in_sync(status: &TargetStatus) -> bool {
        status.pending.is_empty() && status.unread_pushes == 0 && !status.failing
    }

    /// Changes the state of remote `name` (created as `TargetStatus::default()` named
    /// `name` on first use).
    pub fn update(&self, name: &str, f: impl FnOnce(&mut TargetStatus)) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let entry = targets
            .entry(name.to_string())
            .or_insert_with(|| TargetStatus {
                name: name.to_string(),
                ..TargetStatus::default()
            });
        f(entry);
    }

    /// Every remote's state, by name.
    pub fn snapshot(&self) -> Vec<TargetStatus> {
        let pushes = self.pushes.load(std::sync::atomic::Ordering::SeqCst);
        let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets
            .values()
            .map(|t| TargetStatus {
                unread_pushes: pushes.saturating_sub(t.pushes_read),
                ..t.clone()
            })
            .collect()
    }
}

/// `GET /gantry/v1/replication`: `{"targets":[TargetStatus…]}`. With `[auth]` it needs the
/// credentials of an admin or a metrics user, as `/metrics` does (it names repositories).
pub async fn get_status(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let mut resp = match crate::api::authorize_metrics(&reg, req).await {
        Ok(()) => (
            [(http::header::CONTENT_TYPE, "application/json")],
            serde_json::json!({
                "targets": reg.replication().snapshot().into_iter().map(|t| {
                    let in_sync = ReplicationStatus::in_sync(&t);
                    let mut v = serde_json::to_value(t).unwrap_or_default();
                    v["in_sync_now"] = serde_json::Value::Bool(in_sync);
                    v
                }).collect::<Vec<_>>(),
            })
            .to_string(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    };
    resp.extensions_mut()
        .insert(crate::api::RouteKind("replication"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_create_and_change_a_remote() {
        let s = ReplicationStatus::default();
        s.update("eu", |t| t.pending.push("a:v1".into()));
        s.update("eu", |t| t.copied += 1);
        s.update("asia", |t| t.failing = true);
        s.pushed();
        s.update("eu", |t| t.pushes_read += 1);
        let all = s.snapshot();
        assert_eq!((all[0].unread_pushes, all[1].unread_pushes), (1, 0));
        assert!(!ReplicationStatus::in_sync(&all[0]) && !ReplicationStatus::in_sync(&all[1]));
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].name, "asia");
        assert!(all[0].failing);
        assert_eq!(all[1].name, "eu");
        assert_eq!((all[1].pending.len(), all[1].copied), (1, 1));
        s.update("eu", |t| t.pending.clear());
        assert!(ReplicationStatus::in_sync(&s.snapshot()[1]));
    }
}
