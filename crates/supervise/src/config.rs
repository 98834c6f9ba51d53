//! What the supervisor does: [`Config`] and the parsers of its option values.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Default EC2 instance metadata service address.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";
/// Default port of the Agones SDK's HTTP API (`AGONES_SDK_HTTP_PORT` overrides it).
pub const DEFAULT_AGONES_HTTP_PORT: u16 = 9358;

/// Everything `gantry supervise` was asked to do. Fields that fall back to the environment
/// say so; [`Config::default`] gives the documented defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The game's command and arguments; `${<port_env>}` in any of them becomes the port.
    pub command: Vec<String>,
    /// How the game port is chosen.
    pub port: PortSpec,
    /// Transport of the game port: what a free port is bound with, the default probe.
    pub protocol: Protocol,
    /// Name of the environment variable (and `${NAME}` placeholder) carrying the port.
    pub port_env: String,
    /// Readiness probe; `None` means the probe matching [`Config::protocol`].
    pub health: Option<HealthCheck>,
    /// Host the TCP/UDP probes connect to.
    pub health_host: String,
    /// Time between probes.
    pub health_interval: Duration,
    /// Time one probe may take.
    pub health_timeout: Duration,
    /// Consecutive failures, after `ready`, that make the server `unhealthy`.
    pub health_failures: u32,
    /// Time between forwarding SIGTERM/SIGINT and SIGKILL of the game's process group.
    pub grace_period: Duration,
    /// Write events as JSON lines on stdout.
    pub stdout_events: bool,
    /// HTTP endpoints each event is POSTed to (JSON body).
    pub report_urls: Vec<String>,
    /// Bearer token for the report endpoints; `None` reads `GANTRY_REPORT_TOKEN`.
    pub report_token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored); when set, it wins over
    /// `report_token` and `GANTRY_REPORT_TOKEN`.
    pub report_token_file: Option<PathBuf>,
    /// Events buffered per endpoint while it is slow or down; more are dropped.
    pub report_queue: usize,
    /// Time given to the sinks to deliver the last events once the game exited.
    pub report_flush_timeout: Duration,
    /// HTTP sinks re-send the current state after this long without an event (a heartbeat,
    /// so a fleet view notices a server that went silent); zero: never.
    pub report_interval: Duration,
    /// Talk to the Agones SDK. It is also used when `AGONES_SDK_HTTP_PORT` is set or
    /// [`Config::agones_url`] is given.
    pub agones: bool,
    /// Base URL of the Agones SDK HTTP API; `None`: `http://localhost:$AGONES_SDK_HTTP_PORT`
    /// (9358 when unset).
    pub agones_url: Option<String>,
    /// Which of the GameServer's ports is the game port (by name); `None`: the first.
    pub agones_port_name: Option<String>,
    /// Under Agones, the port the game listens on: the GameServer port's `containerPort`
    /// (`Dynamic` and `Static` policies map the assigned host port to it). `None`: the game
    /// listens on the assigned port itself (`Passthrough`). The assigned port is reported as
    /// `public_port` either way.
    pub container_port: Option<u16>,
    /// Interval of Agones health pings while the game is healthy.
    pub agones_health_interval: Duration,
    /// How long to wait for the Agones SDK (its sidecar may start after the game).
    pub agones_wait: Duration,
    /// Base URL of the instance metadata service; `None` skips it.
    pub metadata_url: Option<String>,
    /// Total time budget of the metadata lookup.
    pub metadata_timeout: Duration,
    /// Region override; else instance metadata, else `AWS_REGION` / `AWS_DEFAULT_REGION`.
    pub region: Option<String>,
    /// Public hostname override; else Agones' address, instance metadata, the hostname.
    pub public_hostname: Option<String>,
    /// Name of the environment variable holding the running image's digest.
    pub image_digest_env: String,
    /// Name of the environment variable holding the image reference as deployed.
    pub image_env: String,
    /// Node name; `None` reads `NODE_NAME`.
    pub node_name: Option<String>,
    /// The `type` field of events (the original sample's wrapper used `gs`).
    pub server_type: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            command: Vec::new(),
            port: PortSpec::Auto,
            protocol: Protocol::Udp,
            port_env: "SERVER_PORT".into(),
            health: None,
            health_host: "127.0.0.1".into(),
            health_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(2),
            health_failures: 3,
            grace_period: Duration::from_secs(30),
            stdout_events: true,
            report_urls: Vec::new(),
            report_token: None,
            report_token_file: None,
            report_queue: 256,
            report_flush_timeout: Duration::from_secs(2),
            report_interval: Duration::from_secs(30),
            agones: false,
            agones_url: None,
            agones_port_name: None,
            container_port: None,
            agones_health_interval: Duration::from_secs(2),
            agones_wait: Duration::from_secs(30),
            metadata_url: Some(DEFAULT_METADATA_URL.into()),
            metadata_timeout: Duration::from_millis(300),
            region: None,
            public_hostname: None,
            image_digest_env: "GANTRY_IMAGE_DIGEST".into(),
            image_env: "GANTRY_IMAGE".into(),
            node_name: None,
            server_type: "gs".into(),
        }
    }
}

impl Config {
    /// The probe in effect: the configured one, else the one matching the protocol.
    pub fn effective_health(&self) -> HealthCheck {
        self.health.clone().unwrap_or(match self.protocol {
            Protocol::Tcp => HealthCheck::Tcp,
            Protocol::Udp => HealthCheck::Udp,
        })
    }

