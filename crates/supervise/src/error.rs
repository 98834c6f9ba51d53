//! Errors of the supervisor, with what they concern (port, URL, program).

use crate::config::Protocol;
use std::io;

/// Why the supervisor could not start or run the game.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing to run.
    #[error("no command to supervise: give it after `--`")]
    NoCommand,
    /// A malformed option value.
    #[error("invalid {what} `{input}`: {reason}")]
    Invalid {
        /// Which option.
        what: &'static str,
        /// The value given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Binding port 0 to find a free port failed.
    #[error("cannot pick a free {protocol} port (bind {addr}): {source}")]
    FreePort {
        /// TCP or UDP.
        protocol: Protocol,
        /// The address bound.
        addr: String,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// The Agones SDK did not tell the port it assigned.
    #[error("cannot read the game port from the Agones SDK at {url}: {reason}")]
    AgonesPort {
        /// The SDK's `/gameserver` URL.
        url: String,
        /// The last failure.
        reason: String,
    },
    /// The game's command could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// argv\[0\].
        program: String,
        /// The exec error.
        #[source]
        source: io::Error,
    },
    /// A signal handler could not be installed.
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        /// Signal name.
        signal: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The report token file could not be read, or is empty.
    #[error("cannot read the report token file {path}: {source}")]
    ReportTokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The async runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
}

impl Error {
    /// The exit code a shell would use for this failure: 127 when the program was not found,
    /// 126 when it could not be executed, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => 127,
            Error::Spawn { .. } => 126,
            _ => 1,
        }
    }
}
