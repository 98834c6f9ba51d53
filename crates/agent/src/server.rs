//! The pull side of the Distribution API for containerd (`/v2/`, manifests and blobs, GET
//! and HEAD, Range on blobs, the `ns` parameter of mirror requests), plus `/metrics` and
//! `/status`.
//!
//! - Manifests always come from upstream, with the client's `Authorization` (the registry
//!   decides what a tag means and who may read it); the agent learns from each image
//!   manifest which chunk index belongs to which layer.
//! - A blob request is first confirmed upstream (HEAD with the client's `Authorization`),
//!   so a held blob is never handed to a client the registry would refuse; a 401 and its
//!   `WWW-Authenticate` challenge reach containerd unchanged. Then the blob is served from
//!   the store, after being obtained (delta or whole) if needed. Concurrent requests for
//!   one blob share one fetch, which runs in a task of its own (a client that hangs up does
//!   not cancel it). A whole-blob GET of a layer assembled by delta follows the assembly
//!   ([`crate::partial`]): its body starts as soon as the first chunks are written.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use gantry_oci::{media_types, names, Digest};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use tokio_util::io::ReaderStream;

use crate::assemble::Fetcher;
use crate::error::AgentError;
use crate::metrics::{Metrics, Status};
use crate::partial::{Partial, Progress};
use crate::store::{KnownIndex, Store};
use crate::upstream::{UpstreamLimits, UpstreamSpec, Upstreams};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// Store directory.
    pub root: PathBuf,
    /// Upstream registries.
    pub upstreams: Vec<UpstreamSpec>,
    /// Store size limit in bytes (0: none).
    pub max_bytes: u64,
    /// Range requests in flight per blob.
    pub fetch_jobs: usize,
    /// What clients may hold: connections, header and idle timeouts.
    pub serve: gantry_net::ServeLimits,
    /// How long upstreams are waited on.
    pub upstream: UpstreamLimits,
}

impl AgentConfig {
    /// An agent on a free loopback port with its store at `root`, mirroring the one
    /// registry `host` (reached at `url`), with no size limit and 4 range requests per blob
    /// (what the demo, the tests and the benchmarks run).
    pub fn loopback(root: &std::path::Path, host: &str, url: &str) -> AgentConfig {
        AgentConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            root: root.to_path_buf(),
            upstreams: vec![UpstreamSpec {
                host: host.to_string(),
                url: url.to_string(),
            }],
            max_bytes: 0,
            fetch_jobs: 4,
            serve: gantry_net::ServeLimits::default(),
            upstream: UpstreamLimits::default(),
        }
    }
}

/// Shared state of the running agent.
pub struct AgentState {
    /// The store.
    pub store: Store,
    /// Upstreams.
    pub upstreams: Upstreams,
    /// Metrics.
    pub metrics: Metrics,
    jobs: usize,
    inflight: std::sync::Mutex<HashMap<Digest, watch::Receiver<Phase>>>,
    allowed: std::sync::Mutex<HashMap<AllowedKey, (Instant, Option<u64>)>>,
}

/// Whom upstream allowed to read which blob: (upstream, repository, blob, the client's
/// `Authorization` header).
type AllowedKey = (String, String, Digest, Option<HeaderValue>);

/// How long upstream's yes to a blob HEAD is reused for the same credentials: a layer
/// read by many range requests (`gantry snapshotter`) is checked once, not per range,
/// and a revoked permission takes effect within this time.
const ALLOWED_FOR: Duration = Duration::from_secs(30);

/// Remembered answers at most (all are dropped when full).
const ALLOWED_ENTRIES: usize = 4096;

impl AgentState {
    /// Upstream's remembered yes (and blob size) for this client and blob, if recent.
    fn allowed(&self, key: &AllowedKey) -> Option<Option<u64>> {
        let map = self.allowed.lock().ok()?;
        let (at, size) = map.get(key)?;
        (at.elapsed() < ALLOWED_FOR).then_some(*size)
    }

