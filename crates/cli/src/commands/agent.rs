//! `gantry agent`: the node-side mirror; `gantry agent status`; `gantry agent
//! install-containerd-config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use gantry_agent::{AgentConfig, UpstreamLimits, UpstreamSpec};

use super::transfer::runtime;

/// Arguments of `gantry agent`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `gantry agent` subcommands.
#[derive(Subcommand)]
pub enum AgentCommand {
    /// Show what a running agent fetched and reused, per layer.
    Status(StatusArgs),
    /// Write containerd's hosts.toml that makes the agent a registry's mirror.
    InstallContainerdConfig(InstallArgs),
}

/// Running the agent.
#[derive(Args)]
pub struct RunArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5050")]
    pub addr: SocketAddr,
    /// Store directory (verified blobs and the chunk map).
    #[arg(long, default_value = "/var/lib/gantry/agent")]
    pub root: PathBuf,
    /// An upstream registry, `HOST` (HTTPS) or `HOST=URL`; repeat for several.
    #[arg(long = "upstream", value_name = "HOST[=URL]")]
    pub upstreams: Vec<String>,
    /// Store size limit (e.g. 50GB; least recently used blobs are evicted; 0: none).
    #[arg(long, default_value = "0")]
    pub max_size: String,
    /// Range requests in flight per blob.
    #[arg(long, default_value_t = 4)]
    pub fetch_jobs: usize,
    /// Client connections served at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and that an idle keep-alive
    /// connection is kept (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Time a client may leave an answer unread before its connection is closed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Time an upstream registry has to answer a request with its headers.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,
    /// The slowest upstream body the agent waits for, per second, averaged over 30 s
    /// (e.g. 16KiB; 0: no floor). A slower fetch fails, and its waiters with it.
    #[arg(long, default_value = "16KiB")]
    pub upstream_min_rate: String,
}

/// Arguments of `gantry agent status`.
#[derive(Args)]
pub struct StatusArgs {
    /// The agent's address.
    #[arg(long, default_value = "127.0.0.1:5050")]
    pub addr: SocketAddr,
    /// Print the status JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `gantry agent install-containerd-config`.
#[derive(Args)]
pub struct InstallArgs {
    /// containerd's registry config directory (`config_path`).
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    pub hosts_dir: PathBuf,
    /// Registry host to mirror (`host[:port]`); repeat for several.
    #[arg(long = "registry", required_unless_present = "remove_snapshotter")]
    pub registries: Vec<String>,
    /// The agent's URL.
    #[arg(long, default_value = "http://127.0.0.1:5050")]
    pub agent: String,
    /// Use plain HTTP for the registry itself (the fallback when the agent is down).
    #[arg(long)]
    pub plain_http: bool,
    /// Also make `gantry snapshotter` CRI's snapshotter in containerd's config.toml (the
    /// `[proxy_plugins.gantry]` entry, `snapshotter = "gantry"`, snapshot labels on). The file
    /// is rewritten (comments are not kept); the previous one is kept as `*.gantry-backup`.
    #[arg(long)]
    pub snapshotter: bool,
    /// Undo `--snapshotter`: remove the entry and put CRI back on `overlayfs`.
    #[arg(long, conflicts_with = "snapshotter")]
    pub remove_snapshotter: bool,
    /// containerd's config file (for `--snapshotter` / `--remove-snapshotter`).
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    pub containerd_config: PathBuf,
    /// The snapshotter's socket (`gantry snapshotter --address`).
    #[arg(long, default_value = gantry_snapshotter::DEFAULT_ADDRESS)]
    pub snapshotter_address: PathBuf,
}

/// Runs `gantry agent …`.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        Some(AgentCommand::Status(a)) => status(a),
        Some(AgentCommand::InstallContainerdConfig(a)) => install(a),
        None => serve(args.run),
    }
}

