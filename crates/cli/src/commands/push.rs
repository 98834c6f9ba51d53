//! `gantry push LAYOUT REF`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use gantry_client::{push_layout, OciLayout, PushOptions, PushReport};
use gantry_oci::Reference;

use super::transfer::{runtime, Location, RegistryArgs, TransferBars};

/// Arguments of `gantry push`.
#[derive(Args)]
pub struct PushArgs {
    /// The OCI layout to push from (`DIR` or `oci:DIR[:TAG]`).
    pub layout: String,
    /// Destination, e.g. `registry.example.com/studio/game:v2` (`http://` for plain HTTP).
    pub reference: String,
    #[command(flatten)]
    pub push: PushFlags,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags shared by `gantry push` and `gantry build --push`.
#[derive(Args, Clone, Debug)]
pub struct PushFlags {
    /// Blobs uploaded at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Never use delta push, even when the registry offers it.
    #[arg(long)]
    pub no_delta: bool,
    /// Image in the destination repository (tag or digest) whose chunks delta push
    /// reuses first; by default the registry is asked where the repository holds each
    /// layer's chunks (`gantry serve`), else the destination tag's image is used.
    #[arg(long, value_name = "TAG|DIGEST")]
    pub delta_from: Option<String>,
}

impl PushFlags {
    /// The push options these flags ask for.
    pub fn options(&self) -> PushOptions {
        PushOptions {
            jobs: self.jobs,
            delta: !self.no_delta,
            delta_from: self.delta_from.clone(),
            mount_from: None,
        }
    }
}

/// Pushes the image of `layout` (tagged `tag`) to `dest`; shared with `gantry build --push`.
pub fn push(
    layout: &Path,
    tag: Option<&str>,
    dest: &str,
    flags: &PushFlags,
    registry: &RegistryArgs,
    quiet: bool,
) -> anyhow::Result<PushReport> {
    push_with(layout, tag, dest, flags.options(), registry, quiet)
}

/// [`push`] with explicit options.
pub fn push_with(
    layout: &Path,
    tag: Option<&str>,
    dest: &str,
    options: PushOptions,
    registry: &RegistryArgs,
    quiet: bool,
) -> anyhow::Result<PushReport> {
    let (reference, plain_http): (Reference, bool) = Location::reference(dest)?;
    let client = registry.client(&reference.registry, plain_http)?;
    let layout = OciLayout::open(layout)?;
    let bars = Arc::new(TransferBars::new(quiet));
    let rt = runtime()?;
    let report = rt
        .block_on(push_layout(
            &client, &layout, tag, &reference, &options, bars,
        ))
        .with_context(|| format!("pushing {} to {dest}", layout.root().display()))?;
    Ok(report)
}

/// Prints a push report for people.
pub fn print_report(r: &PushReport) {
    eprintln!(
        "pushed {} blobs: sent {}, reused on the registry {}{} (image {})",
        r.blobs.len(),
        super::human_bytes(r.bytes_sent),
        super::human_bytes(r.bytes_reused),
        if r.delta_push { ", delta push" } else { "" },
        super::human_bytes(r.image_bytes),
    );
    println!("{}", r.reference);
}

/// Runs `gantry push`.
pub fn run(args: PushArgs) -> anyhow::Result<()> {
    // `oci:DIR[:TAG]`, or a plain directory (never a registry reference here).
    let (path, tag) = Location::layout(&args.layout)?;
    let report = push(
        &path,
        tag.as_deref(),
        &args.reference,
        &args.push,
        &args.registry,
        args.json,
    )?;
    if args.json {
        super::print_json(&report)
    } else {
        print_report(&report);
        Ok(())
    }
}