    /// A fetch job for `repo` of upstream `up`, with the client's `auth`; `publish` is
    /// told of a delta assembly as it starts.
    fn fetcher<'a>(
        &'a self,
        up: &'a UpstreamSpec,
        repo: &'a str,
        auth: Option<&'a HeaderValue>,
        publish: Option<&'a (dyn Fn(Arc<Partial>) + Send + Sync)>,
    ) -> Fetcher<'a> {
        Fetcher {
            store: &self.store,
            upstreams: &self.upstreams,
            metrics: &self.metrics,
            up,
            repo,
            auth,
            jobs: self.jobs,
            publish,
        }
    }

    fn remember_allowed(&self, key: AllowedKey, size: Option<u64>) {
        if let Ok(mut map) = self.allowed.lock() {
            if map.len() >= ALLOWED_ENTRIES {
                map.retain(|_, (at, _)| at.elapsed() < ALLOWED_FOR);
                if map.len() >= ALLOWED_ENTRIES {
                    map.clear();
                }
            }
            map.insert(key, (Instant::now(), size));
        }
    }
}

/// An agent listening in the background.
pub struct RunningAgent {
    addr: SocketAddr,
    state: Arc<AgentState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningAgent {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The shared state (store, metrics).
    pub fn state(&self) -> &Arc<AgentState> {
        &self.state
    }

    /// Stops accepting and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Opens the store and starts serving on `config.addr` in the background.
pub async fn bind(config: &AgentConfig) -> Result<RunningAgent, AgentError> {
    if config.upstreams.is_empty() {
        return Err(AgentError::Invalid {
            what: "agent configuration".into(),
            message: "no upstream registry (--upstream HOST[=URL])".into(),
        });
    }
    let root = config.root.clone();
    let max = config.max_bytes;
    let store = tokio::task::spawn_blocking(move || Store::open(&root, max))
        .await
        .map_err(|e| AgentError::Invalid {
            what: "store".into(),
            message: e.to_string(),
        })??;
    let state = Arc::new(AgentState {
        store,
        upstreams: Upstreams::new(config.upstreams.clone(), config.upstream)?,
        metrics: Metrics::new(),
        jobs: config.fetch_jobs.max(1),
        inflight: std::sync::Mutex::new(HashMap::new()),
        allowed: std::sync::Mutex::new(HashMap::new()),
    });
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(AgentError::io(format!("listen on {}", config.addr)))?;
    let addr = listener.local_addr().map_err(AgentError::io("listener"))?;
    let app = router(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (limits, open) = (config.serve, state.metrics.open_connections());
    let task = tokio::spawn(async move {
        gantry_net::serve(
            listener,
            limits,
            gantry_net::plain,
            std::convert::identity,
            app,
            open,
            async {
                let _ = rx.await;
            },
        )
        .await;
    });
    Ok(RunningAgent {
        addr,
        state,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// The agent's HTTP API.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Finishes a response: `builder` with `body`, or — when the builder holds an invalid
/// part (status, header name or value) — a 500 error response, never an empty 200.
pub fn respond(builder: http::response::Builder, body: Body) -> Response {
    match builder.body(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "could not build a response");
            internal_error(&format!("could not build the response: {e}"))
        }
    }
}

/// A 500 with a Distribution-style JSON error body, built without fallible steps.
fn internal_error(message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": "UNKNOWN", "message": message}]}).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    respond(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("docker-distribution-api-version", "registry/2.0"),
        Body::from(body),
    )
}

fn agent_error(e: &AgentError) -> Response {
    match e {
        AgentError::UnknownUpstream(_) => {
            error_response(StatusCode::NOT_FOUND, "NAME_UNKNOWN", &e.to_string())
        }
        AgentError::UpstreamStatus { status, .. } => error_response(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
            "UNKNOWN",
            &e.to_string(),
        ),
        _ => error_response(StatusCode::BAD_GATEWAY, "UNKNOWN", &e.to_string()),
    }
}

enum Route {
    Base,
    Manifest(String, String),
    Blob(String, String),
}

fn parse_route(path: &str) -> Option<Route> {
    if path == "/v2/" || path == "/v2" {
        return Some(Route::Base);
    }
    // The raw path, checked with the registry's own grammar: no `.`, `..` or `%` can
    // reach an upstream URL (where they would be resolved to another endpoint).
    let rest = path.strip_prefix("/v2/")?;
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return (names::valid_repository(name) && names::valid_reference(reference))
            .then(|| Route::Manifest(name.to_string(), reference.to_string()));
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return (names::valid_repository(name) && digest.parse::<Digest>().is_ok())
            .then(|| Route::Blob(name.to_string(), digest.to_string()));
    }
    None
}

fn query_param(req: &Request, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%3A", ":").replace("%3a", ":"))
    })
}

