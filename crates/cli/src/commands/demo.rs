//! `gantry demo`: the whole pipeline on a generated sample game, with a
//! report of what each step cost.

use crate::commands::{human_bytes, print_json};
use anyhow::Context;
use clap::Args;
use gantry_build::{update_cost, BuildOptions, NoProgress, OciLayout};
use gantry_sample_game::{generate, parse_size, update, SampleSpec, UpdateKind, UpdateSpec};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `gantry demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Size of the sample game (the benchmark's case is 3.1GB).
    #[arg(long, default_value = "200MB", env = "GANTRY_DEMO_SCALE")]
    pub scale: String,
    /// Size of the asset update in MB; default scales 50 MB on 3.1 GB.
    #[arg(long)]
    pub update_mb: Option<f64>,
    /// Keep the work in this directory instead of a temporary one.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Where to write the HTML report [default: ./gantry-demo.html, or in --workdir].
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct DemoReport {
    scale_bytes: u64,
    workdir: PathBuf,
    generate_seconds: f64,
    v1: Step,
    noop_rebuild: Step,
    update_bytes: u64,
    update_changed_bytes: u64,
    v2: Step,
    cost: gantry_build::UpdateCost,
    delivery: super::demo_delivery::Delivery,
}

#[derive(Serialize)]
struct Step {
    manifest_digest: String,
    image_bytes: u64,
    seconds: f64,
    layers_built: usize,
    layers_cached: usize,
    reused_bytes: u64,
}

fn step(out: &gantry_build::BuildOutput) -> Step {
    Step {
        manifest_digest: out.manifest_digest.to_string(),
        image_bytes: out.total_size,
        seconds: out.seconds,
        layers_built: out.layers.iter().filter(|l| l.source == "built").count(),
        layers_cached: out.layers.iter().filter(|l| l.source == "cached").count(),
        reused_bytes: out.layers.iter().map(|l| l.reused_bytes).sum(),
    }
}

/// Runs `gantry demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let scale_bytes = parse_size(&args.scale)?;
    let update_mb = args
        .update_mb
        .unwrap_or_else(|| (50.0 * scale_bytes as f64 / 3.1e9).max(0.5));
    let tmp;
    let workdir = match &args.workdir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("gantry-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let say = |msg: String| {
        if !args.json {
            eprintln!("==> {msg}");
        }
    };
    let game = workdir.join("game");
    if game.exists() {
        std::fs::remove_dir_all(&game).with_context(|| format!("clearing {}", game.display()))?;
    }
    say(format!(
        "generating a {} sample game in {}",
        human_bytes(scale_bytes),
        game.display()
    ));
    let t = Instant::now();
    generate(
        &game,
        &SampleSpec {
            scale_bytes,
            seed: 1,
            ..Default::default()
        },
    )?;
    let generate_seconds = t.elapsed().as_secs_f64();
    let opts = |output: &str| BuildOptions {
        context: game.clone(),
        spec_file: None,
        output: workdir.join(output),
        cache_dir: Some(workdir.join("cache")),
        source_date_epoch: 0,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        tag: None,
        registry: Default::default(),
    };
    say("building v1 (cold cache)".into());
    let v1 = gantry_build::build(&opts("image-v1"), &NoProgress)?;
    say("rebuilding v1 with nothing changed".into());
    let noop = gantry_build::build(&opts("image-v1-again"), &NoProgress)?;
    anyhow::ensure!(
        noop.manifest_digest == v1.manifest_digest,
        "a no-op rebuild changed the manifest digest"
    );
    say(format!(
        "making the next day's build: about {update_mb:.1} MB of assets change"
    ));
    let upd = update(
        &game,
        &UpdateSpec {
            bytes: (update_mb * 1e6) as u64,
            seed: 1,
            kind: UpdateKind::Assets,
        },
    )?;
    say("building v2".into());
    let v2 = gantry_build::build(&opts("image-v2"), &NoProgress)?;
    let cost = update_cost(
        &OciLayout::open(&v1.layout)?,
        None,
        &OciLayout::open(&v2.layout)?,
        None,
    )?;
    say("pushing v1 and v2 to `gantry serve` and pulling each onto a node, both ways".into());
    let delivery = super::demo_delivery::run(&workdir, &v1.layout, &v2.layout, &say)?;
    let report = DemoReport {
        scale_bytes,
        workdir: workdir.clone(),
        generate_seconds,
        v1: step(&v1),
        noop_rebuild: step(&noop),
        update_bytes: upd.update_bytes,
        update_changed_bytes: upd.changed_bytes,
        v2: step(&v2),
        cost,
        delivery,
    };
    let html = match (&args.html, &args.workdir) {
        (Some(h), _) => h.clone(),
        (None, Some(w)) => w.join("gantry-demo.html"),
        (None, None) => PathBuf::from("gantry-demo.html"),
    };
    std::fs::write(
        &html,
        super::demo_delivery::html(
            &report.delivery.rows(),
            &super::demo_delivery::ReportText {
                scale_bytes,
                update_bytes: report.update_bytes,
                node: &report.delivery.node,
                layer_level_node: &report.delivery.layer_level_node,
                snapshotter_node: report.delivery.snapshotter_node.as_deref(),
            },
        ),
    )
    .with_context(|| format!("writing {}", html.display()))?;
    if args.json {
        return print_json(&report);
    }
    let pct = |n: u64| 100.0 * n as f64 / report.cost.image_bytes.max(1) as f64;
    let vs_update = |n: u64| n as f64 / report.update_bytes.max(1) as f64;
    println!();
    println!("Gantry demo — sample game of {}", human_bytes(scale_bytes));
    println!(
        "  build v1 (cold)        {:>8.1}s  image {}",
        report.v1.seconds,
        human_bytes(report.v1.image_bytes)
    );
    println!(
        "  rebuild, no change     {:>8.2}s  same digest, {} of {} layers from cache",
        report.noop_rebuild.seconds,
        report.noop_rebuild.layers_cached,
        v1.layers.len()
    );
    println!(
        "  build v2 after update  {:>8.1}s  {} of {} layers rebuilt, {} reused without recompressing",
        report.v2.seconds,
        report.v2.layers_built,
        v2.layers.len(),
        human_bytes(report.v2.reused_bytes)
    );
    println!();
    println!("What a node holding v1 downloads to run v2:");
    println!(
        "  {:<34} {:>10} {:>8} {:>10}",
        "method", "bytes", "% image", "× update"
    );
    for (name, n) in [
        ("whole image", report.cost.image_bytes),
        (
            "changed layers (layer-level)",
            report.cost.layer_level_bytes,
        ),
        ("changed chunks (Gantry)", report.cost.chunk_level_bytes),
        ("the update's own size (gzip -6)", report.update_bytes),
    ] {
        println!(
            "  {:<34} {:>10} {:>7.2}% {:>9.2}×",
            name,
            human_bytes(n),
            pct(n),
            vs_update(n)
        );
    }
    println!();
    println!("Delivery, measured each way (gantry serve on loopback):");
    println!("  layer-level node: {}", report.delivery.layer_level_node);
    println!("  Gantry's node:    {}", report.delivery.node);
    if let Some(node) = &report.delivery.snapshotter_node {
        println!("  snapshotter node: {node}");
    }
    let snap = report.delivery.snapshotter.is_some();
    println!(
        "  {:<8} {:>12} {:>9} {:>12} {:>9} {:>8} {:>8}{}",
        "step",
        "layer bytes",
        "seconds",
        "Gantry bytes",
        "seconds",
        "fewer",
        "faster",
        if snap {
            format!(" {:>12} {:>9} {:>8}", "+snap bytes", "seconds", "faster")
        } else {
            String::new()
        }
    );
    for row in report.delivery.rows() {
        let (l, g) = (row.layer_level, row.gantry);
        let s = row
            .snapshotter
            .map(|s| {
                format!(
                    " {:>12} {:>9.2} {:>7.1}×",
                    human_bytes(s.bytes),
                    s.seconds,
                    l.seconds / s.seconds.max(1e-6)
                )
            })
            .unwrap_or_default();
        println!(
            "  {:<8} {:>12} {:>9.2} {:>12} {:>9.2} {:>7.1}× {:>7.1}×{s}",
            row.step,
            human_bytes(l.bytes),
            l.seconds,
            human_bytes(g.bytes),
            g.seconds,
            l.bytes as f64 / g.bytes.max(1) as f64,
            l.seconds / g.seconds.max(1e-6)
        );
    }
    println!(
        "  (bytes measured: what the registry received for a push; what the registry sent to \
         the layer-level node, and what gantry agent fetched from it, for a pull)"
    );
    println!("  report: {}", html.display());
    if args.workdir.is_some() {
        println!("work kept in {}", workdir.display());
    }
    Ok(())
}
