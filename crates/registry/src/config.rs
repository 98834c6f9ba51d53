//! Configuration of `gantry serve` (a TOML file; every field optional).
//!
//! ```toml
//! addr = "127.0.0.1:5000"
//! root = "/var/lib/gantry/registry"
//! delete_enabled = true
//! metrics_address = "10.0.0.5:9100"  # also serve /metrics here, plain HTTP, without auth
//!
//! [tls]                       # HTTPS when present
//! cert = "/etc/gantry/tls.crt"  # PEM chain
//! key = "/etc/gantry/tls.key"   # PEM private key (PKCS#8, PKCS#1 or SEC1)
//!
//! [limits]
//! max_manifest_bytes = 4194304
//! max_blob_bytes = 68719476736
//! max_ranges = 64               # ranges in one multi-range blob GET
//! requests_per_second = 0       # per client IP, token bucket; 0: no limit (default)
//! burst = 0                     # bucket size; 0: one second's worth
//! login_failures = 10           # failed logins per client IP within login_window,
//! login_window = "5m"           # then 429 until the window passes; 0: no limit
//! max_ranges_patch_bytes = 4294967296  # bytes one delta-push ranges PATCH may append
//!                               # (413 beyond); 0: only max_blob_bytes
//! client_egress_bytes_per_second = 0  # blob bytes sent to one client IP per second,
//! client_egress_burst_bytes = 0       # all its downloads together (paced, never refused);
//!                               # 0: no limit (default); burst 0: one second's worth
//!
//! [connections]
//! max_connections = 4096        # served at once; more wait in the listen backlog
//! header_timeout = "30s"        # to send request headers; idle keep-alive connections
//! idle_timeout = "60s"          # an upload body bringing nothing, an answer left unread
//!
//! [uploads]
//! max_age = "24h"               # sessions idle this long are removed
//! purge_interval = "15m"
//! max_sessions_per_repository = 128     # open sessions; a new upload POST beyond
//! max_sessions_per_client = 256         # gets 429 (client: the user, or the address
//! max_open_bytes_per_repository = 274877906944  # when anonymous); bytes held by open
//! max_open_bytes_per_client = 274877906944      # sessions likewise; 0: no limit
//!
//! [gc]
//! grace_period = "1h"           # blobs written or touched this recently are kept
//! interval = "6h"               # run online GC periodically (default: never)
//!
//! [storage]                     # default: kind = "fs", under `root`
//! kind = "s3"                   # an S3-compatible bucket, shared by replicas
//! bucket = "gantry"             # see [`crate::storage::S3Config`] for every field
//! endpoint = "http://127.0.0.1:9000"
//! allow_http = true
//!
//! [auth]                        # users, access rules, Docker token auth; without this
//!                               # section every request is allowed (loopback dev use)
//! users = "/etc/gantry/users"   # `name:$argon2id$...` lines (`gantry user add`);
//!                               # default <root>/auth/users
//! service = "gantry"            # token audience, the `service` of the challenge
//! realm = "https://registry.example.com/token"  # default: <scheme>://<Host>/token
//! token_ttl = "5m"
//! key_file = "/etc/gantry/token.key"  # HMAC key (hex); default <root>/auth/token.key,
//!                                     # generated on first start
//! admins = ["root"]             # every action on every repository, the catalog, /metrics
//! metrics_users = ["prometheus"]  # may read /metrics (which needs credentials with [auth])
//!
//! [[auth.access]]               # rules add up; nothing is allowed that no rule grants
//! repository = "game/*"         # `*`: any characters but `/`; `**`: any characters
//! users = ["ci"]                # `*` here: any authenticated user
//! actions = ["pull", "push"]
//!
//! [[auth.access]]
//! repository = "public/**"
//! anonymous_pull = true         # pull without credentials
//!
//! [[replication]]               # copy every tag pushed here to another registry
//! url = "https://eu.registry.example"   # http:// for a plain-HTTP registry
//! repositories = ["studio/**"]  # which repositories (globs as above); default all
//! username = "replicator"       # with password_file; else the credentials stored
//! password_file = "/etc/gantry/eu.password"  # for the host (`gantry login`), else none
//! ca_file = "/etc/gantry/eu-ca.pem"  # also trust this CA
//! interval = "1m"               # full comparison of tags this often (pushes go at once)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5000";
/// The manifest size the spec asks registries to accept, used as the default limit.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = gantry_oci::MAX_MANIFEST_BYTES as u64;

