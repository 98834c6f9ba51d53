use std::path::PathBuf;

/// What went wrong while making or reading a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A path inside the image is not acceptable.
    #[error("invalid path {path:?} in image: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// A symlink would point outside the image root.
    #[error("symlink {path:?} -> {target:?} escapes the image root")]
    SymlinkEscapes { path: String, target: String },
    /// Reading a source file failed.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file changed size between planning and streaming.
    #[error("{path} changed while the layer was being built (expected {expected} bytes)")]
    SourceChanged { path: PathBuf, expected: u64 },
    /// Reading the tar stream for chunking failed.
    #[error("chunking the layer stream: {0}")]
    Chunking(#[source] std::io::Error),
    /// Writing the blob failed.
    #[error("writing layer blob: {0}")]
    Write(#[source] std::io::Error),
    /// Compression failed.
    #[error("compressing chunk: {0}")]
    Compress(String),
    /// A chunk index blob could not be parsed or is inconsistent.
    #[error("chunk index: {0}")]
    Index(String),
    /// A gzip stream is malformed.
    #[error("gzip stream: {0}")]
    Gzip(String),
}
