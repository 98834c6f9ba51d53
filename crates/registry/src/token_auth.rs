//! Users, access rules and Docker token auth: the [`Authorizer`] used when the configuration
//! has an `[auth]` section, and the `/token` endpoint.
//!
//! - Requests carry `Authorization: Bearer <token>` (a token from `/token`, checked for
//!   signature, service and expiry, granting exactly the scopes in it) or
//!   `Authorization: Basic` (checked against the users file and the access rules on every
//!   request; successful checks are cached for a minute since argon2 is slow on purpose).
//! - Without credentials a request is allowed only where a rule has `anonymous_pull`, and
//!   `/v2/` always asks for credentials (clients learn the realm there).
//! - Refusals are 401 with `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`, except
//!   a Basic user who authenticated but lacks access: 403 `DENIED`.
//! - `/token` (GET with optional Basic credentials, or POST form `grant_type=password` as
//!   OAuth2 clients send) grants the intersection of the requested scopes and what the rules
//!   allow the caller; anonymous callers get a token too (with only anonymous access).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header;
use http::StatusCode;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::auth::{Access, Action, AuthError, Authorizer, Principal};
use crate::config::{AccessRule, AuthConfig};
use crate::report_tokens::ReportTokens;
use crate::token::{challenge_scopes, parse_scopes, ResourceActions, TokenKey};
use crate::users::{Users, VerifyMemory};

/// How long a successful Basic check is remembered.
const BASIC_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most remembered Basic checks.
const BASIC_CACHE_MAX: usize = 4096;
/// How long a password check may wait for a free verifier before it is refused (503).
const VERIFY_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// `Retry-After` of a password check refused for load.
const VERIFY_RETRY: Duration = Duration::from_secs(1);
/// Largest `/token` POST body.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The auth configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The users file.
    #[error(transparent)]
    Users(#[from] crate::users::UsersError),
    /// The token key file.
    #[error("token key {path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A rule that cannot be used.
    #[error("auth rule for {repository:?}: {message}")]
    Rule {
        /// Its pattern.
        repository: String,
        /// What is wrong.
        message: String,
    },
}

/// `*` matches any characters but `/`, `**` any characters; everything else literally.
pub(crate) fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => {
            let (deep, rest) = match rest.split_first() {
                Some((b'*', r)) => (true, r),
                _ => (false, rest),
            };
            for i in 0..=name.len() {
                if glob_match(rest, &name[i..]) {
                    return true;
                }
                if i < name.len() && !deep && name[i] == b'/' {
                    return false;
                }
            }
            false
        }
        Some((c, rest)) => name.first() == Some(c) && glob_match(rest, &name[1..]),
    }
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: String,
    users: Vec<String>,
    actions: Vec<Action>,
    anonymous_pull: bool,
}

/// The access rules: who may do what to which repositories. Default deny.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    admins: HashSet<String>,
    rules: Vec<Rule>,
    /// Users besides the admins who may read `/metrics`.
    metrics_users: HashSet<String>,
}

/// Every action: what `*` and admins get.
const ALL_ACTIONS: [Action; 4] = [Action::Pull, Action::Push, Action::Delete, Action::Report];

fn parse_action(s: &str) -> Option<Vec<Action>> {
    match s {
        "pull" => Some(vec![Action::Pull]),
        "push" => Some(vec![Action::Push]),
        "delete" => Some(vec![Action::Delete]),
        "report" => Some(vec![Action::Report]),
        "*" => Some(ALL_ACTIONS.to_vec()),
        _ => None,
    }
}

