use std::path::PathBuf;

/// Why a build failed. Every variant names the file, layer or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The spec text is invalid (no file known yet).
    #[error("build spec: {0}")]
    Spec(String),
    /// The spec file is invalid.
    #[error("{path}: {message}")]
    SpecFile { path: PathBuf, message: String },
    /// A source named by the spec does not exist.
    #[error("layer {layer:?}: source {path} does not exist")]
    MissingSource { layer: String, path: PathBuf },
    /// A glob matched nothing or is malformed.
    #[error("layer {layer:?}: {message}")]
    Source { layer: String, message: String },
    /// An archive is malformed or unsafe.
    #[error("layer {layer:?}: archive {archive}: {message}")]
    Archive {
        layer: String,
        archive: PathBuf,
        message: String,
    },
    /// The base image could not be used.
    #[error("base image {location}: {message}")]
    Base { location: String, message: String },
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Building a layer failed.
    #[error("layer {layer:?}: {source}")]
    Layer {
        layer: String,
        #[source]
        source: gantry_layer::LayerError,
    },
    /// An OCI layout could not be read or written.
    #[error(transparent)]
    Client(#[from] gantry_client::ClientError),
    /// An OCI layout could not be read.
    #[error("OCI layout {path}: {message}")]
    Layout { path: PathBuf, message: String },
    /// The supervisor binary of `supervise = true` is missing or unusable.
    #[error("supervisor binary {path}: {message}")]
    SuperviseBinary { path: PathBuf, message: String },
}

impl BuildError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io { path, source }
    }
}
