//! Registry credentials kept where the container ecosystem keeps them: Docker's client
//! configuration file (`config.json`), with its inline `auths`, its default credential store
//! (`credsStore`) and its per-registry credential helpers (`credHelpers`).
//!
//! Sharing the file means a `docker login` (or `skopeo login --authfile`) works for Gantry and
//! a `gantry login` works for them. Helpers follow the docker-credential-helpers protocol: the
//! program `docker-credential-<name>` is run with `get`, `store` or `erase` as its argument and
//! the server on stdin (a JSON object for `store`).
//!
//! Writes keep every key of the file Gantry does not own (unknown fields, other registries,
//! `proxies`, plugin settings) and their order, replace the file atomically and leave it
//! readable by its owner only. The API is synchronous: the async client calls it from
//! `spawn_blocking`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The `auths` and helper key Docker uses for Docker Hub.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// The username that marks a [`Credential`] as an identity token (Docker's convention).
pub const IDENTITY_TOKEN_USERNAME: &str = "<token>";

/// The message credential helpers print when they hold nothing for a server.
const NOT_FOUND_MESSAGE: &str = "credentials not found in native keychain";

/// Host names that all mean Docker Hub; they share one `auths` key.
const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// Prefix of credential helper programs.
const HELPER_PREFIX: &str = "docker-credential-";

/// Longest helper output quoted in an error message.
const MAX_MESSAGE_CHARS: usize = 2000;

/// A username and secret for one registry. An identity token (config.json `identitytoken`,
/// or a helper answering Username "<token>") is represented with username "<token>" and the
/// token as secret; the auth layer uses it as an OAuth2 refresh token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The account name, or [`IDENTITY_TOKEN_USERNAME`] for an identity token.
    pub username: String,
    /// The password, access token or identity token.
    pub secret: String,
}

impl Credential {
    /// A username and password (or access token used as a password).
    pub fn new(username: impl Into<String>, secret: impl Into<String>) -> Self {
        Credential {
            username: username.into(),
            secret: secret.into(),
        }
    }

    /// An identity token (an OAuth2 refresh token issued by the registry's token server).
    pub fn identity_token(token: impl Into<String>) -> Self {
        Credential::new(IDENTITY_TOKEN_USERNAME, token)
    }

    /// True when this is an identity token rather than a username and password.
    pub fn is_identity_token(&self) -> bool {
        self.username == IDENTITY_TOKEN_USERNAME
    }
}

/// Never prints the secret, so credentials can appear in logs and panics safely.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why credentials could not be read, stored or erased.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Neither `DOCKER_CONFIG` nor `HOME` says where the configuration lives.
    #[error("cannot locate Docker's config.json: neither DOCKER_CONFIG nor HOME is set")]
    NoConfigDir,
    /// The registry name has no host in it.
    #[error("invalid registry {registry:?} (Docker config {path}): expected host[:port]")]
    InvalidRegistry { registry: String, path: PathBuf },
    /// The configuration file exists but could not be read.
    #[error("cannot read Docker config {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// The configuration file is not valid JSON, or a known field has the wrong type.
    #[error("cannot parse Docker config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The configuration file is valid JSON but not a JSON object.
    #[error("invalid Docker config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// The stored `auth` field of a registry cannot be decoded.
    #[error("invalid credentials for {registry} (key {key:?}) in Docker config {path}: {reason}")]
    BadAuth {
        path: PathBuf,
        registry: String,
        key: String,
        reason: String,
    },
    /// The configuration file (or its directory) could not be written.
    #[error("cannot write Docker config {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// A `credsStore`/`credHelpers` value that cannot name a helper program.
    #[error(
        "invalid credential helper name {name:?} for {registry} in Docker config {path}: \
         it must be a non-empty name without '/'"
    )]
    BadHelperName {
        name: String,
        registry: String,
        path: PathBuf,
    },
    /// The helper program configured for a registry is not installed.
    #[error(
        "credential helper {program} (configured for {registry} in Docker config {config}) \
         was not found in {searched}"
    )]
    HelperNotFound {
        program: String,
        registry: String,
        config: PathBuf,
        searched: String,
    },
    /// The helper program could not be started or talked to.
    #[error("cannot run credential helper {program} ({path}) to {action} credentials for {registry}: {source}")]
    HelperSpawn {
        program: String,
        path: PathBuf,
        action: &'static str,
        registry: String,
        source: io::Error,
    },
    /// The helper exited unsuccessfully for a reason other than "not found".
    #[error("credential helper {program} failed to {action} credentials for {registry} ({status}): {message}")]
    HelperFailed {
        program: String,
        action: &'static str,
        registry: String,
        status: String,
        message: String,
    },
    /// The helper succeeded but its answer to `get` is not the expected JSON object.
    #[error("credential helper {program} gave an invalid answer to get credentials for {registry}: {source}")]
    HelperOutput {
        program: String,
        registry: String,
        source: serde_json::Error,
    },
}

