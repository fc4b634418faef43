//! Input normalisation: fitted on the train split, stored with a run, re-applied to any
//! images, and inverted to show (synthetic) images in true colour.
//!
//! Pixels are first scaled to [0, 1] (`u8 / 255`, torchvision's `ToTensor`). Then either
//! - [`Normalization::MeanStd`]: `(x - mean_c) / std_c` per channel, or
//! - [`Normalization::Zca`]: ZCA whitening of the flattened image, as the MTT and HaBa CIFAR runs use it.
//!
//! # What the reference does for ZCA (checked against the code, not assumed)
//! MTT (`GeorgeCazenavette/mtt-distillation`, `utils.py::get_dataset`) and HaBa
//! (`Huage001/DatasetFactorization`, same function) build, under `--zca`, the transform
//! `transforms.Compose([transforms.ToTensor()])` *without* `Normalize`: ZCA is fitted on the
//! [0, 1] train images directly, with no per-channel mean/std step before it. They then call
//! `kornia.enhance.ZCAWhitening(eps=0.1, compute_inv=True).fit(train)`; kornia 0.6.3
//! (`kornia/enhance/zca.py`, `zca_mean`, default `unbiased=True`) computes
//! - `mean` = per-feature mean over the N flattened images (D = C*H*W features);
//! - `cov = (X - mean)^T (X - mean) / (N - 1)`;
//! - `U, S, _ = svd(cov)`; `T = U diag(1 / sqrt(S + eps)) U^T`,
//!   `T_inv = U diag(sqrt(S + eps)) U^T`;
//! - forward `(x - mean) @ T`, inverse `x @ T_inv + mean` (kornia writes it as
//!   `(x + mean @ T) @ T_inv`, the same thing).
//!
//! The same fitted transform is applied to the test split. Here the covariance is one Burn
//! matmul per chunk of images on the given device, the eigen-decomposition (equal to the
//! SVD for a symmetric positive semi-definite matrix) runs in f64 on the CPU
//! ([`eigen`]), and the two D x D matrices are formed on the device again. Eigenvalues that
//! round-off leaves slightly negative are clamped to 0 (the SVD would report their
//! magnitude, about 1e-10; either is negligible next to eps = 0.1).
//!
//! Without `--zca` the reference normalises with hard-coded per-dataset constants; here
//! mean and std are fitted on the train split instead (population std).

pub mod eigen;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{DataError, ImageShape, Split};

/// The eps the reference adds to the covariance eigenvalues (kornia `ZCAWhitening(eps=0.1)`).
pub const ZCA_EPS: f32 = 0.1;

/// Numbers per chunk of images uploaded to the device while fitting (64 MB of f32), small
/// enough for any WebGPU buffer limit.
const CHUNK_NUMBERS: usize = 1 << 24;

/// Which normalisation to fit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NormKind {
    MeanStd,
    Zca { eps: f32 },
}

impl NormKind {
    /// ZCA with the reference's eps.
    pub fn zca() -> Self {
        NormKind::Zca { eps: ZCA_EPS }
    }
}

/// `meanstd`, `zca` (eps 0.1) or `zca:EPS`, as the command line spells them.
impl std::str::FromStr for NormKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        let lower = s.to_ascii_lowercase();
        match lower.split_once(':') {
            None if lower == "meanstd" || lower == "mean-std" => Ok(NormKind::MeanStd),
            None if lower == "zca" => Ok(NormKind::zca()),
            Some(("zca", eps)) => eps
                .parse()
                .map(|eps| NormKind::Zca { eps })
                .map_err(|_| DataError::Invalid(format!("`{s}`: ZCA eps must be a number"))),
            _ => Err(DataError::Invalid(format!(
                "unknown preprocessing `{s}`: use meanstd, zca or zca:EPS"
            ))),
        }
    }
}

impl std::fmt::Display for NormKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NormKind::MeanStd => f.write_str("meanstd"),
            NormKind::Zca { eps } if *eps == ZCA_EPS => f.write_str("zca"),
            NormKind::Zca { eps } => write!(f, "zca:{eps}"),
        }
    }
}

