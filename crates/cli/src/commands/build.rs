//! `gantry build`.

use crate::commands::{human_bytes, print_json};
use crate::progress::BuildBars;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `gantry build`.
#[derive(Args)]
pub struct BuildArgs {
    /// The game repository holding gantry.toml.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// OCI image layout directory to write (replaced atomically).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Spec file, default DIR/gantry.toml.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Tag to give the image instead of the spec's.
    #[arg(long)]
    pub tag: Option<String>,
    /// Build cache directory.
    #[arg(long, env = "GANTRY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Build without reading or writing the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Compression threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Push the built image to this reference (`http://` prefix for plain HTTP), sending
    /// only what the registry lacks.
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    #[command(flatten)]
    pub push_flags: super::push::PushFlags,
    /// Registry access, for `--push` and for a `[base] image` reference.
    #[command(flatten)]
    pub registry: super::transfer::RegistryArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The default cache: `$XDG_CACHE_HOME/gantry/build` or `~/.cache/gantry/build`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("gantry/build"))
}

/// `SOURCE_DATE_EPOCH` from the environment, else 0.
pub fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds")),
        _ => Ok(0),
    }
}

/// Options for the library from the arguments.
pub fn options(args: &BuildArgs) -> anyhow::Result<gantry_build::BuildOptions> {
    let cache_dir = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(default_cache_dir)
    };
    Ok(gantry_build::BuildOptions {
        context: args.dir.clone(),
        spec_file: args.file.clone(),
        output: args.output.clone(),
        cache_dir,
        source_date_epoch: source_date_epoch()?,
        threads: args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        tag: args.tag.clone(),
        registry: args.registry.options(false)?,
    })
}

/// Runs `gantry build`.
pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let opts = options(&args)?;
    let out = gantry_build::build(&opts, &BuildBars::new(args.json))
        .with_context(|| format!("building {}", args.dir.display()))?;
    let pushed = match &args.push {
        Some(dest) => Some(super::push::push(
            &out.layout,
            Some(&out.tag),
            dest,
            &args.push_flags,
            &args.registry,
            args.json,
        )?),
        None => None,
    };
    if args.json {
        // The build's object, with a `push` member when it was pushed.
        let mut value = serde_json::to_value(&out)?;
        if let (Some(p), Some(obj)) = (&pushed, value.as_object_mut()) {
            obj.insert("push".into(), serde_json::to_value(p)?);
        }
        return print_json(&value);
    }
    println!("built {} in {:.1}s", out.image, out.seconds);
    println!("  layout    {}", out.layout.display());
    println!("  manifest  {}", out.manifest_digest);
    println!(
        "  size      {} in {} layers",
        human_bytes(out.total_size),
        out.layers.len()
    );
    if let Some(p) = &pushed {
        super::push::print_report(p);
    }
    Ok(())
}