async fn handle(State(state): State<Arc<AgentState>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/metrics" => {
            return respond(
                Response::builder().header(
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                Body::from(state.metrics.encode()),
            )
        }
        "/status" => {
            let mut status: Status = state.metrics.status();
            let store = state.store.clone();
            let blobs = match AgentError::blocking("store", move || Ok(store.blobs())).await {
                Ok(b) => b,
                Err(e) => return agent_error(&e),
            };
            status.blobs_held = blobs.len() as u64;
            status.bytes_held = blobs.iter().map(|b| b.1).sum();
            status.chunks_known = state.store.chunk_count() as u64;
            let text = match serde_json::to_string_pretty(&status) {
                Ok(t) => t,
                Err(e) => return internal_error(&format!("encoding the status: {e}")),
            };
            return respond(
                Response::builder().header("content-type", "application/json"),
                Body::from(text),
            );
        }
        _ => {}
    }
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the gantry agent is a pull-only mirror",
        );
    }
    let Some(route) = parse_route(&path) else {
        return error_response(StatusCode::NOT_FOUND, "NAME_INVALID", "not a pull route");
    };
    let ns = query_param(&req, "ns");
    let up = match route {
        Route::Base => {
            return respond(
                Response::builder()
                    .header("docker-distribution-api-version", "registry/2.0")
                    .header("content-type", "application/json"),
                Body::from("{}"),
            )
        }
        _ => match state.upstreams.pick(ns.as_deref()) {
            Ok(u) => u.clone(),
            Err(e) => return agent_error(&e),
        },
    };
    let auth = req.headers().get("authorization").cloned();
    match route {
        Route::Manifest(name, reference) => {
            manifest(
                &state,
                &up,
                &name,
                &reference,
                method,
                req.headers().clone(),
                auth,
            )
            .await
        }
        Route::Blob(name, digest) => match digest.parse::<Digest>() {
            Ok(d) => blob(&state, &up, &name, &d, method, req.headers().clone(), auth).await,
            Err(e) => error_response(StatusCode::BAD_REQUEST, "DIGEST_INVALID", &e.to_string()),
        },
        Route::Base => unreachable!("answered above"),
    }
}

/// Copies the headers of an upstream answer that a client needs.
fn relay_headers(
    from: &reqwest::header::HeaderMap,
    mut builder: http::response::Builder,
) -> http::response::Builder {
    for name in [
        "content-type",
        "docker-content-digest",
        "www-authenticate",
        "etag",
        "docker-distribution-api-version",
    ] {
        if let Some(v) = from.get(name) {
            builder = builder.header(name, v.clone());
        }
    }
    builder
}

async fn manifest(
    state: &AgentState,
    up: &UpstreamSpec,
    name: &str,
    reference: &str,
    method: Method,
    headers: HeaderMap,
    auth: Option<HeaderValue>,
) -> Response {
    let auth = auth.as_ref();
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .to_string();
    let path = format!("/v2/{name}/manifests/{reference}");
    let resp = match state
        .upstreams
        .send(up, method.clone(), &path, auth, &[("accept", accept)])
        .await
    {
        Ok(r) => r,
        Err(e) => return agent_error(&e),
    };
    let status = resp.status();
    let builder = relay_headers(resp.headers(), Response::builder().status(status.as_u16()));
    if method == Method::HEAD {
        let len = resp
            .headers()
            .get("content-length")
            .cloned()
            .unwrap_or(HeaderValue::from_static("0"));
        return respond(builder.header("content-length", len), Body::empty());
    }
    // At most MAX_MANIFEST_BYTES are read, whatever upstream sends.
    let url = format!("{}{path}", up.url);
    let bytes = match crate::assemble::read_body(
        &state.upstreams,
        resp,
        gantry_oci::MAX_MANIFEST_BYTES,
        &url,
    )
    .await
    {
        Ok(b) => b,
        Err(e @ AgentError::Invalid { .. }) => {
            return error_response(
                StatusCode::BAD_GATEWAY,
                "MANIFEST_INVALID",
                &format!("upstream manifest: {e}; not served"),
            )
        }
        Err(e) => return agent_error(&e),
    };
    if status.is_success() {
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                state.metrics.verification_failure();
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    "MANIFEST_INVALID",
                    &format!(
                        "upstream manifest does not match {expected} (has {digest}); not served"
                    ),
                );
            }
        }
        let (store, upstream, repo, b) = (
            state.store.clone(),
            up.host.clone(),
            name.to_string(),
            bytes.clone(),
        );
        let learned = AgentError::blocking("learning chunk indexes", move || {
            learn_layers(&store, &upstream, &repo, &b)
        })
        .await;
        if let Err(e) = learned {
            tracing::warn!(repository = name, error = %e, "could not record the manifest's chunk indexes");
        }
    }
    respond(builder, Body::from(bytes))
}

