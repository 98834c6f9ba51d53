//! `gantry sample-game`.

use crate::commands::{human_bytes, print_json};
use anyhow::Context;
use clap::{Args, ValueEnum};
use gantry_sample_game::{
    generate, parse_size, update, PakShape, SampleSpec, UpdateKind, UpdateSpec,
};
use std::path::PathBuf;

/// Arguments of `gantry sample-game`.
#[derive(Args)]
pub struct SampleGameArgs {
    /// Directory to write (or, with --update, to turn into the next version).
    pub dir: PathBuf,
    /// Make the next day's build of an existing sample in place.
    #[arg(long)]
    pub update: bool,
    /// Total content size of a new sample (e.g. 200MB, 3.1GB).
    #[arg(long, default_value = "200MB")]
    pub scale: String,
    /// Changed bytes of an update, in MB.
    #[arg(long, default_value_t = 50.0)]
    pub mb: f64,
    /// What an update changes.
    #[arg(long, value_enum, default_value_t = Kind::Assets)]
    pub kind: Kind,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How a new sample packs its assets: many paks, or one large pak of tens of thousands
    /// of small entries (an update then edits that one pak throughout).
    #[arg(long, value_enum, default_value_t = Paks::Split)]
    pub paks: Paks,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Update kinds on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    /// Pak entries re-exported, files edited, entries added and removed.
    Assets,
    /// A few engine binaries rebuilt.
    Engine,
}

/// Pak shapes on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum Paks {
    /// About 25 paks by kind and level.
    Split,
    /// One pak holding every asset.
    Single,
}

/// Runs `gantry sample-game`.
pub fn run(args: SampleGameArgs) -> anyhow::Result<()> {
    if args.update {
        let kind = match args.kind {
            Kind::Assets => UpdateKind::Assets,
            Kind::Engine => UpdateKind::Engine,
        };
        if !(args.mb > 0.0 && args.mb.is_finite()) {
            anyhow::bail!(
                "--mb must be a positive number of megabytes, got {}",
                args.mb
            );
        }
        let spec = UpdateSpec {
            bytes: (args.mb * 1e6) as u64,
            seed: args.seed,
            kind,
        };
        let report = update(&args.dir, &spec)
            .with_context(|| format!("updating sample game in {}", args.dir.display()))?;
        if args.json {
            return print_json(&report);
        }
        println!(
            "updated {} to {}: {} changed ({} as gzip -6, the update's own size), {} files changed, {} added, {} removed",
            args.dir.display(),
            report.tag,
            human_bytes(report.changed_bytes),
            human_bytes(report.update_bytes),
            report.files_changed.len(),
            report.files_added.len(),
            report.files_removed.len()
        );
        return Ok(());
    }
    let scale_bytes = parse_size(&args.scale)?;
    let report = generate(
        &args.dir,
        &SampleSpec {
            scale_bytes,
            seed: args.seed,
            paks: match args.paks {
                Paks::Split => PakShape::Split,
                Paks::Single => PakShape::Single,
            },
        },
    )
    .with_context(|| format!("generating sample game in {}", args.dir.display()))?;
    if args.json {
        return print_json(&report);
    }
    println!(
        "generated {} ({}): {} files, {} on disk, {} engine files, {} paks",
        args.dir.display(),
        report.tag,
        report.files_written,
        human_bytes(report.total_bytes),
        report.engine_files,
        report.paks
    );
    Ok(())
}
