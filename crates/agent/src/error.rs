//! The agent's error type.

use std::path::PathBuf;

use gantry_oci::Digest;

/// Why the agent could not answer a request or start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The upstream registry could not be reached or its answer not read.
    #[error("upstream {url}: {message}")]
    Upstream {
        /// The URL asked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The upstream answered with an unexpected status.
    #[error("upstream {url}: status {status}")]
    UpstreamStatus {
        /// The URL asked.
        url: String,
        /// Its status.
        status: u16,
    },
    /// Bytes from upstream did not match their digest, twice.
    #[error("{what}: upstream sent content with digest {actual}, expected {expected} (refetched once; not served)")]
    Corrupt {
        /// What was fetched (chunk of a layer, a whole blob).
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// What it had.
        actual: Digest,
    },
    /// A chunk index or manifest could not be used.
    #[error("{what}: {message}")]
    Invalid {
        /// The document.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// Work moved off the async workers did not finish (it panicked or was cancelled).
    #[error("{what}: background task failed: {message}")]
    Task {
        /// What the task was doing.
        what: String,
        /// Why it did not finish.
        message: String,
    },
    /// No upstream is configured for the registry containerd asked about.
    #[error("no upstream configured for registry {0:?}")]
    UnknownUpstream(String),
}

impl AgentError {
    /// Runs blocking file work (reads, writes, hashing, directory scans) on tokio's
    /// blocking pool, so the async workers keep answering requests meanwhile.
    pub async fn blocking<T, F>(what: &str, f: F) -> Result<T, AgentError>
    where
        F: FnOnce() -> Result<T, AgentError> + Send + 'static,
        T: Send + 'static,
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| AgentError::Task {
                what: what.to_string(),
                message: e.to_string(),
            })?
    }

    /// Maps an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AgentError {
        let path = path.into();
        move |source| AgentError::Io { path, source }
    }
}
