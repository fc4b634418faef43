//! From raw `u8` pixels to normalised tensors on a device, ready for training.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};

use super::preprocess::Normalization;
use super::{DataError, Dataset, ImageShape, Split};

/// Images (already normalised, NCHW) with their class labels, on one device.
#[derive(Clone, Debug)]
pub struct LabelledImages {
    pub images: Tensor<4>,
    pub labels: Vec<u16>,
}

impl LabelledImages {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The rows at `indices`, as a batch.
    pub fn batch(&self, indices: &[usize]) -> (Tensor<4>, Vec<u16>) {
        let idx = crate::train::index_tensor(indices, &self.images.device());
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        (self.images.clone().select(0, idx), labels)
    }
}

/// Which preprocessing to fit on the train split (SPEC section 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preprocess {
    /// Per-channel mean/std normalisation.
    #[default]
    MeanStd,
    /// Mean/std, then ZCA whitening (eps 0.1), as the CIFAR runs do.
    Zca,
}

impl FromStr for Preprocess {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.to_ascii_lowercase().as_str() {
            "meanstd" | "mean-std" => Ok(Self::MeanStd),
            "zca" => Ok(Self::Zca),
            _ => Err(DataError::Invalid(format!(
                "unknown preprocessing `{s}`: use meanstd or zca"
            ))),
        }
    }
}

impl fmt::Display for Preprocess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MeanStd => "meanstd",
            Self::Zca => "zca",
        })
    }
}

/// A dataset moved to a device: both splits normalised with a transform fitted on train.
pub struct Prepared {
    pub train: LabelledImages,
    pub test: LabelledImages,
    pub classes: usize,
    pub shape: ImageShape,
    pub normalization: Normalization,
}

impl Prepared {
    pub fn new(dataset: &Dataset, kind: Preprocess, device: &Device) -> Result<Self, DataError> {
        if dataset.train.is_empty() || dataset.test.is_empty() {
            return Err(DataError::Invalid(format!(
                "dataset {} has an empty train or test split",
                dataset.name
            )));
        }
        let normalization = match kind {
            Preprocess::MeanStd => Normalization::fit_mean_std(&dataset.train, dataset.shape),
            Preprocess::Zca => Normalization::fit_zca(&dataset.train, dataset.shape, device)?,
        };
        let to_device = |split: &Split| LabelledImages {
            images: normalization.apply(&split.images, dataset.shape, device),
            labels: split.labels.clone(),
        };
        Ok(Self {
            train: to_device(&dataset.train),
            test: to_device(&dataset.test),
            classes: dataset.classes.len(),
            shape: dataset.shape,
            normalization,
        })
    }

    /// The training images at `indices` (e.g. a random-real draw).
    pub fn train_subset(&self, indices: &[usize]) -> LabelledImages {
        let (images, labels) = self.train.batch(indices);
        LabelledImages { images, labels }
    }
}
