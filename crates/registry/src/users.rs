//! The users file: one `name:$argon2id$v=19$m=...,t=...,p=...$salt$hash` line per user
//! (PHC strings, as `htpasswd` keeps `name:hash` lines). Blank lines and lines starting with
//! `#` are ignored. Written by `gantry user add`, read by the registry, which reloads it when
//! it changes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// A users file that cannot be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// I/O on the file.
    #[error("users file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `name:$argon2...`.
    #[error("users file {path}, line {line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A user name that cannot be stored.
    #[error("invalid user name {0:?}: use letters, digits, `.`, `_`, `-` and `@` (1 to 128)")]
    InvalidName(String),
    /// An empty password.
    #[error("the password is empty")]
    EmptyPassword,
    /// Hashing failed.
    #[error("hashing the password: {0}")]
    Hash(String),
}

/// Whether `name` can be a user name (it goes into files, tokens and metric labels).
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Hashes a password with Argon2id (default parameters, random salt) into a PHC string.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    if password.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// Users and their password hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    hashes: BTreeMap<String, String>,
}

impl Users {
    /// Parses users file text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Users, UsersError> {
        let mut hashes = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: &str| UsersError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message: message.to_string(),
            };
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected name:hash"))?;
            if !valid_user_name(name) {
                return Err(err("invalid user name"));
            }
            let parsed = PasswordHash::new(hash).map_err(|_| err("not a PHC hash string"))?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err(err("not an argon2 hash"));
            }
            hashes.insert(name.to_string(), hash.to_string());
        }
        Ok(Users { hashes })
    }

    /// Reads a users file; a missing file is an empty set of users.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Users::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Users::default()),
            Err(source) => Err(UsersError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Whether `user` exists and `password` is theirs (constant-time comparison by argon2).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.hashes.get(user) else {
            return false;
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    }

    /// The user names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.hashes.keys().map(String::as_str)
    }

    /// Whether there is such a user.
    pub fn contains(&self, user: &str) -> bool {
        self.hashes.contains_key(user)
    }

    /// Sets (adds or replaces) a user's password hash.
    pub fn set_hash(&mut self, user: &str, hash: String) -> Result<(), UsersError> {
        if !valid_user_name(user) {
            return Err(UsersError::InvalidName(user.to_string()));
        }
        self.hashes.insert(user.to_string(), hash);
        Ok(())
    }

    /// Removes a user; `false` when there was none.
    pub fn remove(&mut self, user: &str) -> bool {
        self.hashes.remove(user).is_some()
    }

    /// The file text.
    pub fn to_text(&self) -> String {
        self.hashes
            .iter()
            .map(|(name, hash)| format!("{name}:{hash}\n"))
            .collect()
    }

    /// Writes the file atomically (temp file, fsync, rename), readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "users".into()),
            std::process::id()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp).map_err(io)?;
        f.write_all(self.to_text().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }
}

/// Adds `user` with `password` to the users file at `path` (creating it), or changes their
/// password. Returns whether the user existed.
pub fn add_user(path: &Path, user: &str, password: &str) -> Result<bool, UsersError> {
    if !valid_user_name(user) {
        return Err(UsersError::InvalidName(user.to_string()));
    }
    let mut users = Users::load(path)?;
    let existed = users.contains(user);
    users.set_hash(user, hash_password(password)?)?;
    users.save(path)?;
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verify_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/users");
        assert!(!add_user(&path, "alice", "s3cret").unwrap());
        assert!(add_user(&path, "alice", "n3w").unwrap());
        add_user(&path, "bob", "pw").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("alice:$argon2id$"), "{text}");
        let users = Users::load(&path).unwrap();
        assert!(users.verify("alice", "n3w"));
        assert!(!users.verify("alice", "s3cret"));
        assert!(users.verify("bob", "pw"));
        assert!(!users.verify("carol", "pw"));
        assert_eq!(users.names().collect::<Vec<_>>(), ["alice", "bob"]);
        assert!(matches!(
            add_user(&path, "a:b", "x"),
            Err(UsersError::InvalidName(_))
        ));
        assert!(matches!(
            add_user(&path, "a", ""),
            Err(UsersError::EmptyPassword)
        ));
        assert_eq!(
            Users::load(&dir.path().join("none")).unwrap(),
            Users::default()
        );
    }

    #[test]
    fn rejects_bad_lines() {
        let p = Path::new("users");
        assert!(Users::parse("# comment\n\n", p)
            .unwrap()
            .names()
            .next()
            .is_none());
        for bad in [
            "alice",
            "alice:plain",
            "bad name:$argon2id$x",
            "a:$2y$05$abc",
        ] {
            assert!(Users::parse(bad, p).is_err(), "{bad}");
        }
    }
}
