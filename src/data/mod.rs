//! Datasets: one file per on-disk format, plus discovery, download and preprocessing.
//!
//! Every loader produces the same in-memory [`Dataset`]: raw `u8` pixels in NCHW order
//! with class labels, so that preprocessing (mean/std, ZCA) happens in one place.

use std::path::PathBuf;

pub mod cifar;
#[cfg(not(target_arch = "wasm32"))]
pub mod download;
pub mod embedded;
mod files;
pub mod folder;
pub mod idx;
pub mod mat;
pub mod packed;
pub mod prepare;
pub mod preprocess;
pub mod registry;
pub mod subset;
pub mod svhn;

pub use folder::FolderOptions;
pub(crate) use prepare::index_tensor;
pub use prepare::{LabelledImages, Prepared};
pub use preprocess::{NormKind, Normalization};
pub use registry::{
    DatasetInfo, DatasetStatus, KNOWN, SearchPaths, Source, list, load, load_with, locate, resolve,
};

/// Channels, height and width of every image of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    /// Numbers per image (C * H * W).
    pub fn numel(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// One split (train or test): `labels.len()` images of `shape`, NCHW, 0..=255.
#[derive(Clone, Debug, Default)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A labelled image dataset held in memory.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Canonical name, e.g. `fashion-mnist`, `cifar10`, or the folder name.
    pub name: String,
    pub classes: Vec<String>,
    pub shape: ImageShape,
    pub train: Split,
    pub test: Split,
}

/// Errors from finding, reading, downloading or preprocessing data. Each names the file,
/// what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: expected {expected}, found {found}")]
    Format {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("dataset `{name}` not found; looked in: {searched}. {hint}")]
    NotFound {
        name: String,
        searched: String,
        hint: String,
    },
    #[error("unknown dataset `{0}`; run `haba datasets` to list the known ones")]
    Unknown(String),
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error(
        "checksum mismatch for {url}: expected {expected}, found {found}; the download was deleted"
    )]
    Checksum {
        url: String,
        expected: String,
        found: String,
    },
    #[error("{0}")]
    Invalid(String),
}