/// Everything `gantry serve` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Also serve `/metrics` (and nothing else) on this address, over plain HTTP and
    /// without authentication: for a Prometheus on a private network. `/metrics` on
    /// [`Config::addr`] keeps needing credentials when `[auth]` is configured.
    pub metrics_address: Option<SocketAddr>,
    /// Storage directory.
    pub root: PathBuf,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<TlsConfig>,
    /// Whether DELETE of manifests, tags and blobs is allowed.
    pub delete_enabled: bool,
    /// Size limits.
    pub limits: Limits,
    /// Upload sessions.
    pub uploads: UploadConfig,
    /// Garbage collection.
    pub gc: GcConfig,
    /// Where blobs and metadata live.
    pub storage: StorageConfig,
    /// Users, access rules and token auth; `None` allows every request.
    pub auth: Option<AuthConfig>,
    /// The fleet view (`/gantry/v1/fleet`, see [`crate::fleet`]).
    pub fleet: FleetConfig,
    /// What clients may hold: connections, header and idle timeouts.
    pub connections: ConnectionLimits,
    /// Registries every pushed tag is copied to (`[[replication]]`).
    pub replication: Vec<ReplicationConfig>,
}

/// A registry that `gantry serve` copies pushed images to (`[[replication]]`): every tag
/// of a matching repository is kept pointing at the same manifest there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// The remote registry: `https://host[:port]`, or `http://` for plain HTTP.
    pub url: String,
    /// Name in status and metrics; default: the URL's host.
    #[serde(default)]
    pub name: Option<String>,
    /// Repositories replicated (globs: `*` any characters but `/`, `**` any); default all.
    #[serde(default = "all_repositories")]
    pub repositories: Vec<String>,
    /// User name at the remote; its password is read from [`ReplicationConfig::password_file`].
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (its first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) trusted for the remote.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How often every matching tag is compared with the remote (pushes are replicated
    /// at once; this catches up what a restart or an outage left behind).
    #[serde(default = "default_replication_interval", with = "duration_str")]
    pub interval: Duration,
}

fn all_repositories() -> Vec<String> {
    vec!["**".to_string()]
}

fn default_replication_interval() -> Duration {
    Duration::from_secs(60)
}

impl ReplicationConfig {
    /// The remote's `host[:port]` and whether it speaks plain HTTP.
    pub fn host(&self) -> Result<(String, bool), String> {
        let bad = |why: &str| format!("[[replication]] url {:?}: {why}", self.url);
        let (plain, rest) = match (
            self.url.strip_prefix("https://"),
            self.url.strip_prefix("http://"),
        ) {
            (Some(r), _) => (false, r),
            (None, Some(r)) => (true, r),
            _ => return Err(bad("must start with https:// or http://")),
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || host.contains('?') || host.contains('#') {
            return Err(bad(
                "must be a registry's address alone (scheme, host, port)",
            ));
        }
        Ok((host.to_string(), plain))
    }

    /// The name shown in status and metrics.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self
                .host()
                .map(|(h, _)| h)
                .unwrap_or_else(|_| self.url.clone()),
        }
    }

    /// Whether `repository` is replicated.
    pub fn matches(&self, repository: &str) -> bool {
        self.repositories
            .iter()
            .any(|g| crate::token_auth::glob_match(g.as_bytes(), repository.as_bytes()))
    }
}

