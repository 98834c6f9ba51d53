//! The hook where Gantry's remote-snapshot fast path will plug in (not implemented yet).
//!
//! containerd's unpacker prepares each layer with the label
//! [`TARGET_SNAPSHOT_REF_LABEL`] (`containerd.io/snapshot.ref`) naming the chain id the
//! layer will be committed as, plus the labels of the layer's descriptor that start with
//! `containerd.io/snapshot/` (CRI adds e.g. [`CRI_LAYER_DIGEST_LABEL`] and
//! `containerd.io/snapshot/cri.image-ref`). A remote snapshotter that can build the layer
//! itself does so, commits it under that target name, and answers the prepare with
//! `AlreadyExists`, which tells containerd to skip fetching and applying the layer.
//!
//! [`crate::Snapshotter`] calls [`FastPath::prepare_remote`] from every prepare that carries
//! the target label, before doing anything else. [`NormalPathOnly`], the only
//! implementation today, always answers [`FastPathOutcome::NotHandled`], so the normal path
//! (an empty active snapshot that containerd fills) runs. A fast path for layers whose
//! descriptor names a Gantry chunk index would: create an active snapshot with
//! [`crate::Store::prepare`] under a private key on `parent`, assemble the layer into
//! [`crate::Store::upper_dir`] (chunks from the agent, in overlay's whiteout format),
//! [`crate::Store::commit`] it as `target`, and return [`FastPathOutcome::Committed`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::Result;
use crate::store::Store;

/// containerd's label on a layer's prepare: the name its snapshot will be committed as.
pub const TARGET_SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";
/// CRI's label on a layer's prepare: the layer's (compressed) digest.
pub const CRI_LAYER_DIGEST_LABEL: &str = "containerd.io/snapshot/cri.layer-digest";
/// CRI's label on a layer's prepare: the image reference being pulled.
pub const CRI_IMAGE_REF_LABEL: &str = "containerd.io/snapshot/cri.image-ref";

/// A layer prepare that a fast path may take over.
#[derive(Debug, Clone)]
pub struct RemoteLayer {
    /// The key containerd prepares (a temporary `extract-…` key).
    pub key: String,
    /// The committed parent (empty for the first layer).
    pub parent: String,
    /// The name containerd will look for once the layer is in place (its chain id).
    pub target: String,
    /// All labels of the prepare.
    pub labels: BTreeMap<String, String>,
}

/// What a fast path did with a [`RemoteLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPathOutcome {
    /// Not this path's layer: the normal path prepares an empty active snapshot.
    NotHandled,
    /// The layer is committed as [`RemoteLayer::target`]; the prepare answers
    /// `AlreadyExists` so containerd skips the fetch and apply.
    Committed,
}

/// A remote-snapshot fast path. Called on an async worker: blocking work belongs in
/// `spawn_blocking`.
#[async_trait::async_trait]
pub trait FastPath: Send + Sync + 'static {
    /// Decides whether to build `layer` itself and, if so, builds and commits it in
    /// `store` under `layer.target`.
    async fn prepare_remote(
        &self,
        store: &Arc<Store>,
        layer: &RemoteLayer,
    ) -> Result<FastPathOutcome>;

    /// What this fast path did so far, for `/metrics` (none for a path that does nothing).
    fn totals(&self) -> Option<crate::remote::FastPathTotals> {
        None
    }
}

/// The fast path of this version: handles nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NormalPathOnly;

#[async_trait::async_trait]
impl FastPath for NormalPathOnly {
    async fn prepare_remote(
        &self,
        _store: &Arc<Store>,
        _layer: &RemoteLayer,
    ) -> Result<FastPathOutcome> {
        Ok(FastPathOutcome::NotHandled)
    }
}