fn serve(args: RunArgs) -> anyhow::Result<()> {
    if args.upstreams.is_empty() {
        anyhow::bail!("name at least one registry with --upstream HOST[=URL]");
    }
    let upstreams = args
        .upstreams
        .iter()
        .map(|s| s.parse::<UpstreamSpec>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let max_bytes = if args.max_size == "0" {
        0
    } else {
        gantry_sample_game::parse_size(&args.max_size)
            .with_context(|| format!("--max-size {:?}", args.max_size))?
    };
    let min_rate = if args.upstream_min_rate == "0" {
        0
    } else {
        gantry_sample_game::parse_size(&args.upstream_min_rate)
            .with_context(|| format!("--upstream-min-rate {:?}", args.upstream_min_rate))?
    };
    if let Err(e) = gantry_net::raise_open_file_limit() {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    let config = AgentConfig {
        addr: args.addr,
        root: args.root.clone(),
        upstreams,
        max_bytes,
        fetch_jobs: args.fetch_jobs,
        serve: gantry_net::ServeLimits {
            max_connections: args.max_connections,
            header_read_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
        },
        upstream: UpstreamLimits {
            answer_within: args.upstream_timeout,
            min_bytes_per_second: min_rate,
            ..UpstreamLimits::default()
        },
    };
    let rt = runtime()?;
    rt.block_on(async {
        let agent = gantry_agent::bind(&config)
            .await
            .with_context(|| format!("gantry agent (store {})", args.root.display()))?;
        eprintln!(
            "gantry agent listening on {} (store {}, upstreams {})",
            agent.url(),
            args.root.display(),
            args.upstreams.join(", ")
        );
        wait_for_signal().await;
        agent.shutdown().await;
        anyhow::Ok(())
    })
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let url = format!("http://{}/status", args.addr);
    let status: serde_json::Value = runtime()?.block_on(async {
        let resp = reqwest::get(&url)
            .await
            .with_context(|| format!("no agent answering at {url}"))?;
        anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
        Ok::<_, anyhow::Error>(resp.json().await?)
    })?;
    if args.json {
        return super::print_json(&status);
    }
    let n = |k: &str| status[k].as_u64().unwrap_or(0);
    println!(
        "fetched upstream {}, reused locally {}, served {}; holding {} in {} blobs, {} chunks known",
        super::human_bytes(n("upstream_bytes")),
        super::human_bytes(n("reused_bytes")),
        super::human_bytes(n("served_bytes")),
        super::human_bytes(n("bytes_held")),
        n("blobs_held"),
        n("chunks_known"),
    );
    if let Some(blobs) = status["blobs"].as_array() {
        println!(
            "{:<24} {:<19} {:>10} {:>6} {:>10} {:>10} {:>6}",
            "repository", "blob", "size", "how", "upstream", "reused", "secs"
        );
        for b in blobs {
            let s = |k: &str| b[k].as_str().unwrap_or("").to_string();
            let u = |k: &str| b[k].as_u64().unwrap_or(0);
            println!(
                "{:<24} {:<19} {:>10} {:>6} {:>10} {:>10} {:>6.1}",
                s("repository"),
                s("digest").chars().take(19).collect::<String>(),
                super::human_bytes(u("size")),
                s("method"),
                super::human_bytes(u("upstream_bytes")),
                super::human_bytes(u("reused_bytes")),
                b["seconds"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

fn install(args: InstallArgs) -> anyhow::Result<()> {
    if args.snapshotter || args.remove_snapshotter {
        configure_snapshotter(&args)?;
    }
    for registry in &args.registries {
        let scheme = if args.plain_http { "http" } else { "https" };
        let path = gantry_agent::hosts::install(
            &args.hosts_dir,
            registry,
            &format!("{scheme}://{registry}"),
            &args.agent,
        )?;
        println!("{}", path.display());
    }
    Ok(())
}

/// Turns `gantry snapshotter` on or off in containerd's config.toml.
fn configure_snapshotter(args: &InstallArgs) -> anyhow::Result<()> {
    use gantry_snapshotter::containerd_config::{disable, enable};
    let path = &args.containerd_config;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let name = gantry_snapshotter::DEFAULT_PLUGIN_NAME;
    let new = if args.remove_snapshotter {
        disable(&text, name)
    } else {
        enable(&text, name, &args.snapshotter_address)
    }
    .with_context(|| format!("updating {}", path.display()))?;
    if new != text {
        if !text.is_empty() {
            let backup = path.with_extension("toml.gantry-backup");
            std::fs::write(&backup, &text)
                .with_context(|| format!("writing {}", backup.display()))?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("toml.gantry-tmp");
        std::fs::write(&tmp, &new).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    }
    println!("{}", path.display());
    eprintln!(
        "containerd reads its config at start: restart it (systemctl restart containerd){}",
        if args.remove_snapshotter {
            ""
        } else {
            ", with `gantry snapshotter --agent http://127.0.0.1:5050` running"
        }
    );
    Ok(())
}