/// Limits on client connections (see `gantry_net::ServeLimits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (and finish a TLS handshake), and
    /// that an idle keep-alive connection is kept.
    #[serde(with = "duration_str")]
    pub header_timeout: Duration,
    /// Time an upload body may bring no byte, and an answer may go unread.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        let d = gantry_net::ServeLimits::default();
        ConnectionLimits {
            max_connections: d.max_connections,
            header_timeout: d.header_read_timeout,
            idle_timeout: d.idle_timeout,
        }
    }
}

impl ConnectionLimits {
    /// The limits the server loop applies.
    pub fn serve_limits(&self) -> gantry_net::ServeLimits {
        gantry_net::ServeLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// Fleet view settings (see [`crate::fleet`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// A server not heard from for this long is `lost` (supervisors re-send their state
    /// every `--report-interval`, 30 s by default).
    #[serde(with = "duration_str")]
    pub stale_after: Duration,
    /// Exited and lost servers are shown for this long after they were last heard from.
    #[serde(with = "duration_str")]
    pub retention: Duration,
    /// Most servers tracked; events of further servers are refused (503).
    pub max_servers: usize,
    /// Largest event POST body (one event or an array of them); larger ones get 413.
    pub max_body_bytes: usize,
    /// Keep the view in `<root>/fleet/state.json` across restarts.
    pub persist: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            stale_after: Duration::from_secs(120),
            retention: Duration::from_secs(15 * 60),
            max_servers: 10_000,
            max_body_bytes: 256 * 1024,
            persist: true,
        }
    }
}

/// Authentication and access control (see [`crate::token_auth`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The users file (`name:$argon2id$...` lines); default `<root>/auth/users`.
    pub users: Option<PathBuf>,
    /// The token service name (audience), sent as `service` in challenges.
    pub service: String,
    /// The token endpoint URL sent as `realm`; default `<scheme>://<Host header>/token`.
    pub realm: Option<String>,
    /// How long an issued token is valid.
    #[serde(with = "duration_str")]
    pub token_ttl: Duration,
    /// The HMAC-SHA256 token key (hex); default `<root>/auth/token.key`, generated when
    /// missing. Replicas sharing a store must share the key.
    pub key_file: Option<PathBuf>,
    /// Users allowed everything, including the catalog and `/metrics`.
    pub admins: Vec<String>,
    /// Users who may read `/metrics` besides the admins (a Prometheus scraper's account).
    /// With `[auth]`, `/metrics` needs the credentials of one of them or of an admin.
    pub metrics_users: Vec<String>,
    /// Access rules; they add up.
    pub access: Vec<AccessRule>,
    /// The report tokens file (`name:sha256:<hex>` lines, see
    /// [`crate::report_tokens`]); default `<root>/auth/report-tokens`.
    pub report_tokens: Option<PathBuf>,
}

/// Grants `actions` on the repositories matching `repository` to `users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// A repository name or pattern: `*` matches any characters except `/`, `**` any
    /// characters.
    pub repository: String,
    /// User names; `*` is any authenticated user.
    #[serde(default)]
    pub users: Vec<String>,
    /// `pull`, `push`, `delete`, `report` (or `*` for all of them).
    #[serde(default)]
    pub actions: Vec<String>,
    /// Anyone, even without credentials, may pull.
    #[serde(default)]
    pub anonymous_pull: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users: None,
            service: "gantry".to_string(),
            realm: None,
            token_ttl: Duration::from_secs(300),
            key_file: None,
            admins: Vec::new(),
            metrics_users: Vec::new(),
            access: Vec::new(),
            report_tokens: None,
        }
    }
}

