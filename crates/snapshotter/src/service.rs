//! containerd's snapshots gRPC service on top of [`Store`]: every filesystem call runs on
//! tokio's blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use containerd_snapshots::api::types::Mount as ProtoMount;
use containerd_snapshots::{Info, Kind as ProtoKind, Usage as ProtoUsage};

use crate::error::{Error, Result};
use crate::fastpath::{FastPath, FastPathOutcome, RemoteLayer, TARGET_SNAPSHOT_REF_LABEL};
use crate::metrics::{Event, Metrics};
use crate::store::{Kind, Mount, SnapshotInfo, Store};

/// The gRPC-facing snapshotter: a [`Store`], the fast-path hook and the counters.
pub struct Snapshotter {
    store: Arc<Store>,
    fast_path: Arc<dyn FastPath>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("root", &self.store.root())
            .finish_non_exhaustive()
    }
}

impl Snapshotter {
    /// A snapshotter serving `store`, asking `fast_path` about every layer prepare.
    pub fn new(store: Arc<Store>, fast_path: Arc<dyn FastPath>) -> Self {
        Snapshotter {
            store,
            fast_path,
            metrics: Arc::default(),
        }
    }

    /// The counters (shared: they keep counting).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store)).await?
    }
}

fn to_proto_mounts(mounts: Vec<Mount>) -> Vec<ProtoMount> {
    mounts
        .into_iter()
        .map(|m| ProtoMount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn to_proto_info(info: SnapshotInfo) -> Info {
    Info {
        kind: match info.kind {
            Kind::View => ProtoKind::View,
            Kind::Active => ProtoKind::Active,
            Kind::Committed => ProtoKind::Committed,
        },
        name: info.name,
        parent: info.parent,
        labels: info.labels.into_iter().collect(),
        created_at: info.created_at,
        updated_at: info.updated_at,
    }
}

fn sorted(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

#[async_trait::async_trait]
impl containerd_snapshots::Snapshotter for Snapshotter {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<Info> {
        let info = self.blocking(move |s| s.stat(&key)).await?;
        Ok(to_proto_info(info))
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info> {
        let info = SnapshotInfo {
            name: info.name,
            parent: info.parent,
            kind: Kind::Active, // ignored: only labels are updatable
            labels: sorted(info.labels),
            created_at: info.created_at,
            updated_at: info.updated_at,
        };
        let paths = fieldpaths.unwrap_or_default();
        let updated = self.blocking(move |s| s.update(&info, &paths)).await?;
        Ok(to_proto_info(updated))
    }

    async fn usage(&self, key: String) -> Result<ProtoUsage> {
        let u = self.blocking(move |s| s.usage(&key)).await?;
        Ok(ProtoUsage {
            size: u.size,
            inodes: u.inodes,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<ProtoMount>> {
        let mounts = self.blocking(move |s| s.mounts(&key)).await?;
        Ok(to_proto_mounts(mounts))
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<ProtoMount>> {
        let labels = sorted(labels);
        let target = labels.get(TARGET_SNAPSHOT_REF_LABEL).cloned();
        if let Some(target) = &target {
            let layer = RemoteLayer {
                key: key.clone(),
                parent: parent.clone(),
                target: target.clone(),
                labels: labels.clone(),
            };
            match self.fast_path.prepare_remote(&self.store, &layer).await? {
                FastPathOutcome::NotHandled => {}
                FastPathOutcome::Committed => {
                    self.metrics.add(Event::LayerFast);
                    tracing::info!(%key, %target, "layer prepared by the fast path");
                    return Err(Error::AlreadyExists(target.clone()));
                }
            }
        }
        let mounts = {
            let (key, parent) = (key.clone(), parent.clone());
            self.blocking(move |s| s.prepare(&key, &parent, labels))
                .await?
        };
        self.metrics.add(Event::Prepare);
        if target.is_some() {
            self.metrics.add(Event::LayerNormal);
        }
        tracing::debug!(%key, %parent, "prepared");
        Ok(to_proto_mounts(mounts))
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<ProtoMount>> {
        let labels = sorted(labels);
        let mounts = self
            .blocking(move |s| s.view(&key, &parent, labels))
            .await?;
        self.metrics.add(Event::View);
        Ok(to_proto_mounts(mounts))
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let labels = sorted(labels);
        self.blocking(move |s| s.commit(&name, &key, labels))
            .await?;
        self.metrics.add(Event::Commit);
        Ok(())
    }

    async fn remove(&self, key: String) -> Result<()> {
        self.blocking(move |s| s.remove(&key)).await?;
        self.metrics.add(Event::Remove);
        Ok(())
    }

    async fn clear(&self) -> Result<()> {
        let removed = self.blocking(|s| s.cleanup()).await?;
        if !removed.is_empty() {
            tracing::info!(
                count = removed.len(),
                "cleanup removed orphaned directories"
            );
        }
        Ok(())
    }

    type InfoStream = futures::stream::Iter<std::vec::IntoIter<Result<Info>>>;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<Self::InfoStream> {
        let infos = self.blocking(move |s| s.walk(&filters)).await?;
        let items: Vec<Result<Info>> = infos.into_iter().map(|i| Ok(to_proto_info(i))).collect();
        Ok(futures::stream::iter(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastpath::{NormalPathOnly, CRI_LAYER_DIGEST_LABEL};
    use crate::store::MountOptions;
    use containerd_snapshots::Snapshotter as _;
    use std::sync::Mutex;

    /// A fast path that commits every layer whose labels carry a layer digest, writing
    /// one file, and records what it saw.
    #[derive(Default)]
    struct Recording {
        seen: Mutex<Vec<RemoteLayer>>,
    }

    #[async_trait::async_trait]
    impl FastPath for Recording {
        async fn prepare_remote(
            &self,
            store: &Arc<Store>,
            layer: &RemoteLayer,
        ) -> Result<FastPathOutcome> {
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(layer.clone());
            if !layer.labels.contains_key(CRI_LAYER_DIGEST_LABEL) {
                return Ok(FastPathOutcome::NotHandled);
            }
            let (store, layer) = (store.clone(), layer.clone());
            tokio::task::spawn_blocking(move || {
                let key = format!("fast-{}", layer.key);
                store.prepare(&key, &layer.parent, BTreeMap::new())?;
                let upper = store.upper_dir(&key)?;
                std::fs::write(upper.join("from-fast-path"), b"x")
                    .map_err(|e| Error::io("write", e))?;
                store.commit(&layer.target, &key, BTreeMap::new())
            })
            .await??;
            Ok(FastPathOutcome::Committed)
        }
    }

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let d = tempfile::Builder::new()
            .prefix("snap-svc-")
            .tempdir_in("/tmp")
            .unwrap();
        let s = Store::open_with(
            d.path(),
            MountOptions {
                index_off: true,
                userxattr: false,
            },
        )
        .unwrap();
        (d, Arc::new(s))
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn normal_path_counts_layers_and_maps_errors() {
        let (_d, store) = store();
        let sn = Snapshotter::new(store, Arc::new(NormalPathOnly));
        let l = labels(&[(TARGET_SNAPSHOT_REF_LABEL, "chain-1")]);
        let m = sn
            .prepare("extract-1 chain-1".into(), String::new(), l.clone())
            .await
            .unwrap();
        assert_eq!(m[0].r#type, "bind");
        let again = sn
            .prepare("extract-1 chain-1".into(), String::new(), l)
            .await
            .unwrap_err();
        assert_eq!(
            tonic::Status::from(again).code(),
            tonic::Code::AlreadyExists
        );
        sn.commit("chain-1".into(), "extract-1 chain-1".into(), HashMap::new())
            .await
            .unwrap();
        sn.prepare("rootfs".into(), "chain-1".into(), HashMap::new())
            .await
            .unwrap();
        let err = sn.remove("chain-1".into()).await.unwrap_err();
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::FailedPrecondition
        );
        let err = sn.stat("nope".into()).await.unwrap_err();
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::NotFound);
        let info = sn.stat("rootfs".into()).await.unwrap();
        assert_eq!(info.kind, ProtoKind::Active);
        assert_eq!(info.parent, "chain-1");
        let m = sn.metrics().snapshot();
        assert_eq!(
            (m.layers_prepared_normal, m.prepares, m.commits),
            (1, 2, 1),
            "{m:?}"
        );
    }

    #[tokio::test]
    async fn fast_path_hook_commits_target_and_answers_already_exists() {
        let (_d, store) = store();
        let hook = Arc::new(Recording::default());
        let sn = Snapshotter::new(store.clone(), hook.clone());
        // No target label: the hook is not asked.
        sn.prepare("plain".into(), String::new(), HashMap::new())
            .await
            .unwrap();
        // Target label without a layer digest: asked, declines, normal path.
        sn.prepare(
            "extract-1 chain-1".into(),
            String::new(),
            labels(&[(TARGET_SNAPSHOT_REF_LABEL, "chain-1")]),
        )
        .await
        .unwrap();
        sn.commit("chain-1".into(), "extract-1 chain-1".into(), HashMap::new())
            .await
            .unwrap();
        // With a layer digest: the hook builds and commits chain-2 itself.
        let err = sn
            .prepare(
                "extract-2 chain-2".into(),
                "chain-1".into(),
                labels(&[
                    (TARGET_SNAPSHOT_REF_LABEL, "chain-2"),
                    (CRI_LAYER_DIGEST_LABEL, "sha256:abc"),
                ]),
            )
            .await
            .unwrap_err();
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::AlreadyExists);
        let info = sn.stat("chain-2".into()).await.unwrap();
        assert_eq!(info.kind, ProtoKind::Committed);
        assert_eq!(info.parent, "chain-1");
        assert!(store
            .upper_dir("chain-2")
            .unwrap()
            .join("from-fast-path")
            .exists());
        assert!(matches!(
            store.stat("extract-2 chain-2"),
            Err(Error::NotFound(_))
        ));
        let seen = hook.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].target, "chain-2");
        assert_eq!(seen[1].parent, "chain-1");
        let m = sn.metrics().snapshot();
        assert_eq!((m.layers_prepared_normal, m.layers_prepared_fast), (1, 1));
    }
}
