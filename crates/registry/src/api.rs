//! The Distribution API over HTTP.
//!
//! Repository names contain slashes, so one fallback handler parses every `/v2/...` path
//! ([`crate::route`]) instead of axum's router. Every request goes through [`observe`]
//! (request id, access log, metrics) and, once its route is known, through the registry's
//! [`Authorizer`](crate::Authorizer) with the [`Access`] it needs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};
use gantry_oci::delta_push;
use gantry_oci::{media_types, Digest};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::auth::{Access, Action, AuthError, Principal};
use crate::delta::{self, BlobRanges, DeltaError};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{method_label, Counted};
use crate::range::{self, RangeRequest};
use crate::route::{self, Route, RouteError};
use crate::storage::{ByteStream, StorageError};
use crate::upload_quota::QuotaError;
use crate::{ManifestRef, Registry};

/// `Docker-Distribution-API-Version` value sent on every response.
pub const API_VERSION: &str = "registry/2.0";
/// Request id header (taken from the request when valid, else generated).
pub const REQUEST_ID: &str = "x-request-id";
/// Header advertising Gantry's delta-push extension on `/v2/` (value
/// [`crate::delta::VERSION`]); see [`crate::delta`].
pub use gantry_oci::delta_push::HEADER as DELTA_PUSH_HEADER;
/// Most entries returned by one catalog or tags page.
pub const MAX_PAGE: usize = 10_000;

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
const DOCKER_UPLOAD_UUID: &str = "docker-upload-uuid";
const OCI_SUBJECT: &str = "oci-subject";
const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";

/// The peer address of a connection, as `ConnectInfo` (see [`crate::server`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Per-request data set by [`observe`].
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request id (also in the `X-Request-Id` response header).
    pub id: String,
    /// The peer IP, or `unknown`.
    pub client_ip: String,
}

/// The route label of a response, for metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteKind(pub(crate) &'static str);

/// The registry's HTTP application: the API under `/v2/`, metrics at `/metrics`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/token", get(token_handler).post(token_handler))
        .route(
            "/gantry/v1/fleet/events",
            axum::routing::post(crate::fleet::post_events),
        )
        .route("/gantry/v1/fleet", get(crate::fleet::get_view))
        .route(
            "/gantry/v1/replication",
            get(crate::replication::get_status),
        )
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(
            registry.clone(),
            observe,
        ))
        .with_state(registry)
}

/// `/metrics`. With `[auth]` its labels name private repositories and users, so it needs
/// the credentials (Basic or a token) of an admin or a configured metrics user: 401 with a
/// challenge without them, 403 for another user. Without `[auth]` it is open.
async fn metrics_handler(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    if let Err(e) = authorize_metrics(&reg, req).await {
        let mut resp = e.into_response();
        resp.extensions_mut().insert(RouteKind("metrics"));
        return resp;
    }
    metrics_page(&reg)
}

/// The application of the metrics listener ([`crate::Config::metrics_address`]): `/metrics`
/// without authentication, nothing else.
pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(reg): State<Arc<Registry>>| async move { metrics_page(&reg) }),
        )
        .with_state(registry)
}

/// The metrics in OpenMetrics text.
fn metrics_page(reg: &Registry) -> Response {
    reg.metrics()
        .set_fleet_servers(&reg.fleet().counts(crate::fleet::now_ms()));
    let mut resp = (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        reg.metrics().encode(),
    )
        .into_response();
    resp.extensions_mut().insert(RouteKind("metrics"));
    resp
}

/// Checks that a `/metrics` request may read the metrics (see [`metrics_handler`]).
pub(crate) async fn authorize_metrics(reg: &Registry, req: Request) -> Result<(), ApiError> {
    let Some(auth) = reg.token_auth() else {
        return Ok(());
    };
    let (parts, _) = req.into_parts();
    // Basic credentials are a login, limited as on the API.
    let attempt = begin_password_login(reg, &parts).await?;
    let identified = auth.identify(&parts).await;
    if let Some(attempt) = attempt {
        match &identified {
            Err(AuthError::Unauthorized { .. }) => attempt.failed(),
            _ => attempt.passed(),
        }
    }
    // A scraper sends Basic credentials (Prometheus' `basic_auth`) when challenged so.
    let challenge = || AuthError::Unauthorized {
        challenge: Some(format!("Basic realm=\"{}\"", auth.service())),
    };
    let user = match identified {
        Ok(Some(user)) => user,
        Ok(None) | Err(AuthError::Unauthorized { .. }) => return Err(auth_error(challenge())),
        Err(e) => return Err(auth_error(e)),
    };
    if auth.policy().may_read_metrics(&user) {
        Ok(())
    } else {
        tracing::info!(user = %user, "metrics refused: not an admin or metrics user");
        Err(auth_error(AuthError::Denied))
    }
}

/// The TCP peer's IP, when the server recorded it.
pub(crate) fn peer_ip(extensions: &http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0 .0.ip())
}

/// A 429 `TOOMANYREQUESTS` telling the client how long to wait.
fn too_many_requests(wait: std::time::Duration, message: &str) -> ApiError {
    let secs = crate::ratelimit::retry_after_secs(wait);
    ApiError::new(
        ErrorCode::TooManyRequests,
        format!("{message}; retry in {secs} s"),
    )
    .with_header(header::RETRY_AFTER, &secs.to_string())
}

/// A 503 `TOOMANYREQUESTS`: credentials could not be checked for load.
pub(crate) fn too_busy(wait: std::time::Duration) -> ApiError {
    too_many_requests(wait, "too many password checks in progress")
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
}

/// How long a login refused for too many failures waits before its 429 goes out: a
/// client that retries as soon as it is answered (a password-guessing loop) then costs the
/// registry a few answers a second per connection instead of thousands, while a client that
/// honours `Retry-After` loses nothing.
pub(crate) const LOGIN_REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// A 429 for a login over the failed-login limit, answered after [`LOGIN_REFUSAL_DELAY`]
/// (or `wait`, when shorter).
pub(crate) async fn too_many_logins(wait: std::time::Duration) -> ApiError {
    let delay = wait.min(LOGIN_REFUSAL_DELAY);
    tokio::time::sleep(delay).await;
    too_many_requests(wait - delay, "too many failed logins from this address")
}

/// Whether a request carries `Authorization: Basic` (a password login).
pub(crate) fn has_basic_credentials(parts: &http::request::Parts) -> bool {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
}

