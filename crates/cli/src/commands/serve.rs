//! `gantry serve`.

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `gantry serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:5000, or the config file's `addr`].
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Storage directory [default: ./gantry-registry, or the config file's `root`].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// TOML configuration file: TLS cert/key, limits, upload expiry, garbage collection.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs `gantry serve` until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => gantry_registry::Config::from_file(path)?,
        None => gantry_registry::Config::default(),
    };
    if let Some(addr) = args.addr {
        config.addr = addr;
    }
    if let Some(root) = args.root {
        config.root = root;
    }
    let root = config.root.display().to_string();
    gantry_registry::serve_blocking(config)
        .with_context(|| format!("gantry serve (storage {root})"))
}
