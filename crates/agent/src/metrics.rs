//! The agent's metrics (`/metrics`) and its per-layer status (`/status`, `gantry agent
//! status`).
//!
//! - `gantry_agent_upstream_bytes_total{repository,layer}`: bytes fetched from upstream
//!   for layer blobs (chunks and whole blobs) and chunk indexes
//! - `gantry_agent_reused_bytes_total{repository,layer}`: bytes of a layer taken from
//!   blobs the node already held
//! - `gantry_agent_served_bytes_total{repository}`: blob bytes served to containerd
//! - `gantry_agent_verification_failures_total`: chunks or blobs from upstream that did not
//!   match their digest
//! - `gantry_agent_rejected_indexes_total`: chunk indexes that failed a check (malformed,
//!   chunk lengths out of bounds, sizes that disagree with the manifest or the registry, or
//!   an assembly that did not give the layer): the layer was fetched whole instead
//! - `gantry_agent_open_connections`: client connections held right now (at most
//!   `--max-connections`)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;
use serde::Serialize;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LayerLabels {
    repository: String,
    layer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepoLabels {
    repository: String,
}

/// How a blob came to be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Assembled from local chunks plus fetched chunks.
    Delta,
    /// Fetched whole (no chunk index).
    Whole,
}

/// One blob the agent obtained.
#[derive(Debug, Clone, Serialize)]
pub struct BlobRecord {
    /// Repository it was asked for.
    pub repository: String,
    /// The blob digest.
    pub digest: String,
    /// Blob size.
    pub size: u64,
    /// How.
    pub method: Method,
    /// Bytes fetched from upstream for it (chunk index included).
    pub upstream_bytes: u64,
    /// Bytes taken from blobs already held.
    pub reused_bytes: u64,
    /// Upstream requests made.
    pub requests: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Totals and recent blobs, for `/status`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    /// Bytes fetched from upstream.
    pub upstream_bytes: u64,
    /// Bytes reused locally.
    pub reused_bytes: u64,
    /// Bytes served to clients.
    pub served_bytes: u64,
    /// Blobs held.
    pub blobs_held: u64,
    /// Bytes held.
    pub bytes_held: u64,
    /// Chunks known.
    pub chunks_known: u64,
    /// Blobs obtained since start, oldest first (the last 1000).
    pub blobs: Vec<BlobRecord>,
}

/// The agent's metrics.
pub struct Metrics {
    registry: PromRegistry,
    upstream: Family<LayerLabels, Counter>,
    reused: Family<LayerLabels, Counter>,
    served: Family<RepoLabels, Counter>,
    failures: Counter,
    rejected_indexes: Counter,
    records: Mutex<Vec<BlobRecord>>,
    connections: gantry_net::OpenConnections,
    connections_gauge: Gauge,
    upstream_total: AtomicU64,
    reused_total: AtomicU64,
    served_total: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = PromRegistry::default();
        let upstream = Family::<LayerLabels, Counter>::default();
        let reused = Family::<LayerLabels, Counter>::default();
        let served = Family::<RepoLabels, Counter>::default();
        let failures = Counter::default();
        let rejected_indexes = Counter::default();
        registry.register(
            "gantry_agent_upstream_bytes",
            "Bytes fetched from upstream registries, by repository and layer.",
            upstream.clone(),
        );
        registry.register(
            "gantry_agent_reused_bytes",
            "Bytes of layers taken from blobs the node already held, by repository and layer.",
            reused.clone(),
        );
        registry.register(
            "gantry_agent_served_bytes",
            "Blob bytes served to clients, by repository.",
            served.clone(),
        );
        registry.register(
            "gantry_agent_verification_failures",
            "Chunks or blobs from upstream that did not match their digest.",
            failures.clone(),
        );
        registry.register(
            "gantry_agent_rejected_indexes",
            "Chunk indexes that failed a check; their layers were fetched whole.",
            rejected_indexes.clone(),
        );
        let connections_gauge = Gauge::default();
        registry.register(
            "gantry_agent_open_connections",
            "Client connections held open right now.",
            connections_gauge.clone(),
        );
        Metrics {
            registry,
            upstream,
            reused,
            served,
            failures,
            rejected_indexes,
            records: Mutex::new(Vec::new()),
            connections: gantry_net::OpenConnections::default(),
            connections_gauge,
            upstream_total: AtomicU64::new(0),
            reused_total: AtomicU64::new(0),
            served_total: AtomicU64::new(0),
        }
    }

    /// The count of open client connections the server loop keeps.
    pub fn open_connections(&self) -> gantry_net::OpenConnections {
        self.connections.clone()
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        self.connections_gauge
            .set(i64::try_from(self.connections.get()).unwrap_or(i64::MAX));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts bytes fetched upstream for `layer` of `repository`.
    pub fn upstream(&self, repository: &str, layer: &str, n: u64) {
        self.upstream_total.fetch_add(n, Ordering::Relaxed);
        self.upstream
            .get_or_create(&LayerLabels {
                repository: repository.into(),
                layer: layer.into(),
            })
            .inc_by(n);
    }

    /// Counts bytes reused for `layer` of `repository`.
    pub fn reused(&self, repository: &str, layer: &str, n: u64) {
        self.reused_total.fetch_add(n, Ordering::Relaxed);
        self.reused
            .get_or_create(&LayerLabels {
                repository: repository.into(),
                layer: layer.into(),
            })
            .inc_by(n);
    }

    /// Counts bytes served.
    pub fn served(&self, repository: &str, n: u64) {
        self.served_total.fetch_add(n, Ordering::Relaxed);
        self.served
            .get_or_create(&RepoLabels {
                repository: repository.into(),
            })
            .inc_by(n);
    }

    /// Counts a verification failure.
    pub fn verification_failure(&self) {
        self.failures.inc();
    }

    /// Counts a chunk index that failed a check (the layer is fetched whole).
    pub fn rejected_index(&self) {
        self.rejected_indexes.inc();
    }

    /// Records an obtained blob.
    pub fn record(&self, r: BlobRecord) {
        if let Ok(mut v) = self.records.lock() {
            if v.len() >= 1000 {
                v.remove(0);
            }
            v.push(r);
        }
    }

    /// The status (the store's figures are filled in by the caller).
    pub fn status(&self) -> Status {
        let blobs = self.records.lock().map(|v| v.clone()).unwrap_or_default();
        Status {
            upstream_bytes: self.upstream_total.load(Ordering::Relaxed),
            reused_bytes: self.reused_total.load(Ordering::Relaxed),
            served_bytes: self.served_total.load(Ordering::Relaxed),
            blobs,
            ..Status::default()
        }
    }
}