type Result<T, E = CredentialsError> = std::result::Result<T, E>;

/// Docker's client configuration file.
///
/// Holds the whole document (so writes preserve what Gantry does not understand) plus a
/// typed view of the credential fields.
#[derive(Clone)]
pub struct DockerConfig {
    path: PathBuf,
    doc: Object,
    view: ConfigView,
    helper_dirs: Vec<PathBuf>,
}

/// The fields of `config.json` that concern credentials.
#[derive(Clone, Debug, Default, Deserialize)]
struct ConfigView {
    #[serde(default)]
    auths: Option<BTreeMap<String, Option<AuthEntry>>>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: Option<BTreeMap<String, Option<String>>>,
}

/// One `auths` entry as Docker writes it.
#[derive(Clone, Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl AuthEntry {
    /// True when the entry holds anything secret (a `{}` placeholder does not).
    fn holds_credentials(&self) -> bool {
        [
            &self.auth,
            &self.username,
            &self.password,
            &self.identitytoken,
        ]
        .iter()
        .any(|f| f.as_deref().is_some_and(|v| !v.is_empty()))
    }
}

/// What a helper receives on `store` and prints on `get`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HelperCredential {
    #[serde(rename = "ServerURL", default)]
    server_url: String,
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Shows where the file is and how it is configured, never a secret.
impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auths: Vec<&String> = self.view.auths.iter().flat_map(|a| a.keys()).collect();
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field("auths", &auths)
            .field("creds_store", &self.view.creds_store)
            .field("cred_helpers", &self.view.cred_helpers)
            .field("helper_dirs", &self.helper_dirs)
            .finish()
    }
}

impl DockerConfig {
    /// $DOCKER_CONFIG/config.json, else $HOME/.docker/config.json. A missing file is an empty config.
    pub fn default_path() -> Result<PathBuf, CredentialsError> {
        default_path_from(std::env::var_os("DOCKER_CONFIG"), std::env::var_os("HOME"))
    }

    /// Loads the file at [`DockerConfig::default_path`].
    pub fn load() -> Result<Self, CredentialsError> {
        Self::load_from(&Self::default_path()?)
    }