/// `/token`: Docker token auth (404 when the registry has no `[auth]`). A `/token`
/// request that may carry a password (Basic credentials, or a POST with its form) is a
/// login: refused while its address has too many failed ones. An anonymous GET is not.
async fn token_handler(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let ip = peer_ip(&parts.extensions);
    let login = parts.method == http::Method::POST || has_basic_credentials(&parts);
    let mut resp = match reg.token_auth() {
        Some(auth) if !login => auth.token_endpoint(&parts, body).await,
        Some(auth) => match reg.begin_login(ip) {
            Err(wait) => too_many_logins(wait).await.into_response(),
            Ok(attempt) => {
                let resp = auth.token_endpoint(&parts, body).await;
                if resp.status() == StatusCode::UNAUTHORIZED {
                    attempt.failed();
                } else {
                    attempt.passed();
                }
                resp
            }
        },
        None => ApiError::new(ErrorCode::Unsupported, "token auth is not configured")
            .with_status(StatusCode::NOT_FOUND)
            .into_response(),
    };
    resp.extensions_mut().insert(RouteKind("token"));
    resp
}

/// Starts a login when the request carries a password (Basic credentials); refused with
/// 429 when its address is over the failed-login limit.
pub(crate) async fn begin_password_login<'a>(
    reg: &'a Registry,
    parts: &http::request::Parts,
) -> Result<Option<crate::LoginAttempt<'a>>, ApiError> {
    if !has_basic_credentials(parts) {
        return Ok(None);
    }
    match reg.begin_login(peer_ip(&parts.extensions)) {
        Ok(attempt) => Ok(Some(attempt)),
        Err(wait) => Err(too_many_logins(wait).await),
    }
}

/// Authorizes a request; one with a password (Basic credentials) is a login, counted
/// against its address's failed-login limit while it is checked, and refused when over it.
pub(crate) async fn authorize_login(
    reg: &Registry,
    parts: &http::request::Parts,
    access: &[Access],
) -> Result<Principal, ApiError> {
    let attempt = begin_password_login(reg, parts).await?;
    let result = reg.authorizer().authorize(parts, access).await;
    if let Some(attempt) = attempt {
        match &result {
            // Basic credentials that did not authenticate: a failed login.
            Err(AuthError::Unauthorized { .. }) => attempt.failed(),
            _ => attempt.passed(),
        }
    }
    result.map_err(auth_error)
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// Middleware: request id, API version header, access log and request metrics.
pub async fn observe(State(reg): State<Arc<Registry>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = request_id(req.headers());
    let client_ip = req
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0 .0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    req.extensions_mut().insert(RequestContext {
        id: id.clone(),
        client_ip: client_ip.clone(),
    });
    let span = tracing::info_span!("request", id = %id, method = %method, path = %path, client = %client_ip);
    let limited = peer_ip(req.extensions()).and_then(|ip| reg.check_rate(ip).err());
    let mut resp = match limited {
        Some(wait) => {
            let mut resp = too_many_requests(wait, "request rate limit exceeded for this address")
                .into_response();
            resp.extensions_mut().insert(RouteKind("rate_limited"));
            resp
        }
        None => next.run(req).instrument(span.clone()).await,
    };
    let route = resp
        .extensions()
        .get::<RouteKind>()
        .map_or("unknown", |k| k.0);
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    reg.metrics()
        .observe_request(route, method_label(&method), status, elapsed.as_secs_f64());
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(HeaderName::from_static(REQUEST_ID), v);
    }
    headers.insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static(API_VERSION),
    );
    span.in_scope(|| {
        tracing::info!(
            target: "gantry_registry::access",
            route,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        )
    });
    resp
}

/// Everything a handler needs about the request.
struct Ctx {
    reg: Arc<Registry>,
    parts: http::request::Parts,
    query: HashMap<String, String>,
    principal: Principal,
}

impl Ctx {
    fn q(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    fn header(&self, name: HeaderName) -> Option<&str> {
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn content_length(&self) -> Option<u64> {
        self.header(header::CONTENT_LENGTH)
            .and_then(|v| v.trim().parse().ok())
    }

    /// The egress label: the authenticated user, else the peer IP.
    fn client(&self) -> String {
        if let Some(user) = &self.principal.user {
            return user.clone();
        }
        self.parts
            .extensions
            .get::<RequestContext>()
            .map(|c| c.client_ip.clone())
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// A blob body paced by the per-client egress limit (`[limits]
    /// client_egress_bytes_per_second`), when one is set: each frame waits until the
    /// client's budget has room for it.
    fn paced(&self, body: ByteStream) -> ByteStream {
        let (Some(limiter), Some(ip)) = (
            self.reg.egress_limiter().cloned(),
            peer_ip(&self.parts.extensions),
        ) else {
            return body;
        };
        let reg = self.reg.clone();
        Box::pin(body.then(move |frame| {
            let wait = match &frame {
                Ok(bytes) => limiter.charge(ip, bytes.len() as u64, std::time::Instant::now()),
                Err(_) => std::time::Duration::ZERO,
            };
            let reg = reg.clone();
            async move {
                if !wait.is_zero() {
                    reg.metrics().egress_paced(wait);
                    tokio::time::sleep(wait).await;
                }
                frame
            }
        }))
    }

    fn sent_counter(&self, repo: &str) -> Counter {
        self.reg.metrics().sent_counter(repo, &self.client())
    }

    fn body_stream(&self, repo: &str, body: Body) -> ByteStream {
        let counter = self.reg.metrics().received_counter(repo);
        let s = body
            .into_data_stream()
            .map_err(std::io::Error::other)
            .inspect_ok(move |b| {
                counter.inc_by(b.len() as u64);
            });
        Box::pin(s)
    }

    fn if_none_match(&self, digest: &Digest) -> bool {
        self.header(header::IF_NONE_MATCH).is_some_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim().trim_start_matches("W/").trim_matches('"');
                t == "*" || t == digest.to_string()
            })
        })
    }
}

