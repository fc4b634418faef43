//! From raw `u8` pixels to normalised tensors on a device, ready for training.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::preprocess::{NormKind, Normalization};
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
        let idx = index_tensor(indices, &self.images.device());
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        (self.images.clone().select(0, idx), labels)
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
    pub fn new(dataset: &Dataset, kind: NormKind, device: &Device) -> Result<Self, DataError> {
        if dataset.train.is_empty() || dataset.test.is_empty() {
            return Err(DataError::Invalid(format!(
                "dataset {} has an empty train or test split",
                dataset.name
            )));
        }
        let normalization = Normalization::fit(kind, &dataset.train, dataset.shape, device)?;
        let to_device = |split: &Split| -> Result<LabelledImages, DataError> {
            Ok(LabelledImages {
                images: normalization.apply(&split.images, dataset.shape, device)?,
                labels: split.labels.clone(),
            })
        };
        Ok(Self {
            train: to_device(&dataset.train)?,
            test: to_device(&dataset.test)?,
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

/// Host indices as an index tensor on `device` (for `select`).
pub(crate) fn index_tensor(indices: &[usize], device: &Device) -> Tensor<1, Int> {
    let data: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(data, [indices.len()]), device)
}