    /// Loads `path`; a missing or empty file is an empty configuration that `store` creates.
    pub fn load_from(path: &Path) -> Result<Self, CredentialsError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::from_bytes(path, &bytes, Vec::new())
    }

    /// Also looks for credential helper programs in `dir`, before the directories of `PATH`.
    /// Lets a caller (or a test) provide helpers without changing the process environment.
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.helper_dirs.push(dir.into());
        self
    }

    /// The file this configuration was loaded from and is written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credential helper `get`/`store`/`erase` use for `registry` (its `credHelpers`
    /// entry, else `credsStore`), or `None` when credentials live in the file itself.
    pub fn helper_for(&self, registry: &str) -> Option<&str> {
        let wanted = match_host(registry);
        let key = registry_key(registry);
        if let Some(helpers) = &self.view.cred_helpers {
            let exact = helpers.get(&key).and_then(|h| h.as_deref());
            let by_host = || {
                helpers
                    .iter()
                    .filter(|(k, _)| match_host(k) == wanted)
                    .find_map(|(_, h)| h.as_deref().filter(|h| !h.is_empty()))
            };
            if let Some(helper) = exact.filter(|h| !h.is_empty()).or_else(by_host) {
                return Some(helper);
            }
        }
        self.view.creds_store.as_deref().filter(|s| !s.is_empty())
    }

    /// Credentials for a registry host (e.g. "127.0.0.1:5000", "registry.example.com", "docker.io"): credHelpers[host] first, then credsStore, then auths (base64 `auth` "user:pass", or `username`/`password` fields, or `identitytoken`). None when nothing is stored (a helper answering "credentials not found in native keychain" → None, not an error).
    pub fn get(&self, registry: &str) -> Result<Option<Credential>, CredentialsError> {
        let key = self.checked_key(registry)?;
        if let Some(helper) = self.helper_for(registry) {
            if let Some(cred) = self.helper_get(helper, &key, registry)? {
                return Ok(Some(cred));
            }
        }
        self.auths_get(registry, &key)
    }

    /// Stores through the helper that `get` would ask (credHelpers[host] or credsStore), else into auths as base64 "user:pass" — writing the file atomically (temp file + rename in the same dir), mode 0600, creating the directory, and preserving every other key of the JSON (unknown fields, other auths, proxies, etc.) unchanged.
    ///
    /// Like Docker, a helper-backed login leaves an empty `auths` entry (`{}`) that records the
    /// login without a secret. Entries spelling the same host differently
    /// (`https://host/v1/`, `http://host`) are replaced by the one canonical key, so no stale
    /// secret survives. An identity token is written as `identitytoken`. The file is re-read
    /// first, so changes made by other programs since [`DockerConfig::load`] are kept.
    pub fn store(&mut self, registry: &str, cred: &Credential) -> Result<(), CredentialsError> {
        let key = self.checked_key(registry)?;
        let mut fresh = self.reloaded()?;
        let entry = match fresh.helper_for(registry).map(str::to_owned) {
            Some(helper) => {
                fresh.helper_store(&helper, &key, registry, cred)?;
                Object::default()
            }
            None => auth_entry_for(cred),
        };
        let mut doc = fresh.doc.clone();
        let auths = doc.object_mut("auths");
        let wanted = match_host(registry);
        auths.retain(|k, _| k == key || match_host(k) != wanted);
        auths.insert(key, Json::Object(entry));
        fresh.write(doc)?;
        *self = fresh;
        Ok(())
    }

    /// Removes (helper `erase` or the auths entry); Ok(false) when nothing was stored.
    ///
    /// Erases from the helper `get` would ask and removes every `auths` entry for the host
    /// (whatever its spelling); the file is only rewritten when an entry was removed.
    pub fn erase(&mut self, registry: &str) -> Result<bool, CredentialsError> {
        let key = self.checked_key(registry)?;
        let mut fresh = self.reloaded()?;
        let mut erased = match fresh.helper_for(registry).map(str::to_owned) {
            Some(helper) => fresh.helper_erase(&helper, &key, registry)?,
            None => false,
        };
        let wanted = match_host(registry);
        let mut doc = fresh.doc.clone();
        let mut removed_any = false;
        if let Some(Json::Object(auths)) = doc.get_mut("auths") {
            auths.retain(|k, _| {
                if match_host(k) == wanted {
                    removed_any = true;
                    false
                } else {
                    true
                }
            });
        }
        if removed_any {
            // Placeholders `{}` of a helper-backed login hold no secret: only entries with
            // credentials count as "something was stored".
            erased |= fresh
                .view
                .auths
                .iter()
                .flatten()
                .filter(|(k, _)| match_host(k) == wanted)
                .any(|(_, entry)| entry.as_ref().is_some_and(AuthEntry::holds_credentials));
            fresh.write(doc)?;
        }
        *self = fresh;
        Ok(erased)
    }

    /// Parses a document already read from `path`.
    fn from_bytes(path: &Path, bytes: &[u8], helper_dirs: Vec<PathBuf>) -> Result<Self> {
        let path = path.to_path_buf();
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // Docker treats an empty file as an empty configuration.
            return Ok(DockerConfig {
                path,
                doc: Object::default(),
                view: ConfigView::default(),
                helper_dirs,
            });
        }
        let doc: Json =
            serde_json::from_slice(bytes).map_err(|source| CredentialsError::Parse {
                path: path.clone(),
                source,
            })?;
        let Json::Object(doc) = doc else {
            return Err(CredentialsError::Invalid {
                path,
                reason: "the top level is not a JSON object".to_string(),
            });
        };
        let view: ConfigView =
            serde_json::from_slice(bytes).map_err(|source| CredentialsError::Parse {
                path: path.clone(),
                source,
            })?;
        Ok(DockerConfig {
            path,
            doc,
            view,
            helper_dirs,
        })
    }

    /// The file as it is on disk now, with this value's helper directories.
    fn reloaded(&self) -> Result<Self> {
        let mut fresh = Self::load_from(&self.path)?;
        fresh.helper_dirs = self.helper_dirs.clone();
        Ok(fresh)
    }

    fn checked_key(&self, registry: &str) -> Result<String> {
        if host_of(registry).is_empty() {
            return Err(CredentialsError::InvalidRegistry {
                registry: registry.to_string(),
                path: self.path.clone(),
            });
        }
        Ok(registry_key(registry))
    }

    /// Credentials stored inline: the canonical key first, then any spelling of the host.
    fn auths_get(&self, registry: &str, key: &str) -> Result<Option<Credential>> {
        let Some(auths) = &self.view.auths else {
            return Ok(None);
        };
        let wanted = match_host(registry);
        let exact = auths.get_key_value(key);
        let others = auths
            .iter()
            .filter(|(k, _)| k.as_str() != key && match_host(k) == wanted);
        for (k, entry) in exact.into_iter().chain(others) {
            let Some(entry) = entry else { continue };
            if let Some(cred) = decode_entry(&self.path, registry, k, entry)? {
                return Ok(Some(cred));
            }
        }
        Ok(None)
    }

    fn helper_get(&self, helper: &str, key: &str, registry: &str) -> Result<Option<Credential>> {
        let program = helper_program(helper);
        let Some(stdout) = self.run_helper(helper, "get", key.as_bytes(), registry)? else {
            return Ok(None);
        };
        let answer: HelperCredential =
            serde_json::from_slice(&stdout).map_err(|source| CredentialsError::HelperOutput {
                program,
                registry: registry.to_string(),
                source,
            })?;
        if answer.username.is_empty() && answer.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credential::new(answer.username, answer.secret)))
    }

    fn helper_store(
        &self,
        helper: &str,
        key: &str,
        registry: &str,
        cred: &Credential,
    ) -> Result<()> {
        let input = serde_json::to_vec(&HelperCredential {
            server_url: key.to_string(),
            username: cred.username.clone(),
            secret: cred.secret.clone(),
        })
        .map_err(|source| CredentialsError::HelperOutput {
            program: helper_program(helper),
            registry: registry.to_string(),
            source,
        })?;
        match self.run_helper(helper, "store", &input, registry)? {
            Some(_) => Ok(()),
            None => Err(CredentialsError::HelperFailed {
                program: helper_program(helper),
                action: "store",
                registry: registry.to_string(),
                status: "not found".to_string(),
                message: NOT_FOUND_MESSAGE.to_string(),
            }),
        }
    }

    fn helper_erase(&self, helper: &str, key: &str, registry: &str) -> Result<bool> {
        Ok(self
            .run_helper(helper, "erase", key.as_bytes(), registry)?
            .is_some())
    }

    /// Runs `docker-credential-<helper> <action>` with `input` on stdin; returns its stdout,
    /// or `None` when it answers "credentials not found".
    fn run_helper(
        &self,
        helper: &str,
        action: &'static str,
        input: &[u8],
        registry: &str,
    ) -> Result<Option<Vec<u8>>> {
        let program = helper_program(helper);
        if helper.is_empty() || helper.contains('/') || helper.contains('\0') {
            return Err(CredentialsError::BadHelperName {
                name: helper.to_string(),
                registry: registry.to_string(),
                path: self.path.clone(),
            });
        }
        let dirs = self.helper_search_dirs();
        let Some(exe) = dirs
            .iter()
            .map(|d| d.join(&program))
            .find(|p| is_executable(p))
        else {
            let searched = if dirs.is_empty() {
                "an empty PATH".to_string()
            } else {
                let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                format!("PATH ({})", list.join(":"))
            };
            return Err(CredentialsError::HelperNotFound {
                program,
                registry: registry.to_string(),
                config: self.path.clone(),
                searched,
            });
        };
        let spawn_error = |source| CredentialsError::HelperSpawn {
            program: program.clone(),
            path: exe.clone(),
            action,
            registry: registry.to_string(),
            source,
        };
        let mut child = Command::new(&exe)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        // Feed stdin from a thread so a helper that answers before reading cannot block us.
        let writer = child.stdin.take().map(|mut stdin| {
            let input = input.to_vec();
            std::thread::spawn(move || match stdin.write_all(&input) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e),
                _ => Ok(()),
            })
        });
        let output = child.wait_with_output().map_err(spawn_error)?;
        if let Some(writer) = writer {
            match writer.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(spawn_error(e)),
                Err(_) => return Err(spawn_error(io::Error::other("stdin writer panicked"))),
            }
        }
        if output.status.success() {
            return Ok(Some(output.stdout));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stdout.contains(NOT_FOUND_MESSAGE) || stderr.contains(NOT_FOUND_MESSAGE) {
            return Ok(None);
        }
        let message = match (stderr.trim(), stdout.trim()) {
            ("", "") => "no output".to_string(),
            ("", out) => out.to_string(),
            (err, _) => err.to_string(),
        };
        Err(CredentialsError::HelperFailed {
            program,
            action,
            registry: registry.to_string(),
            status: output.status.to_string(),
            message: truncate_chars(&message, MAX_MESSAGE_CHARS),
        })
    }

    /// The directories searched for helper programs: the configured ones, then `PATH`
    /// (read now, not at load time).
    fn helper_search_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.helper_dirs.clone();
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path).filter(|d| !d.as_os_str().is_empty()));
        }
        dirs
    }

    /// Serializes `doc` as Docker does (tab-indented) and replaces the file atomically.
    fn write(&mut self, doc: Object) -> Result<()> {
        let json = Json::Object(doc);
        let mut bytes = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut bytes, formatter);
        json.serialize(&mut ser)
            .map_err(|source| CredentialsError::Parse {
                path: self.path.clone(),
                source,
            })?;
        write_atomically(&self.path, &bytes)?;
        *self = Self::from_bytes(&self.path, &bytes, std::mem::take(&mut self.helper_dirs))?;
        Ok(())
    }
}

