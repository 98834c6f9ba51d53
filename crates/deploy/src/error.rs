//! Errors of rendering, pinning and applying, each naming what it was about (the flag, the
//! file, the object, the API server's URL).

/// What went wrong in `gantry deploy`.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A flag or input value is not acceptable.
    #[error("{what}: {message}")]
    Invalid {
        /// Which value (a flag, a file, an object).
        what: String,
        /// Why.
        message: String,
    },
    /// YAML or JSON that could not be written or read.
    #[error("{what}: {message}")]
    Format {
        /// Which document.
        what: String,
        /// The parser's or serializer's message.
        message: String,
    },
    /// Reading a file.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No usable kubeconfig (none found, or the context is unknown).
    #[error("no usable kubeconfig: {message} (set KUBECONFIG, pass --kubeconfig FILE, or create ~/.kube/config)")]
    Kubeconfig {
        /// What kube said.
        message: String,
    },
    /// The API server could not be reached.
    #[error("Kubernetes API server {server} unreachable: {message}")]
    Unreachable {
        /// The server URL from the kubeconfig.
        server: String,
        /// The connection error chain.
        message: String,
    },
    /// The API server refused the credentials or the permission.
    #[error("Kubernetes API server {server}: {what} refused ({code}): {message}")]
    Forbidden {
        /// The server URL.
        server: String,
        /// The request (verb and object).
        what: String,
        /// 401 or 403.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// Any other answer of the API server.
    #[error("Kubernetes API server {server}: {what} failed ({code}): {message}")]
    Api {
        /// The server URL.
        server: String,
        /// The request.
        what: String,
        /// HTTP status.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The rollout did not finish in time.
    #[error("rollout of {what} not finished after {seconds}s: {state}")]
    Timeout {
        /// The object (`Deployment ns/name`).
        what: String,
        /// The time allowed.
        seconds: u64,
        /// Where it stood: replicas and which pods run which digest.
        state: String,
    },
}

impl DeployError {
    /// An [`DeployError::Invalid`] for `what`.
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        DeployError::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// Results of this crate.
pub type DeployResult<T> = Result<T, DeployError>;