/// Certificate and key files (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Size limits that keep a client from filling the disk or memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest manifest accepted (413 above).
    pub max_manifest_bytes: u64,
    /// Largest blob accepted (413 above).
    pub max_blob_bytes: u64,
    /// Most ranges asked for in one multi-range GET (more: the whole blob is sent);
    /// overlapping or adjacent ranges are served merged.
    pub max_ranges: usize,
    /// Requests per second allowed to one client IP (a token bucket); 0: no limit.
    pub requests_per_second: u32,
    /// Requests one client IP may make at once before the rate applies; 0: one second's
    /// worth (`requests_per_second`).
    pub burst: u32,
    /// Failed logins (bad Basic credentials at `/token` or on `/v2/`) one client IP may
    /// make within [`Limits::login_window`] before its logins are refused with 429 (logins
    /// in flight count as failures until they end); 0: no limit.
    pub login_failures: u32,
    /// The window over which failed logins are counted.
    #[serde(with = "duration_str")]
    pub login_window: Duration,
    /// Bytes one delta-push ranges `PATCH` may append to its session (the body is at most
    /// 1 MiB, but its ranges may name far more); a request asking for more is refused with
    /// 413 before anything is appended. 0: only [`Limits::max_blob_bytes`] applies.
    pub max_ranges_patch_bytes: u64,
    /// Blob body bytes per second sent to one client IP, all its downloads together (a
    /// token bucket; bodies over it are paced, never refused), so that a few clients
    /// downloading at link speed leave the server to the rest. 0: no limit.
    pub client_egress_bytes_per_second: u64,
    /// Bytes a client may receive at full speed before the rate applies; 0: one second's
    /// worth ([`Limits::client_egress_bytes_per_second`]).
    pub client_egress_burst_bytes: u64,
}

/// Upload session housekeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Sessions that received nothing for this long are removed.
    #[serde(with = "duration_str")]
    pub max_age: Duration,
    /// How often stale sessions are looked for.
    #[serde(with = "duration_str")]
    pub purge_interval: Duration,
    /// Open upload sessions one repository may have; a new upload `POST` beyond gets 429
    /// with `Retry-After`. A session stops counting when it is completed, cancelled, or idle
    /// for [`UploadConfig::max_age`]. 0: no limit. Counted per server process.
    pub max_sessions_per_repository: usize,
    /// Open upload sessions one client (the authenticated user, else the client address)
    /// may have; as [`UploadConfig::max_sessions_per_repository`].
    pub max_sessions_per_client: usize,
    /// Bytes the open upload sessions of one repository may hold: a new upload `POST` when
    /// they hold this much, and an append that would pass it, get 429. 0: no limit.
    pub max_open_bytes_per_repository: u64,
    /// Bytes the open upload sessions of one client may hold; as
    /// [`UploadConfig::max_open_bytes_per_repository`].
    pub max_open_bytes_per_client: u64,
}

/// Garbage collection settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Blobs written, linked or touched more recently than this are never collected, so a
    /// push that uploaded blobs but not yet its manifest keeps them.
    #[serde(with = "duration_str")]
    pub grace_period: Duration,
    /// Run garbage collection online at this interval; `None` runs it only on demand.
    #[serde(with = "opt_duration_str")]
    pub interval: Option<Duration>,
}

/// The storage backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StorageConfig {
    /// The filesystem under [`Config::root`].
    #[default]
    Fs,
    /// An S3-compatible bucket.
    S3(crate::storage::S3Config),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: DEFAULT_ADDR
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5000))),
            metrics_address: None,
            root: PathBuf::from("gantry-registry"),
            tls: None,
            delete_enabled: true,
            limits: Limits::default(),
            uploads: UploadConfig::default(),
            gc: GcConfig::default(),
            storage: StorageConfig::default(),
            auth: None,
            fleet: FleetConfig::default(),
            connections: ConnectionLimits::default(),
            replication: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_blob_bytes: 64 * 1024 * 1024 * 1024,
            max_ranges: 64,
            requests_per_second: 0,
            burst: 0,
            login_failures: 10,
            login_window: Duration::from_secs(300),
            // Well above a layer's worth of reused chunks in one request (Gantry's client
            // sends at most 1 GiB of ranges per request), far below the blob limit.
            max_ranges_patch_bytes: 4 << 30,
            client_egress_bytes_per_second: 0,
            client_egress_burst_bytes: 0,
        }
    }
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            max_age: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(15 * 60),
            // Room for many concurrent pushes and for sessions of failed pushes waiting to
            // expire; the bytes fit a few uploads of the largest blob (64 GiB) at once.
            max_sessions_per_repository: 128,
            max_sessions_per_client: 256,
            max_open_bytes_per_repository: 256 << 30,
            max_open_bytes_per_client: 256 << 30,
        }
    }
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            grace_period: Duration::from_secs(3600),
            interval: None,
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

