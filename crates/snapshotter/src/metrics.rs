//! Counters of what the snapshotter did since it started.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters, shared by the gRPC handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    layers_prepared_normal: AtomicU64,
    layers_prepared_fast: AtomicU64,
    prepares: AtomicU64,
    views: AtomicU64,
    commits: AtomicU64,
    removes: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// Layer prepares (those carrying `containerd.io/snapshot.ref`) left to the normal
    /// path: containerd fetched and applied the layer.
    pub layers_prepared_normal: u64,
    /// Layer prepares the fast path built and committed itself.
    pub layers_prepared_fast: u64,
    /// Active snapshots created (layers being applied and container root filesystems).
    pub prepares: u64,
    /// Views created.
    pub views: u64,
    /// Snapshots committed.
    pub commits: u64,
    /// Snapshots removed.
    pub removes: u64,
}

/// Which counter to bump.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    LayerNormal,
    LayerFast,
    Prepare,
    View,
    Commit,
    Remove,
}

impl Metrics {
    pub(crate) fn add(&self, event: Event) {
        let counter = match event {
            Event::LayerNormal => &self.layers_prepared_normal,
            Event::LayerFast => &self.layers_prepared_fast,
            Event::Prepare => &self.prepares,
            Event::View => &self.views,
            Event::Commit => &self.commits,
            Event::Remove => &self.removes,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            layers_prepared_normal: get(&self.layers_prepared_normal),
            layers_prepared_fast: get(&self.layers_prepared_fast),
            prepares: get(&self.prepares),
            views: get(&self.views),
            commits: get(&self.commits),
            removes: get(&self.removes),
        }
    }
}

/// Serves `/metrics` on `addr` in the background: the counters above and the fast path's
/// totals, as OpenMetrics text. The task runs until aborted.
pub(crate) async fn serve(
    addr: std::net::SocketAddr,
    metrics: std::sync::Arc<Metrics>,
    fast_path: std::sync::Arc<dyn crate::FastPath>,
) -> crate::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::io(format!("binding the metrics listener {addr}"), e))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = encode(&metrics.snapshot(), fast_path.totals());
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    tracing::info!(%addr, "gantry snapshotter metrics at /metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics listener stopped: {e}");
        }
    }))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

/// The counters as OpenMetrics text.
pub fn encode(m: &MetricsSnapshot, fast: Option<crate::FastPathTotals>) -> String {
    use prometheus_client::metrics::counter::{ConstCounter, Counter};
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::ConstGauge;
    let mut r = prometheus_client::registry::Registry::default();
    let layers = Family::<PathLabel, Counter>::default();
    layers
        .get_or_create(&PathLabel { path: "fast" })
        .inc_by(m.layers_prepared_fast);
    layers
        .get_or_create(&PathLabel { path: "normal" })
        .inc_by(m.layers_prepared_normal);
    r.register(
        "gantry_snapshotter_layers",
        "Layer prepares by path: fast (built from earlier snapshots and new chunks) or normal (containerd fetched and applied the layer)",
        layers,
    );
    for (name, help, v) in [
        (
            "gantry_snapshotter_prepares",
            "Active snapshots created",
            m.prepares,
        ),
        ("gantry_snapshotter_views", "Views created", m.views),
        (
            "gantry_snapshotter_commits",
            "Snapshots committed",
            m.commits,
        ),
        ("gantry_snapshotter_removes", "Snapshots removed", m.removes),
    ] {
        r.register(name, help, ConstCounter::new(v));
    }
    let f = fast.unwrap_or_default();
    for (name, help, v) in [
        (
            "gantry_snapshotter_fast_path_fallbacks",
            "Layers the fast path started and left to the normal path after an error or a failed check",
            f.fallbacks,
        ),
        (
            "gantry_snapshotter_reused_bytes",
            "File bytes shared with earlier snapshots without a copy (reflink)",
            f.reused_bytes,
        ),
        (
            "gantry_snapshotter_copied_bytes",
            "File bytes copied from earlier snapshots (copy_file_range)",
            f.copied_bytes,
        ),
        (
            "gantry_snapshotter_written_bytes",
            "File bytes written from new chunks",
            f.written_bytes,
        ),
        (
            "gantry_snapshotter_fetched_bytes",
            "Compressed chunk bytes fetched through the agent",
            f.fetched_bytes,
        ),
    ] {
        r.register(name, help, ConstCounter::new(v));
    }
    r.register(
        "gantry_snapshotter_fast_path_seconds",
        "Seconds spent building layers on the fast path",
        ConstCounter::new(f.seconds),
    );
    let per_layer = if f.layers > 0 {
        f.seconds / f.layers as f64
    } else {
        0.0
    };
    r.register(
        "gantry_snapshotter_fast_path_seconds_per_layer",
        "Mean seconds per layer built on the fast path",
        ConstGauge::new(per_layer),
    );
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

#[cfg(test)]
mod encode_tests {
    use super::*;

    #[test]
    fn encodes_every_counter() {
        let m = MetricsSnapshot {
            layers_prepared_fast: 3,
            layers_prepared_normal: 2,
            ..Default::default()
        };
        let fast = crate::FastPathTotals {
            layers: 3,
            reused_bytes: 100,
            seconds: 1.5,
            ..Default::default()
        };
        let text = encode(&m, Some(fast));
        for want in [
            "gantry_snapshotter_layers_total{path=\"fast\"} 3",
            "gantry_snapshotter_layers_total{path=\"normal\"} 2",
            "gantry_snapshotter_reused_bytes_total 100",
            "gantry_snapshotter_fast_path_seconds_per_layer 0.5",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }
}
