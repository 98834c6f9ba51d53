//! Signed, expiring bearer tokens (a compact JWT, HS256) and Docker token scopes.
//!
//! A token is `base64url(header).base64url(claims).base64url(HMAC-SHA256(key, header.claims))`
//! with header `{"alg":"HS256","typ":"JWT"}` and claims `iss`, `sub` (the user, empty for
//! anonymous), `aud` (the service), `iat`, `nbf`, `exp`, `jti` and `access` (the granted
//! `[{"type":"repository","name":...,"actions":[...]}]`, as Docker's token spec has it).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::auth::{Access, Action};

/// Token issuer (`iss`).
pub const ISSUER: &str = "gantry";
/// Clock skew tolerated on `nbf`.
const LEEWAY_SECS: u64 = 30;
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// One resource and the actions granted or asked on it (a Docker scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Repository name, or `catalog`.
    pub name: String,
    /// `pull`, `push`, `delete`, or `*`.
    pub actions: Vec<String>,
}

impl ResourceActions {
    /// Whether this grants `access`.
    pub fn grants(&self, access: &Access) -> bool {
        match access {
            Access::Repository { name, action } => {
                self.kind == "repository"
                    && self.name == *name
                    && self.actions.iter().any(|a| a == action.as_str())
            }
            Access::Catalog => {
                self.kind == "registry"
                    && self.name == "catalog"
                    && self.actions.iter().any(|a| a == "*")
            }
        }
    }

