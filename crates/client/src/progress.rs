//! Progress of blob transfers, reported to whoever draws it (the CLI's progress bars).

use gantry_oci::Digest;
use serde::Serialize;

/// How one blob reached its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobOutcome {
    /// The destination already had it.
    Existing,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Sent whole.
    Uploaded,
    /// Assembled by delta push from blobs the registry holds plus the sent bytes.
    Delta,
    /// Downloaded.
    Downloaded,
    /// Taken from a local copy (an earlier layout) after verification.
    Local,
}

/// Receives transfer progress. Every method has a no-op default.
pub trait TransferProgress: Send + Sync {
    /// A blob transfer starts; `label` says what it is (`config`, a layer name, …).
    fn blob_started(&self, _digest: &Digest, _size: u64, _label: &str) {}
    /// `n` more bytes of the blob were sent or received.
    fn blob_bytes(&self, _digest: &Digest, _n: u64) {}
    /// The blob is done.
    fn blob_finished(&self, _digest: &Digest, _outcome: BlobOutcome) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl TransferProgress for NoProgress {}