async fn dispatch(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (kind, result) = match route::parse(parts.uri.path()) {
        Ok(route) => {
            let kind = route.kind();
            let base = matches!(route, Route::Base);
            let mut result = handle(reg, route, parts, body).await;
            if base {
                // Also on a 401, so that a client learns it before logging in.
                let value = HeaderValue::from_static(delta::VERSION);
                let name = HeaderName::from_static(DELTA_PUSH_HEADER);
                match &mut result {
                    Ok(resp) => {
                        resp.headers_mut().insert(name, value);
                    }
                    Err(e) => e.headers.push((name, value)),
                }
            }
            (kind, result)
        }
        Err(RouteError::NameInvalid(name)) => (
            "invalid",
            Err(ApiError::new(
                ErrorCode::NameInvalid,
                format!("invalid repository name {name:?}"),
            )
            .with_detail(json!({ "name": name }))),
        ),
        Err(RouteError::NotFound) => (
            "unknown",
            Err(ApiError::new(ErrorCode::Unsupported, "no such endpoint")
                .with_status(StatusCode::NOT_FOUND)),
        ),
    };
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut().insert(RouteKind(kind));
    resp
}

/// Whether a request is a delta-push ranges `PATCH` (by its content type).
fn is_ranges_patch(parts: &http::request::Parts) -> bool {
    parts.method == Method::PATCH
        && parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(delta::RANGES_MEDIA_TYPE))
}

/// The permissions a route and method need; `None` when the method is not allowed there.
/// A delta-push `PATCH` (`ranges`) reads blobs of the repository, so it needs pull too.
fn required_access(route: &Route, method: &Method, ranges: bool) -> Option<Vec<Access>> {
    let repo = |action| {
        route.repository().map(|name| {
            vec![Access::Repository {
                name: name.to_string(),
                action,
            }]
        })
    };
    let read = *method == Method::GET || *method == Method::HEAD;
    match route {
        Route::Base if read => Some(Vec::new()),
        Route::Catalog if *method == Method::GET => Some(vec![Access::Catalog]),
        Route::Tags { .. } | Route::Referrers { .. } if *method == Method::GET => {
            repo(Action::Pull)
        }
        Route::Manifest { .. } | Route::Blob { .. } if read => repo(Action::Pull),
        // Where the repository holds chunks: what a pull could read anyway.
        Route::ChunkLookup { .. } if *method == Method::POST => repo(Action::Pull),
        Route::Manifest { .. } if *method == Method::PUT => repo(Action::Push),
        Route::Manifest { .. } | Route::Blob { .. } if *method == Method::DELETE => {
            repo(Action::Delete)
        }
        Route::UploadStart { .. } if *method == Method::POST => repo(Action::Push),
        Route::Upload { name, .. } if *method == Method::PATCH && ranges => Some(
            [Action::Pull, Action::Push]
                .into_iter()
                .map(|action| Access::Repository {
                    name: name.clone(),
                    action,
                })
                .collect(),
        ),
        Route::Upload { .. }
            if matches!(
                *method,
                Method::GET | Method::PATCH | Method::PUT | Method::DELETE
            ) =>
        {
            repo(Action::Push)
        }
        _ => None,
    }
}

pub(crate) fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Unauthorized { challenge } => {
            let err = ApiError::new(ErrorCode::Unauthorized, "authentication required");
            match challenge {
                Some(c) => err.with_header(header::WWW_AUTHENTICATE, &c),
                None => err,
            }
        }
        AuthError::Denied => ApiError::new(
            ErrorCode::Denied,
            "requested access to the resource is denied",
        ),
        AuthError::Busy { retry_after } => too_busy(retry_after),
    }
}

async fn handle(
    reg: Arc<Registry>,
    route: Route,
    parts: http::request::Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let ranges = is_ranges_patch(&parts);
    let Some(access) = required_access(&route, &parts.method, ranges) else {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            format!("method {} is not allowed here", parts.method),
        ));
    };
    let query = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map_err(|e| {
            ApiError::new(ErrorCode::Unsupported, format!("bad query string: {e}"))
                .with_status(StatusCode::BAD_REQUEST)
        })?
        .0
        .into_iter()
        .rev()
        .collect();
    let principal = authorize_login(&reg, &parts, &access).await?;
    let ctx = Ctx {
        reg,
        parts,
        query,
        principal,
    };
    let head = ctx.parts.method == Method::HEAD;
    match route {
        Route::Base => Ok(json_response(StatusCode::OK, "{}".into(), None)),
        Route::Catalog => catalog(&ctx).await,
        Route::Tags { name } => tags(&ctx, &name).await,
        Route::Manifest { name, reference } => match ctx.parts.method {
            Method::PUT => put_manifest(&ctx, &name, &reference, body).await,
            Method::DELETE => delete_manifest(&ctx, &name, &reference).await,
            _ => get_manifest(&ctx, &name, &reference, head).await,
        },
        Route::Blob { name, digest } => match ctx.parts.method {
            Method::DELETE => delete_blob(&ctx, &name, &digest).await,
            _ => get_blob(&ctx, &name, &digest, head).await,
        },
        Route::UploadStart { name } => start_upload(&ctx, &name, body).await,
        Route::Upload { name, id } => match ctx.parts.method {
            Method::GET => upload_status(&ctx, &name, &id).await,
            Method::PATCH if ranges => patch_ranges(&ctx, &name, &id, body).await,
            Method::PATCH => patch_upload(&ctx, &name, &id, body).await,
            Method::PUT => put_upload(&ctx, &name, &id, body).await,
            _ => cancel_upload(&ctx, &name, &id).await,
        },
        Route::Referrers { name, digest } => referrers(&ctx, &name, &digest).await,
        Route::ChunkLookup { name } => chunk_lookup(&ctx, &name, body).await,
    }
}

/// Largest chunk lookup body (about [`delta_push::MAX_LOOKUP_CHUNKS`] ids).
const MAX_LOOKUP_BODY: u64 = 8 << 20;

