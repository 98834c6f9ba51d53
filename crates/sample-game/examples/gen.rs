//! Generates a sample repository (or updates one) and prints the report and the time taken.
//!
//! ```text
//! cargo run --release -p gantry-sample-game --example gen -- DIR [--scale 3.1GB] [--seed N]
//! cargo run --release -p gantry-sample-game --example gen -- DIR --update 50MB [--engine] [--seed N]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use gantry_sample_game::{
    generate, human_bytes, parse_size, update, SampleError, SampleSpec, UpdateKind, UpdateSpec,
};

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut scale = "3.1GB".to_string();
    let mut seed = 1u64;
    let mut update_bytes: Option<String> = None;
    let mut kind = UpdateKind::Assets;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scale" => scale = args.next().ok_or("--scale needs a value")?,
            "--seed" => {
                seed = args
                    .next()
                    .ok_or("--seed needs a value")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--update" => update_bytes = Some(args.next().ok_or("--update needs a value")?),
            "--engine" => kind = UpdateKind::Engine,
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    let dir = dir.ok_or("usage: gen DIR [--scale SIZE] [--seed N] [--update SIZE [--engine]]")?;
    let err = |e: SampleError| e.to_string();
    let start = Instant::now();
    if let Some(b) = update_bytes {
        let spec = UpdateSpec {
            bytes: parse_size(&b).map_err(err)?,
            seed,
            kind,
        };
        let r = update(&dir, &spec).map_err(err)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
        );
        eprintln!(
            "update to {} ({}) in {secs:.2} s: changed {} ({} gzip -6), {} entries changed, {} added, {} removed",
            r.tag,
            r.kind,
            human_bytes(r.changed_bytes),
            human_bytes(r.update_bytes),
            r.entries_changed.len(),
            r.entries_added.len(),
            r.entries_removed.len()
        );
    } else {
        let spec = SampleSpec {
            scale_bytes: parse_size(&scale).map_err(err)?,
            seed,
            ..Default::default()
        };
        let r = generate(&dir, &spec).map_err(err)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
        );
        eprintln!(
            "generated {} files, {} in {secs:.2} s",
            r.files_written,
            human_bytes(r.total_bytes)
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