/// The key Docker uses for a registry host: "https://index.docker.io/v1/" for docker.io / index.docker.io / registry-1.docker.io, else the host[:port] itself.
///
/// A scheme or path in `registry` (`https://host/v2/`) is dropped, as Docker does.
pub fn registry_key(registry: &str) -> String {
    let host = host_of(registry);
    if is_docker_hub(host) {
        DOCKER_HUB_KEY.to_string()
    } else {
        host.to_string()
    }
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json` (empty values are unset).
fn default_path_from(docker_config: Option<OsString>, home: Option<OsString>) -> Result<PathBuf> {
    if let Some(dir) = docker_config.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("config.json"));
    }
    if let Some(home) = home.filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join(".docker").join("config.json"));
    }
    Err(CredentialsError::NoConfigDir)
}

/// The host[:port] of a registry or `auths` key: drops `http(s)://` and any path.
fn host_of(registry: &str) -> &str {
    let s = registry.trim();
    let s = strip_prefix_ignore_case(s, "https://")
        .or_else(|| strip_prefix_ignore_case(s, "http://"))
        .unwrap_or(s);
    s.split('/').next().unwrap_or_default()
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_HOSTS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(host))
}

/// The form two registry names are compared in: lower-case host[:port], Docker Hub's
/// aliases folded into one.
fn match_host(registry: &str) -> String {
    let host = host_of(registry);
    if is_docker_hub(host) {
        DOCKER_HUB_HOSTS[1].to_string()
    } else {
        host.to_ascii_lowercase()
    }
}

