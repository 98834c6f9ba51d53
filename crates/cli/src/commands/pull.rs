//! `gantry pull REF LAYOUT`.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use gantry_client::{pull_to_layout, PullOptions, PullReport};

use super::transfer::{runtime, Location, RegistryArgs, TransferBars};

/// Arguments of `gantry pull`.
#[derive(Args)]
pub struct PullArgs {
    /// The image, e.g. `registry.example.com/studio/game:v2` (`http://` for plain HTTP).
    pub reference: String,
    /// The OCI layout to write: a directory, or `oci:DIR[:TAG]` to name the image TAG in
    /// it (replaced if it is one; its blobs are reused).
    pub layout: String,
    /// Platform to pick from a multi-platform image, as OS/ARCH.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Blobs downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Do not fetch the chunk-index referrers.
    #[arg(long)]
    pub no_referrers: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `os/arch`.
pub fn platform(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('/') {
        Some((os, arch)) if !os.is_empty() && !arch.is_empty() => Ok((
            os.to_string(),
            arch.split('/').next().unwrap_or(arch).to_string(),
        )),
        _ => anyhow::bail!("--platform {s:?}: expected OS/ARCH, e.g. linux/amd64"),
    }
}

/// Prints a pull report for people.
pub fn print_report(r: &PullReport) {
    eprintln!(
        "{} blobs, downloaded {}, into {}",
        r.blobs.len(),
        super::human_bytes(r.bytes_downloaded),
        r.layout.display()
    );
    println!("{}", r.reference);
}

/// Runs `gantry pull`.
pub fn run(args: PullArgs) -> anyhow::Result<()> {
    let (reference, plain_http) = Location::reference(&args.reference)?;
    let (layout, tag) = Location::layout(&args.layout)?;
    let client = args.registry.client(&reference.registry, plain_http)?;
    let (os, arch) = platform(&args.platform)?;
    let options = PullOptions {
        os,
        arch,
        jobs: args.jobs,
        referrers: !args.no_referrers,
        tag,
    };
    let bars = Arc::new(TransferBars::new(args.json));
    let report = runtime()?
        .block_on(pull_to_layout(&client, &reference, &layout, &options, bars))
        .with_context(|| format!("pulling {}", args.reference))?;
    if args.json {
        super::print_json(&report)
    } else {
        print_report(&report);
        Ok(())
    }
}