/// A fitted normalisation. All values refer to pixels scaled to [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalization {
    /// Per-channel mean and standard deviation.
    MeanStd { mean: Vec<f32>, std: Vec<f32> },
    /// ZCA whitening of the flattened CHW image (D = C*H*W features).
    Zca {
        /// Per-feature mean, length D.
        mean: Vec<f32>,
        /// `U diag(1/sqrt(S + eps)) U^T`, D x D row-major (symmetric).
        whiten: Vec<f32>,
        /// `U diag(sqrt(S + eps)) U^T`, D x D row-major: the inverse of `whiten`.
        unwhiten: Vec<f32>,
        eps: f32,
    },
}

impl Normalization {
    /// Fits `kind` on the train split (`train.images` holds `train.len()` images of `shape`).
    /// ZCA computes its covariance on `device`; mean/std needs no device.
    pub fn fit(
        kind: NormKind,
        train: &Split,
        shape: ImageShape,
        device: &Device,
    ) -> Result<Self, DataError> {
        match kind {
            NormKind::MeanStd => Self::fit_mean_std(train, shape),
            NormKind::Zca { eps } => Self::fit_zca(train, shape, eps, device),
        }
    }

    /// Per-channel mean and population std of the [0, 1]-scaled train pixels. A channel
    /// that never varies gets std 1, so it is only shifted.
    pub fn fit_mean_std(train: &Split, shape: ImageShape) -> Result<Self, DataError> {
        check_split(train, shape, 1)?;
        let plane = shape.height * shape.width;
        // Exact integer sums: at most 255^2 * 2^40 fits in u64 for any realistic dataset.
        let mut sum = vec![0u64; shape.channels];
        let mut squares = vec![0u64; shape.channels];
        for image in train.images.chunks_exact(shape.numel()) {
            for (c, channel) in image.chunks_exact(plane).enumerate() {
                for &p in channel {
                    sum[c] += p as u64;
                    squares[c] += (p as u64) * (p as u64);
                }
            }
        }
        let count = (train.len() * plane) as f64;
        let mut mean = Vec::with_capacity(shape.channels);
        let mut std = Vec::with_capacity(shape.channels);
        for c in 0..shape.channels {
            let m = sum[c] as f64 / count;
            let var = (squares[c] as f64 / count - m * m).max(0.0);
            mean.push((m / 255.0) as f32);
            let s = var.sqrt() / 255.0;
            std.push(if s > 0.0 { s as f32 } else { 1.0 });
        }
        Ok(Normalization::MeanStd { mean, std })
    }

    /// ZCA whitening fitted as kornia's `ZCAWhitening(eps, unbiased=True)` (see the module
    /// documentation). Needs at least two images.
    pub fn fit_zca(
        train: &Split,
        shape: ImageShape,
        eps: f32,
        device: &Device,
    ) -> Result<Self, DataError> {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(DataError::Invalid(format!(
                "ZCA eps must be a positive number, found {eps}"
            )));
        }
        check_split(train, shape, 2)?;
        let d = shape.numel();
        let n = train.len();

        // Per-feature mean in f64 on the CPU.
        let mut sums = vec![0u64; d];
        for image in train.images.chunks_exact(d) {
            for (s, &p) in sums.iter_mut().zip(image) {
                *s += p as u64;
            }
        }
        let mean: Vec<f64> = sums
            .iter()
            .map(|&s| s as f64 / (255.0 * n as f64))
            .collect();

        // cov = sum over chunks of Xc^T Xc, with Xc the centred chunk, on the device.
        let rows_per_chunk = (CHUNK_NUMBERS / d).max(1);
        let mut acc: Option<Tensor<2>> = None;
        for chunk in train.images.chunks(rows_per_chunk * d) {
            let rows = chunk.len() / d;
            let centred: Vec<f32> = chunk
                .chunks_exact(d)
                .flat_map(|image| {
                    image
                        .iter()
                        .zip(&mean)
                        .map(|(&p, &m)| (p as f64 / 255.0 - m) as f32)
                })
                .collect();
            let x = Tensor::<2>::from_data(TensorData::new(centred, [rows, d]), device);
            let gram = x.clone().transpose().matmul(x);
            acc = Some(match acc {
                Some(a) => a + gram,
                None => gram,
            });
        }
        let gram = acc.ok_or_else(|| DataError::Invalid("ZCA: no train images".into()))?;
        let cov: Vec<f64> = read_f32(gram.div_scalar((n - 1) as f32))?
            .into_iter()
            .map(f64::from)
            .collect();