fn helper_program(helper: &str) -> String {
    format!("{HELPER_PREFIX}{helper}")
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

/// The credential an `auths` entry holds: `identitytoken`, else `auth`, else the
/// `username`/`password` fields; `None` for an entry without any (e.g. `{}`).
fn decode_entry(
    path: &Path,
    registry: &str,
    key: &str,
    entry: &AuthEntry,
) -> Result<Option<Credential>> {
    let bad = |reason: String| CredentialsError::BadAuth {
        path: path.to_path_buf(),
        registry: registry.to_string(),
        key: key.to_string(),
        reason,
    };
    if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::identity_token(token)));
    }
    if let Some(auth) = entry
        .auth
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let bytes = STANDARD
            .decode(auth)
            .or_else(|_| STANDARD_NO_PAD.decode(auth))
            .map_err(|e| bad(format!("`auth` is not base64: {e}")))?;
        let text =
            String::from_utf8(bytes).map_err(|_| bad("`auth` is not UTF-8 text".to_string()))?;
        let (user, secret) = text
            .split_once(':')
            .ok_or_else(|| bad("`auth` does not decode to \"username:password\"".to_string()))?;
        if user.is_empty() && secret.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Credential::new(user, secret)));
    }
    let user = entry.username.as_deref().unwrap_or_default();
    let secret = entry.password.as_deref().unwrap_or_default();
    if user.is_empty() && secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credential::new(user, secret)))
}

