//! `gantry supervise`: the PID 1 wrapper of a dedicated game server in its container.
//!
//! It replaces the original sample's `start.py` → `start.sh` and fixes that wrapper's flaws:
//! - [`port`]: picks the game port (fixed, free by binding port 0, or the one Agones
//!   assigned, told apart from the container port it maps to), exports it and substitutes
//!   `${SERVER_PORT}` into the command's arguments;
//! - [`metadata`]: where the server runs (EC2 IMDSv2 with a short time budget, else hostname
//!   and environment), the image digest and node name;
//! - [`event`] / [`report`]: status events `starting`, `ready`, `unhealthy`, `terminating`,
//!   `exited` as JSON lines on stdout, to HTTP endpoints (background queue, retries, never
//!   blocking the game) and to the Agones SDK (`/ready`, `/health`, `/shutdown`);
//! - [`health`]: TCP, UDP or command probes; `ready` only once a probe passed;
//! - [`process`]: the game in its own process group, signal forwarding, a grace period then
//!   SIGKILL, reaping of every zombie (PID 1 or child subreaper), the game's exit code.
//!
//! [`run`] is the entry point; `gantry supervise` and the `gantry-supervise` binary only parse
//! arguments ([`cli::SuperviseArgs`]) into a [`Config`].

pub mod agones;
pub mod cli;
pub mod config;
pub mod dns;
pub mod error;
pub mod event;
pub mod health;
pub mod metadata;
pub mod port;
pub mod process;
pub mod report;
pub mod secret;
mod supervisor;

pub use config::{parse_duration, Config, HealthCheck, PortSpec, Protocol};
pub use error::Error;
pub use event::{Event, Status};
pub use metadata::Metadata;
pub use port::substitute;
pub use process::ChildExit;
pub use supervisor::{run, supervise, Outcome};

/// Environment variable holding the bearer token of the HTTP report sinks (deprecated in
/// favour of [`REPORT_TOKEN_FILE_ENV`]). `gantry supervise` reads it, removes it from its own
/// environment and scrubs it from its `/proc/<pid>/environ` before starting the game.
pub const REPORT_TOKEN_ENV: &str = "GANTRY_REPORT_TOKEN";

/// Environment variable naming a file that holds the bearer token of the HTTP report sinks
/// (`--report-token-file`; `gantry deploy render` mounts the report Secret there).
pub const REPORT_TOKEN_FILE_ENV: &str = "GANTRY_REPORT_TOKEN_FILE";

/// Environment variable (and `${NAME}` placeholder in the command's arguments) carrying the
/// port players connect to: Agones' host port under Agones, else the game port. A game that
/// advertises itself (to a server browser, say) needs this one, not the port it listens on.
pub const PUBLIC_PORT_ENV: &str = "GANTRY_PUBLIC_PORT";
