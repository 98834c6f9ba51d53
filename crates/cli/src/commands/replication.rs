//! `gantry replication status`: what a `gantry serve` has copied to the registries of its
//! `[[replication]]` config, read from its `/gantry/v1/replication`.

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::fleet::{get_json, server_client};
use super::transfer::RegistryArgs;

/// Arguments of `gantry replication`.
#[derive(Args)]
pub struct ReplicationArgs {
    #[command(subcommand)]
    pub command: ReplicationCommand,
}

/// `gantry replication` subcommands.
#[derive(Subcommand)]
pub enum ReplicationCommand {
    /// Show each replication remote of a registry: images waiting, copied, failures, the
    /// last copy and the last error. Needs an admin or metrics user when the registry
    /// has `[auth]`.
    Status(StatusArgs),
}

/// Arguments of `gantry replication status`.
#[derive(Args)]
pub struct StatusArgs {
    /// The registry that replicates (`host:port`, `http://host:port` for plain HTTP).
    #[arg(value_name = "REGISTRY")]
    pub registry: String,
    /// Print the registry's JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero unless every remote has nothing waiting, no push unread, and its last
    /// attempt succeeded (for scripts waiting for a push to reach every region).
    #[arg(long)]
    pub expect_in_sync: bool,
    #[command(flatten)]
    pub connection: RegistryArgs,
}

/// Runs `gantry replication`.
pub fn run(args: ReplicationArgs) -> anyhow::Result<()> {
    match args.command {
        ReplicationCommand::Status(a) => status(a),
    }
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = server_client(&args.registry, &args.connection)?;
    let url = format!("{}/gantry/v1/replication", client.base_url());
    let view = get_json(&client, &[], &url, "the replication status")?;
    let targets = view["targets"].as_array().cloned().unwrap_or_default();
    if args.json {
        super::print_json(&view)?;
    } else if targets.is_empty() {
        println!(
            "{} replicates to no registry (no [[replication]] in its config)",
            args.registry
        );
    } else {
        print_table(&targets);
    }
    if args.expect_in_sync {
        let behind: Vec<String> = targets
            .iter()
            .filter(|t| !in_sync(t))
            .map(|t| t["name"].as_str().unwrap_or("?").to_string())
            .collect();
        if !behind.is_empty() {
            bail!("not in sync: {}", behind.join(", "));
        }
    }
    Ok(())
}

fn in_sync(target: &Value) -> bool {
    target["pending"].as_array().is_some_and(|p| p.is_empty())
        && target["failing"] != Value::Bool(true)
}

fn print_table(targets: &[Value]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ago = |e: &Value| -> String {
        match e["at_unix"].as_u64() {
            Some(t) => format!("{} s ago", now.saturating_sub(t)),
            None => "-".into(),
        }
    };
    println!(
        "{:<24} {:>7} {:>7} {:>8} {:>9} {:>12}  STATE",
        "REMOTE", "PENDING", "COPIED", "IN SYNC", "FAILURES", "SENT"
    );
    for t in targets {
        let pending = t["pending"].as_array().map(Vec::len).unwrap_or(0);
        let state = if t["failing"] == Value::Bool(true) {
            "retrying"
        } else if in_sync(t) {
            "in sync"
        } else {
            "copying"
        };
        println!(
            "{:<24} {:>7} {:>7} {:>8} {:>9} {:>12}  {state}",
            t["name"].as_str().unwrap_or("?"),
            pending,
            t["copied"].as_u64().unwrap_or(0),
            t["in_sync"].as_u64().unwrap_or(0),
            t["failures"].as_u64().unwrap_or(0),
            super::human_bytes(t["bytes_sent"].as_u64().unwrap_or(0)),
        );
        if let Some(last) = t.get("last_copied").filter(|v| !v.is_null()) {
            println!(
                "  last copied: {}@{} ({})",
                last["image"].as_str().unwrap_or("?"),
                last["digest"].as_str().unwrap_or("?"),
                ago(last)
            );
        }
        if let Some(fail) = t.get("last_failure").filter(|v| !v.is_null()) {
            println!(
                "  last failure: {} ({}): {}",
                fail["image"].as_str().unwrap_or("?"),
                ago(fail),
                fail["error"].as_str().unwrap_or("?")
            );
        }
        for p in t["pending"].as_array().into_iter().flatten().take(10) {
            println!("  waiting: {}", p.as_str().unwrap_or("?"));
        }
    }
}