/// `POST /v2/<name>/chunks/lookup`: where `<name>` holds each of the chunks asked about,
/// from the chunk indexes checked against its layers (delta push v2).
async fn chunk_lookup(ctx: &Ctx, name: &str, body: Body) -> Result<Response, ApiError> {
    let invalid = |message: String| {
        ApiError::new(ErrorCode::Unsupported, message).with_status(StatusCode::BAD_REQUEST)
    };
    if ctx.content_length().is_some_and(|n| n > MAX_LOOKUP_BODY) {
        return Err(too_large("chunk lookup body", MAX_LOOKUP_BODY));
    }
    let bytes = read_limited(ctx.body_stream(name, body), MAX_LOOKUP_BODY)
        .await
        .map_err(|e| invalid(format!("reading the chunk lookup body: {e}")))?
        .ok_or_else(|| too_large("chunk lookup body", MAX_LOOKUP_BODY))?;
    let asked: delta_push::ChunkLookup = serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "the body is not {}: {e} (expected {{\"chunks\":[\"sha256:…\",…]}})",
            delta_push::LOOKUP_MEDIA_TYPE
        ))
    })?;
    if asked.chunks.len() > delta_push::MAX_LOOKUP_CHUNKS {
        return Err(invalid(format!(
            "{} chunk ids asked; at most {} per lookup",
            asked.chunks.len(),
            delta_push::MAX_LOOKUP_CHUNKS
        )));
    }
    let found = ctx
        .reg
        .chunks()
        .lookup(name, &asked.chunks)
        .await
        .map_err(internal)?;
    let answer = delta_push::ChunkLookupAnswer { found };
    let text = serde_json::to_string(&answer).map_err(|e| {
        ApiError::new(ErrorCode::Unsupported, format!("encoding the answer: {e}"))
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
    })?;
    Ok(json_response(
        StatusCode::OK,
        text,
        Some(delta_push::LOOKUP_ANSWER_MEDIA_TYPE),
    ))
}

// ----- responses -----

fn finish(builder: http::response::Builder, body: Body) -> Response {
    builder.body(body).unwrap_or_else(|e| {
        tracing::error!(error = %e, "building a response");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    })
}

fn json_response(status: StatusCode, body: String, content_type: Option<&str>) -> Response {
    finish(
        http::Response::builder()
            .status(status)
            .header(
                header::CONTENT_TYPE,
                content_type.unwrap_or("application/json"),
            )
            .header(header::CONTENT_LENGTH, body.len()),
        Body::from(body),
    )
}

fn internal(e: StorageError) -> ApiError {
    ApiError::internal(&e)
}

fn digest_param(s: &str) -> Result<Digest, ApiError> {
    s.parse::<Digest>().map_err(|e| {
        ApiError::new(ErrorCode::DigestInvalid, e.to_string()).with_detail(json!({ "digest": s }))
    })
}

fn upload_location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// The `Range` header of upload responses: `0-<last byte>` (`0-0` when empty, as
/// distribution does).
fn upload_range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn upload_accepted(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    finish(
        http::Response::builder()
            .status(status)
            .header(header::LOCATION, upload_location(name, id))
            .header(header::RANGE, upload_range(offset))
            // Unambiguous where `Range: 0-0` is not (offset 0 or 1).
            .header(delta::UPLOAD_OFFSET_HEADER, offset)
            .header(DOCKER_UPLOAD_UUID, id)
            .header(header::CONTENT_LENGTH, 0),
        Body::empty(),
    )
}

fn blob_created(name: &str, digest: &Digest) -> Response {
    finish(
        http::Response::builder()
            .status(StatusCode::CREATED)
            .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
            .header(DOCKER_CONTENT_DIGEST, digest.to_string())
            .header(header::CONTENT_LENGTH, 0),
        Body::empty(),
    )
}

fn out_of_order(name: &str, id: &str, current: u64, message: String) -> ApiError {
    ApiError::new(ErrorCode::BlobUploadInvalid, message)
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        .with_header(header::RANGE, &upload_range(current))
        .with_header(
            HeaderName::from_static(delta::UPLOAD_OFFSET_HEADER),
            &current.to_string(),
        )
        .with_header(header::LOCATION, &upload_location(name, id))
        .with_detail(json!({ "offset": current }))
}

fn too_large(what: &str, limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::SizeInvalid,
        format!("{what} exceeds the limit of {limit} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

fn paginate(items: Vec<String>, n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
    let mut rest: Vec<String> = match last {
        Some(last) => items.into_iter().filter(|t| t.as_str() > last).collect(),
        None => items,
    };
    match n {
        Some(n) if rest.len() > n => {
            rest.truncate(n);
            (rest, n > 0)
        }
        _ => (rest, false),
    }
}

fn page_size(ctx: &Ctx) -> Result<Option<usize>, ApiError> {
    match ctx.q("n") {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<usize>()
            .map(|n| Some(n.min(MAX_PAGE)))
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::Unsupported,
                    format!("n must be a non-negative integer, not {v:?}"),
                )
                .with_status(StatusCode::BAD_REQUEST)
            }),
    }
}

// ----- catalog and tags -----

async fn catalog(ctx: &Ctx) -> Result<Response, ApiError> {
    let n = page_size(ctx)?.or(Some(MAX_PAGE));
    let repos = ctx
        .reg
        .storage()
        .list_repositories()
        .await
        .map_err(internal)?;
    let (page, more) = paginate(repos, n, ctx.q("last"));
    let mut resp = json_response(
        StatusCode::OK,
        json!({ "repositories": page }).to_string(),
        None,
    );
    if more {
        if let (Some(last), Some(n)) = (page.last(), n) {
            let link = format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\"");
            if let Ok(v) = HeaderValue::from_str(&link) {
                resp.headers_mut().insert(header::LINK, v);
            }
        }
    }
    Ok(resp)
}

async fn require_repository(ctx: &Ctx, name: &str) -> Result<(), ApiError> {
    if ctx
        .reg
        .storage()
        .repository_exists(name)
        .await
        .map_err(internal)?
    {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::NameUnknown,
            format!("repository {name} is not known to the registry"),
        )
        .with_detail(json!({ "name": name })))
    }
}

async fn tags(ctx: &Ctx, name: &str) -> Result<Response, ApiError> {
    let n = page_size(ctx)?;
    require_repository(ctx, name).await?;
    let tags = ctx.reg.storage().list_tags(name).await.map_err(internal)?;
    let (page, more) = paginate(tags, n, ctx.q("last"));
    let mut resp = json_response(
        StatusCode::OK,
        json!({ "name": name, "tags": page }).to_string(),
        None,
    );
    if more {
        if let (Some(last), Some(n)) = (page.last(), n) {
            let link = format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\"");
            if let Ok(v) = HeaderValue::from_str(&link) {
                resp.headers_mut().insert(header::LINK, v);
            }
        }
    }
    Ok(resp)
}

// ----- manifests -----

async fn manifest_unknown(ctx: &Ctx, name: &str, reference: &str) -> ApiError {
    match require_repository(ctx, name).await {
        Err(e) => e,
        Ok(()) => ApiError::new(
            ErrorCode::ManifestUnknown,
            format!("manifest {reference} is not in repository {name}"),
        )
        .with_detail(json!({ "reference": reference })),
    }
}