/// The `auths` entry Docker writes for a credential kept in the file.
fn auth_entry_for(cred: &Credential) -> Object {
    let mut entry = Object::default();
    if cred.is_identity_token() {
        entry.insert(
            "identitytoken".to_string(),
            Json::String(cred.secret.clone()),
        );
    } else {
        let pair = format!("{}:{}", cred.username, cred.secret);
        entry.insert("auth".to_string(), Json::String(STANDARD.encode(pair)));
    }
    entry
}

/// Writes `bytes` to a temporary file next to `path` (mode 0600) and renames it over `path`
/// (or over the file `path` links to), creating the directory (mode 0700) when missing.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = resolve_symlinks(path);
    let write_error = |source| CredentialsError::Write {
        path: target.clone(),
        source,
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(write_error)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".config.json.")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(write_error)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(write_error)?;
    tmp.write_all(bytes).map_err(write_error)?;
    tmp.as_file().sync_all().map_err(write_error)?;
    tmp.persist(&target).map_err(|e| write_error(e.error))?;
    // Make the rename itself durable; not every filesystem supports syncing a directory.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Follows `path` while it is a symbolic link (as Docker does, so a linked config stays linked).
fn resolve_symlinks(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        let is_link = fs::symlink_metadata(&current)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if !is_link {
            break;
        }
        let Ok(target) = fs::read_link(&current) else {
            break;
        };
        current = match current.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
    }
    current
}

/// A JSON value that keeps the order of object keys, so rewriting `config.json` changes
/// only what Gantry changed.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Object),
}

/// A JSON object as an ordered list of unique keys.
#[derive(Clone, Debug, Default, PartialEq)]
struct Object(Vec<(String, Json)>);

impl Object {
    fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Replaces the value of `key` in place, or appends it.
    fn insert(&mut self, key: String, value: Json) {
        match self.get_mut(&key) {
            Some(slot) => *slot = value,
            None => self.0.push((key, value)),
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&str, &Json) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
    }

    /// The object under `key`, made one if it is missing or `null` (a missing key is added
    /// first, where Docker writes `auths`).
    fn object_mut(&mut self, key: &str) -> &mut Object {
        let index = match self.0.iter().position(|(k, _)| k == key) {
            Some(index) => index,
            None => {
                self.0.insert(0, (key.to_string(), Json::Null));
                0
            }
        };
        let slot = &mut self.0[index].1;
        if !matches!(slot, Json::Object(_)) {
            *slot = Json::Object(Object::default());
        }
        let Json::Object(obj) = slot else {
            unreachable!("the slot was just made an object")
        };
        obj
    }
}