/// Remembers the chunk index of every layer of an image manifest of `repo` at `upstream`
/// (the registry host containerd names),
/// with the layer size the manifest gives. Blocking.
fn learn_layers(store: &Store, upstream: &str, repo: &str, bytes: &[u8]) -> Result<(), AgentError> {
    let Ok(m) = serde_json::from_slice::<gantry_oci::spec::ImageManifest>(bytes) else {
        return Ok(());
    };
    for layer in m.layers() {
        let index = layer
            .annotations()
            .as_ref()
            .and_then(|a| a.get(media_types::ANNOTATION_CHUNK_INDEX))
            .and_then(|s| s.parse::<Digest>().ok());
        if let (Some(index), Ok(digest)) = (index, Digest::from_oci(layer.digest())) {
            let known = KnownIndex {
                index,
                layer_size: layer.size(),
            };
            store.learn(upstream, repo, &digest, &known)?;
        }
    }
    Ok(())
}

async fn blob(
    state: &Arc<AgentState>,
    up: &UpstreamSpec,
    name: &str,
    digest: &Digest,
    method: Method,
    headers: HeaderMap,
    auth: Option<HeaderValue>,
) -> Response {
    let auth = auth.as_ref();
    // Upstream decides whether this client may read the blob, held or not.
    let key: AllowedKey = (up.host.clone(), name.to_string(), *digest, auth.cloned());
    let upstream_size = match state.allowed(&key) {
        Some(size) => size,
        None => {
            let path = format!("/v2/{name}/blobs/{digest}");
            let check = match state
                .upstreams
                .send(up, Method::HEAD, &path, auth, &[])
                .await
            {
                Ok(r) => r,
                Err(e) => return agent_error(&e),
            };
            if !check.status().is_success() {
                return refused(&check, &method);
            }
            let size = check
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            state.remember_allowed(key, size);
            let (store, upstream, repo, d) = (
                state.store.clone(),
                up.host.clone(),
                name.to_string(),
                *digest,
            );
            let recorded =
                AgentError::blocking("store", move || store.record_readable(&upstream, &repo, &d))
                    .await;
            if let Err(e) = recorded {
                tracing::warn!(%digest, repository = name, error = %e, "could not record that the repository holds the blob");
            }
            size
        }
    };

    let (store, d) = (state.store.clone(), *digest);
    let held = match AgentError::blocking("store", move || Ok(store.has(&d))).await {
        Ok(h) => h,
        Err(e) => return agent_error(&e),
    };
    if !held && method == Method::GET {
        if let Some(resp) =
            range_from_chunks(state, up, name, digest, upstream_size, auth, &headers).await
        {
            return resp;
        }
    }
    if !held {
        // A GET of the whole blob may follow a delta assembly; anything else waits for it.
        let follow = method == Method::GET && !headers.contains_key("range");
        let (mut phase, mut joined) = obtaining(state, up, name, digest, upstream_size, auth);
        let mut retried = false;
        loop {
            let now = phase.borrow_and_update().clone();
            match now {
                Phase::Done(Ok(())) => break,
                Phase::Done(Err(_)) if joined && !retried => {
                    // Another request's fetch failed (its credentials, its upstream):
                    // fetch once more, with this request's own.
                    (phase, joined) = obtaining(state, up, name, digest, upstream_size, auth);
                    retried = true;
                    continue;
                }
                Phase::Done(Err(e)) => {
                    tracing::warn!(%digest, repository = name, error = %e, "could not obtain blob");
                    return agent_error(&e);
                }
                Phase::Assembling(p) if follow => match p.progress() {
                    Progress::Assembling { ready: 0 } => {
                        // Headers go out with the first bytes: an early failure still
                        // gets its status.
                        tokio::select! {
                            _ = p.started() => {}
                            changed = phase.changed() => if changed.is_err() {
                                return internal_error("the fetch of the blob ended unfinished");
                            }
                        }
                        continue;
                    }
                    Progress::Failed => {}
                    Progress::Assembling { .. } | Progress::Verified => {
                        return follow_assembly(state, name, digest, p);
                    }
                },
                Phase::Started | Phase::Assembling(_) => {}
            }
            if phase.changed().await.is_err() {
                return internal_error("the fetch of the blob ended unfinished");
            }
        }
    }
    let (store, d) = (state.store.clone(), *digest);
    if let Err(e) = AgentError::blocking("store", move || {
        store.touch(&d);
        Ok(())
    })
    .await
    {
        return agent_error(&e);
    }
    serve_file(state, name, digest, &method, &headers).await
}