async fn get_manifest(
    ctx: &Ctx,
    name: &str,
    reference: &str,
    head: bool,
) -> Result<Response, ApiError> {
    let Some(mref) = ManifestRef::parse(reference) else {
        return Err(manifest_unknown(ctx, name, reference).await);
    };
    let Some(found) = ctx.reg.find_manifest(name, &mref).await.map_err(internal)? else {
        return Err(manifest_unknown(ctx, name, reference).await);
    };
    let max = ctx.reg.options().limits.max_manifest_bytes;
    let bytes = match ctx.reg.storage().read_blob_bytes(&found.digest, max).await {
        Ok(b) => b,
        Err(StorageError::BlobNotFound(_)) => {
            return Err(manifest_unknown(ctx, name, reference).await)
        }
        Err(e) => return Err(internal(e)),
    };
    let etag = format!("\"{}\"", found.digest);
    let builder = http::Response::builder()
        .header(header::CONTENT_TYPE, &found.media_type)
        .header(DOCKER_CONTENT_DIGEST, found.digest.to_string())
        .header(header::ETAG, &etag);
    if ctx.if_none_match(&found.digest) {
        return Ok(finish(
            builder.status(StatusCode::NOT_MODIFIED),
            Body::empty(),
        ));
    }
    let builder = builder
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, bytes.len());
    if head {
        return Ok(finish(builder, Body::empty()));
    }
    ctx.sent_counter(name).inc_by(bytes.len() as u64);
    Ok(finish(builder, Body::from(bytes)))
}

/// Reads a request body of at most `max` bytes.
async fn read_limited(mut body: ByteStream, max: u64) -> Result<Option<Bytes>, std::io::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if (buf.len() + chunk.len()) as u64 > max {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(buf)))
}

async fn put_manifest(
    ctx: &Ctx,
    name: &str,
    reference: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(mref) = ManifestRef::parse(reference) else {
        return Err(if reference.contains(':') {
            digest_param(reference)
                .err()
                .unwrap_or_else(|| ApiError::new(ErrorCode::DigestInvalid, "invalid digest"))
        } else {
            ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("invalid tag {reference:?} (up to 128 of [A-Za-z0-9_.-], not starting with . or -)"),
            )
        });
    };
    let max = ctx.reg.options().limits.max_manifest_bytes;
    if ctx.content_length().is_some_and(|n| n > max) {
        return Err(too_large("manifest", max));
    }
    let bytes = read_limited(ctx.body_stream(name, body), max)
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("reading the manifest: {e}"),
            )
        })?
        .ok_or_else(|| too_large("manifest", max))?;
    let content_type = ctx.header(header::CONTENT_TYPE).map(str::to_string);
    let pushed = ctx
        .reg
        .push_manifest(name, &mref, content_type.as_deref(), bytes)
        .await?;
    let mut builder = http::Response::builder()
        .status(StatusCode::CREATED)
        .header(
            header::LOCATION,
            format!("/v2/{name}/manifests/{}", pushed.digest),
        )
        .header(DOCKER_CONTENT_DIGEST, pushed.digest.to_string())
        .header(header::CONTENT_LENGTH, 0);
    if let Some(subject) = pushed.subject {
        builder = builder.header(OCI_SUBJECT, subject.to_string());
    }
    Ok(finish(builder, Body::empty()))
}

fn deletes_disabled() -> ApiError {
    ApiError::new(
        ErrorCode::Unsupported,
        "deletes are disabled on this registry",
    )
}

async fn delete_manifest(ctx: &Ctx, name: &str, reference: &str) -> Result<Response, ApiError> {
    if !ctx.reg.options().delete_enabled {
        return Err(deletes_disabled());
    }
    let deleted = match ManifestRef::parse(reference) {
        None => false,
        Some(ManifestRef::Tag(tag)) => ctx
            .reg
            .storage()
            .delete_tag(name, &tag)
            .await
            .map_err(internal)?,
        Some(ManifestRef::Digest(d)) => {
            ctx.reg.delete_manifest(name, &d).await.map_err(internal)?
        }
    };
    if !deleted {
        return Err(manifest_unknown(ctx, name, reference).await);
    }
    Ok(finish(
        http::Response::builder()
            .status(StatusCode::ACCEPTED)
            .header(header::CONTENT_LENGTH, 0),
        Body::empty(),
    ))
}

// ----- blobs -----

fn blob_unknown(digest: &Digest) -> ApiError {
    ApiError::new(
        ErrorCode::BlobUnknown,
        format!("blob {digest} is not known to the repository"),
    )
    .with_detail(json!({ "digest": digest.to_string() }))
}

