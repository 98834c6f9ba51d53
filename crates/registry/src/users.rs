//! The users file: one `name:$argon2id$v=19$m=...,t=...,p=...$salt$hash` line per user
//! (PHC strings, as `htpasswd` keeps `name:hash` lines). Blank lines and lines starting with
//! `#` are ignored. Written by `gantry user add`, read by the registry, which reloads it when
//! it changes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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

/// The hash unknown users are checked against: of a random password, with the parameters
/// of [`hash_password`] (computed once).
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        let password = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_str().as_bytes(), &salt)
            .map(|h| h.to_string())
            // Hashing with default parameters does not fail; an empty string only makes
            // unknown users fast to refuse.
            .unwrap_or_default()
    })
}

/// Working memory of argon2, reused from one password check to the next.
#[derive(Default)]
pub struct VerifyMemory(Vec<Block>);

impl std::fmt::Debug for VerifyMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyMemory({} blocks)", self.0.len())
    }
}

/// Whether `password` hashes to the PHC string `hash`, working in `memory` (grown as the
/// hash's parameters need). The comparison is constant-time.
fn check_hash(hash: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..])
        .is_ok()
        // `Output` compares in constant time.
        && Output::new(&out).is_ok_and(|o| o == expected)
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
    /// An unknown user is checked against a dummy hash, so that the time taken does not
    /// tell which users exist.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.verify_with(user, password, &mut VerifyMemory::default())
    }

    /// [`Users::verify`] in `memory`, which is kept for the next check rather than
    /// allocated and freed each time (about 19 MiB with default parameters).
    pub fn verify_with(&self, user: &str, password: &str, memory: &mut VerifyMemory) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h.as_str(), true),
            None => (dummy_hash(), false),
        };
        check_hash(hash, password.as_bytes(), &mut memory.0) && known
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
