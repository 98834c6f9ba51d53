//! The crate's error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while generating or updating a sample repository.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A size string such as `3.1GB` could not be parsed.
    #[error("invalid size {input:?}: {reason}")]
    InvalidSize {
        /// The string as given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A spec value is out of range (for example a zero scale).
    #[error("invalid sample spec: {0}")]
    InvalidSpec(String),
    /// Reading or writing a file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `generate` was pointed at a directory that already holds files.
    #[error("{} is not empty; the sample game is generated into a new or empty directory", path.display())]
    DirNotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// `update` was pointed at a directory without generator state.
    #[error("{} is not a generated sample-game repository (no {} found)", path.display(), crate::STATE_FILE)]
    NotARepository {
        /// The directory.
        path: PathBuf,
    },
    /// The generator state file could not be parsed or written.
    #[error("invalid generator state in {}: {source}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A file of the repository does not have the shape the generator wrote.
    #[error("malformed {}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Attaches a path to I/O errors.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T, SampleError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T, SampleError> {
        self.map_err(|source| SampleError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
