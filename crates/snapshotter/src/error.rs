//! The snapshotter's error type and its mapping onto the gRPC codes containerd understands.

use std::path::PathBuf;

/// Everything that can go wrong in the snapshotter.
///
/// `NotFound`, `AlreadyExists`, `FailedPrecondition` and `InvalidArgument` become the gRPC
/// codes of the same name, which containerd's proxy turns back into its own `errdefs`
/// errors (e.g. the unpacker treats `AlreadyExists` from a prepare as "already unpacked");
/// everything else becomes `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot has this key or name.
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    /// A snapshot with this key or name exists already.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The snapshot is not in a state that allows the operation (e.g. it has children, or
    /// is not active).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed (e.g. a parent that is not committed, an unknown
    /// field path, a bad filter).
    #[error("{0}")]
    InvalidArgument(String),
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata file could not be encoded or decoded.
    #[error("metadata file {path}: {source}")]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The gRPC server failed.
    #[error("serving the snapshots API on {address}: {source}")]
    Serve {
        /// The unix socket.
        address: PathBuf,
        /// The underlying error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The fast path could not build a layer (the layer then takes the normal path).
    #[error("fast path: {0}")]
    FastPath(String),
    /// The fast path's tar applier refused or failed.
    #[error("fast path: {0}")]
    Unpack(#[from] crate::unpack::UnpackError),
    /// A blocking task panicked or was cancelled.
    #[error("blocking snapshotter task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The snapshotter's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] with `context`.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    /// Wraps the error as [`Error::Io`] with the context `f()` returns.
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::AlreadyExists(_) => tonic::Status::already_exists(message),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            _ => tonic::Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes() {
        let code = |e: Error| tonic::Status::from(e).code();
        assert_eq!(code(Error::NotFound("k".into())), tonic::Code::NotFound);
        assert_eq!(
            code(Error::AlreadyExists("k".into())),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            code(Error::FailedPrecondition("x".into())),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(Error::InvalidArgument("x".into())),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(Error::io("x", std::io::Error::other("y"))),
            tonic::Code::Internal
        );
    }
}