    /// The Agones SDK base URL when Agones is in use (flag, URL or `AGONES_SDK_HTTP_PORT`).
    pub fn agones_base_url(&self) -> Option<String> {
        if let Some(url) = &self.agones_url {
            return Some(url.trim_end_matches('/').to_string());
        }
        let env_port = std::env::var("AGONES_SDK_HTTP_PORT")
            .ok()
            .filter(|p| !p.trim().is_empty());
        match env_port {
            Some(port) => Some(format!("http://localhost:{}", port.trim())),
            None if self.agones => Some(format!("http://localhost:{DEFAULT_AGONES_HTTP_PORT}")),
            None => None,
        }
    }
}

/// How the game port is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortSpec {
    /// Agones' port when Agones is in use, else a free port (`auto`, the default).
    Auto,
    /// A free port: bind port 0 (TCP or UDP), read the port, release it (`0`, `free`).
    Free,
    /// The port Agones assigned (`agones`).
    Agones,
    /// This port.
    Fixed(u16),
}

impl FromStr for PortSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "auto" => Ok(PortSpec::Auto),
            "0" | "free" => Ok(PortSpec::Free),
            "agones" => Ok(PortSpec::Agones),
            n => n
                .parse::<u16>()
                .map(PortSpec::Fixed)
                .map_err(|e| Error::Invalid {
                    what: "port",
                    input: s.into(),
                    reason: format!("{e}; expected 1-65535, 0, free, auto or agones"),
                }),
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Auto => f.write_str("auto"),
            PortSpec::Free => f.write_str("free"),
            PortSpec::Agones => f.write_str("agones"),
            PortSpec::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Transport of the game port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP (most game servers, and Agones' default).
    Udp,
}

impl FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(Error::Invalid {
                what: "protocol",
                input: s.into(),
                reason: "expected tcp or udp".into(),
            }),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// Readiness and liveness probe of the game.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// A TCP connection to the port succeeds.
    Tcp,
    /// A datagram to the port is not refused (ICMP port unreachable) or gets an answer.
    Udp,
    /// `sh -c <command>` exits 0 (the port is in its environment).
    Cmd(String),
    /// No probe: `ready` as soon as the game started.
    None,
}

impl FromStr for HealthCheck {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(cmd) = s.strip_prefix("cmd:") {
            if cmd.trim().is_empty() {
                return Err(Error::Invalid {
                    what: "health check",
                    input: s.into(),
                    reason: "empty command after `cmd:`".into(),
                });
            }
            return Ok(HealthCheck::Cmd(cmd.to_string()));
        }
        match s.trim() {
            "tcp" => Ok(HealthCheck::Tcp),
            "udp" => Ok(HealthCheck::Udp),
            "none" => Ok(HealthCheck::None),
            _ => Err(Error::Invalid {
                what: "health check",
                input: s.into(),
                reason: "expected tcp, udp, none or cmd:<shell command>".into(),
            }),
        }
    }
}

/// Parses a duration: `30s`, `500ms`, `1m 30s` (humantime), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, Error> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(t).map_err(|e| Error::Invalid {
        what: "duration",
        input: s.into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse() {
        assert_eq!("auto".parse::<PortSpec>().unwrap(), PortSpec::Auto);
        assert_eq!("0".parse::<PortSpec>().unwrap(), PortSpec::Free);
        assert_eq!("free".parse::<PortSpec>().unwrap(), PortSpec::Free);
        assert_eq!("agones".parse::<PortSpec>().unwrap(), PortSpec::Agones);
        assert_eq!("7777".parse::<PortSpec>().unwrap(), PortSpec::Fixed(7777));
        assert!("70000".parse::<PortSpec>().is_err());
        assert!("x".parse::<PortSpec>().is_err());
    }

    #[test]
    fn health_checks_parse() {
        assert_eq!("tcp".parse::<HealthCheck>().unwrap(), HealthCheck::Tcp);
        assert_eq!("udp".parse::<HealthCheck>().unwrap(), HealthCheck::Udp);
        assert_eq!("none".parse::<HealthCheck>().unwrap(), HealthCheck::None);
        assert_eq!(
            "cmd:nc -z localhost $SERVER_PORT"
                .parse::<HealthCheck>()
                .unwrap(),
            HealthCheck::Cmd("nc -z localhost $SERVER_PORT".into())
        );
        assert!("cmd: ".parse::<HealthCheck>().is_err());
        assert!("http".parse::<HealthCheck>().is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn default_probe_follows_protocol() {
        let mut c = Config {
            protocol: Protocol::Tcp,
            ..Config::default()
        };
        assert_eq!(c.effective_health(), HealthCheck::Tcp);
        c.protocol = Protocol::Udp;
        assert_eq!(c.effective_health(), HealthCheck::Udp);
        c.health = Some(HealthCheck::None);
        assert_eq!(c.effective_health(), HealthCheck::None);
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = Config {
            command: vec!["game".into(), "+sv_port=${SERVER_PORT}".into()],
            port: PortSpec::Fixed(7777),
            health: Some(HealthCheck::Cmd("true".into())),
            ..Config::default()
        };
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.command, c.command);
        assert_eq!(back.port, c.port);
        assert_eq!(back.health, c.health);
        assert_eq!(back.grace_period, c.grace_period);
    }
}