async fn get_blob(ctx: &Ctx, name: &str, digest: &str, head: bool) -> Result<Response, ApiError> {
    let digest = digest_param(digest)?;
    let Some(meta) = ctx.reg.repo_blob(name, &digest).await.map_err(internal)? else {
        return Err(blob_unknown(&digest));
    };
    let size = meta.size;
    let builder = http::Response::builder()
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "max-age=31536000");
    if ctx.if_none_match(&digest) {
        return Ok(finish(
            builder.status(StatusCode::NOT_MODIFIED),
            Body::empty(),
        ));
    }
    let ranges = match ctx.header(header::RANGE) {
        Some(h) if !head => range::parse(h, size, ctx.reg.options().limits.max_ranges),
        _ => RangeRequest::Whole,
    };
    let storage = ctx.reg.storage().clone();
    let open = |range: Option<(u64, u64)>| {
        let storage = storage.clone();
        async move {
            match storage.read_blob(&digest, range).await {
                Ok(s) => Ok(s),
                // Deleted between stat and open (garbage collection, blob delete).
                Err(StorageError::BlobNotFound(_)) => Err(blob_unknown(&digest)),
                Err(e) => Err(internal(e)),
            }
        }
    };
    match ranges {
        RangeRequest::Whole => {
            let builder = builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, size);
            if head {
                return Ok(finish(builder, Body::empty()));
            }
            let body = Counted::new(ctx.paced(open(None).await?), ctx.sent_counter(name));
            Ok(finish(builder, Body::from_stream(body)))
        }
        RangeRequest::Unsatisfiable => Err(ApiError::new(
            ErrorCode::SizeInvalid,
            format!("requested range not satisfiable: the blob has {size} bytes"),
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        .with_header(header::CONTENT_RANGE, &format!("bytes */{size}"))),
        RangeRequest::Ranges(rs) if rs.len() == 1 => {
            let (start, len) = rs[0];
            let builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(
                    header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{size}", start + len - 1),
                )
                .header(header::CONTENT_LENGTH, len);
            let body = Counted::new(
                ctx.paced(open(Some((start, len))).await?),
                ctx.sent_counter(name),
            );
            Ok(finish(builder, Body::from_stream(body)))
        }
        RangeRequest::Ranges(rs) => {
            let boundary = uuid::Uuid::new_v4().simple().to_string();
            let mut total = 0u64;
            let mut parts = Vec::with_capacity(rs.len());
            for (i, (start, len)) in rs.iter().copied().enumerate() {
                let head = format!(
                    "{}--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {start}-{}/{size}\r\n\r\n",
                    if i == 0 { "" } else { "\r\n" },
                    start + len - 1
                );
                total += head.len() as u64 + len;
                parts.push((Bytes::from(head), start, len));
            }
            let trailer = Bytes::from(format!("\r\n--{boundary}--\r\n"));
            total += trailer.len() as u64;
            // Fail before the status line if the blob vanished.
            let first = open(Some((parts[0].1, parts[0].2))).await?;
            let mut first = Some(first);
            let body = stream::iter(parts)
                .then(move |(head, start, len)| {
                    let storage = storage.clone();
                    let opened = first.take();
                    async move {
                        let data: ByteStream = match opened {
                            Some(s) => s,
                            None => match storage.read_blob(&digest, Some((start, len))).await {
                                Ok(s) => s,
                                Err(e) => Box::pin(stream::once(async move {
                                    Err(std::io::Error::other(e.to_string()))
                                })),
                            },
                        };
                        stream::once(async move { Ok::<Bytes, std::io::Error>(head) }).chain(data)
                    }
                })
                .flatten()
                .chain(stream::once(async move { Ok(trailer) }));
            let builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(
                    header::CONTENT_TYPE,
                    format!("multipart/byteranges; boundary={boundary}"),
                )
                .header(header::CONTENT_LENGTH, total);
            let body = Counted::new(ctx.paced(Box::pin(body)), ctx.sent_counter(name));
            Ok(finish(builder, Body::from_stream(body)))
        }
    }
}

async fn delete_blob(ctx: &Ctx, name: &str, digest: &str) -> Result<Response, ApiError> {
    if !ctx.reg.options().delete_enabled {
        return Err(deletes_disabled());
    }
    let digest = digest_param(digest)?;
    if !ctx
        .reg
        .storage()
        .unlink_blob(name, &digest)
        .await
        .map_err(internal)?
    {
        return Err(blob_unknown(&digest));
    }
    Ok(finish(
        http::Response::builder()
            .status(StatusCode::ACCEPTED)
            .header(header::CONTENT_LENGTH, 0),
        Body::empty(),
    ))
}

// ----- uploads -----

fn upload_error(name: &str, id: &str, e: StorageError) -> ApiError {
    match e {
        StorageError::UploadNotFound(_) => ApiError::new(
            ErrorCode::BlobUploadUnknown,
            format!("upload {id} is not known to the repository"),
        )
        .with_detail(json!({ "uuid": id })),
        StorageError::OutOfOrder { current, .. } => out_of_order(name, id, current, e.to_string()),
        StorageError::TooLarge { limit, .. } => too_large("blob", limit),
        StorageError::DigestMismatch { expected, .. } => {
            ApiError::new(ErrorCode::DigestInvalid, e.to_string())
                .with_detail(json!({ "digest": expected.to_string() }))
        }
        StorageError::Body(_) => ApiError::new(ErrorCode::BlobUploadInvalid, e.to_string()),
        other => internal(other),
    }
}

/// Appends a request body to upload `id`, honouring `Content-Range` when present.
async fn append_body(ctx: &Ctx, name: &str, id: &str, body: Body) -> Result<u64, ApiError> {
    let info = ctx
        .reg
        .storage()
        .upload_info(name, id)
        .await
        .map_err(|e| upload_error(name, id, e))?;
    let start = match ctx.header(header::CONTENT_RANGE) {
        None => info.offset,
        Some(v) => {
            let Some((start, end)) = range::parse_content_range(v) else {
                return Err(out_of_order(
                    name,
                    id,
                    info.offset,
                    format!("invalid Content-Range {v:?} (expected <start>-<end>)"),
                ));
            };
            if start != info.offset {
                return Err(out_of_order(
                    name,
                    id,
                    info.offset,
                    format!(
                        "chunk starts at {start} but the upload is at offset {}",
                        info.offset
                    ),
                ));
            }
            // `end - start` cannot underflow (parse_content_range checks); `+ 1` can overflow.
            let covered = (end - start).checked_add(1);
            if let Some(len) = ctx.content_length() {
                if covered != Some(len) {
                    return Err(ApiError::new(
                        ErrorCode::SizeInvalid,
                        format!("Content-Range {v} does not cover Content-Length {len} bytes"),
                    ));
                }
            }
            start
        }
    };
    let limit = ctx.reg.options().limits.max_blob_bytes;
    if ctx
        .content_length()
        .is_some_and(|len| start.saturating_add(len) > limit)
    {
        return Err(too_large("blob", limit));
    }
    append_charged(ctx, name, id, start, body, limit).await
}

/// Carried in the error of a body stream stopped because its bytes would pass a limit on
/// open upload sessions.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct QuotaExceeded(QuotaError);

/// Appends a request body to upload `id` at `start`, each piece counted against the open
/// session limits before it is written (a piece that would pass them ends the body, the
/// bytes before it stay), and the session's bytes settled to what storage holds after.
async fn append_charged(
    ctx: &Ctx,
    name: &str,
    id: &str,
    start: u64,
    body: Body,
    limit: u64,
) -> Result<u64, ApiError> {
    let quota = ctx.reg.upload_quota();
    let client = ctx.client();
    quota.track(name, id, &client, start);
    if let Some(len) = ctx.content_length() {
        // Refused before anything is read when the length says so.
        quota.check(id, len).map_err(|e| quota_error(ctx, e))?;
    }
    let reg = ctx.reg.clone();
    let session = id.to_string();
    let charged = ctx.body_stream(name, body).and_then(move |chunk| {
        let r = reg
            .upload_quota()
            .charge(&session, chunk.len() as u64)
            .map(|()| chunk)
            .map_err(|e| std::io::Error::other(QuotaExceeded(e)));
        futures::future::ready(r)
    });
    let result = ctx
        .reg
        .storage()
        .append_upload(name, id, start, Box::pin(charged), limit)
        .await;
    match &result {
        Ok(offset) => quota.settle(id, *offset),
        Err(_) => settle_quota(ctx, name, id).await,
    }
    result.map_err(|e| {
        let over = match &e {
            StorageError::Body(io) => io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<QuotaExceeded>())
                .map(|q| q.0.clone()),
            _ => None,
        };
        match over {
            Some(q) => quota_error(ctx, q),
            None => upload_error(name, id, e),
        }
    })
}

