//! `gantry diff OLD NEW`: what a node holding OLD must download to run NEW — whole image,
//! changed layers (layer-level, as Docker and containerd pull) and missing chunks (Gantry's) —
//! per layer and in total, next to the update's own size.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use gantry_client::diff::{diff, DiffOptions, DiffReport, ImageSource};
use gantry_client::{OciLayout, RegistryClient};

use super::human_bytes;
use super::pull::platform;
use super::transfer::{runtime, Location, RegistryArgs};

/// Arguments of `gantry diff`.
#[derive(Args)]
pub struct DiffArgs {
    /// The image a node holds: `oci:DIR[:TAG]` or a reference (`http://` for plain HTTP).
    pub old: String,
    /// The image it is to run: `oci:DIR[:TAG]` or a reference.
    pub new: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Skip the update's own size (it reads both images whole; registry images are
    /// downloaded).
    #[arg(long)]
    pub no_update_size: bool,
    /// Platform to pick from a multi-platform image, as OS/ARCH.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Directory for downloaded layers and large archives while comparing contents
    /// (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// A location with the client it needs, kept alive while the diff runs.
enum Opened {
    Layout(OciLayout, Option<String>),
    Registry(RegistryClient, gantry_oci::Reference),
}

impl Opened {
    fn new(s: &str, registry: &RegistryArgs) -> anyhow::Result<Self> {
        Ok(match Location::parse(s)? {
            Location::Layout { path, tag } => Opened::Layout(
                OciLayout::open(&path).with_context(|| format!("opening {s}"))?,
                tag,
            ),
            Location::Registry {
                reference,
                plain_http,
            } => Opened::Registry(registry.client(&reference.registry, plain_http)?, reference),
        })
    }

    fn source(&self) -> ImageSource<'_> {
        match self {
            Opened::Layout(layout, tag) => ImageSource::Layout {
                layout: layout.clone(),
                tag: tag.clone(),
            },
            Opened::Registry(client, reference) => ImageSource::Registry {
                client,
                reference: reference.clone(),
            },
        }
    }
}

/// Runs `gantry diff`.
pub fn run(args: DiffArgs) -> anyhow::Result<()> {
    let old = Opened::new(&args.old, &args.registry)?;
    let new = Opened::new(&args.new, &args.registry)?;
    let (os, arch) = platform(&args.platform)?;
    let options = DiffOptions {
        update_size: !args.no_update_size,
        os,
        arch,
        temp_dir: args.temp_dir.clone(),
    };
    let report = runtime()?
        .block_on(diff(&old.source(), &new.source(), &options))
        .with_context(|| format!("comparing {} with {}", args.old, args.new))?;
    if args.json {
        super::print_json(&report)
    } else {
        print!("{}", table(&report));
        Ok(())
    }
}

fn pct(p: f64) -> String {
    format!("{p:.2}%")
}

/// The report for people: per layer and in total, the three ways side by side, then each
/// against the update's own size.
pub fn table(r: &DiffReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "old  {}  ({})", r.old, r.old_manifest);
    let _ = writeln!(out, "new  {}  ({})", r.new, r.new_manifest);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:<20} {:>8}  {:>10} {:>8}  {:>10} {:>8}  {:>10} {:>8}",
        "layer", "digest", "changed", "image", "%", "layers", "%", "chunks", "%"
    );
    for (i, l) in r.layers.iter().enumerate() {
        let name = l.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
        let _ = writeln!(
            out,
            "{:<16} {:<20} {:>8}  {:>10} {:>8}  {:>10} {:>8}  {:>10} {:>8}",
            name.chars().take(16).collect::<String>(),
            &l.digest.to_string()[..19],
            if l.changed { "yes" } else { "no" },
            human_bytes(l.size),
            pct(l.size_percent),
            human_bytes(l.layer_level_bytes),
            pct(l.layer_level_percent),
            human_bytes(l.chunk_level_bytes),
            pct(l.chunk_level_percent),
        );
    }
    let _ = writeln!(
        out,
        "{:<16} {:<20} {:>8}  {:>10} {:>8}  {:>10} {:>8}  {:>10} {:>8}",
        "total",
        "",
        format!(
            "{}/{}",
            r.layers.iter().filter(|l| l.changed).count(),
            r.layers.len()
        ),
        human_bytes(r.image_bytes),
        pct(100.0),
        human_bytes(r.layer_level_bytes),
        pct(r.layer_level_percent),
        human_bytes(r.chunk_level_bytes),
        pct(r.chunk_level_percent),
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "What a node holding the old image downloads:");
    let _ = writeln!(
        out,
        "  {:<40} {:>14} {:>10} {:>10}",
        "method", "bytes", "% image", "× update"
    );
    let ratio = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}×"));
    let rows = [
        (
            "whole image",
            Some(r.image_bytes),
            Some(100.0),
            r.image_ratio,
        ),
        (
            "changed layers (layer-level)",
            Some(r.layer_level_bytes),
            Some(r.layer_level_percent),
            r.layer_level_ratio,
        ),
        (
            "missing chunks + indexes (Gantry)",
            Some(r.chunk_level_bytes),
            Some(r.chunk_level_percent),
            r.chunk_level_ratio,
        ),
        (
            "the update's own size (gzip -6)",
            r.update_bytes,
            r.update_percent,
            r.update_bytes.filter(|u| *u > 0).map(|_| 1.0),
        ),
    ];
    for (name, bytes, percent, x) in rows {
        let _ = writeln!(
            out,
            "  {:<40} {:>14} {:>10} {:>10}",
            name,
            bytes.map_or("not computed".to_string(), human_bytes),
            percent.map_or("-".to_string(), pct),
            ratio(x)
        );
    }
    if let Some(u) = &r.update {
        let _ = writeln!(
            out,
            "\nThe update: {} new and {} changed files, {} entries new and {} changed in {} archives \
             ({} uncompressed); {} files and {} entries removed.",
            u.files_added,
            u.files_changed,
            u.entries_added,
            u.entries_changed,
            u.archives_changed,
            human_bytes(u.raw_bytes),
            u.files_removed,
            u.entries_removed
        );
    }
    out
}
