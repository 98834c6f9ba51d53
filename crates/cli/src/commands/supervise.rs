//! `gantry supervise`: a thin wrapper; the arguments and their conversion to the supervisor's
//! `Config` live in `gantry_supervise::cli`, shared with the static `gantry-supervise` binary.

pub use gantry_supervise::cli::SuperviseArgs;

/// Runs `gantry supervise`: supervises the game until it exits, then exits with its code.
pub fn run(args: SuperviseArgs) -> anyhow::Result<()> {
    gantry_supervise::cli::run_and_exit(args, "gantry supervise")
}