/// Upstream's refusal of a blob HEAD, relayed with a registry error body.
fn refused(check: &reqwest::Response, method: &Method) -> Response {
    let status = StatusCode::from_u16(check.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let (code, message) = match status {
        StatusCode::UNAUTHORIZED => ("UNAUTHORIZED", "authentication required"),
        StatusCode::FORBIDDEN => ("DENIED", "requested access to the resource is denied"),
        StatusCode::NOT_FOUND => ("BLOB_UNKNOWN", "blob unknown to registry"),
        _ => ("UNKNOWN", "upstream refused the blob"),
    };
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    respond(
        relay_headers(check.headers(), Response::builder().status(status))
            .header("content-type", "application/json"),
        if *method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(body)
        },
    )
}

/// Longest range answered from chunks without assembling the blob (longer ones, and
/// requests for the whole blob, obtain the blob first).
const MAX_CHUNK_RANGE: u64 = 32 << 20;

/// A single range of a blob the node does not hold, answered from the layer's chunk index
/// (held chunks plus fetched ones, each verified) without assembling the whole blob: what
/// `gantry snapshotter` asks for. `None` when this does not apply (no range, no usable
/// index, a range too long): the caller obtains the blob as usual.
#[allow(clippy::too_many_arguments)]
async fn range_from_chunks(
    state: &Arc<AgentState>,
    up: &UpstreamSpec,
    repo: &str,
    digest: &Digest,
    size: Option<u64>,
    auth: Option<&HeaderValue>,
    headers: &HeaderMap,
) -> Option<Response> {
    let size = size?;
    let (start, len) = parse_range(headers, size)?.ok()?;
    if len == 0 || len > MAX_CHUNK_RANGE || len == size {
        return None;
    }
    let (store, d, upstream, r) = (
        state.store.clone(),
        *digest,
        up.host.clone(),
        repo.to_string(),
    );
    let known = AgentError::blocking("store", move || Ok(store.known_index(&upstream, &r, &d)))
        .await
        .ok()??;
    let fetcher = state.fetcher(up, repo, auth, None);
    match fetcher
        .range_of(digest, &known, Some(size), start, len)
        .await
    {
        Ok(bytes) => {
            state.metrics.served(repo, bytes.len() as u64);
            Some(respond(
                Response::builder()
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header("content-type", "application/octet-stream")
                    .header("docker-content-digest", digest.to_string())
                    .header("accept-ranges", "bytes")
                    .header(
                        "content-range",
                        format!("bytes {start}-{}/{size}", start + bytes.len() as u64 - 1),
                    )
                    .header("content-length", bytes.len()),
                Body::from(bytes),
            ))
        }
        Err(e @ AgentError::Corrupt { .. }) => {
            tracing::warn!(%digest, repository = repo, error = %e, "range from chunks failed");
            Some(agent_error(&e))
        }
        Err(e) => {
            tracing::info!(%digest, error = %e, "range from chunks not possible; obtaining the blob");
            None
        }
    }
}

/// Where the fetch of a blob the node does not hold stands, as requests for it see it.
#[derive(Clone)]
enum Phase {
    /// Asking upstream, fetching an index, or fetching the blob whole.
    Started,
    /// Being assembled by delta; a GET of the whole blob can follow it.
    Assembling(Arc<Partial>),
    /// Held now, or why not.
    Done(Result<(), Arc<AgentError>>),
}

