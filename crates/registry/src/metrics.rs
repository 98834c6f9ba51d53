//! Prometheus metrics (`/metrics`, OpenMetrics text format).
//!
//! - `gantry_registry_http_requests_total{route,method,status}`
//! - `gantry_registry_http_request_duration_seconds{route,method}` (time to response
//!   headers; a blob body streams afterwards)
//! - `gantry_registry_bytes_received_total{repository}`: upload and manifest bytes
//! - `gantry_registry_bytes_sent_total{repository,client}`: blob and manifest bytes
//!   served, by client (the authenticated user, else the peer IP): the egress users pay for
//! - `gantry_registry_delta_reused_bytes_total{repository}`: bytes a delta push appended
//!   from blobs the registry already held (what the client did not have to send)
//! - `gantry_registry_rate_limited_total{reason}`: requests refused with 429 (`requests`:
//!   the per-client rate limit, `login`: too many failed logins, `uploads`: the limits on
//!   open upload sessions)
//! - `gantry_registry_replication_pending{target}`: images waiting to be compared with
//!   or copied to a `[[replication]]` remote; `gantry_registry_replications_total{target,
//!   result}` (`copied`, `in_sync`, `failed`); `gantry_registry_replication_bytes_sent_total
//!   {target}`: blob bytes sent to it
//! - `gantry_registry_egress_paced_seconds_total`: time blob bodies were held back by the
//!   per-client egress limit (`[limits] client_egress_bytes_per_second`), all clients
//! - `gantry_fleet_servers{repository,tag,digest,status}`: game servers in the fleet view
//!   ([`crate::fleet`]), recomputed at each scrape (`status` includes `lost`)
//! - `gantry_registry_open_connections`: client connections held right now (at most
//!   `[connections] max_connections`)
//! - `gantry_registry_uploads_purged_total`, `gantry_registry_gc_runs_total`,
//!   `gantry_registry_gc_blobs_deleted_total`, `gantry_registry_gc_bytes_deleted_total`