    /// The scope string `type:name:a,b`.
    pub fn scope(&self) -> String {
        format!("{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// Parses one scope, `repository:<name>:<actions>` (the name may hold `:` only when it
/// carries a port, which repository names here cannot) or `registry:catalog:*`. Unknown
/// kinds and malformed scopes are `None` (and get nothing).
pub fn parse_scope(scope: &str) -> Option<ResourceActions> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    // `repository(plugin)` style class suffixes are accepted and dropped.
    let kind = kind.split('(').next().unwrap_or(kind);
    if name.is_empty() || !matches!(kind, "repository" | "registry") {
        return None;
    }
    let actions: Vec<String> = actions
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    Some(ResourceActions {
        kind: kind.to_string(),
        name: name.to_string(),
        actions,
    })
}

/// Parses a `scope` parameter: scopes separated by spaces (and several parameters).
pub fn parse_scopes<'a>(params: impl IntoIterator<Item = &'a str>) -> Vec<ResourceActions> {
    params
        .into_iter()
        .flat_map(|p| p.split(' '))
        .filter(|s| !s.is_empty())
        .filter_map(parse_scope)
        .collect()
}

/// The scopes a request needs, for a challenge: a push also asks for pull, as the Docker
/// registry does (clients keep one token for both).
pub fn challenge_scopes(access: &[Access]) -> Vec<ResourceActions> {
    let mut out: Vec<ResourceActions> = Vec::new();
    for a in access {
        let (kind, name, actions): (&str, &str, &[&str]) = match a {
            Access::Repository { name, action } => match action {
                Action::Pull => ("repository", name, &["pull"]),
                Action::Push => ("repository", name, &["pull", "push"]),
                Action::Delete => ("repository", name, &["delete"]),
                Action::Report => ("repository", name, &["report"]),
            },
            Access::Catalog => ("registry", "catalog", &["*"]),
        };
        match out.iter_mut().find(|r| r.kind == kind && r.name == name) {
            Some(r) => {
                for act in actions {
                    if !r.actions.iter().any(|x| x == act) {
                        r.actions.push(act.to_string());
                    }
                }
            }
            None => out.push(ResourceActions {
                kind: kind.to_string(),
                name: name.to_string(),
                actions: actions.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
    out
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// The user; empty for anonymous.
    pub sub: String,
    /// The service (audience).
    pub aud: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Expires at.
    pub exp: u64,
    /// Unique id.
    pub jti: String,
    /// What it grants.
    #[serde(default)]
    pub access: Vec<ResourceActions>,
}

/// Why a token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, bad JSON, or an algorithm other than HS256.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match.
    #[error("bad token signature")]
    BadSignature,
    /// Past `exp` (or before `nbf`).
    #[error("token expired")]
    Expired,
    /// Issued for another service or by another issuer.
    #[error("token for another service")]
    WrongAudience,
}

/// An HMAC-SHA256 signing key.
#[derive(Clone)]
pub struct TokenKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenKey {
    /// A key from bytes (at least 32 are advisable).
    pub fn new(key: Vec<u8>) -> Self {
        TokenKey { key }
    }

    /// 32 random bytes.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        OsRng.fill_bytes(&mut key);
        TokenKey { key }
    }

    /// Reads a hex key file, or creates one (mode 0600) with a random key when missing.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let key = hex::decode(text.trim()).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("token key {}: not hex: {e}", path.display()),
                    )
                })?;
                if key.len() < 16 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("token key {}: shorter than 16 bytes", path.display()),
                    ));
                }
                Ok(TokenKey { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = TokenKey::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                {
                    use std::io::Write;
                    let mut f = options.open(&tmp)?;
                    f.write_all(hex::encode(&key.key).as_bytes())?;
                    f.write_all(b"\n")?;
                    f.sync_all()?;
                }
                // Another replica may have created it meanwhile: keep theirs.
                match std::fs::hard_link(&tmp, path) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&tmp);
                        Ok(key)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let _ = std::fs::remove_file(&tmp);
                        TokenKey::load_or_create(path)
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// Signs claims into a token.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = mac.finalize().into_bytes();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Issues a token for `user` granting `access`, valid for `ttl`.
    pub fn issue(
        &self,
        service: &str,
        user: Option<&str>,
        access: Vec<ResourceActions>,
        ttl: Duration,
    ) -> (String, Claims) {
        let now = now_secs();
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: user.unwrap_or_default().to_string(),
            aud: service.to_string(),
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs().max(1),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
        };
        (self.sign(&claims), claims)
    }

    /// Checks a token's signature, issuer, audience and lifetime at time `now`.
    pub fn verify_at(&self, token: &str, service: &str, now: u64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed)?;
        let header_value: serde_json::Value =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        if header_value.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.iss != ISSUER || claims.aud != service {
            return Err(TokenError::WrongAudience);
        }
        if now >= claims.exp || claims.nbf > now + LEEWAY_SECS {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// [`TokenKey::verify_at`] now.
    pub fn verify(&self, token: &str, service: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, service, now_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(name: &str) -> ResourceActions {
        ResourceActions {
            kind: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into()],
        }
    }

    #[test]
    fn sign_and_verify() {
        let key = TokenKey::generate();
        let (token, claims) = key.issue(
            "svc",
            Some("alice"),
            vec![pull("a/b")],
            Duration::from_secs(60),
        );
        assert_eq!(key.verify(&token, "svc").unwrap(), claims);
        assert_eq!(key.verify(&token, "other"), Err(TokenError::WrongAudience));
        assert_eq!(
            key.verify_at(&token, "svc", claims.exp),
            Err(TokenError::Expired)
        );
        assert_eq!(
            TokenKey::generate().verify(&token, "svc"),
            Err(TokenError::BadSignature)
        );
        // Tampered claims keep the old signature.
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims.clone();
        forged.access = vec![pull("c")];
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(key.verify(&forged, "svc"), Err(TokenError::BadSignature));
        // alg=none is refused.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(key.verify(&none, "svc"), Err(TokenError::Malformed));
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(key.verify(bad, "svc").is_err());
        }
    }

    #[test]
    fn key_file_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/token.key");
        let a = TokenKey::load_or_create(&path).unwrap();
        let b = TokenKey::load_or_create(&path).unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a.key.len(), 32);
        std::fs::write(&path, "zz").unwrap();
        assert!(TokenKey::load_or_create(&path).is_err());
    }

    #[test]
    fn scopes() {
        let s = parse_scopes(["repository:a/b:pull,push registry:catalog:*", "bogus"]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].actions, ["pull", "push"]);
        assert_eq!(s[1].scope(), "registry:catalog:*");
        assert!(s[1].grants(&Access::Catalog));
        assert!(s[0].grants(&Access::Repository {
            name: "a/b".into(),
            action: Action::Push
        }));
        assert!(!s[0].grants(&Access::Repository {
            name: "a/b".into(),
            action: Action::Delete
        }));
        assert!(parse_scope("repository::pull").is_none());
        let c = challenge_scopes(&[Access::Repository {
            name: "x".into(),
            action: Action::Push,
        }]);
        assert_eq!(c[0].scope(), "repository:x:pull,push");
    }
}
