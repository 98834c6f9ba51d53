//! Report tokens: long-lived secrets that game-server supervisors send as
//! `Authorization: Bearer <secret>` to report status events to the fleet view
//! ([`crate::fleet`]). A pod can hold a secret (a Kubernetes Secret in `GANTRY_REPORT_TOKEN`)
//! but cannot log in to `/token` and refresh short-lived tokens, so these exist beside the
//! users file.
//!
//! The file (default `<root>/auth/report-tokens`) has one `name:sha256:<hex>` line per token:
//! only the SHA-256 of the secret is stored. The secrets are 256 random bits, so a fast hash
//! is enough (argon2 protects guessable passwords; nothing here is guessable), and checking
//! one costs nothing per event. The name is the identity the access rules see: a token may
//! report for the repositories where a rule lists its name among `users` with the `report`
//! action. A report token authenticates nothing else (no pull, no push), whatever the rules
//! grant that name. Written by `gantry fleet token add`, reread by the registry on change.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use sha2::{Digest as _, Sha256};

use crate::users::{valid_user_name, UsersError};

/// Prefix of generated secrets (recognisable in logs and secret scanners).
pub const SECRET_PREFIX: &str = "gantry_rt_";

/// The hex SHA-256 of a secret, as stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Report tokens by name, and names by secret hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportTokens {
    by_name: BTreeMap<String, String>,
    by_hash: HashMap<String, String>,
}

impl ReportTokens {
    /// Parses the file's text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<ReportTokens, UsersError> {
        let mut out = ReportTokens::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: &str| UsersError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message: message.to_string(),
            };
            let (name, rest) = line
                .split_once(':')
                .ok_or_else(|| bad("expected name:sha256:<hex>"))?;
            let hash = rest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("expected name:sha256:<hex>"))?;
            if !valid_user_name(name) {
                return Err(bad("invalid token name"));
            }
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("the hash is not 64 hex digits"));
            }
            out.insert(name, &hash.to_ascii_lowercase());
        }
        Ok(out)
    }

    fn insert(&mut self, name: &str, hash: &str) {
        if let Some(old) = self.by_name.insert(name.to_string(), hash.to_string()) {
            self.by_hash.remove(&old);
        }
        self.by_hash.insert(hash.to_string(), name.to_string());
    }

    /// Reads the file; a missing file is no tokens.
    pub fn load(path: &Path) -> Result<ReportTokens, UsersError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReportTokens::default()),
            Err(source) => Err(UsersError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The name of the token whose secret this is.
    pub fn name_of(&self, secret: &str) -> Option<&str> {
        self.by_hash.get(&hash_secret(secret)).map(String::as_str)
    }

    /// Token names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    fn render(&self) -> String {
        let mut s = String::from("# gantry report tokens: name:sha256:<hex of the secret>\n");
        for (name, hash) in &self.by_name {
            s.push_str(&format!("{name}:sha256:{hash}\n"));
        }
        s
    }

    /// Writes the file atomically (temp file, fsync, rename), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = tmp_path(path);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(self.render().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Creates (or replaces) report token `name` in the file at `path` and returns its secret,
/// which is stored nowhere else: show it once.
pub fn add_report_token(path: &Path, name: &str) -> Result<String, UsersError> {
    if !valid_user_name(name) {
        return Err(UsersError::InvalidName(name.to_string()));
    }
    let mut tokens = ReportTokens::load(path)?;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(bytes));
    tokens.insert(name, &hash_secret(&secret));
    tokens.save(path)?;
    Ok(secret)
}

/// Removes report token `name`; whether it existed.
pub fn remove_report_token(path: &Path, name: &str) -> Result<bool, UsersError> {
    let mut tokens = ReportTokens::load(path)?;
    let Some(hash) = tokens.by_name.remove(name) else {
        return Ok(false);
    };
    tokens.by_hash.remove(&hash);
    tokens.save(path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_check_replace_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/report-tokens");
        let a = add_report_token(&path, "fleet-a").unwrap();
        let b = add_report_token(&path, "fleet-b").unwrap();
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        let t = ReportTokens::load(&path).unwrap();
        assert_eq!(t.name_of(&a), Some("fleet-a"));
        assert_eq!(t.name_of(&b), Some("fleet-b"));
        assert_eq!(t.name_of("gantry_rt_wrong"), None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&a[SECRET_PREFIX.len()..]),
            "secret stored in clear"
        );
        let a2 = add_report_token(&path, "fleet-a").unwrap();
        let t = ReportTokens::load(&path).unwrap();
        assert_eq!(t.name_of(&a), None, "the replaced secret still works");
        assert_eq!(t.name_of(&a2), Some("fleet-a"));
        assert!(remove_report_token(&path, "fleet-a").unwrap());
        assert!(!remove_report_token(&path, "fleet-a").unwrap());
        assert_eq!(
            ReportTokens::load(&path)
                .unwrap()
                .names()
                .collect::<Vec<_>>(),
            ["fleet-b"]
        );
        assert!(add_report_token(&path, "bad name").is_err());
        assert!(ReportTokens::parse("x:md5:00", &path).is_err());
    }
}