        let eig = eigen::sym_eigen(cov, d).map_err(DataError::Invalid)?;
        let scale = |f: fn(f64) -> f64| -> Vec<f32> {
            eig.values
                .iter()
                .map(|&s| f(s.max(0.0) + eps as f64) as f32)
                .collect()
        };
        let inv_sqrt = scale(|v| 1.0 / v.sqrt());
        let sqrt = scale(f64::sqrt);

        // U diag(g) U^T with the eigenvectors as rows of V: V^T (g .* V).
        let v = Tensor::<2>::from_data(
            TensorData::new(eig.vectors.iter().map(|&x| x as f32).collect(), [d, d]),
            device,
        );
        let reconstruct = |g: Vec<f32>| -> Result<Vec<f32>, DataError> {
            let g = Tensor::<2>::from_data(TensorData::new(g, [d, 1]), device);
            read_f32(v.clone().transpose().matmul(v.clone() * g))
        };
        Ok(Normalization::Zca {
            mean: mean.iter().map(|&m| m as f32).collect(),
            whiten: reconstruct(inv_sqrt)?,
            unwhiten: reconstruct(sqrt)?,
            eps,
        })
    }

    /// Normalised float NCHW tensor on `device` for `images` (u8 NCHW of `shape`).
    /// The result is f32 on the device (600 MB for all CIFAR-10 train images), so large
    /// splits are better applied in batches, through [`on_device`](Self::on_device).
    pub fn apply(
        &self,
        images: &[u8],
        shape: ImageShape,
        device: &Device,
    ) -> Result<Tensor<4>, DataError> {
        let x = pixels_to_tensor(images, shape, device)?;
        self.on_device(device)?.normalize(x)
    }

    /// Normalises a float NCHW tensor of [0, 1] pixels (for example augmented images).
    pub fn apply_tensor(&self, x: Tensor<4>) -> Result<Tensor<4>, DataError> {
        self.on_device(&x.device())?.normalize(x)
    }

    /// The [0, 1] pixels that normalise to `x`. Real images come back in [0, 1]; learned
    /// ones may leave it, so clamp when converting to bytes.
    pub fn invert(&self, x: Tensor<4>) -> Result<Tensor<4>, DataError> {
        self.on_device(&x.device())?.invert(x)
    }

    /// The tensors of this normalisation on `device`, for applying it to many batches.
    pub fn on_device(&self, device: &Device) -> Result<DeviceNormalization, DataError> {
        self.check()?;
        Ok(match self {
            Normalization::MeanStd { mean, std } => {
                let c = mean.len();
                let per_channel = |values: &[f32]| {
                    Tensor::<4>::from_data(TensorData::new(values.to_vec(), [1, c, 1, 1]), device)
                };
                DeviceNormalization::MeanStd {
                    mean: per_channel(mean),
                    std: per_channel(std),
                }
            }
            Normalization::Zca {
                mean,
                whiten,
                unwhiten,
                ..
            } => {
                let d = mean.len();
                let matrix =
                    |m: &[f32]| Tensor::<2>::from_data(TensorData::new(m.to_vec(), [d, d]), device);
                DeviceNormalization::Zca {
                    mean: Tensor::<2>::from_data(TensorData::new(mean.clone(), [1, d]), device),
                    whiten: matrix(whiten),
                    unwhiten: matrix(unwhiten),
                }
            }
        })
    }

    /// [`apply`](Self::apply) on the CPU, without a device: normalised f32 NCHW.
    /// ZCA costs D^2 multiply-adds per image, so this suits a few images, not a dataset.
    pub fn apply_slice(&self, images: &[u8], shape: ImageShape) -> Result<Vec<f32>, DataError> {
        self.check_shape(shape)?;
        image_count(images.len(), shape)?;
        let x: Vec<f32> = images.iter().map(|&p| p as f32 / 255.0).collect();
        Ok(match self {
            Normalization::MeanStd { mean, std } => {
                per_channel(x, shape, |v, c| (v - mean[c]) / std[c])
            }
            Normalization::Zca { mean, whiten, .. } => {
                let centred: Vec<f32> = x
                    .chunks_exact(mean.len())
                    .flat_map(|image| image.iter().zip(mean).map(|(v, m)| v - m))
                    .collect();
                rows_times(&centred, mean.len(), whiten)
            }
        })
    }

    /// [`invert`](Self::invert) on the CPU: [0, 1] pixels, f32 NCHW.
    pub fn invert_slice(&self, x: &[f32], shape: ImageShape) -> Result<Vec<f32>, DataError> {
        self.check_shape(shape)?;
        image_count(x.len(), shape)?;
        Ok(match self {
            Normalization::MeanStd { mean, std } => {
                per_channel(x.to_vec(), shape, |v, c| v * std[c] + mean[c])
            }
            Normalization::Zca { mean, unwhiten, .. } => {
                let mut out = rows_times(x, mean.len(), unwhiten);
                for image in out.chunks_exact_mut(mean.len()) {
                    for (v, m) in image.iter_mut().zip(mean) {
                        *v += m;
                    }
                }
                out
            }
        })
    }

    /// Errors unless the stored numbers are consistent (they may come from a file).
    fn check(&self) -> Result<(), DataError> {
        let bad = |what: String| Err(DataError::Invalid(format!("normalisation: {what}")));
        match self {
            Normalization::MeanStd { mean, std } => {
                if mean.is_empty() || mean.len() != std.len() {
                    return bad(format!("{} means but {} stds", mean.len(), std.len()));
                }
                if std.iter().any(|s| !(s.is_finite() && *s != 0.0)) {
                    return bad("a std is zero or not finite".into());
                }
            }
            Normalization::Zca {
                mean,
                whiten,
                unwhiten,
                ..
            } => {
                let d = mean.len();
                if d == 0 || whiten.len() != d * d || unwhiten.len() != d * d {
                    return bad(format!(
                        "ZCA with {d} features needs {d}x{d} matrices, found {} and {} numbers",
                        whiten.len(),
                        unwhiten.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Errors unless images of `shape` fit this normalisation.
    fn check_shape(&self, shape: ImageShape) -> Result<(), DataError> {
        self.check()?;
        let (expected, found, what) = match self {
            Normalization::MeanStd { mean, .. } => (mean.len(), shape.channels, "channels"),
            Normalization::Zca { mean, .. } => (mean.len(), shape.numel(), "numbers per image"),
        };
        if expected != found {
            return Err(DataError::Invalid(format!(
                "normalisation fitted for {expected} {what}, images have {found}"
            )));
        }
        Ok(())
    }
}

/// A [`Normalization`] whose numbers live on a device, ready for many batches.
// There is one of these per run, so the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum DeviceNormalization {
    MeanStd {
        /// `[1, C, 1, 1]`.
        mean: Tensor<4>,
        /// `[1, C, 1, 1]`.
        std: Tensor<4>,
    },
    Zca {
        /// `[1, D]`.
        mean: Tensor<2>,
        /// `[D, D]`.
        whiten: Tensor<2>,
        /// `[D, D]`.
        unwhiten: Tensor<2>,
    },
}

impl DeviceNormalization {
    /// Normalises NCHW [0, 1] pixels.
    pub fn normalize(&self, x: Tensor<4>) -> Result<Tensor<4>, DataError> {
        self.check(&x)?;
        Ok(match self {
            DeviceNormalization::MeanStd { mean, std } => (x - mean.clone()) / std.clone(),
            DeviceNormalization::Zca { mean, whiten, .. } => {
                let dims = x.dims();
                let flat: Tensor<2> = x.reshape([dims[0], dims[1] * dims[2] * dims[3]]);
                (flat - mean.clone()).matmul(whiten.clone()).reshape(dims)
            }
        })
    }

    /// Maps normalised NCHW tensors back to [0, 1] pixels.
    pub fn invert(&self, x: Tensor<4>) -> Result<Tensor<4>, DataError> {
        self.check(&x)?;
        Ok(match self {
            DeviceNormalization::MeanStd { mean, std } => x * std.clone() + mean.clone(),
            DeviceNormalization::Zca { mean, unwhiten, .. } => {
                let dims = x.dims();
                let flat: Tensor<2> = x.reshape([dims[0], dims[1] * dims[2] * dims[3]]);
                (flat.matmul(unwhiten.clone()) + mean.clone()).reshape(dims)
            }
        })
    }

    fn check(&self, x: &Tensor<4>) -> Result<(), DataError> {
        let [_, c, h, w] = x.dims();
        let (expected, found, what) = match self {
            DeviceNormalization::MeanStd { mean, .. } => (mean.dims()[1], c, "channels"),
            DeviceNormalization::Zca { mean, .. } => (mean.dims()[1], c * h * w, "features"),
        };
        if expected != found {
            return Err(DataError::Invalid(format!(
                "normalisation fitted for {expected} {what}, tensor {:?} has {found}",
                x.dims()
            )));
        }
        Ok(())
    }
}

/// `images` (u8 NCHW of `shape`) as a float tensor of [0, 1] pixels on `device`.
pub fn pixels_to_tensor(
    images: &[u8],
    shape: ImageShape,
    device: &Device,
) -> Result<Tensor<4>, DataError> {
    let n = image_count(images.len(), shape)?;
    let data: Vec<f32> = images.iter().map(|&p| p as f32 / 255.0).collect();
    Ok(Tensor::<4>::from_data(
        TensorData::new(data, [n, shape.channels, shape.height, shape.width]),
        device,
    ))
}

/// How many images of `shape` make `len` numbers.
fn image_count(len: usize, shape: ImageShape) -> Result<usize, DataError> {
    let per = shape.numel();
    if per == 0 || !len.is_multiple_of(per) {
        return Err(DataError::Invalid(format!(
            "{len} numbers are not a whole number of {}x{}x{} images",
            shape.channels, shape.height, shape.width
        )));
    }
    Ok(len / per)
}

/// Errors unless `split` holds at least `min` whole images of `shape`.
fn check_split(split: &Split, shape: ImageShape, min: usize) -> Result<(), DataError> {
    if split.images.len() != split.len() * shape.numel() || shape.numel() == 0 {
        return Err(DataError::Invalid(format!(
            "split of {} labels holds {} pixel bytes, expected {} for {}x{}x{} images",
            split.len(),
            split.images.len(),
            split.len() * shape.numel(),
            shape.channels,
            shape.height,
            shape.width
        )));
    }
    if split.len() < min {
        return Err(DataError::Invalid(format!(
            "fitting a normalisation needs at least {min} train images, found {}",
            split.len()
        )));
    }
    Ok(())
}

/// Applies `f(value, channel)` to NCHW numbers in place.
fn per_channel(mut x: Vec<f32>, shape: ImageShape, f: impl Fn(f32, usize) -> f32) -> Vec<f32> {
    let plane = shape.height * shape.width;
    for image in x.chunks_exact_mut(shape.numel()) {
        for (c, channel) in image.chunks_exact_mut(plane).enumerate() {
            for v in channel {
                *v = f(*v, c);
            }
        }
    }
    x
}

/// `x (rows x d) @ m (d x d)`, row-major; `d > 0`.
fn rows_times(x: &[f32], d: usize, m: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for (xi, oi) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        for (&a, row) in xi.iter().zip(m.chunks_exact(d)) {
            for (o, &b) in oi.iter_mut().zip(row) {
                *o += a * b;
            }
        }
    }
    out
}

/// Reads a float tensor back to the CPU, turning backend failures into errors.
fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, DataError> {
    t.try_into_data()
        .map_err(|e| DataError::Invalid(format!("reading a tensor from the device: {e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| DataError::Invalid(format!("reading a tensor from the device: {e:?}")))
}

#[cfg(test)]
mod tests;