/// Sets the counted bytes of session `id` to what storage holds (after a failed append or
/// commit); forgets it when storage no longer has it.
async fn settle_quota(ctx: &Ctx, name: &str, id: &str) {
    let quota = ctx.reg.upload_quota();
    match ctx.reg.storage().upload_info(name, id).await {
        Ok(info) => quota.settle(id, info.offset),
        Err(StorageError::UploadNotFound(_)) => quota.close(id),
        Err(e) => tracing::warn!(error = %e, upload = id, "reading an upload's offset"),
    }
}

/// A 429 for a limit on open upload sessions, naming it.
fn quota_error(ctx: &Ctx, e: QuotaError) -> ApiError {
    let detail = match &e {
        QuotaError::Sessions {
            scope,
            name,
            current,
            limit,
            knob,
        } => {
            json!({ "scope": scope, "name": name, "sessions": current, "limit": limit, "setting": knob })
        }
        QuotaError::Bytes {
            scope,
            name,
            current,
            wanted,
            limit,
            knob,
        } => {
            json!({ "scope": scope, "name": name, "bytes": current, "wanted": wanted, "limit": limit, "setting": knob })
        }
    };
    ctx.reg.metrics().rate_limited("uploads");
    too_many_requests(ctx.reg.upload_quota().retry_after(), &e.to_string()).with_detail(detail)
}

async fn start_upload(ctx: &Ctx, name: &str, body: Body) -> Result<Response, ApiError> {
    if let Some(mount) = ctx.q("mount") {
        let digest = digest_param(mount)?;
        if let Some(from) = ctx
            .q("from")
            .filter(|f| gantry_oci::names::valid_repository(f))
        {
            let may_read = ctx
                .reg
                .authorizer()
                .authorize(
                    &ctx.parts,
                    &[Access::Repository {
                        name: from.to_string(),
                        action: Action::Pull,
                    }],
                )
                .await
                .is_ok();
            if may_read
                && ctx
                    .reg
                    .mount_blob(name, from, &digest)
                    .await
                    .map_err(internal)?
            {
                return Ok(blob_created(name, &digest));
            }
        }
        // Not mountable: start a normal upload, as the spec asks.
    }
    let single_post = match ctx.q("digest") {
        Some(d) => Some(digest_param(d)?),
        None => None,
    };
    let limit = ctx.reg.options().limits.max_blob_bytes;
    if single_post.is_some() && ctx.content_length().is_some_and(|n| n > limit) {
        return Err(too_large("blob", limit));
    }
    let slot = ctx
        .reg
        .upload_quota()
        .open(name, &ctx.client())
        .map_err(|e| quota_error(ctx, e))?;
    let info = ctx
        .reg
        .storage()
        .create_upload(name)
        .await
        .map_err(internal)?;
    slot.bind(&info.id);
    let Some(digest) = single_post else {
        return Ok(upload_accepted(StatusCode::ACCEPTED, name, &info.id, 0));
    };
    let result = async {
        append_charged(ctx, name, &info.id, 0, body, limit).await?;
        ctx.reg
            .commit_upload(name, &info.id, &digest)
            .await
            .map_err(|e| upload_error(name, &info.id, e))
    }
    .await;
    ctx.reg.upload_quota().close(&info.id);
    match result {
        Ok(_) => Ok(blob_created(name, &digest)),
        Err(e) => {
            let _ = ctx.reg.storage().cancel_upload(name, &info.id).await;
            Err(e)
        }
    }
}

async fn upload_status(ctx: &Ctx, name: &str, id: &str) -> Result<Response, ApiError> {
    let info = ctx
        .reg
        .storage()
        .upload_info(name, id)
        .await
        .map_err(|e| upload_error(name, id, e))?;
    Ok(upload_accepted(
        StatusCode::NO_CONTENT,
        name,
        id,
        info.offset,
    ))
}

async fn patch_upload(ctx: &Ctx, name: &str, id: &str, body: Body) -> Result<Response, ApiError> {
    let offset = append_body(ctx, name, id, body).await?;
    Ok(upload_accepted(StatusCode::ACCEPTED, name, id, offset))
}

/// A delta-push `PATCH`: appends ranges of blobs of the repository (see [`crate::delta`]).
async fn patch_ranges(ctx: &Ctx, name: &str, id: &str, body: Body) -> Result<Response, ApiError> {
    let info = ctx
        .reg
        .storage()
        .upload_info(name, id)
        .await
        .map_err(|e| upload_error(name, id, e))?;
    let claimed = ctx.header(HeaderName::from_static(delta::UPLOAD_OFFSET_HEADER));
    match claimed.map(|v| v.trim().parse::<u64>()) {
        Some(Ok(start)) if start == info.offset => {}
        Some(Ok(start)) => {
            return Err(out_of_order(
                name,
                id,
                info.offset,
                format!(
                    "ranges claim offset {start} but the upload is at offset {}",
                    info.offset
                ),
            ))
        }
        Some(Err(_)) | None => {
            return Err(ApiError::new(
                ErrorCode::BlobUploadInvalid,
                "a ranges PATCH needs Gantry-Upload-Offset: <the upload's current offset>",
            ))
        }
    }
    if ctx
        .content_length()
        .is_some_and(|n| n > delta::MAX_BODY_BYTES)
    {
        return Err(too_large("ranges body", delta::MAX_BODY_BYTES));
    }
    let bytes = read_limited(ctx.body_stream(name, body), delta::MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::BlobUploadInvalid,
                format!("reading the ranges body: {e}"),
            )
        })?
        .ok_or_else(|| too_large("ranges body", delta::MAX_BODY_BYTES))?;
    let ranges = BlobRanges::parse(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::BlobUploadInvalid,
            format!(
                "the body is not {}: {e} (expected {{\"ranges\":[{{\"digest\":…,\"offset\":…,\"length\":…}}]}})",
                delta::RANGES_MEDIA_TYPE
            ),
        )
    })?;
    let offset = ctx
        .reg
        .append_blob_ranges(name, id, &ctx.client(), info.offset, &ranges.ranges)
        .await
        .map_err(|e| delta_error(ctx, name, id, e))?;
    Ok(upload_accepted(StatusCode::ACCEPTED, name, id, offset))
}

