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
    /// TOML configuration file: TLS cert/key, limits, upload expiry, garbage collection,
    /// replication to other registries.
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
    // The connection cap, not EMFILE, should be what bounds the server.
    if let Err(e) = gantry_net::raise_open_file_limit() {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(async {
            let server = gantry_registry::bind(&config).await?;
            eprintln!("gantry registry listening on {}", server.url());
            let replication =
                gantry_replicate::start(server.registry().clone(), &config.replication)?;
            gantry_registry::server::shutdown_signal().await;
            tracing::info!("shutting down");
            for task in replication {
                task.abort();
            }
            server.shutdown().await?;
            anyhow::Ok(())
        })
        .with_context(|| format!("gantry serve (storage {root})"))
}