impl Policy {
    /// Builds the policy from configured admins and rules.
    pub fn new(admins: &[String], rules: &[AccessRule]) -> Result<Policy, AuthSetupError> {
        let mut out = Vec::new();
        for r in rules {
            let err = |message: String| AuthSetupError::Rule {
                repository: r.repository.clone(),
                message,
            };
            if r.repository.is_empty() {
                return Err(err("empty repository pattern".into()));
            }
            let mut actions = Vec::new();
            for a in &r.actions {
                actions.extend(parse_action(a).ok_or_else(|| {
                    err(format!(
                        "unknown action {a:?} (pull, push, delete, report, *)"
                    ))
                })?);
            }
            if !actions.is_empty() && r.users.is_empty() {
                return Err(err("actions without users".into()));
            }
            out.push(Rule {
                pattern: r.repository.clone(),
                users: r.users.clone(),
                actions,
                anonymous_pull: r.anonymous_pull,
            });
        }
        Ok(Policy {
            admins: admins.iter().cloned().collect(),
            rules: out,
            metrics_users: HashSet::new(),
        })
    }

    /// Also lets `users` read `/metrics` (admins always may).
    pub fn with_metrics_users(mut self, users: &[String]) -> Policy {
        self.metrics_users.extend(users.iter().cloned());
        self
    }

    /// Whether `user` may read `/metrics`, whose labels name repositories and users: the
    /// admins and the configured metrics users.
    pub fn may_read_metrics(&self, user: &str) -> bool {
        self.admins.contains(user) || self.metrics_users.contains(user)
    }

    /// What `user` (`None`: anonymous) may do to repository `repo`.
    pub fn repository_actions(&self, user: Option<&str>, repo: &str) -> HashSet<Action> {
        let mut out = HashSet::new();
        if user.is_some_and(|u| self.admins.contains(u)) {
            out.extend(ALL_ACTIONS);
            return out;
        }
        for rule in &self.rules {
            if !glob_match(rule.pattern.as_bytes(), repo.as_bytes()) {
                continue;
            }
            if rule.anonymous_pull {
                out.insert(Action::Pull);
            }
            if let Some(user) = user {
                if rule.users.iter().any(|u| u == user || u == "*") {
                    out.extend(rule.actions.iter().copied());
                }
            }
        }
        out
    }

    /// Whether `user` may do `access`.
    pub fn allows(&self, user: Option<&str>, access: &Access) -> bool {
        match access {
            Access::Catalog => user.is_some_and(|u| self.admins.contains(u)),
            Access::Repository { name, action } => {
                self.repository_actions(user, name).contains(action)
            }
        }
    }

    /// The part of `requested` that `user` may have.
    pub fn grant(&self, user: Option<&str>, requested: &[ResourceActions]) -> Vec<ResourceActions> {
        let mut out: Vec<ResourceActions> = Vec::new();
        for r in requested {
            let actions: Vec<String> = match r.kind.as_str() {
                "repository" if gantry_oci::names::valid_repository(&r.name) => {
                    let allowed = self.repository_actions(user, &r.name);
                    let mut acts = Vec::new();
                    for a in &r.actions {
                        let wanted = parse_action(a).unwrap_or_default();
                        for w in wanted {
                            if allowed.contains(&w) && !acts.contains(&w.as_str().to_string()) {
                                acts.push(w.as_str().to_string());
                            }
                        }
                    }
                    acts
                }
                "registry"
                    if r.name == "catalog"
                        && r.actions.iter().any(|a| a == "*")
                        && self.allows(user, &Access::Catalog) =>
                {
                    vec!["*".to_string()]
                }
                _ => Vec::new(),
            };
            if actions.is_empty() {
                continue;
            }
            match out
                .iter_mut()
                .find(|o| o.kind == r.kind && o.name == r.name)
            {
                Some(o) => {
                    for a in actions {
                        if !o.actions.contains(&a) {
                            o.actions.push(a);
                        }
                    }
                }
                None => out.push(ResourceActions {
                    kind: r.kind.clone(),
                    name: r.name.clone(),
                    actions,
                }),
            }
        }
        out
    }
}

/// The report tokens and the stamp of the file they were read from.
type ReportTokensState = (Option<(SystemTime, u64)>, Arc<ReportTokens>);

struct UsersState {
    stamp: Option<(SystemTime, u64)>,
    users: Arc<Users>,
}