impl Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(obj) => {
                let mut map = s.serialize_map(Some(obj.0.len()))?;
                for (k, v) in &obj.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Json::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("a non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut obj = Object::default();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            // A repeated key keeps its first position and its last value, as Go's decoder.
            obj.insert(k, v);
        }
        Ok(Json::Object(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Object {
        match serde_json::from_str::<Json>(text).expect("valid JSON") {
            Json::Object(o) => o,
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn registry_key_maps_docker_hub_aliases_and_strips_scheme_and_path() {
        for hub in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "Docker.IO",
            "https://index.docker.io/v1/",
            "https://registry-1.docker.io/v2/",
        ] {
            assert_eq!(registry_key(hub), DOCKER_HUB_KEY, "{hub}");
        }
        assert_eq!(registry_key("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(registry_key("registry.example.com"), "registry.example.com");
        assert_eq!(
            registry_key("https://registry.example.com/v1/"),
            "registry.example.com"
        );
        assert_eq!(registry_key("HTTP://localhost:5000/v2/"), "localhost:5000");
        assert_eq!(registry_key(" ghcr.io "), "ghcr.io");
        assert_eq!(registry_key("quay.io/org/repo"), "quay.io");
    }

    #[test]
    fn match_host_normalizes_every_spelling_docker_accepts() {
        for key in [
            "registry.example.com:5000",
            "https://registry.example.com:5000",
            "http://registry.example.com:5000",
            "https://registry.example.com:5000/v1/",
            "registry.example.com:5000/v2/",
            "REGISTRY.example.com:5000",
        ] {
            assert_eq!(match_host(key), "registry.example.com:5000", "{key}");
        }
        // A different port is a different registry.
        assert_ne!(
            match_host("registry.example.com"),
            match_host("registry.example.com:5000")
        );
        assert_eq!(match_host("docker.io"), match_host(DOCKER_HUB_KEY));
    }

    #[test]
    fn default_path_prefers_docker_config_then_home() {
        let p = default_path_from(Some("/cfg".into()), Some("/home/u".into())).unwrap();
        assert_eq!(p, Path::new("/cfg/config.json"));
        let p = default_path_from(Some("".into()), Some("/home/u".into())).unwrap();
        assert_eq!(p, Path::new("/home/u/.docker/config.json"));
        let p = default_path_from(None, Some("/home/u".into())).unwrap();
        assert_eq!(p, Path::new("/home/u/.docker/config.json"));
        assert!(matches!(
            default_path_from(None, None),
            Err(CredentialsError::NoConfigDir)
        ));
    }

    #[test]
    fn decode_entry_handles_every_inline_form() {
        let path = Path::new("/c/config.json");
        let entry = |json: &str| serde_json::from_str::<AuthEntry>(json).unwrap();
        let get = |json: &str| decode_entry(path, "r", "r", &entry(json));
        // "alice:pa:ss" — only the first colon separates the username.
        assert_eq!(
            get(r#"{"auth":"YWxpY2U6cGE6c3M="}"#).unwrap(),
            Some(Credential::new("alice", "pa:ss"))
        );
        // Unpadded base64 as some tools write it.
        assert_eq!(
            get(r#"{"auth":"YWxpY2U6cGE6c3M"}"#).unwrap(),
            Some(Credential::new("alice", "pa:ss"))
        );
        assert_eq!(
            get(r#"{"username":"bob","password":"pw"}"#).unwrap(),
            Some(Credential::new("bob", "pw"))
        );
        // An identity token wins over a username, as in Docker's registry client.
        assert_eq!(
            get(r#"{"auth":"Ym9iOg==","identitytoken":"tok"}"#).unwrap(),
            Some(Credential::identity_token("tok"))
        );
        assert_eq!(get("{}").unwrap(), None);
        assert_eq!(get(r#"{"auth":""}"#).unwrap(), None);
        let err = get(r#"{"auth":"not base64!"}"#).unwrap_err().to_string();
        assert!(
            err.contains("/c/config.json") && err.contains("base64"),
            "{err}"
        );
        let err = get(r#"{"auth":"bm9jb2xvbg=="}"#).unwrap_err().to_string();
        assert!(err.contains("username:password"), "{err}");
    }

    #[test]
    fn json_round_trip_keeps_key_order_and_values() {
        let text = r#"{"z":1,"a":{"y":[1,2.5,-3,"s",null,true],"b":{}},"m":"x"}"#;
        let obj = parse(text);
        let keys: Vec<&str> = obj.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "a", "m"]);
        assert_eq!(serde_json::to_string(&Json::Object(obj)).unwrap(), text);
        // A repeated key keeps one entry.
        let obj = parse(r#"{"a":1,"b":2,"a":3}"#);
        assert_eq!(
            serde_json::to_string(&Json::Object(obj)).unwrap(),
            r#"{"a":3,"b":2}"#
        );
    }

    #[test]
    fn credential_debug_hides_the_secret() {
        let shown = format!("{:?}", Credential::new("alice", "hunter2"));
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn invalid_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, "{not json").unwrap();
        let err = DockerConfig::load_from(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        fs::write(&path, "[]").unwrap();
        let err = DockerConfig::load_from(&path).unwrap_err().to_string();
        assert!(err.contains("not a JSON object"), "{err}");
        fs::write(&path, r#"{"auths": {"h": {"auth": 5}}}"#).unwrap();
        let err = DockerConfig::load_from(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        fs::write(&path, "  \n").unwrap();
        let cfg = DockerConfig::load_from(&path).unwrap();
        assert_eq!(cfg.get("h").unwrap(), None);
    }

    #[test]
    fn empty_registry_is_rejected_with_the_config_path() {
        let cfg = DockerConfig::load_from(Path::new("/nonexistent/config.json")).unwrap();
        let err = cfg.get("https:///v2/").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/config.json"), "{err}");
    }

    #[test]
    fn bad_helper_names_are_refused_before_running_anything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, r#"{"credsStore": "../../bin/sh"}"#).unwrap();
        let cfg = DockerConfig::load_from(&path).unwrap();
        let err = cfg.get("r.example.com").unwrap_err();
        assert!(
            matches!(err, CredentialsError::BadHelperName { .. }),
            "{err}"
        );
    }
}
