//! `gantry copy SRC DST`: registry ↔ layout ↔ registry.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use gantry_client::{copy_image, copy_layout, pull_to_layout, OciLayout, PullOptions};

use super::push::PushFlags;
use super::transfer::{runtime, Location, RegistryArgs, TransferBars};

/// Arguments of `gantry copy`.
#[derive(Args)]
pub struct CopyArgs {
    /// Source: `oci:DIR[:TAG]` or an image reference.
    pub src: String,
    /// Destination: `oci:DIR[:TAG]` or an image reference.
    pub dst: String,
    /// Platform to pick from a multi-platform source, as OS/ARCH.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    #[command(flatten)]
    pub push: PushFlags,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `gantry copy`.
pub fn run(args: CopyArgs) -> anyhow::Result<()> {
    let src = Location::parse(&args.src)?;
    let dst = Location::parse(&args.dst)?;
    let (os, arch) = super::pull::platform(&args.platform)?;
    let options = PullOptions {
        os,
        arch,
        ..PullOptions::default()
    };
    let rt = runtime()?;
    let bars = Arc::new(TransferBars::new(args.json));
    let context = || format!("copying {} to {}", args.src, args.dst);
    match (src, dst) {
        (
            Location::Layout { path, tag },
            Location::Layout {
                path: to,
                tag: to_tag,
            },
        ) => {
            let layout = OciLayout::open(&path)?;
            let report = copy_layout(&layout, tag.as_deref(), &to, to_tag.as_deref())
                .with_context(context)?;
            if args.json {
                return super::print_json(&report);
            }
            super::pull::print_report(&report);
        }
        (Location::Layout { path, tag }, Location::Registry { .. }) => {
            let report = super::push::push(
                &path,
                tag.as_deref(),
                &args.dst,
                &args.push,
                &args.registry,
                args.json,
            )
            .with_context(context)?;
            if args.json {
                return super::print_json(&report);
            }
            super::push::print_report(&report);
        }
        (
            Location::Registry {
                reference,
                plain_http,
            },
            Location::Layout { path, tag },
        ) => {
            let client = args.registry.client(&reference.registry, plain_http)?;
            let options = PullOptions { tag, ..options };
            let report = rt
                .block_on(pull_to_layout(&client, &reference, &path, &options, bars))
                .with_context(context)?;
            if args.json {
                return super::print_json(&report);
            }
            super::pull::print_report(&report);
        }
        (
            Location::Registry {
                reference,
                plain_http,
            },
            Location::Registry {
                reference: dest,
                plain_http: dest_plain_http,
            },
        ) => {
            // Blob by blob, streamed: what the destination holds is skipped, the same
            // registry mounts, a layer with a chunk index sends only the chunks the
            // destination lacks; the destination verifies every blob.
            let client = args.registry.client(&reference.registry, plain_http)?;
            let target = args.registry.client(&dest.registry, dest_plain_http)?;
            let mut push_options = args.push.options();
            if dest.registry == reference.registry {
                // Same registry: blobs are mounted from the source repository, not sent.
                push_options.mount_from = Some(reference.repository.clone());
            }
            let report = rt
                .block_on(copy_image(
                    &client,
                    &reference,
                    (&options.os, &options.arch),
                    &target,
                    &dest,
                    &push_options,
                    bars,
                ))
                .with_context(context)?;
            if args.json {
                return super::print_json(&report);
            }
            super::push::print_report(&report);
        }
    }
    Ok(())
}