/// The authorizer for a configured `[auth]` section, and the token issuer.
pub struct TokenAuth {
    service: String,
    realm: Option<String>,
    tls: bool,
    ttl: Duration,
    key: TokenKey,
    policy: Policy,
    users_path: PathBuf,
    users: RwLock<UsersState>,
    report_tokens_path: PathBuf,
    report_tokens: RwLock<ReportTokensState>,
    basic_cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    /// Argon2 verifications that may run at once (each takes about 19 MiB and a core).
    verifiers: Arc<tokio::sync::Semaphore>,
    /// Argon2 working memory, one per verification running: kept for the next rather than
    /// left to the allocator, which would keep some per thread.
    verify_memory: Arc<Mutex<Vec<VerifyMemory>>>,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("service", &self.service)
            .field("realm", &self.realm)
            .field("users", &self.users_path)
            .finish_non_exhaustive()
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl TokenAuth {
    /// Default users file under the storage root.
    pub fn default_users_path(root: &Path) -> PathBuf {
        root.join("auth").join("users")
    }

    /// Default report tokens file under the storage root.
    pub fn default_report_tokens_path(root: &Path) -> PathBuf {
        root.join("auth").join("report-tokens")
    }

    /// Default token key file under the storage root.
    pub fn default_key_path(root: &Path) -> PathBuf {
        root.join("auth").join("token.key")
    }

    /// Sets up auth from `config`, with files defaulting under `root`; `tls` decides the
    /// scheme of the default realm. Creates the key file when missing.
    pub fn from_config(
        config: &AuthConfig,
        root: &Path,
        tls: bool,
    ) -> Result<TokenAuth, AuthSetupError> {
        let key_path = config
            .key_file
            .clone()
            .unwrap_or_else(|| Self::default_key_path(root));
        let key = TokenKey::load_or_create(&key_path).map_err(|source| AuthSetupError::Key {
            path: key_path.clone(),
            source,
        })?;
        let users_path = config
            .users
            .clone()
            .unwrap_or_else(|| Self::default_users_path(root));
        let users = Users::load(&users_path)?;
        let policy =
            Policy::new(&config.admins, &config.access)?.with_metrics_users(&config.metrics_users);
        let report_tokens_path = config
            .report_tokens
            .clone()
            .unwrap_or_else(|| Self::default_report_tokens_path(root));
        let report_tokens = ReportTokens::load(&report_tokens_path)?;
        Ok(TokenAuth {
            report_tokens: RwLock::new((file_stamp(&report_tokens_path), Arc::new(report_tokens))),
            report_tokens_path,
            service: config.service.clone(),
            realm: config.realm.clone(),
            tls,
            ttl: config.token_ttl,
            key,
            policy,
            users: RwLock::new(UsersState {
                stamp: file_stamp(&users_path),
                users: Arc::new(users),
            }),
            users_path,
            basic_cache: Mutex::new(HashMap::new()),
            verifiers: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            verify_memory: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The token service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The signing key (tests use it to make expired tokens).
    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// The access rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The users, reloaded when the file changed (a bad file keeps the previous users).
    fn users(&self) -> Arc<Users> {
        let stamp = file_stamp(&self.users_path);
        {
            let state = self.users.read().unwrap_or_else(|e| e.into_inner());
            if state.stamp == stamp {
                return state.users.clone();
            }
        }
        let mut state = self.users.write().unwrap_or_else(|e| e.into_inner());
        match Users::load(&self.users_path) {
            Ok(users) => {
                state.users = Arc::new(users);
                tracing::info!(path = %self.users_path.display(), "reloaded users");
            }
            Err(e) => tracing::warn!(error = %e, "keeping the previous users"),
        }
        state.stamp = stamp;
        self.basic_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        state.users.clone()
    }

    /// The name of the report token with this secret (the file is reread when it changed;
    /// a bad file keeps the previous tokens).
    pub fn report_token_name(&self, secret: &str) -> Option<String> {
        let stamp = file_stamp(&self.report_tokens_path);
        let current = {
            let state = self.report_tokens.read().unwrap_or_else(|e| e.into_inner());
            (state.0 == stamp).then(|| state.1.clone())
        };
        let tokens = match current {
            Some(t) => t,
            None => {
                let mut state = self
                    .report_tokens
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                match ReportTokens::load(&self.report_tokens_path) {
                    Ok(t) => state.1 = Arc::new(t),
                    Err(e) => tracing::warn!(error = %e, "keeping the previous report tokens"),
                }
                state.0 = stamp;
                state.1.clone()
            }
        };
        tokens.name_of(secret).map(str::to_string)
    }

    /// Who the request's credentials name, without checking any access: the user of a
    /// valid token or of valid Basic credentials; `None` without credentials. Used where
    /// the answer is filtered by what the caller may see (the fleet view).
    pub async fn identify(
        &self,
        request: &http::request::Parts,
    ) -> Result<Option<String>, AuthError> {
        let unauthorized = |error: Option<&str>| AuthError::Unauthorized {
            challenge: Some(self.challenge(request, &[], error)),
        };
        if let Some(token) = bearer_token(request) {
            return match self.key.verify(token, &self.service) {
                Ok(claims) if !claims.sub.is_empty() => Ok(Some(claims.sub)),
                Ok(_) => Ok(None),
                Err(_) => Err(unauthorized(Some("invalid_token"))),
            };
        }
        if request.headers.contains_key(header::AUTHORIZATION) {
            return match basic_credentials(request) {
                Some((user, password)) if self.check_password(&user, &password).await? => {
                    Ok(Some(user))
                }
                _ => Err(unauthorized(None)),
            };
        }
        Ok(None)
    }

    /// Whether `user`/`password` are valid. Argon2 runs on the blocking pool, at most one
    /// check per core at a time; a check that waits longer than [`VERIFY_QUEUE_TIMEOUT`] for
    /// its turn fails with [`AuthError::Busy`].
    pub async fn check_password(&self, user: &str, password: &str) -> Result<bool, AuthError> {
        let users = self.users();
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        let id: [u8; 32] = h.finalize().into();
        {
            let cache = self.basic_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((u, at)) = cache.get(&id) {
                if u == user && at.elapsed() < BASIC_CACHE_TTL {
                    return Ok(true);
                }
            }
        }
        let busy = AuthError::Busy {
            retry_after: VERIFY_RETRY,
        };
        let permit = match tokio::time::timeout(
            VERIFY_QUEUE_TIMEOUT,
            self.verifiers.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            // Timed out, or the semaphore is closed (never).
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(user = %user, "password check refused: too many in progress");
                return Err(busy);
            }
        };
        let (u, p) = (user.to_string(), password.to_string());
        // The permit is held until argon2 is done, even when the request is dropped.
        let pool = self.verify_memory.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let take = || pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut memory = take().unwrap_or_default();
            let ok = users.verify_with(&u, &p, &mut memory);
            // At most one memory per permit: the pool stays within the permits.
            pool.lock().unwrap_or_else(|e| e.into_inner()).push(memory);
            drop(permit);
            ok
        })
        .await
        .unwrap_or(false);
        if ok {
            let mut cache = self.basic_cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= BASIC_CACHE_MAX {
                cache.clear();
            }
            cache.insert(id, (user.to_string(), Instant::now()));
        }
        Ok(ok)
    }

    /// The token endpoint URL for a request.
    pub fn realm(&self, request: &http::request::Parts) -> String {
        if let Some(r) = &self.realm {
            return r.clone();
        }
        let host = request
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    })
            })
            .or_else(|| request.uri.authority().map(|a| a.as_str()))
            .unwrap_or("localhost");
        format!("{}://{host}/token", if self.tls { "https" } else { "http" })
    }

    /// The `WWW-Authenticate` value asking for a token for `access`.
    pub fn challenge(
        &self,
        request: &http::request::Parts,
        access: &[Access],
        error: Option<&str>,
    ) -> String {
        let mut c = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(request),
            self.service
        );
        let scopes: Vec<String> = challenge_scopes(access).iter().map(|s| s.scope()).collect();
        if !scopes.is_empty() {
            c.push_str(&format!(",scope=\"{}\"", scopes.join(" ")));
        }
        if let Some(e) = error {
            c.push_str(&format!(",error=\"{e}\""));
        }
        c
    }

    /// Issues a token for `user` with what `requested` and the rules have in common.
    pub fn issue(&self, user: Option<&str>, requested: &[ResourceActions]) -> TokenGrant {
        let access = self.policy.grant(user, requested);
        let (token, claims) = self.key.issue(&self.service, user, access, self.ttl);
        TokenGrant {
            token,
            expires_in: claims.exp.saturating_sub(claims.iat),
            issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(claims.iat),
            access: claims.access,
        }
    }

    /// Answers a `/token` request (GET or POST).
    pub async fn token_endpoint(&self, parts: &http::request::Parts, body: Body) -> Response {
        let mut params: Vec<(String, String)> = parts
            .uri
            .query()
            .map(|q| form_pairs(q.as_bytes()))
            .unwrap_or_default();
        let mut user_pass = basic_credentials(parts);
        if parts.method == http::Method::POST {
            let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "body too large");
            };
            let form = form_pairs(&bytes);
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            match get("grant_type").as_deref() {
                Some("password") => match (get("username"), get("password")) {
                    (Some(u), Some(p)) => user_pass = Some((u, p)),
                    _ => {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            "username and password are required",
                        )
                    }
                },
                Some(other) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "unsupported_grant_type",
                        &format!("grant_type {other:?} is not supported"),
                    )
                }
                None => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "grant_type is required",
                    )
                }
            }
            params.extend(form);
        } else if parts.method != http::Method::GET {
            return oauth_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "use GET or POST",
            );
        }
        if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
            if *service != self.service {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("unknown service {service:?}"),
                );
            }
        }
        let user = match &user_pass {
            Some((u, p)) => {
                let ok = match self.check_password(u, p).await {
                    Ok(ok) => ok,
                    Err(e) => return crate::api::auth_error(e).into_response(),
                };
                if !ok {
                    tracing::info!(user = %u, "token request with bad credentials");
                    let mut resp = oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_grant",
                        "invalid username or password",
                    );
                    if let Ok(v) =
                        http::HeaderValue::from_str(&format!("Basic realm=\"{}\"", self.service))
                    {
                        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                    }
                    return resp;
                }
                Some(u.as_str())
            }
            None => None,
        };
        let requested = parse_scopes(
            params
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.as_str()),
        );
        let grant = self.issue(user, &requested);
        tracing::debug!(
            user = user.unwrap_or("-"),
            granted = %grant.access.iter().map(ResourceActions::scope).collect::<Vec<_>>().join(" "),
            "issued token"
        );
        let body = json!({
            "token": grant.token,
            "access_token": grant.token,
            "expires_in": grant.expires_in,
            "issued_at": humantime::format_rfc3339_seconds(grant.issued_at).to_string(),
        });
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body.to_string(),
        )
            .into_response()
    }
}

