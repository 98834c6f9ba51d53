//! The fleet view: which game servers run which image digest, per repository and tag, from
//! the status events `gantry supervise` POSTs (`POST /gantry/v1/fleet/events`, one event or
//! a JSON array of them), read back with `GET /gantry/v1/fleet[?image=repo[:tag]]`.
//!
//! - A server is identified by `hostname` (the pod name) and `node_name`. Its latest state
//!   is the event with the highest `seq`; an older `seq` arriving late (HTTP retries) is
//!   ignored, the same `seq` again (the supervisor's heartbeat) only refreshes last-seen, and
//!   a `starting` event with `seq` 0 is a new run that replaces the previous one. A server
//!   that is already `lost` takes whatever it sends next.
//! - The repository and tag come from the event's `image` (`reg.example/game:v2`, the host
//!   is dropped; no tag means `latest`, a digest only means tag `@sha256:…`).
//! - A server is live unless `exited` or not heard from within `stale_after` (then `lost`).
//!   A tag is `converged` when it points to a manifest here, at least one server is live and
//!   every live server runs that digest. Exited and lost servers are shown for `retention`,
//!   then dropped.
//! - Bounded: at most `max_servers` servers (events of new ones get 503), bodies of at most
//!   `max_body_bytes` (413), strings in events cut to 256 bytes. Kept in memory and written
//!   atomically to `<root>/fleet/state.json` (at most once a second, when changed) so a
//!   restart keeps the view.
//! - Auth, when configured: reporting needs the `report` action on the repository, by a
//!   report token ([`crate::report_tokens`], `Authorization: Bearer <secret>`), Basic
//!   credentials of a user, or a registry token with the `report` scope; the view shows the
//!   repositories the caller may pull. Without `[auth]` everything is allowed, as for the
//!   rest of the registry.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::header;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{Access, Action, AuthError};
use crate::config::FleetConfig;
use crate::error::{ApiError, ErrorCode};
use crate::{ManifestRef, Registry};

/// Statuses an event may carry (those of `gantry supervise`).
const STATUSES: [&str; 5] = ["starting", "ready", "unhealthy", "terminating", "exited"];
/// Longest string kept from an event field.
const MAX_FIELD: usize = 256;

/// Fleet view settings plus where the view is persisted.
#[derive(Debug, Clone, Default)]
pub struct FleetOptions {
    /// Limits and timings.
    pub config: FleetConfig,
    /// The state file; `None`: memory only.
    pub state_file: Option<PathBuf>,
}

/// An event as received (lenient: unknown fields are ignored, most are optional).
#[derive(Debug, Clone, Deserialize)]
pub struct IncomingEvent {
    /// `starting`, `ready`, `unhealthy`, `terminating` or `exited`.
    pub status: String,
    /// Image reference as deployed.
    pub image: Option<String>,
    /// Digest of the running image.
    pub image_digest: Option<String>,
    /// Pod hostname.
    pub hostname: Option<String>,
    /// Node name.
    pub node_name: Option<String>,
    /// Public host.
    pub public_hostname: Option<String>,
    /// Public port.
    pub public_port: Option<u16>,
    /// Region.
    pub region: Option<String>,
    /// Position in the supervisor's run.
    #[serde(default)]
    pub seq: u64,
    /// The supervisor's time of the event.
    pub datetime: Option<String>,
    /// Exit code (`exited`).
    pub exit_code: Option<i32>,
    /// Why (`unhealthy`, `exited` before start).
    pub reason: Option<String>,
}

/// One server's latest state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerState {
    /// Repository of its image.
    pub repository: String,
    /// Tag of its image (`latest` when none, `@sha256:…` when deployed by digest only).
    pub tag: String,
    /// The image reference it reported.
    pub image: String,
    /// Pod hostname.
    pub hostname: String,
    /// Node name.
    pub node: Option<String>,
    /// Last reported status.
    pub status: String,
    /// `seq` of that event.
    pub seq: u64,
    /// Digest it runs.
    pub digest: Option<String>,
    /// Public host.
    pub public_hostname: Option<String>,
    /// Public port.
    pub public_port: Option<u16>,
    /// Region.
    pub region: Option<String>,
    /// The supervisor's time of the event.
    pub event_time: Option<String>,
    /// Exit code, when exited.
    pub exit_code: Option<i32>,
    /// Reason, when unhealthy.
    pub reason: Option<String>,
    /// When the registry last heard from it (ms since the Unix epoch).
    pub last_seen_ms: u64,
    /// Who reported it (report token or user), when auth is on.
    pub reporter: Option<String>,
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The server's state changed.
    Recorded,
    /// A heartbeat: the same `seq` again, last-seen refreshed.
    Refreshed,
    /// Older than what is known: ignored.
    Ignored,
}

