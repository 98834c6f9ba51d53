//! The `gantry` command: argument parsing, progress and output formats.
//! Every capability lives in a library crate; this binary only wires them.

mod commands;
#[cfg(test)]
mod example_ci_definitions;
mod progress;

use clap::{Parser, Subcommand};

/// Build game-server images and ship each update as only the bytes that changed.
#[derive(Parser)]
#[command(name = "gantry", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run; boxing the larger argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Build an OCI image layout from a game repository's gantry.toml.
    Build(commands::build::BuildArgs),
    /// Show an image layout's manifest, layers and chunk indexes.
    Inspect(commands::inspect::InspectArgs),
    /// Generate the deterministic sample game repository (or its next version).
    SampleGame(commands::sample_game::SampleGameArgs),
    /// Run the end-to-end demo on a generated sample game.
    Demo(commands::demo::DemoArgs),
    /// Run the OCI registry (Distribution API 1.1) on local storage.
    Serve(commands::serve::ServeArgs),
    /// Remove registry blobs no manifest references (offline; refuses while serving).
    Gc(commands::gc::GcArgs),
    /// Manage the registry's users (argon2id-hashed passwords).
    User(commands::user::UserArgs),
    /// Run the node agent: containerd's registry mirror with chunk-level updates.
    Agent(commands::agent::AgentArgs),
    /// Run containerd's proxy snapshotter (overlayfs semantics) on a unix socket.
    Snapshotter(commands::snapshotter::SnapshotterArgs),
    /// Push an image from an OCI layout to a registry (only what it lacks).
    Push(commands::push::PushArgs),
    /// Pull an image from a registry into an OCI layout, verifying every blob.
    Pull(commands::pull::PullArgs),
    /// Copy an image between registries and OCI layouts (oci:DIR[:TAG] or a reference).
    Copy(commands::copy::CopyArgs),
    /// Compare two images: what a node holding OLD downloads to run NEW, three ways.
    Diff(commands::diff::DiffArgs),
    /// Log in to a registry (credentials stored as `docker login` stores them).
    Login(commands::login::LoginArgs),
    /// Remove the stored credentials of a registry.
    Logout(commands::login::LogoutArgs),
    /// Run a game server as PID 1: port, metadata, status events, health, signals, reaping.
    Supervise(commands::supervise::SuperviseArgs),
    /// The fleet view of a registry: which servers run which digest of each image and tag.
    Fleet(commands::fleet::FleetArgs),
    /// What a `gantry serve` has replicated to the registries of its `[[replication]]`.
    Replication(commands::replication::ReplicationArgs),
    /// Kubernetes: render or apply the game server (Deployment or Agones Fleet, pinned by
    /// digest) and the node agent (DaemonSet), and follow the rollout.
    Deploy(commands::deploy::DeployArgs),
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
    let result = match cli.command {
        Command::Build(args) => commands::build::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::SampleGame(args) => commands::sample_game::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Gc(args) => commands::gc::run(args),
        Command::User(args) => commands::user::run(args),
        Command::Agent(args) => commands::agent::run(args),
        Command::Snapshotter(args) => commands::snapshotter::run(args),
        Command::Push(args) => commands::push::run(args),
        Command::Pull(args) => commands::pull::run(args),
        Command::Copy(args) => commands::copy::run(args),
        Command::Diff(args) => commands::diff::run(args),
        Command::Login(args) => commands::login::run_login(args),
        Command::Logout(args) => commands::login::run_logout(args),
        Command::Supervise(args) => commands::supervise::run(args),
        Command::Deploy(args) => commands::deploy::run(args),
        Command::Fleet(args) => commands::fleet::run(args),
        Command::Replication(args) => commands::replication::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {}", error_text(&err));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, each cause once: library errors often name their
/// source in their own message too, so a cause already said by the message before it is
/// left out ("reading x: No such file or directory (os error 2)", not that twice).
fn error_text(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || previous.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {path}: {source}")]
    struct Wrapped {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let io_text = io.to_string();
        let err = anyhow::Error::new(Wrapped {
            path: "/nonexistent",
            source: io,
        })
        .context("building /nonexistent");
        let text = error_text(&err);
        assert_eq!(text.matches(&io_text).count(), 1, "{text}");
        assert!(
            text.starts_with("building /nonexistent: reading /nonexistent: "),
            "{text}"
        );
    }

    #[test]
    fn causes_not_in_the_message_are_kept() {
        let err = anyhow::anyhow!("inner cause").context("outer step");
        assert_eq!(error_text(&err), "outer step: inner cause");
    }
}
