//! `gantry snapshotter`: containerd's proxy snapshotter (overlayfs semantics), with the
//! remote-snapshot fast path through `gantry agent` when `--agent` is given.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::transfer::runtime;

/// Arguments of `gantry snapshotter`.
#[derive(Args)]
pub struct SnapshotterArgs {
    /// State directory (metadata and snapshot directories; not on overlayfs).
    #[arg(long, default_value = gantry_snapshotter::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Unix socket to serve containerd's snapshots API on.
    #[arg(long, default_value = gantry_snapshotter::DEFAULT_ADDRESS)]
    pub address: PathBuf,
    /// The node agent's URL (`gantry agent`): layers with a Gantry chunk index are then
    /// built from earlier snapshots plus only the new chunks (the fast path).
    #[arg(long, value_name = "URL", env = "GANTRY_SNAPSHOTTER_AGENT")]
    pub agent: Option<String>,
    /// Where to serve Prometheus metrics (`/metrics`); `none` to serve none.
    #[arg(long, default_value = "127.0.0.1:5051", value_name = "ADDR|none")]
    pub metrics_addr: String,
    /// Print containerd's `config.toml` snippet (`[proxy_plugins.gantry]`) and exit.
    #[arg(long)]
    pub print_containerd_config: bool,
}

/// Runs `gantry snapshotter`.
pub fn run(args: SnapshotterArgs) -> anyhow::Result<()> {
    if args.print_containerd_config {
        print!(
            "{}",
            gantry_snapshotter::proxy_plugin_config(
                gantry_snapshotter::DEFAULT_PLUGIN_NAME,
                &args.address
            )
        );
        return Ok(());
    }
    let agent = args
        .agent
        .as_deref()
        .map(gantry_snapshotter::Url::parse)
        .transpose()
        .context("parsing --agent")?;
    let metrics_addr = match args.metrics_addr.as_str() {
        "none" => None,
        a => Some(
            a.parse()
                .with_context(|| format!("parsing --metrics-addr {a:?}"))?,
        ),
    };
    let config = gantry_snapshotter::Config {
        root: args.root,
        address: args.address,
        agent,
        metrics_addr,
    };
    eprintln!(
        "gantry snapshotter: serving {} (root {}); add to containerd's config.toml:\n{}",
        config.address.display(),
        config.root.display(),
        gantry_snapshotter::proxy_plugin_config(
            gantry_snapshotter::DEFAULT_PLUGIN_NAME,
            &config.address
        )
    );
    runtime()?
        .block_on(gantry_snapshotter::serve(config))
        .context("gantry snapshotter")
}
