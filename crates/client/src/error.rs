//! The client's error type: every variant names the registry, repository, URL, digest or
//! file at fault.

use std::path::PathBuf;

use gantry_oci::Digest;

/// A registry client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request could not be sent or its answer not read (connection refused or
    /// dropped, TLS failure, timeout), after retries.
    #[error("{method} {url}: {message}")]
    Http {
        /// HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// What went wrong, with its causes.
        message: String,
    },
    /// The registry answered with an error status.
    #[error("{registry}: {what}: {status}{detail}")]
    Status {
        /// Registry host.
        registry: String,
        /// What was asked ("pull manifest studio/game:v1", …).
        what: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error codes and messages, formatted (may be empty).
        detail: String,
    },
    /// Authentication against the registry failed.
    #[error("{registry}: authentication failed: {message}")]
    Auth {
        /// Registry host.
        registry: String,
        /// What went wrong.
        message: String,
    },
    /// Received content does not match the digest it was asked by.
    #[error("{what}: content has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// What was fetched.
        what: String,
        /// The digest asked for.
        expected: Digest,
        /// The digest of the received bytes.
        actual: Digest,
    },
    /// Received content has the wrong size.
    #[error("{what}: received {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// What was fetched.
        what: String,
        /// Size announced by the descriptor.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// A manifest, index or other document is malformed or unsupported.
    #[error("{what}: {message}")]
    Invalid {
        /// The document.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// An OCI image layout could not be read or written.
    #[error("OCI layout {path}: {message}")]
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Stored credentials could not be read or written.
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialsError),
}

impl ClientError {
    /// Maps an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ClientError {
        let path = path.into();
        move |source| ClientError::Io { path, source }
    }

    /// The HTTP status of a registry error answer, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Result of client operations.
pub type ClientResult<T> = Result<T, ClientError>;

/// Formats a reqwest error with its source chain (reqwest's own Display omits the cause).
pub(crate) fn describe(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
