//! `gantry-supervise`: the supervisor alone, as a small binary to build statically (glibc
//! `crt-static`, see scripts/build-supervisor.sh) and add to an image as its own layer
//! (`supervise = true` in gantry.toml). It runs exactly what `gantry supervise` runs, with the
//! same options.

use clap::Parser;
use gantry_supervise::cli::SuperviseArgs;

/// Run a game server as PID 1: port, metadata, status events, health, signals, reaping.
#[derive(Parser)]
#[command(name = "gantry-supervise", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: SuperviseArgs,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    gantry_supervise::cli::run_and_exit(cli.args, "gantry-supervise")
}
