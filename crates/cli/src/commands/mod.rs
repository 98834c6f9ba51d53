//! One module per subcommand.

pub mod agent;
pub mod build;
pub mod copy;
pub mod demo;
pub mod demo_delivery;
pub mod deploy;
pub mod diff;
pub mod fleet;
pub mod gc;
pub mod inspect;
pub mod login;
pub mod pull;
pub mod push;
pub mod replication;
pub mod sample_game;
pub mod serve;
pub mod snapshotter;
pub mod supervise;
pub mod transfer;
pub mod user;

/// Human-readable byte counts (decimal units, as registries and the benchmarks use).
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
