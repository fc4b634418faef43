//! TEMPORARY: mean/std only, replaced by the full preprocessing module (ZCA) on merge.
use burn::tensor::{Device, Tensor, TensorData};

use super::{DataError, ImageShape, Split};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Normalization {
    MeanStd { mean: Vec<f32>, std: Vec<f32> },
}

impl Normalization {
    pub fn fit_mean_std(train: &Split, shape: ImageShape) -> Self {
        let hw = shape.height * shape.width;
        let mut mean = vec![0f64; shape.channels];
        let mut sq = vec![0f64; shape.channels];
        for img in train.images.chunks(shape.numel()) {
            for c in 0..shape.channels {
                for &p in &img[c * hw..(c + 1) * hw] {
                    let v = p as f64 / 255.0;
                    mean[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let n = (train.len() * hw) as f64;
        let std = (0..shape.channels)
            .map(|c| ((sq[c] / n - (mean[c] / n).powi(2)).max(0.0).sqrt()) as f32)
            .collect();
        let mean = mean.iter().map(|m| (m / n) as f32).collect();
        Self::MeanStd { mean, std }
    }

    pub fn fit_zca(_: &Split, _: ImageShape, _: &Device) -> Result<Self, DataError> {
        Err(DataError::Invalid("zca not yet".into()))
    }

    pub fn apply(&self, images: &[u8], shape: ImageShape, device: &Device) -> Tensor<4> {
        let Self::MeanStd { mean, std } = self;
        let n = images.len() / shape.numel();
        let hw = shape.height * shape.width;
        let v: Vec<f32> = images
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let c = (i / hw) % shape.channels;
                (p as f32 / 255.0 - mean[c]) / std[c]
            })
            .collect();
        Tensor::from_data(
            TensorData::new(v, [n, shape.channels, shape.height, shape.width]),
            device,
        )
    }
}
