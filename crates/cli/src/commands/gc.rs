//! `gantry gc`: offline garbage collection of the registry's storage.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use gantry_registry::config::StorageConfig;
use gantry_registry::{ServeError, StorageError};

use super::{human_bytes, print_json};

/// Arguments of `gantry gc`.
#[derive(Args)]
pub struct GcArgs {
    /// Storage directory [default: ./gantry-registry, or the config file's `root`].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The `gantry serve` TOML configuration (storage, `[gc] grace_period`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Report what would be removed without removing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Runs `gantry gc`: removes blobs no manifest references, except those written or used
/// within the grace period. Refuses while a `gantry serve` has the storage open.
pub fn run(args: GcArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => gantry_registry::Config::from_file(path)?,
        None => gantry_registry::Config::default(),
    };
    if let Some(root) = args.root {
        config.root = root;
    }
    let root = config.root.clone();
    if matches!(config.storage, StorageConfig::Fs) && !root.join("blobs").is_dir() {
        // Opening would create an empty storage: a mistyped root is better reported.
        bail!(
            "no registry storage at {} (expected the root directory of `gantry serve`)",
            root.display()
        );
    }
    let report = match gantry_registry::gc_blocking(&config, args.dry_run) {
        Ok(r) => r,
        Err(ServeError::Storage(StorageError::Locked(path))) => bail!(
            "storage {} is in use by a running `gantry serve`; stop it first, or let the \
             server collect online (`[gc] interval` in its config)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("gantry gc (storage {})", root.display())),
    };
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("dry_run".into(), args.dry_run.into());
            obj.insert(
                "grace_period_secs".into(),
                config.gc.grace_period.as_secs().into(),
            );
        }
        return print_json(&value);
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for digest in &report.deleted_digests {
        println!("{verb} {digest}");
    }
    println!(
        "{verb} {} blob{} ({}) of {}; kept {} referenced by {} manifest{} in {} repositor{} and \
         {} newer than the grace period ({}s); {} repository link{} removed; {} ms",
        report.deleted,
        plural(report.deleted),
        human_bytes(report.deleted_bytes),
        report.blobs,
        report.referenced,
        report.manifests,
        plural(report.manifests),
        report.repositories,
        if report.repositories == 1 { "y" } else { "ies" },
        report.kept_recent,
        config.gc.grace_period.as_secs(),
        report.links_removed,
        plural(report.links_removed),
        report.millis,
    );
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