fn delta_error(ctx: &Ctx, name: &str, id: &str, e: DeltaError) -> ApiError {
    match e {
        DeltaError::BlobUnknown { digest, .. } => {
            ApiError::new(ErrorCode::BlobUnknown, e.to_string())
                .with_detail(json!({ "digest": digest.to_string() }))
        }
        DeltaError::RangeOutside {
            digest,
            offset,
            length,
            size,
        } => ApiError::new(ErrorCode::BlobUploadInvalid, e.to_string())
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .with_detail(json!({
                "digest": digest.to_string(),
                "offset": offset,
                "length": length,
                "size": size,
            })),
        DeltaError::TooLarge { limit, .. } => too_large("blob", limit),
        DeltaError::PatchTooLarge { appended, limit } => {
            ApiError::new(ErrorCode::SizeInvalid, e.to_string())
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
                .with_detail(json!({
                    "appended": appended,
                    "limit": limit,
                    "setting": "limits.max_ranges_patch_bytes",
                }))
        }
        DeltaError::Quota(q) => quota_error(ctx, q),
        DeltaError::SourceRead {
            digest,
            offset,
            ref source,
        } => {
            let vanished = matches!(source, StorageError::BlobNotFound(_));
            if !vanished {
                tracing::error!(error = %e, "delta push: reading a source blob");
            }
            let err = if vanished {
                ApiError::new(ErrorCode::BlobUnknown, e.to_string())
            } else {
                ApiError::new(ErrorCode::Unsupported, e.to_string())
                    .with_status(StatusCode::INTERNAL_SERVER_ERROR)
            };
            err.with_detail(json!({ "digest": digest.to_string(), "offset": offset }))
                .with_header(header::RANGE, &upload_range(offset))
                .with_header(
                    HeaderName::from_static(delta::UPLOAD_OFFSET_HEADER),
                    &offset.to_string(),
                )
                .with_header(header::LOCATION, &upload_location(name, id))
        }
        DeltaError::Storage(e) => upload_error(name, id, e),
    }
}

async fn put_upload(ctx: &Ctx, name: &str, id: &str, body: Body) -> Result<Response, ApiError> {
    let digest = match ctx.q("digest") {
        Some(d) => digest_param(d)?,
        None => {
            return Err(ApiError::new(
                ErrorCode::DigestInvalid,
                "the closing PUT needs ?digest=<digest of the whole blob>",
            ))
        }
    };
    if ctx.content_length() != Some(0) {
        append_body(ctx, name, id, body).await?;
    }
    match ctx.reg.commit_upload(name, id, &digest).await {
        Ok(_) => {
            ctx.reg.upload_quota().close(id);
            Ok(blob_created(name, &digest))
        }
        Err(e) => {
            settle_quota(ctx, name, id).await;
            Err(upload_error(name, id, e))
        }
    }
}

async fn cancel_upload(ctx: &Ctx, name: &str, id: &str) -> Result<Response, ApiError> {
    let cancelled = ctx
        .reg
        .storage()
        .cancel_upload(name, id)
        .await
        .map_err(|e| upload_error(name, id, e))?;
    ctx.reg.upload_quota().close(id);
    if !cancelled {
        return Err(upload_error(
            name,
            id,
            StorageError::UploadNotFound(id.to_string()),
        ));
    }
    Ok(finish(
        http::Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::CONTENT_LENGTH, 0),
        Body::empty(),
    ))
}

// ----- referrers -----

async fn referrers(ctx: &Ctx, name: &str, digest: &str) -> Result<Response, ApiError> {
    let subject = digest_param(digest)?;
    let filter = ctx.q("artifactType").filter(|t| !t.is_empty());
    let stored = ctx
        .reg
        .storage()
        .list_referrers(name, &subject)
        .await
        .map_err(internal)?;
    let manifests: Vec<Value> = stored
        .iter()
        .filter_map(|b| serde_json::from_slice::<Value>(b).ok())
        .filter(|d| filter.is_none_or(|f| d.get("artifactType").and_then(Value::as_str) == Some(f)))
        .collect();
    let body = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": manifests,
    })
    .to_string();
    let mut resp = json_response(StatusCode::OK, body, Some(media_types::OCI_INDEX));
    if filter.is_some() {
        resp.headers_mut().insert(
            HeaderName::from_static(OCI_FILTERS_APPLIED),
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination() {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(paginate(items.clone(), None, None), (items.clone(), false));
        assert_eq!(
            paginate(items.clone(), Some(2), None),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            paginate(items.clone(), Some(2), Some("b")),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(paginate(items.clone(), Some(0), None), (vec![], false));
        assert_eq!(
            paginate(items, None, Some("bb")),
            (vec!["c".into(), "d".into()], false)
        );
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&h).len(), 32);
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        assert_ne!(request_id(&h), "bad id with spaces");
    }

    #[test]
    fn access_per_route_and_method() {
        let r = Route::Manifest {
            name: "a".into(),
            reference: "t".into(),
        };
        assert_eq!(
            required_access(&r, &Method::PUT, false),
            Some(vec![Access::Repository {
                name: "a".into(),
                action: Action::Push
            }])
        );
        assert_eq!(required_access(&r, &Method::PATCH, false), None);
        assert_eq!(
            required_access(&Route::Base, &Method::GET, false),
            Some(vec![])
        );
        assert_eq!(required_access(&Route::Catalog, &Method::POST, false), None);
        let u = Route::Upload {
            name: "a".into(),
            id: "x".into(),
        };
        let repo = |action| Access::Repository {
            name: "a".into(),
            action,
        };
        assert_eq!(
            required_access(&u, &Method::PATCH, false),
            Some(vec![repo(Action::Push)])
        );
        assert_eq!(
            required_access(&u, &Method::PATCH, true),
            Some(vec![repo(Action::Pull), repo(Action::Push)])
        );
    }
}
