//! Registry authentication as registries implement it: the `WWW-Authenticate` challenge of
//! a 401 answer names either Basic or Bearer; for Bearer, a token for the wanted scopes is
//! obtained from the challenge's realm (with the user's credentials, an identity token used
//! as an OAuth2 refresh token, or anonymously) and cached until shortly before it expires.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::credentials::Credential;
use crate::error::{describe, ClientError, ClientResult};

/// Username that marks a [`Credential`] as an identity (refresh) token.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=…`.
    Basic,
    /// `Bearer realm=…,service=…,scope=…`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` to ask the token for.
        service: Option<String>,
        /// The scope the registry asked for, if it said.
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses one challenge header value; `None` for schemes other than Basic and Bearer.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = match header.split_once(char::is_whitespace) {
            Some((s, r)) => (s, r),
            None => (header, ""),
        };
        let params = parse_params(rest);
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let realm = params.get("realm")?.clone();
        Some(Challenge::Bearer {
            realm,
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `key=value` and `key="quoted, value"` pairs separated by commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

/// The scope string for a repository and actions, e.g. `repository:game:pull,push`.
pub fn repository_scope(repository: &str, actions: &[&str]) -> String {
    format!("repository:{repository}:{}", actions.join(","))
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

struct CachedToken {
    token: String,
    valid_until: Instant,
}

/// How requests to one registry are authorised; shared by every request of a client.
pub struct Authenticator {
    registry: String,
    credential: Option<Credential>,
    state: Mutex<AuthState>,
}

#[derive(Default)]
struct AuthState {
    /// The last challenge seen; decides how later requests authorise up front.
    challenge: Option<Challenge>,
    /// Bearer tokens by their sorted scope set.
    tokens: HashMap<String, CachedToken>,
    /// A refresh token handed out by the token endpoint (OAuth2 flow).
    refresh_token: Option<String>,
}

/// Tokens are renewed this long before the registry says they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Docker's default when a token answer names no lifetime.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;

impl Authenticator {
    /// An authenticator for `registry` (host, for messages) with optional credentials.
    pub fn new(registry: &str, credential: Option<Credential>) -> Self {
        Authenticator {
            registry: registry.to_string(),
            credential,
            state: Mutex::new(AuthState::default()),
        }
    }

    /// Whether credentials were given.
    pub fn has_credential(&self) -> bool {
        self.credential.is_some()
    }

    fn basic_header(&self) -> Option<String> {
        let c = self.credential.as_ref()?;
        if c.username == IDENTITY_TOKEN_USER {
            return None;
        }
        let raw = format!("{}:{}", c.username, c.secret);
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ))
    }

    /// The `Authorization` header to send up front for a request needing `scopes`, if
    /// the registry has challenged before and a usable token or credential is at hand.
    pub async fn header_for(&self, scopes: &[String]) -> Option<String> {
        let state = self.state.lock().await;
        match state.challenge.as_ref()? {
            Challenge::Basic => self.basic_header(),
            Challenge::Bearer { .. } => {
                let key = scope_key(scopes);
                let t = state.tokens.get(&key)?;
                (t.valid_until > Instant::now()).then(|| format!("Bearer {}", t.token))
            }
        }
    }

    /// Answers a 401: records the challenge and obtains what the next attempt needs.
    /// Returns the `Authorization` header to retry with, or an error when the registry
    /// offers no usable scheme or the token endpoint refuses.
    pub async fn respond(
        &self,
        http: &reqwest::Client,
        challenge_header: Option<&str>,
        scopes: &[String],
    ) -> ClientResult<Option<String>> {
        let challenge =
            challenge_header
                .and_then(Challenge::parse)
                .ok_or_else(|| ClientError::Auth {
                    registry: self.registry.clone(),
                    message: format!(
                        "401 with {} WWW-Authenticate challenge",
                        match challenge_header {
                            Some(h) => format!("an unsupported ({h:?})"),
                            None => "no".to_string(),
                        }
                    ),
                })?;
        let mut state = self.state.lock().await;
        state.challenge = Some(challenge.clone());
        match challenge {
            Challenge::Basic => Ok(self.basic_header()),
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let mut wanted: Vec<String> = scopes.to_vec();
                if let Some(s) = scope {
                    for part in s.split(' ').filter(|p| !p.is_empty()) {
                        if !wanted.iter().any(|w| w == part) {
                            wanted.push(part.to_string());
                        }
                    }
                }
                let (token, lifetime, refresh) = self
                    .fetch_token(
                        http,
                        &realm,
                        service.as_deref(),
                        &wanted,
                        state.refresh_token.clone(),
                    )
                    .await?;
                if refresh.is_some() {
                    state.refresh_token = refresh;
                }
                let valid_until = Instant::now()
                    + Duration::from_secs(lifetime)
                        .checked_sub(EXPIRY_MARGIN)
                        .unwrap_or(Duration::from_secs(lifetime / 2));
                let header = format!("Bearer {token}");
                state.tokens.insert(
                    scope_key(scopes),
                    CachedToken {
                        token: token.clone(),
                        valid_until,
                    },
                );
                Ok(Some(header))
            }
        }
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        refresh_token: Option<String>,
    ) -> ClientResult<(String, u64, Option<String>)> {
        let identity = self
            .credential
            .as_ref()
            .filter(|c| c.username == IDENTITY_TOKEN_USER)
            .map(|c| c.secret.clone())
            .or(refresh_token);
        let request = if let Some(refresh) = identity {
            // OAuth2 refresh-token grant, as Docker does with an identity token.
            let mut form: Vec<(&str, String)> = vec![
                ("grant_type", "refresh_token".into()),
                ("refresh_token", refresh),
                ("client_id", "gantry".into()),
            ];
            if let Some(s) = service {
                form.push(("service", s.to_string()));
            }
            if !scopes.is_empty() {
                form.push(("scope", scopes.join(" ")));
            }
            let body = form
                .iter()
                .map(|(k, v)| format!("{}={}", k, urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            http.post(realm)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
        } else {
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(s) = service {
                query.push(("service", s.to_string()));
            }
            for s in scopes {
                query.push(("scope", s.clone()));
            }
            let mut req = http.get(realm).query(&query);
            if let Some(h) = self.basic_header() {
                req = req.header("authorization", h);
            }
            req
        };
        let answer = request.send().await.map_err(|e| ClientError::Auth {
            registry: self.registry.clone(),
            message: format!("token endpoint {realm}: {}", describe(&e)),
        })?;
        let status = answer.status();
        if !status.is_success() {
            let body = answer.text().await.unwrap_or_default();
            let who = match &self.credential {
                Some(c) if c.username != IDENTITY_TOKEN_USER => {
                    format!("user {:?}", c.username)
                }
                Some(_) => "identity token".to_string(),
                None => "anonymous".to_string(),
            };
            return Err(ClientError::Auth {
                registry: self.registry.clone(),
                message: format!(
                    "token endpoint {realm} refused {who} for {}: {status} {}",
                    scopes.join(" "),
                    body.trim()
                ),
            });
        }
        let parsed: TokenAnswer = answer.json().await.map_err(|e| ClientError::Auth {
            registry: self.registry.clone(),
            message: format!(
                "token endpoint {realm}: unreadable answer: {}",
                describe(&e)
            ),
        })?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ClientError::Auth {
                registry: self.registry.clone(),
                message: format!("token endpoint {realm} answered without a token"),
            })?;
        Ok((
            token,
            parsed.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME).max(1),
            parsed.refresh_token,
        ))
    }
}

fn scope_key(scopes: &[String]) -> String {
    let mut s: Vec<&str> = scopes.iter().map(String::as_str).collect();
    s.sort_unstable();
    s.dedup();
    s.join(" ")
}

/// Percent-encodes a form value.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
        let c = Challenge::parse("bearer realm=http://127.0.0.1:5000/token").unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "http://127.0.0.1:5000/token".into(),
                service: None,
                scope: None
            }
        );
    }

    #[test]
    fn parses_basic_and_rejects_others() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse(""), None);
    }

    #[test]
    fn quoted_values_keep_commas_and_escapes() {
        let p = parse_params(r#"realm="a,b",scope="x \"y\"", other=plain"#);
        assert_eq!(p["realm"], "a,b");
        assert_eq!(p["scope"], r#"x "y""#);
        assert_eq!(p["other"], "plain");
    }

    #[test]
    fn scope_keys_ignore_order() {
        let a = scope_key(&["b".into(), "a".into()]);
        let b = scope_key(&["a".into(), "b".into(), "a".into()]);
        assert_eq!(a, b);
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