/// Why events cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// The event is not usable.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// Too many servers tracked.
    #[error("the fleet view tracks its maximum of {0} servers")]
    Full(usize),
}

/// A repository and optional tag parsed from an image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageKey {
    /// Repository (without the registry host).
    pub repository: String,
    /// Tag, `@sha256:…` for a digest-only reference; `None` when not given.
    pub tag: Option<String>,
}

/// Parses `[host[:port]/]repo[:tag][@digest]` into repository and tag.
pub fn parse_image(image: &str) -> Option<ImageKey> {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    let path = match rest.split_once('/') {
        Some((first, remainder))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            remainder
        }
        _ => rest,
    };
    let (repository, tag) = match path.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
        _ => (path, None),
    };
    if !gantry_oci::names::valid_repository(repository) {
        return None;
    }
    if let Some(t) = &tag {
        if !gantry_oci::names::valid_tag(t) {
            return None;
        }
    }
    let tag = match (tag, digest) {
        (Some(t), _) => Some(t),
        (None, Some(d)) => {
            d.parse::<gantry_oci::Digest>().ok()?;
            Some(format!("@{d}"))
        }
        (None, None) => None,
    };
    Some(ImageKey {
        repository: repository.to_string(),
        tag,
    })
}

fn cut(s: Option<String>) -> Option<String> {
    s.map(|mut s| {
        if s.len() > MAX_FIELD {
            let mut end = MAX_FIELD;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        s
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl IncomingEvent {
    /// Checks the event and turns it into the state it reports.
    pub fn into_state(
        self,
        reporter: Option<String>,
        now_ms: u64,
    ) -> Result<ServerState, FleetError> {
        if !STATUSES.contains(&self.status.as_str()) {
            return Err(FleetError::Invalid(format!(
                "unknown status {:?}",
                self.status
            )));
        }
        let image = self
            .image
            .filter(|i| !i.is_empty())
            .ok_or_else(|| FleetError::Invalid("no `image` (set GANTRY_IMAGE)".into()))?;
        let key = parse_image(&image)
            .ok_or_else(|| FleetError::Invalid(format!("invalid image reference {image:?}")))?;
        let hostname = cut(self.hostname.filter(|h| !h.is_empty()))
            .ok_or_else(|| FleetError::Invalid("no `hostname`".into()))?;
        if let Some(d) = &self.image_digest {
            if d.parse::<gantry_oci::Digest>().is_err() {
                return Err(FleetError::Invalid(format!("invalid image_digest {d:?}")));
            }
        }
        Ok(ServerState {
            repository: key.repository,
            tag: key.tag.unwrap_or_else(|| "latest".into()),
            image: cut(Some(image)).unwrap_or_default(),
            hostname,
            node: cut(self.node_name.filter(|n| !n.is_empty())),
            status: self.status,
            seq: self.seq,
            digest: self.image_digest,
            public_hostname: cut(self.public_hostname),
            public_port: self.public_port,
            region: cut(self.region),
            event_time: cut(self.datetime),
            exit_code: self.exit_code,
            reason: cut(self.reason),
            last_seen_ms: now_ms,
            reporter,
        })
    }
}

/// The fleet view's state, shared by the handlers.
#[derive(Debug)]
pub struct Fleet {
    options: FleetOptions,
    servers: Mutex<HashMap<String, ServerState>>,
    dirty: AtomicBool,
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    version: u32,
    servers: Vec<ServerState>,
}

fn server_key(hostname: &str, node: Option<&str>) -> String {
    format!("{hostname}\u{0}{}", node.unwrap_or(""))
}

impl Fleet {
    /// An empty view, or the one saved in the state file (a missing or unreadable file is
    /// logged and starts empty).
    pub fn new(options: FleetOptions) -> Fleet {
        let mut servers = HashMap::new();
        if let Some(path) = &options.state_file {
            match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<Persisted>(&bytes) {
                    Ok(p) => {
                        for s in p.servers.into_iter().take(options.config.max_servers) {
                            servers.insert(server_key(&s.hostname, s.node.as_deref()), s);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "ignoring the fleet state file")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the fleet state file")
                }
            }
        }
        Fleet {
            options,
            servers: Mutex::new(servers),
            dirty: AtomicBool::new(false),
        }
    }

    /// The settings.
    pub fn config(&self) -> &FleetConfig {
        &self.options.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ServerState>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stale(&self, s: &ServerState, now: u64) -> bool {
        now.saturating_sub(s.last_seen_ms) > self.options.config.stale_after.as_millis() as u64
    }

    /// The status shown: the reported one, or `lost` when a live server went silent.
    pub fn effective_status<'a>(&self, s: &'a ServerState, now: u64) -> &'a str {
        if s.status != "exited" && self.stale(s, now) {
            "lost"
        } else {
            &s.status
        }
    }

    fn expired(&self, s: &ServerState, now: u64) -> bool {
        let c = &self.options.config;
        let age = now.saturating_sub(s.last_seen_ms);
        let keep = if s.status == "exited" {
            c.retention
        } else {
            c.stale_after + c.retention
        };
        age > keep.as_millis() as u64
    }

    /// Drops exited and lost servers past their retention; how many.
    pub fn expire(&self, now: u64) -> usize {
        let mut servers = self.lock();
        let before = servers.len();
        servers.retain(|_, s| !self.expired(s, now));
        let removed = before - servers.len();
        if removed > 0 {
            self.dirty.store(true, Ordering::Relaxed);
        }
        removed
    }

    /// Applies one server state (from [`IncomingEvent::into_state`]).
    pub fn apply(&self, new: ServerState) -> Result<Applied, FleetError> {
        let now = new.last_seen_ms;
        let key = server_key(&new.hostname, new.node.as_deref());
        let mut servers = self.lock();
        let outcome = match servers.get_mut(&key) {
            Some(old) => {
                let new_run = new.status == "starting" && new.seq == 0;
                let lost = old.status != "exited" && self.stale(old, now);
                if new_run || new.seq > old.seq || (lost && new.seq != old.seq) {
                    *old = new;
                    Applied::Recorded
                } else if new.seq == old.seq {
                    old.last_seen_ms = now;
                    Applied::Refreshed
                } else {
                    Applied::Ignored
                }
            }
            None => {
                let max = self.options.config.max_servers;
                if servers.len() >= max {
                    servers.retain(|_, s| !self.expired(s, now));
                }
                if servers.len() >= max {
                    return Err(FleetError::Full(max));
                }
                servers.insert(key, new);
                Applied::Recorded
            }
        };
        if outcome != Applied::Ignored {
            self.dirty.store(true, Ordering::Relaxed);
        }
        Ok(outcome)
    }

    /// Every tracked server (expired ones dropped first).
    pub fn snapshot(&self, now: u64) -> Vec<ServerState> {
        self.expire(now);
        self.lock().values().cloned().collect()
    }

    /// Writes the state file when the view changed since the last save (temp file, fsync,
    /// rename: a crash leaves the old or the new file).
    pub fn save_if_dirty(&self) -> std::io::Result<bool> {
        let Some(path) = &self.options.state_file else {
            return Ok(false);
        };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(false);
        }
        let mut servers: Vec<ServerState> = self.lock().values().cloned().collect();
        servers.sort_by(|a, b| (&a.hostname, &a.node).cmp(&(&b.hostname, &b.node)));
        let bytes = serde_json::to_vec(&Persisted {
            version: 1,
            servers,
        })
        .map_err(std::io::Error::other)?;
        write_atomic(path, &bytes).inspect_err(|_| {
            self.dirty.store(true, Ordering::Relaxed);
        })?;
        Ok(true)
    }

    /// Counts of servers by repository, tag, digest and effective status (for the
    /// `gantry_fleet_servers` gauge).
    pub fn counts(&self, now: u64) -> BTreeMap<(String, String, String, String), i64> {
        let mut out = BTreeMap::new();
        for s in self.snapshot(now) {
            let status = self.effective_status(&s, now).to_string();
            *out.entry((
                s.repository.clone(),
                s.tag.clone(),
                s.digest.clone().unwrap_or_else(|| "unknown".into()),
                status,
            ))
            .or_insert(0) += 1;
        }
        out
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

// ----- HTTP -----

fn bad_request(message: String) -> ApiError {
    ApiError::new(ErrorCode::Unsupported, message).with_status(StatusCode::BAD_REQUEST)
}

/// Who may report for `repos`: `Ok(reporter)` (`None` without auth), else the refusal.
async fn authorize_report(
    reg: &Registry,
    parts: &http::request::Parts,
    repos: &[String],
) -> Result<Option<String>, ApiError> {
    let Some(auth) = reg.token_auth() else {
        return Ok(None);
    };
    let access: Vec<Access> = repos
        .iter()
        .map(|r| Access::Repository {
            name: r.clone(),
            action: Action::Report,
        })
        .collect();
    if let Some(secret) = crate::token_auth::bearer_token(parts) {
        if let Some(name) = auth.report_token_name(secret) {
            if access.iter().all(|a| auth.policy().allows(Some(&name), a)) {
                return Ok(Some(name));
            }
            tracing::info!(token = %name, "report token lacks the report action");
            return Err(crate::api::auth_error(AuthError::Denied));
        }
    }
    // Basic credentials, or a registry token with the `report` scope.
    crate::api::authorize_login(reg, parts, &access)
        .await
        .map(|p| p.user)
}

/// `POST /gantry/v1/fleet/events`: one event object, or an array of them.
pub async fn post_events(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let mut resp = match post_events_inner(&reg, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.extensions_mut()
        .insert(crate::api::RouteKind("fleet_events"));
    resp
}

async fn post_events_inner(reg: &Registry, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let max = reg.fleet().config().max_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::SizeInvalid,
            format!("event body exceeds the limit of {max} bytes"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large())?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(format!("the body is not JSON: {e}")))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    if items.is_empty() {
        return Err(bad_request("no events".into()));
    }
    let now = now_ms();
    let mut states = Vec::with_capacity(items.len());
    for item in items {
        let event: IncomingEvent =
            serde_json::from_value(item).map_err(|e| bad_request(format!("invalid event: {e}")))?;
        states.push(
            event
                .into_state(None, now)
                .map_err(|e| bad_request(e.to_string()))?,
        );
    }
    let mut repos: Vec<String> = states.iter().map(|s| s.repository.clone()).collect();
    repos.sort();
    repos.dedup();
    // Authorize every repository before recording anything.
    let reporter = authorize_report(reg, &parts, &repos).await?;
    let (mut recorded, mut refreshed, mut ignored) = (0, 0, 0);
    for mut state in states {
        state.reporter = reporter.clone();
        match reg.fleet().apply(state) {
            Ok(Applied::Recorded) => recorded += 1,
            Ok(Applied::Refreshed) => refreshed += 1,
            Ok(Applied::Ignored) => ignored += 1,
            Err(e @ FleetError::Full(_)) => {
                return Err(ApiError::new(ErrorCode::TooManyRequests, e.to_string())
                    .with_status(StatusCode::SERVICE_UNAVAILABLE))
            }
            Err(e) => return Err(bad_request(e.to_string())),
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "recorded": recorded, "refreshed": refreshed, "ignored": ignored }).to_string(),
    )
        .into_response())
}

/// `GET /gantry/v1/fleet[?image=repo[:tag]]`: the view as JSON.
pub async fn get_view(
    State(reg): State<Arc<Registry>>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let mut resp = match get_view_inner(&reg, query, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(crate::api::RouteKind("fleet"));
    resp
}

async fn get_view_inner(
    reg: &Registry,
    query: HashMap<String, String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let filter = match query.get("image").filter(|s| !s.is_empty()) {
        Some(image) => Some(
            parse_image(image)
                .ok_or_else(|| bad_request(format!("invalid image {image:?}: use repo[:tag]")))?,
        ),
        None => None,
    };
    // Which repositories the caller may see: all without auth; with a filter, pull on its
    // repository; else every repository the authenticated caller may pull.
    let visible: Box<dyn Fn(&str) -> bool + Send> = match (reg.token_auth(), &filter) {
        (None, _) => Box::new(|_| true),
        (Some(_), Some(f)) => {
            let access = [Access::Repository {
                name: f.repository.clone(),
                action: Action::Pull,
            }];
            crate::api::authorize_login(reg, &parts, &access).await?;
            Box::new(|_| true)
        }
        (Some(auth), None) => {
            // Basic credentials are a login, limited as on the API.
            let attempt = crate::api::begin_password_login(reg, &parts).await?;
            let identified = auth.identify(&parts).await;
            if let Some(attempt) = attempt {
                match &identified {
                    Err(AuthError::Unauthorized { .. }) => attempt.failed(),
                    _ => attempt.passed(),
                }
            }
            let user = identified.map_err(crate::api::auth_error)?;
            let Some(user) = user else {
                return Err(crate::api::auth_error(AuthError::Unauthorized {
                    challenge: Some(auth.challenge(&parts, &[], None)),
                }));
            };
            let auth = auth.clone();
            Box::new(move |repo: &str| {
                auth.policy().allows(
                    Some(&user),
                    &Access::Repository {
                        name: repo.to_string(),
                        action: Action::Pull,
                    },
                )
            })
        }
    };
    let now = now_ms();
    let fleet = reg.fleet();
    let mut tree: BTreeMap<String, BTreeMap<String, Vec<ServerState>>> = BTreeMap::new();
    for s in fleet.snapshot(now) {
        if let Some(f) = &filter {
            if s.repository != f.repository || f.tag.as_ref().is_some_and(|t| *t != s.tag) {
                continue;
            }
        }
        if !visible(&s.repository) {
            continue;
        }
        tree.entry(s.repository.clone())
            .or_default()
            .entry(s.tag.clone())
            .or_default()
            .push(s);
    }
    let mut repositories = Vec::new();
    for (repository, tags) in tree {
        let mut tag_views = Vec::new();
        for (tag, mut servers) in tags {
            let tag_digest = match tag.strip_prefix('@') {
                Some(d) => Some(d.to_string()),
                None => match ManifestRef::parse(&tag) {
                    Some(r) => reg
                        .find_manifest(&repository, &r)
                        .await
                        .map_err(|e| ApiError::internal(&e))?
                        .map(|m| m.digest.to_string()),
                    None => None,
                },
            };
            servers.sort_by(|a, b| (&a.hostname, &a.node).cmp(&(&b.hostname, &b.node)));
            let mut by_digest: BTreeMap<String, u64> = BTreeMap::new();
            let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
            let (mut live, mut on_tag) = (0u64, 0u64);
            let mut list = Vec::new();
            for s in &servers {
                let status = fleet.effective_status(s, now);
                *by_status.entry(status.to_string()).or_default() += 1;
                let is_live = status != "exited" && status != "lost";
                let digest = s.digest.clone().unwrap_or_else(|| "unknown".into());
                if is_live {
                    live += 1;
                    *by_digest.entry(digest.clone()).or_default() += 1;
                    if tag_digest.as_deref() == Some(digest.as_str()) {
                        on_tag += 1;
                    }
                }
                list.push(json!({
                    "hostname": s.hostname,
                    "node": s.node,
                    "status": status,
                    "reported_status": s.status,
                    "seq": s.seq,
                    "digest": s.digest,
                    "image": s.image,
                    "public_hostname": s.public_hostname,
                    "public_port": s.public_port,
                    "region": s.region,
                    "exit_code": s.exit_code,
                    "reason": s.reason,
                    "event_time": s.event_time,
                    "last_seen": format_ms(s.last_seen_ms),
                    "last_seen_seconds_ago": now.saturating_sub(s.last_seen_ms) / 1000,
                    "reporter": s.reporter,
                }));
            }
            tag_views.push(json!({
                "tag": tag,
                "tag_digest": tag_digest,
                "converged": tag_digest.is_some() && live > 0 && on_tag == live,
                "live": live,
                "on_tag_digest": on_tag,
                "by_digest": by_digest,
                "by_status": by_status,
                "servers": list,
            }));
        }
        repositories.push(json!({ "repository": repository, "tags": tag_views }));
    }
    let body = json!({
        "generated_at": format_ms(now),
        "stale_after_seconds": fleet.config().stale_after.as_secs(),
        "repositories": repositories,
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(host: &str, status: &str, seq: u64, digest: &str) -> IncomingEvent {
        serde_json::from_value(json!({
            "status": status, "seq": seq, "hostname": host, "node_name": "n1",
            "image": "reg.example:5000/team/game:v2", "image_digest": digest,
        }))
        .unwrap()
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn images() {
        let k = parse_image("reg.example:5000/team/game:v2").unwrap();
        assert_eq!(
            (k.repository.as_str(), k.tag.as_deref()),
            ("team/game", Some("v2"))
        );
        let k = parse_image("game").unwrap();
        assert_eq!((k.repository.as_str(), k.tag), ("game", None));
        let k = parse_image(&format!("localhost/a/b@{D1}")).unwrap();
        assert_eq!(k.tag.unwrap(), format!("@{D1}"));
        assert!(parse_image("UPPER:x").is_none());
        assert!(parse_image("team/game:v:1").is_none());
    }

    #[test]
    fn seq_ordering_heartbeats_and_new_runs() {
        let fleet = Fleet::new(FleetOptions::default());
        let apply = |e: IncomingEvent, at: u64| fleet.apply(e.into_state(None, at).unwrap());
        assert_eq!(
            apply(event("a", "starting", 0, D1), 1000),
            Ok(Applied::Recorded)
        );
        assert_eq!(
            apply(event("a", "ready", 2, D1), 1001),
            Ok(Applied::Recorded)
        );
        assert_eq!(
            apply(event("a", "starting", 1, D1), 1002),
            Ok(Applied::Ignored)
        );
        assert_eq!(
            apply(event("a", "ready", 2, D1), 5000),
            Ok(Applied::Refreshed)
        );
        let s = fleet.snapshot(5000);
        assert_eq!((s[0].status.as_str(), s[0].last_seen_ms), ("ready", 5000));
        assert_eq!(
            apply(event("a", "starting", 0, D1), 6000),
            Ok(Applied::Recorded)
        );
        assert_eq!(fleet.snapshot(6000)[0].status, "starting");
        // Silent past stale_after: lost; then expired after the retention.
        let later = 6000 + 121_000;
        assert_eq!(
            fleet.effective_status(&fleet.snapshot(later)[0], later),
            "lost"
        );
        assert!(fleet.snapshot(later + 15 * 60_000).is_empty());
    }

    #[test]
    fn bounded_and_validated() {
        let fleet = Fleet::new(FleetOptions {
            config: FleetConfig {
                max_servers: 2,
                ..FleetConfig::default()
            },
            state_file: None,
        });
        for h in ["a", "b"] {
            fleet
                .apply(event(h, "ready", 1, D1).into_state(None, 1).unwrap())
                .unwrap();
        }
        let third = event("c", "ready", 1, D1).into_state(None, 1).unwrap();
        assert_eq!(fleet.apply(third), Err(FleetError::Full(2)));
        assert!(event("a", "bogus", 1, D1).into_state(None, 1).is_err());
        assert!(event("a", "ready", 1, "sha256:short")
            .into_state(None, 1)
            .is_err());
        let mut e = event("a", "ready", 1, D1);
        e.image = None;
        assert!(e.into_state(None, 1).is_err());
    }

    #[test]
    fn persisted_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let options = FleetOptions {
            config: FleetConfig::default(),
            state_file: Some(dir.path().join("fleet/state.json")),
        };
        let fleet = Fleet::new(options.clone());
        let now = now_ms();
        fleet
            .apply(event("a", "ready", 1, D1).into_state(None, now).unwrap())
            .unwrap();
        assert!(fleet.save_if_dirty().unwrap());
        assert!(!fleet.save_if_dirty().unwrap());
        let again = Fleet::new(options);
        let s = again.snapshot(now);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].digest.as_deref(), Some(D1));
    }
}
