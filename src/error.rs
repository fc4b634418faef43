//! The library's error type: every failure names its cause and what to do about it.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Net(#[from] crate::nets::NetError),
    #[error(transparent)]
    Affine(#[from] crate::haba::affine::AffineError),
    #[error("{0}")]
    Device(String),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A run's artifact (or report file) that cannot be written or read back as expected.
    #[error("{path}: {reason}")]
    Artifact { path: PathBuf, reason: String },
    /// The bytes of an artifact that is not in a file (see `Artifact::from_bytes`).
    #[error("distilled set: {0}")]
    ArtifactBytes(String),
    #[error("training diverged: {0}")]
    NonFinite(String),
}