use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as PromRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepoLabels {
    repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetLabels {
    repository: String,
    tag: String,
    digest: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetResultLabels {
    target: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EgressLabels {
    repository: String,
    client: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The registry's metrics.
pub struct Metrics {
    registry: PromRegistry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    bytes_received: Family<RepoLabels, Counter>,
    bytes_sent: Family<EgressLabels, Counter>,
    delta_reused: Family<RepoLabels, Counter>,
    rate_limited: Family<ReasonLabels, Counter>,
    egress_paced: Counter<f64, AtomicU64>,
    replication_pending: Family<TargetLabels, Gauge>,
    replications: Family<TargetResultLabels, Counter>,
    replication_bytes: Family<TargetLabels, Counter>,
    fleet_servers: Family<FleetLabels, Gauge>,
    pub(crate) uploads_purged: Counter,
    pub(crate) gc_runs: Counter,
    pub(crate) gc_blobs_deleted: Counter,
    pub(crate) gc_bytes_deleted: Counter,
    connections: gantry_net::OpenConnections,
    connections_gauge: Gauge,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
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
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let bytes_received = Family::<RepoLabels, Counter>::default();
        let bytes_sent = Family::<EgressLabels, Counter>::default();
        let delta_reused = Family::<RepoLabels, Counter>::default();
        let rate_limited = Family::<ReasonLabels, Counter>::default();
        let egress_paced = Counter::<f64, AtomicU64>::default();
        let replication_pending = Family::<TargetLabels, Gauge>::default();
        let replications = Family::<TargetResultLabels, Counter>::default();
        let replication_bytes = Family::<TargetLabels, Counter>::default();
        registry.register(
            "gantry_registry_replication_pending",
            "Images waiting to be compared with or copied to a replication remote",
            replication_pending.clone(),
        );
        registry.register(
            "gantry_registry_replications",
            "Tags replicated, by remote and result (copied, in_sync, failed)",
            replications.clone(),
        );
        registry.register(
            "gantry_registry_replication_bytes_sent",
            "Blob bytes sent to a replication remote",
            replication_bytes.clone(),
        );
        let fleet_servers = Family::<FleetLabels, Gauge>::default();
        registry.register(
            "gantry_fleet_servers",
            "Game servers in the fleet view, by repository, tag, digest and status",
            fleet_servers.clone(),
        );
        let uploads_purged = Counter::default();
        let gc_runs = Counter::default();
        let gc_blobs_deleted = Counter::default();
        let gc_bytes_deleted = Counter::default();
        registry.register(
            "gantry_registry_http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "gantry_registry_http_request_duration_seconds",
            "Time from request to response headers, by route and method",
            latency.clone(),
        );
        registry.register(
            "gantry_registry_bytes_received",
            "Bytes of blobs and manifests received, by repository",
            bytes_received.clone(),
        );
        registry.register(
            "gantry_registry_bytes_sent",
            "Bytes of blobs and manifests sent, by repository and client",
            bytes_sent.clone(),
        );
        registry.register(
            "gantry_registry_delta_reused_bytes",
            "Bytes appended to uploads from blobs already stored (delta push), by repository",
            delta_reused.clone(),
        );
        registry.register(
            "gantry_registry_rate_limited",
            "Requests refused with 429, by reason (requests, login, uploads)",
            rate_limited.clone(),
        );
        registry.register(
            "gantry_registry_egress_paced_seconds",
            "Time blob bodies were held back by the per-client egress limit",
            egress_paced.clone(),
        );
        registry.register(
            "gantry_registry_uploads_purged",
            "Stale upload sessions removed",
            uploads_purged.clone(),
        );
        registry.register(
            "gantry_registry_gc_runs",
            "Garbage collection runs",
            gc_runs.clone(),
        );
        registry.register(
            "gantry_registry_gc_blobs_deleted",
            "Blobs deleted by garbage collection",
            gc_blobs_deleted.clone(),
        );
        registry.register(
            "gantry_registry_gc_bytes_deleted",
            "Bytes deleted by garbage collection",
            gc_bytes_deleted.clone(),
        );
        let connections_gauge = Gauge::default();
        registry.register(
            "gantry_registry_open_connections",
            "Client connections held open right now",
            connections_gauge.clone(),
        );
        Metrics {
            connections: gantry_net::OpenConnections::default(),
            connections_gauge,
            registry,
            requests,
            latency,
            bytes_received,
            bytes_sent,
            delta_reused,
            rate_limited,
            egress_paced,
            replication_pending,
            replications,
            replication_bytes,
            fleet_servers,
            uploads_purged,
            gc_runs,
            gc_blobs_deleted,
            gc_bytes_deleted,
        }
    }

    /// Records one finished request.
    pub(crate) fn observe_request(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        seconds: f64,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route, method })
            .observe(seconds);
    }

    /// The counter of bytes received for `repository`.
    pub(crate) fn received_counter(&self, repository: &str) -> Counter {
        self.bytes_received
            .get_or_create(&RepoLabels {
                repository: repository.to_string(),
            })
            .clone()
    }

    /// The counter of bytes sent from `repository` to `client`.
    pub(crate) fn sent_counter(&self, repository: &str, client: &str) -> Counter {
        self.bytes_sent
            .get_or_create(&EgressLabels {
                repository: repository.to_string(),
                client: client.to_string(),
            })
            .clone()
    }

    /// The counter of bytes delta push reused in `repository`.
    pub(crate) fn delta_reused_counter(&self, repository: &str) -> Counter {
        self.delta_reused
            .get_or_create(&RepoLabels {
                repository: repository.to_string(),
            })
            .clone()
    }

    /// Counts a request refused by a rate limit (`reason`: `requests` or `login`).
    /// Replaces the `gantry_fleet_servers` samples with these counts, keyed by
    /// (repository, tag, digest, status).
    pub fn set_fleet_servers(
        &self,
        counts: &std::collections::BTreeMap<(String, String, String, String), i64>,
    ) {
        self.fleet_servers.clear();
        for ((repository, tag, digest, status), n) in counts {
            self.fleet_servers
                .get_or_create(&FleetLabels {
                    repository: repository.clone(),
                    tag: tag.clone(),
                    digest: digest.clone(),
                    status: status.clone(),
                })
                .set(*n);
        }
    }

    /// Sets how many images wait for replication remote `target`.
    pub fn replication_pending(&self, target: &str, pending: usize) {
        self.replication_pending
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .set(pending as i64);
    }

    /// Counts one replication of a tag to `target`: `copied`, `in_sync` or `failed`, and
    /// the blob bytes it sent.
    pub fn replication_done(&self, target: &str, result: &'static str, bytes_sent: u64) {
        self.replications
            .get_or_create(&TargetResultLabels {
                target: target.to_string(),
                result,
            })
            .inc();
        self.replication_bytes
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .inc_by(bytes_sent);
    }

    /// Records a blob body held back `wait` by the per-client egress limit.
    pub(crate) fn egress_paced(&self, wait: std::time::Duration) {
        self.egress_paced.inc_by(wait.as_secs_f64());
    }

    pub(crate) fn rate_limited(&self, reason: &'static str) {
        self.rate_limited
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The count of open client connections the server loop keeps.
    pub fn open_connections(&self) -> gantry_net::OpenConnections {
        self.connections.clone()
    }

    /// The metrics in OpenMetrics text format.
    pub fn encode(&self) -> String {
        self.connections_gauge
            .set(i64::try_from(self.connections.get()).unwrap_or(i64::MAX));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A body stream that adds the bytes it yields to a counter.
pub(crate) struct Counted<S> {
    inner: S,
    counter: Counter,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, counter: Counter) -> Self {
        Counted { inner, counter }
    }
}

impl<S, E> Stream for Counted<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let poll = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &poll {
            self.counter.inc_by(chunk.len() as u64);
        }
        poll
    }
}

/// The label for a request method (unknown methods share one label so that clients cannot
/// create series at will).
pub(crate) fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_documented_names() {
        let m = Metrics::new();
        m.observe_request("blob", "GET", 200, 0.01);
        m.received_counter("a/b").inc_by(10);
        m.sent_counter("a/b", "127.0.0.1").inc_by(42);
        m.delta_reused_counter("a/b").inc_by(7);
        m.rate_limited("login");
        let text = m.encode();
        for needle in [
            "gantry_registry_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 1",
            "gantry_registry_http_request_duration_seconds_bucket",
            "gantry_registry_bytes_received_total{repository=\"a/b\"} 10",
            "gantry_registry_bytes_sent_total{repository=\"a/b\",client=\"127.0.0.1\"} 42",
            "gantry_registry_gc_runs_total 0",
            "gantry_registry_delta_reused_bytes_total{repository=\"a/b\"} 7",
            "gantry_registry_rate_limited_total{reason=\"login\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
