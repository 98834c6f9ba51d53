//! The command line of the supervisor, shared by `gantry supervise` and the small static
//! `gantry-supervise` binary (which an image built with `supervise = true` runs as PID 1), so
//! both accept exactly the same options and build the same [`Config`].

use crate::config::{
    parse_duration, Config, HealthCheck, PortSpec, Protocol, DEFAULT_METADATA_URL,
};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

const EVENTS_HELP: &str = "\
Status events, one JSON object per line on stdout (and POSTed to each --report-url):
  {\"status\":\"ready\",\"type\":\"gs\",\"public_hostname\":\"ec2-…\",\"public_port\":7777,
   \"region\":\"eu-west-1\",\"instance_type\":\"c5.large\",\"private_ip\":\"10.0.1.5\",
   \"hostname\":\"game-0\",\"image\":\"reg.example/game:v2\",\"image_digest\":\"sha256:…\",
   \"node_name\":\"node-a\",
   \"datetime\":\"2025-01-31T12:00:00.123Z\",\"seq\":1}
status: starting | ready | unhealthy (with reason) | terminating | exited (with exit_code,
and signal when one killed the game). The game's own stdout and stderr pass through unchanged.
Exit code: the game's, or 128 + signal number.";

/// Arguments of `gantry supervise`.
#[derive(Args)]
#[command(after_help = EVENTS_HELP)]
pub struct SuperviseArgs {
    /// Game port: a number; 0 or `free` (bind port 0, release it); `agones` (the port Agones
    /// assigned, or --container-port); `auto` (as `agones` under Agones, else free). Under
    /// Agones a number is the port the game listens on, and Agones' port is reported.
    #[arg(long, default_value = "auto", value_name = "PORT")]
    pub port: PortSpec,
    /// Transport of the game port: what a free port is bound with, and the default probe.
    #[arg(long, default_value = "udp", value_name = "tcp|udp")]
    pub protocol: Protocol,
    /// Environment variable carrying the port; `${NAME}` in the command's arguments is
    /// replaced by the port too.
    #[arg(long, default_value = "SERVER_PORT", value_name = "NAME")]
    pub port_env: String,
    /// Health probe: tcp, udp, none, or cmd:<shell command> (exit 0 = healthy; the port is in
    /// its environment) [default: the --protocol's]. `ready` is reported once it passes.
    #[arg(long, value_name = "PROBE")]
    pub health: Option<HealthCheck>,
    /// Host the tcp/udp probes connect to.
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub health_host: String,
    /// Time between probes.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub health_interval: Duration,
    /// Time one probe may take.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub health_timeout: Duration,
    /// Consecutive probe failures after `ready` that report `unhealthy`.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub health_failures: u32,
    /// After forwarding SIGTERM/SIGINT, time before SIGKILL of the game's process group.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub grace_period: Duration,
    /// POST each event (JSON) to this URL; repeatable (or comma-separated in
    /// GANTRY_REPORT_URL). Retried with backoff in the background: a slow or dead endpoint
    /// never blocks the game.
    #[arg(
        long = "report-url",
        env = "GANTRY_REPORT_URL",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub report_urls: Vec<String>,
    /// File holding the bearer token for the report URLs (a mounted Secret, say); surrounding
    /// whitespace is ignored. Wins over --report-token and GANTRY_REPORT_TOKEN.
    #[arg(long, env = crate::REPORT_TOKEN_FILE_ENV, value_name = "PATH")]
    pub report_token_file: Option<PathBuf>,
    /// Deprecated, use --report-token-file: the bearer token itself, which then shows in the
    /// process list. GANTRY_REPORT_TOKEN is read too (also deprecated); either is removed from
    /// the game's environment and scrubbed from the supervisor's /proc/<pid>/cmdline and
    /// environ before the game starts.
    #[arg(long, value_name = "TOKEN")]
    pub report_token: Option<String>,
    /// Events queued per report URL while it is slow or down; further ones are dropped.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub report_queue: usize,
    /// Time given to the sinks to deliver the last events after the game exited.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub report_flush_timeout: Duration,
    /// Re-send the current state to the report URLs after this long without an event (a
    /// heartbeat: a fleet view marks a silent server `lost`); 0: never.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub report_interval: Duration,
    /// Do not write events to stdout.
    #[arg(long)]
    pub no_stdout_events: bool,
    /// Use the Agones SDK: port and address from GET /gameserver, POST /ready, /health
    /// while healthy, /shutdown on exit. On by itself when AGONES_SDK_HTTP_PORT is set.
    #[arg(long)]
    pub agones: bool,
    /// Base URL of the Agones SDK HTTP API [default: http://localhost:$AGONES_SDK_HTTP_PORT,
    /// 9358 when unset].
    #[arg(long, value_name = "URL")]
    pub agones_url: Option<String>,
    /// Name of the GameServer port to use [default: the first].
    #[arg(long, value_name = "NAME")]
    pub agones_port_name: Option<String>,
    /// Under Agones with the Dynamic or Static port policy: the GameServer port's
    /// containerPort, which the game listens on (Agones maps the host port it assigned to it;
    /// that host port is reported as public_port). Leave unset for Passthrough, where the
    /// game listens on the assigned port. `gantry deploy render --kind fleet` sets it.
    #[arg(long, env = "GANTRY_CONTAINER_PORT", value_name = "PORT")]
    pub container_port: Option<u16>,
    /// Interval of Agones health pings.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub agones_health_interval: Duration,
    /// How long to wait for the Agones SDK to tell the port.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub agones_wait: Duration,
    /// Instance metadata service (EC2 IMDSv2), or `none` to skip it.
    #[arg(long, env = "GANTRY_METADATA_URL", default_value = DEFAULT_METADATA_URL, value_name = "URL")]
    pub metadata_url: String,
    /// Total time budget of the instance metadata lookup.
    #[arg(long, default_value = "300ms", value_parser = parse_duration, value_name = "DURATION")]
    pub metadata_timeout: Duration,
    /// Region [default: instance metadata, else AWS_REGION, AWS_DEFAULT_REGION].
    #[arg(long, env = "GANTRY_REGION", value_name = "REGION")]
    pub region: Option<String>,
    /// Public hostname [default: Agones' address, instance metadata, the hostname].
    #[arg(long, env = "GANTRY_PUBLIC_HOSTNAME", value_name = "HOST")]
    pub public_hostname: Option<String>,
    /// Environment variable holding the running image's digest.
    #[arg(long, default_value = "GANTRY_IMAGE_DIGEST", value_name = "NAME")]
    pub image_digest_env: String,
    /// Environment variable holding the image reference as deployed (`reg.example/game:v2`),
    /// the `image` field of events.
    #[arg(long, default_value = "GANTRY_IMAGE", value_name = "NAME")]
    pub image_env: String,
    /// Kubernetes node name (set NODE_NAME from the downward API).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// The `type` field of events.
    #[arg(long, default_value = "gs", value_name = "TYPE")]
    pub server_type: String,
    /// The game server's command and arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl SuperviseArgs {
    /// The supervisor's [`Config`] for these arguments.
    pub fn into_config(self) -> Config {
        let metadata_url = match self.metadata_url.trim() {
            "" | "none" | "off" => None,
            url => Some(url.to_string()),
        };
        Config {
            command: self.command,
            port: self.port,
            protocol: self.protocol,
            port_env: self.port_env,
            health: self.health,
            health_host: self.health_host,
            health_interval: self.health_interval,
            health_timeout: self.health_timeout,
            health_failures: self.health_failures,
            grace_period: self.grace_period,
            stdout_events: !self.no_stdout_events,
            report_urls: self.report_urls,
            report_token: self.report_token,
            report_token_file: self.report_token_file,
            report_queue: self.report_queue,
            report_flush_timeout: self.report_flush_timeout,
            report_interval: self.report_interval,
            agones: self.agones,
            agones_url: self.agones_url,
            agones_port_name: self.agones_port_name,
            container_port: self.container_port,
            agones_health_interval: self.agones_health_interval,
            agones_wait: self.agones_wait,
            metadata_url,
            metadata_timeout: self.metadata_timeout,
            region: self.region,
            public_hostname: self.public_hostname,
            image_digest_env: self.image_digest_env,
            image_env: self.image_env,
            node_name: self.node_name,
            server_type: self.server_type,
        }
    }
}

/// Supervises the game until it exits, then exits the process with its code (or the error's
/// exit code, with `error: {program}: …` on stderr).
pub fn run_and_exit(args: SuperviseArgs, program: &str) -> ! {
    let config = protect_report_token(args, program);
    match crate::run(config) {
        Ok(outcome) => std::process::exit(outcome.exit_code()),
        Err(err) => {
            eprintln!("error: {program}: {err}");
            std::process::exit(err.exit_code())
        }
    }
}

/// Keeps the report token from the game (see [`crate::secret`]): marks the process not
/// dumpable, takes `GANTRY_REPORT_TOKEN` out of the environment and scrubs the token from the
/// process's argument and environment blocks, warns about `--report-token`, and returns the
/// [`Config`] holding the token. Runs while the process has one thread, before any spawn.
fn protect_report_token(args: SuperviseArgs, program: &str) -> Config {
    if let Err(e) = crate::secret::set_not_dumpable() {
        eprintln!("warning: {program}: cannot mark the supervisor not dumpable: {e}");
    }
    if args.report_token.is_some() {
        eprintln!(
            "warning: {program}: --report-token is deprecated: the token shows in the process \
             list; put it in a file and pass --report-token-file PATH (or {})",
            crate::REPORT_TOKEN_FILE_ENV
        );
    }
    let env_token = crate::secret::take_env_token(crate::REPORT_TOKEN_ENV);
    if let Err(e) =
        crate::secret::scrub_process_blocks(crate::REPORT_TOKEN_ENV, args.report_token.as_deref())
    {
        eprintln!(
            "warning: {program}: cannot scrub the report token from /proc/self/cmdline and \
             environ: {e}"
        );
    }
    let mut config = args.into_config();
    config.report_token = config.report_token.or(env_token);
    config
}