/// A token and what it grants.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// The token.
    pub token: String,
    /// Seconds it is valid.
    pub expires_in: u64,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// What it grants.
    pub access: Vec<ResourceActions>,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "error": error,
            "error_description": description,
            "errors": [{ "code": if status == StatusCode::UNAUTHORIZED { "UNAUTHORIZED" } else { "UNSUPPORTED" }, "message": description }],
        })
        .to_string(),
    )
        .into_response()
}

/// `application/x-www-form-urlencoded` pairs (also the query string's).
fn form_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => match hex::decode(&s[i + 1..i + 3]) {
                    Ok(b) => {
                        out.push(b[0]);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    bytes
        .split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(i) => (decode(&p[..i]), decode(&p[i + 1..])),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// `user:password` from an `Authorization: Basic` header.
fn basic_credentials(parts: &http::request::Parts) -> Option<(String, String)> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The value of `Authorization: Bearer <value>`.
pub fn bearer_token(parts: &http::request::Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
}

#[async_trait]
impl Authorizer for TokenAuth {
    async fn authorize(
        &self,
        request: &http::request::Parts,
        access: &[Access],
    ) -> Result<Principal, AuthError> {
        let unauthorized = |error: Option<&str>| AuthError::Unauthorized {
            challenge: Some(self.challenge(request, access, error)),
        };
        if let Some(token) = bearer_token(request) {
            let claims = match self.key.verify(token, &self.service) {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(error = %e, "bearer token refused");
                    return Err(unauthorized(Some("invalid_token")));
                }
            };
            if access
                .iter()
                .all(|a| claims.access.iter().any(|g| g.grants(a)))
            {
                return Ok(Principal {
                    user: (!claims.sub.is_empty()).then_some(claims.sub),
                });
            }
            return Err(unauthorized(Some("insufficient_scope")));
        }
        if request.headers.contains_key(header::AUTHORIZATION) {
            let Some((user, password)) = basic_credentials(request) else {
                return Err(unauthorized(None));
            };
            if !self.check_password(&user, &password).await? {
                tracing::info!(user = %user, "bad credentials");
                return Err(unauthorized(None));
            }
            if access.iter().all(|a| self.policy.allows(Some(&user), a)) {
                return Ok(Principal { user: Some(user) });
            }
            return Err(AuthError::Denied);
        }
        if !access.is_empty() && access.iter().all(|a| self.policy.allows(None, a)) {
            return Ok(Principal::default());
        }
        Err(unauthorized(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repository: &str, users: &[&str], actions: &[&str], anon: bool) -> AccessRule {
        AccessRule {
            repository: repository.into(),
            users: users.iter().map(|s| s.to_string()).collect(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
            anonymous_pull: anon,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"game/*", b"game/server"));
        assert!(!glob_match(b"game/*", b"game/a/b"));
        assert!(glob_match(b"game/**", b"game/a/b"));
        assert!(glob_match(b"**", b"x/y"));
        assert!(glob_match(b"a*c", b"abbc"));
        assert!(!glob_match(b"game", b"game/x"));
        assert!(glob_match(b"game", b"game"));
        assert!(!glob_match(b"*", b"a/b"));
    }

    #[test]
    fn policy_adds_up_and_defaults_to_deny() {
        let p = Policy::new(
            &["root".into()],
            &[
                rule("game/*", &["ci"], &["pull", "push"], false),
                rule("game/*", &["ops"], &["*"], false),
                rule("public/**", &["*"], &["pull"], true),
            ],
        )
        .unwrap();
        let acts = |u: Option<&str>, r: &str| {
            let mut v: Vec<&str> = p
                .repository_actions(u, r)
                .into_iter()
                .map(Action::as_str)
                .collect();
            v.sort();
            v
        };
        assert_eq!(acts(Some("ci"), "game/a"), ["pull", "push"]);
        assert_eq!(
            acts(Some("ops"), "game/a"),
            ["delete", "pull", "push", "report"]
        );
        assert!(acts(Some("ci"), "other").is_empty());
        assert!(acts(None, "game/a").is_empty());
        assert_eq!(acts(None, "public/x/y"), ["pull"]);
        assert_eq!(
            acts(Some("root"), "any"),
            ["delete", "pull", "push", "report"]
        );
        assert!(p.allows(Some("root"), &Access::Catalog));
        assert!(!p.allows(Some("ci"), &Access::Catalog));
        let granted = p.grant(
            Some("ci"),
            &parse_scopes(["repository:game/a:pull,push,delete repository:other:pull"]),
        );
        assert_eq!(granted.len(), 1);
        assert_eq!(granted[0].scope(), "repository:game/a:pull,push");
        assert!(Policy::new(&[], &[rule("x", &["a"], &["write"], false)]).is_err());
        assert!(Policy::new(&[], &[rule("x", &[], &["pull"], false)]).is_err());
    }

    #[test]
    fn form_decoding() {
        let f = form_pairs(
            b"grant_type=password&username=al%69ce&scope=repository%3Aa%2Fb%3Apull+x&bad=%zz&e",
        );
        assert_eq!(f[0], ("grant_type".into(), "password".into()));
        assert_eq!(f[1].1, "alice");
        assert_eq!(f[2].1, "repository:a/b:pull x");
        assert_eq!(f[3].1, "%zz");
        assert_eq!(f[4], ("e".into(), String::new()));
    }
}
