//! Progress bars for long builds (stderr, hidden when it is not a terminal).

use gantry_build::{BuildProgress, LayerReport};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

/// A byte progress bar per layer.
pub struct BuildBars {
    bar: Mutex<Option<ProgressBar>>,
    quiet: bool,
}

impl BuildBars {
    /// Bars unless `quiet` (JSON output keeps stderr for errors only).
    pub fn new(quiet: bool) -> Self {
        BuildBars {
            bar: Mutex::new(None),
            quiet,
        }
    }
}

impl BuildProgress for BuildBars {
    fn layer_started(&self, name: &str, bytes: u64) {
        if self.quiet || bytes == 0 {
            return;
        }
        let bar = ProgressBar::new(bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn layer_progress(&self, _name: &str, done: u64) {
        if let Ok(slot) = self.bar.lock() {
            if let Some(bar) = slot.as_ref() {
                bar.set_position(done);
            }
        }
    }

    fn layer_finished(&self, r: &LayerReport) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(bar) = slot.take() {
                bar.finish_and_clear();
            }
        }
        if !self.quiet {
            eprintln!(
                "{:>10} {} {:>10} {:>6} chunks  {:<6} {:.1}s",
                r.name,
                &r.digest.to_string()[..19],
                crate::commands::human_bytes(r.size),
                r.chunks,
                r.source,
                r.seconds
            );
        }
        for warning in &r.warnings {
            eprintln!("warning: layer {}: {warning}", r.name);
        }
    }
}