/// Joins the fetch of `digest` in progress, or starts it in a task of its own: a blob is
/// obtained once however many requests ask for it at the same time, and a request that
/// goes away does not cancel it. Returns the fetch's phases and whether it was joined
/// (started by another request, with that request's credentials).
fn obtaining(
    state: &Arc<AgentState>,
    up: &UpstreamSpec,
    repo: &str,
    digest: &Digest,
    size: Option<u64>,
    auth: Option<&HeaderValue>,
) -> (watch::Receiver<Phase>, bool) {
    let Ok(mut map) = state.inflight.lock() else {
        let (_, rx) = watch::channel(Phase::Done(Err(Arc::new(AgentError::Task {
            what: format!("fetch of blob {digest}"),
            message: "the table of fetches in progress is poisoned".into(),
        }))));
        return (rx, false);
    };
    if let Some(rx) = map.get(digest) {
        return (rx.clone(), true);
    }
    let (tx, rx) = watch::channel(Phase::Started);
    map.insert(*digest, rx.clone());
    drop(map);
    let forget = Forget {
        state: state.clone(),
        digest: *digest,
        phases: rx.clone(),
    };
    let (state, up, repo, digest, auth) = (
        state.clone(),
        up.clone(),
        repo.to_string(),
        *digest,
        auth.cloned(),
    );
    tokio::spawn(async move {
        let result = obtain(&state, &up, &repo, &digest, size, auth.as_ref(), &tx).await;
        // Forget the fetch before announcing its end: a request that comes after finds the
        // blob held, or starts again.
        drop(forget);
        let _ = tx.send(Phase::Done(result.map_err(Arc::new)));
    });
    (rx, false)
}

/// Removes a fetch from the table of fetches in progress when dropped — also when its
/// task panics — unless a newer fetch of the blob has taken its place.
struct Forget {
    state: Arc<AgentState>,
    digest: Digest,
    phases: watch::Receiver<Phase>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Ok(mut map) = self.state.inflight.lock() {
            if map
                .get(&self.digest)
                .is_some_and(|rx| rx.same_channel(&self.phases))
            {
                map.remove(&self.digest);
            }
        }
    }
}

/// Obtains a blob into the store, announcing a delta assembly on `phase` as it starts.
async fn obtain(
    state: &Arc<AgentState>,
    up: &UpstreamSpec,
    repo: &str,
    digest: &Digest,
    size: Option<u64>,
    auth: Option<&HeaderValue>,
    phase: &watch::Sender<Phase>,
) -> Result<(), AgentError> {
    let (store, d, upstream, r) = (
        state.store.clone(),
        *digest,
        up.host.clone(),
        repo.to_string(),
    );
    let (held, known) = AgentError::blocking("store", move || {
        Ok((store.has(&d), store.known_index(&upstream, &r, &d)))
    })
    .await?;
    if held {
        return Ok(());
    }
    let publish = |p: Arc<Partial>| {
        let _ = phase.send(Phase::Assembling(p));
    };
    let fetcher = state.fetcher(up, repo, auth, Some(&publish));
    fetcher.obtain(digest, size, known).await
}

/// A 200 answer to a GET of the whole blob whose body follows its assembly: each piece as
/// soon as it is written and checked, the last byte once the blob matched its digest; the
/// body is cut off if the assembly fails.
fn follow_assembly(
    state: &Arc<AgentState>,
    repo: &str,
    digest: &Digest,
    partial: Arc<Partial>,
) -> Response {
    let size = partial.size();
    state.metrics.served(repo, size);
    respond(
        blob_headers(digest)
            .status(StatusCode::OK)
            .header("content-length", size),
        Body::from_stream(partial.body()),
    )
}

/// The headers every blob answer carries, held or being assembled.
fn blob_headers(digest: &Digest) -> http::response::Builder {
    Response::builder()
        .header("docker-content-digest", digest.to_string())
        .header("etag", format!("\"{digest}\""))
        .header("accept-ranges", "bytes")
        .header("content-type", "application/octet-stream")
        .header("docker-distribution-api-version", "registry/2.0")
}

/// Parses a single `Range: bytes=…` against `size`: `Some(Ok((start, len)))`, `Some(Err)`
/// when unsatisfiable, `None` for no (or a multi-) range, and for a malformed one (RFC 9110
/// has it ignored): positions of digits only, a last position not before the first. What
/// it serves is what `gantry serve` would (the `range` fuzz target checks both agree).
fn parse_range(headers: &HeaderMap, size: u64) -> Option<Result<(u64, u64), ()>> {
    parse_range_value(headers.get("range")?.to_str().ok()?, size)
}