impl Config {
    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML configuration text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = std::collections::HashSet::new();
        for r in &config.replication {
            r.host()?;
            if r.username.is_some() != r.password_file.is_some() {
                return Err(format!(
                    "[[replication]] {}: username and password_file go together",
                    r.url
                ));
            }
            if !names.insert(r.display_name()) {
                return Err(format!(
                    "[[replication]] {}: another entry has the name {:?} (set `name`)",
                    r.url,
                    r.display_name()
                ));
            }
        }
        Ok(config)
    }
}

mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

mod opt_duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let text = r#"
            addr = "0.0.0.0:5443"
            root = "/srv/registry"
            delete_enabled = false
            [tls]
            cert = "/c.pem"
            key = "/k.pem"
            [limits]
            max_manifest_bytes = 1000
            [uploads]
            max_age = "2h"
            [gc]
            grace_period = "10m"
            interval = "6h"
        "#;
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.addr.port(), 5443);
        assert_eq!(c.root, PathBuf::from("/srv/registry"));
        assert!(!c.delete_enabled);
        assert_eq!(c.tls.as_ref().unwrap().key, PathBuf::from("/k.pem"));
        assert_eq!(c.limits.max_manifest_bytes, 1000);
        assert_eq!(c.limits.max_ranges, 64, "defaults fill the rest");
        assert_eq!(c.limits.requests_per_second, 0, "no rate limit by default");
        assert_eq!(c.limits.login_failures, 10);
        assert_eq!(c.uploads.max_age, Duration::from_secs(7200));
        assert_eq!(c.uploads.purge_interval, Duration::from_secs(900));
        assert_eq!(c.gc.grace_period, Duration::from_secs(600));
        assert_eq!(c.gc.interval, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        let c = Config::from_toml(
            "[limits]\nrequests_per_second = 50\nburst = 200\nlogin_failures = 3\nlogin_window = \"10m\"",
        )
        .unwrap();
        assert_eq!(c.limits.requests_per_second, 50);
        assert_eq!(c.limits.burst, 200);
        assert_eq!(c.limits.login_failures, 3);
        assert_eq!(c.limits.login_window, Duration::from_secs(600));
        let d = Config::default();
        assert_eq!(d.limits.max_ranges_patch_bytes, 4 << 30);
        assert_eq!(d.limits.client_egress_bytes_per_second, 0);
        assert_eq!(d.uploads.max_sessions_per_repository, 128);
        assert_eq!(d.uploads.max_open_bytes_per_client, 256 << 30);
        let c = Config::from_toml(
            "[limits]\nmax_ranges_patch_bytes = 0\nclient_egress_bytes_per_second = 1000\n[uploads]\nmax_sessions_per_client = 5\n\
             max_open_bytes_per_repository = 1000",
        )
        .unwrap();
        assert_eq!(c.limits.max_ranges_patch_bytes, 0);
        assert_eq!(c.limits.client_egress_bytes_per_second, 1000);
        assert_eq!(c.uploads.max_sessions_per_client, 5);
        assert_eq!(c.uploads.max_sessions_per_repository, 128);
        assert_eq!(c.uploads.max_open_bytes_per_repository, 1000);
    }

    #[test]
    fn replication_entries_are_checked() {
        let c = Config::from_toml(
            "[[replication]]\nurl = \"https://eu.example:5000/\"\nrepositories = [\"studio/**\"]\n\
             [[replication]]\nurl = \"http://10.0.0.9:5000\"\nname = \"lab\"\ninterval = \"5s\"",
        )
        .unwrap();
        assert_eq!(c.replication.len(), 2);
        let eu = &c.replication[0];
        assert_eq!(eu.host().unwrap(), ("eu.example:5000".to_string(), false));
        assert_eq!(eu.display_name(), "eu.example:5000");
        assert!(eu.matches("studio/zad/server") && !eu.matches("other/x"));
        assert_eq!(eu.interval, Duration::from_secs(60));
        let lab = &c.replication[1];
        assert_eq!(lab.host().unwrap(), ("10.0.0.9:5000".to_string(), true));
        assert!(lab.matches("anything/at/all"));
        assert_eq!(lab.interval, Duration::from_secs(5));
        for (bad, says) in [
            ("url = \"eu.example\"", "https://"),
            ("url = \"https://eu.example/v2/x\"", "address alone"),
            ("url = \"https://a\"\nusername = \"u\"", "go together"),
            ("url = \"https://a\"\nbogus = 1", "unknown field"),
        ] {
            let e = Config::from_toml(&format!("[[replication]]\n{bad}")).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = Config::from_toml(
            "[[replication]]\nurl = \"https://a\"\n[[replication]]\nurl = \"http://a\"",
        )
        .unwrap_err();
        assert!(e.contains("another entry"), "{e}");
    }

    #[test]
    fn parses_auth_rules() {
        let text = r#"
            [auth]
            users = "/etc/gantry/users"
            admins = ["root"]
            token_ttl = "10m"
            [[auth.access]]
            repository = "game/*"
            users = ["ci"]
            actions = ["pull", "push"]
            [[auth.access]]
            repository = "public/**"
            anonymous_pull = true
        "#;
        let c = Config::from_toml(text).unwrap();
        let auth = c.auth.unwrap();
        assert_eq!(auth.service, "gantry");
        assert_eq!(auth.token_ttl, Duration::from_secs(600));
        assert_eq!(auth.access.len(), 2);
        assert!(auth.metrics_users.is_empty());
        let c = Config::from_toml("[auth]\nmetrics_users = [\"prom\"]").unwrap();
        assert_eq!(c.auth.unwrap().metrics_users, vec!["prom".to_string()]);
        assert!(auth.access[1].anonymous_pull);
        assert!(auth.access[1].users.is_empty());
        assert!(Config::from_toml("[auth]\nuser = \"x\"").is_err());
        assert!(Config::from_toml("[[auth.access]]\nusers = []").is_err());
    }

    #[test]
    fn parses_s3_storage() {
        let c = Config::from_toml(
            "[storage]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\n\
             allow_http = true\naccess_key_id = \"k\"\nsecret_access_key = \"s\"",
        )
        .unwrap();
        let StorageConfig::S3(s3) = &c.storage else {
            panic!("{:?}", c.storage)
        };
        assert_eq!(s3.bucket, "b");
        assert!(s3.allow_http);
        assert!(!format!("{s3:?}").contains("\"s\""), "secret not shown");
        let fs = Config::from_toml("[storage]\nkind = \"fs\"").unwrap();
        assert_eq!(fs.storage, StorageConfig::Fs);
        assert!(
            Config::from_toml("[storage]\nkind = \"s3\"").is_err(),
            "bucket needed"
        );
        assert!(Config::from_toml("[storage]\nkind = \"s3\"\nbucket = \"b\"\nbukket = 1").is_err());
    }

    #[test]
    fn rejects_unknown_fields_and_bad_durations() {
        assert!(Config::from_toml("adr = \"x\"").is_err());
        assert!(Config::from_toml("[uploads]\nmax_age = \"soon\"").is_err());
        let err = Config::from_file(Path::new("/nonexistent/gantry.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/gantry.toml"));
    }
}