/// `parse_range` on the header's value: public so that the fuzz targets (`fuzz/`) reach it
/// without an HTTP request.
#[doc(hidden)]
pub fn parse_range_value(value: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    // Digits only: `u64::from_str` would also take a leading `+`.
    let number = |s: &str| -> Option<u64> {
        match !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            true => s.parse().ok(),
            false => None,
        }
    };
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n = number(n)?;
            if n == 0 {
                return Some(Err(()));
            }
            (size.saturating_sub(n), size.checked_sub(1)?)
        }
        (s, "") => (number(s)?, size.checked_sub(1)?),
        (s, e) => {
            let (s, e) = (number(s)?, number(e)?);
            if e < s {
                return None;
            }
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start >= size || end < start {
        return Some(Err(()));
    }
    Some(Ok((start, end - start + 1)))
}

async fn serve_file(
    state: &Arc<AgentState>,
    repo: &str,
    digest: &Digest,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let path = state.store.blob_path(digest);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return agent_error(&AgentError::Io { path, source: e }),
    };
    let size = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return agent_error(&AgentError::Io { path, source: e }),
    };
    let base = blob_headers(digest);
    let (status, start, len) = match parse_range(headers, size) {
        Some(Ok((start, len))) => (StatusCode::PARTIAL_CONTENT, start, len),
        Some(Err(())) => {
            return respond(
                base.status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header("content-range", format!("bytes */{size}")),
                Body::empty(),
            )
        }
        None => (StatusCode::OK, 0, size),
    };
    let mut builder = base.status(status).header("content-length", len);
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            "content-range",
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    if method == Method::HEAD {
        return respond(builder, Body::empty());
    }
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "seek failed");
    }
    state.metrics.served(repo, len);
    let stream = ReaderStream::with_capacity(file.take(len), 256 * 1024);
    respond(builder, Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(parse_route("/v2/"), Some(Route::Base)));
        assert!(matches!(
            parse_route("/v2/studio/game/manifests/v1"),
            Some(Route::Manifest(n, r)) if n == "studio/game" && r == "v1"
        ));
        assert!(matches!(
            parse_route(&format!("/v2/a/blobs/{}", Digest::of(b"a"))),
            Some(Route::Blob(n, _)) if n == "a"
        ));
        assert!(parse_route("/v2/a/blobs/sha256:00").is_none());
        assert!(parse_route("/v2/A/blobs/x").is_none());
        assert!(parse_route("/v2/a/tags/list").is_none());
        let d = Digest::of(b"x");
        for bad in [
            "/v2/../../token/manifests/x".to_string(),
            "/v2/%2e%2e/%2e%2e/token/manifests/x".to_string(),
            "/v2/./a/manifests/x".to_string(),
            "/v2/a/manifests/..".to_string(),
            "/v2/a/manifests/%2e%2e".to_string(),
            format!("/v2/a/../../token/blobs/{d}"),
            "/v2/a/blobs/..".to_string(),
        ] {
            assert!(parse_route(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        let mut h = HeaderMap::new();
        assert!(parse_range(&h, 10).is_none());
        h.insert("range", "bytes=2-4".parse().unwrap());
        assert_eq!(parse_range(&h, 10), Some(Ok((2, 3))));
        h.insert("range", "bytes=-3".parse().unwrap());
        assert_eq!(parse_range(&h, 10), Some(Ok((7, 3))));
        h.insert("range", "bytes=8-".parse().unwrap());
        assert_eq!(parse_range(&h, 10), Some(Ok((8, 2))));
        h.insert("range", "bytes=10-".parse().unwrap());
        assert_eq!(parse_range(&h, 10), Some(Err(())));
        h.insert("range", "bytes=0-1,3-4".parse().unwrap());
        assert!(parse_range(&h, 10).is_none());
    }

    /// Found by the `range` fuzz target (`bytes=20-13`, in fuzz/corpus/range): the agent
    /// answered 416 to a range whose last position is before its first, where `gantry serve`
    /// (and RFC 9110) ignore such a header and send the whole blob. It also took `+5` for 5
    /// (`u64::from_str` allows the sign), which the registry refuses.
    #[test]
    fn malformed_ranges_are_ignored_like_the_registry_does() {
        for malformed in [
            "bytes=+2-4",
            "bytes=2-+4",
            "bytes=-+3",
            "bytes=5-3",
            "bytes=x-",
        ] {
            assert_eq!(parse_range_value(malformed, 10), None, "{malformed}");
        }
        assert_eq!(parse_range_value("bytes= 2 - 4 ", 10), Some(Ok((2, 3))));
        assert_eq!(parse_range_value("bytes=12-14", 10), Some(Err(())));
    }
}
