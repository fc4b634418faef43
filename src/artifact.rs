//! The result of one distillation run, `distilled.safetensors`: the learned tensors plus
//! everything needed to use them without haba (class names, preprocessing, method).
//!
//! Safetensors because any framework reads it without running our code; tensors for every
//! array (the ZCA matrices are D x D), and a small JSON document under the `haba` key of the
//! file's string metadata for the rest.
//!
//! # File layout (format version 1)
//! | tensor | dtype | shape | when |
//! |---|---|---|---|
//! | `bases` | F32 | `[N, Cb, H, W]`, class-major | always |
//! | `labels` | I64 | `[N]` | always |
//! | `hallucinators.enc.weight` | F32 | `[M, C, Cb, k, k]` (conv2d `[out, in, k, k]`) | HaBa |
//! | `hallucinators.enc.bias` | F32 | `[M, C]` | HaBa |
//! | `hallucinators.scale` | F32 | `[M, C, H-k+1, W-k+1]` | HaBa |
//! | `hallucinators.shift` | F32 | `[M, C, H-k+1, W-k+1]` | HaBa |
//! | `hallucinators.dec.weight` | F32 | `[M, C, C, k, k]` (conv_transpose2d `[in, out, k, k]`) | HaBa |
//! | `hallucinators.dec.bias` | F32 | `[M, C]` | HaBa |
//! | `lr` | F32 | `[1]` | a learned learning rate (MTT) |
//! | `zca.mean` | F32 | `[D]`, D = C*H*W | ZCA preprocessing |
//! | `zca.whiten`, `zca.unwhiten` | F32 | `[D, D]`, applied as `x_row @ M` | ZCA preprocessing |
//!
//! Metadata `haba` (JSON): `format_version`, `dataset`, `classes`, `image_shape`
//! (`channels`, `height`, `width`), `preprocessing` (`kind` = `mean_std` with per-channel
//! `mean` and `std`, or `zca` with `eps`), `method`, `hallucinators` (`count`, `kernel`, or
//! null), `storage` (floats stored, [`Storage`]), `settings` (the run's settings).
//!
//! # Reading it from Python (the snippet the README shows)
//! ```python
//! import json
//! import torch
//! import torch.nn.functional as F
//! from safetensors import safe_open
//! from safetensors.torch import load_file
//!
//! path = "runs/my-run/distilled.safetensors"
//! t = load_file(path)
//! with safe_open(path, framework="pt") as f:
//!     meta = json.loads(f.metadata()["haba"])
//!
//! bases, labels = t["bases"], t["labels"]  # float32 [N, Cb, H, W], int64 [N]
//! if "hallucinators.enc.weight" in t:  # HaBa: every basis through every hallucinator
//!     h = {k[len("hallucinators."):]: v for k, v in t.items() if k.startswith("hallucinators.")}
//!     images = []
//!     for m in range(h["enc.weight"].shape[0]):
//!         z = F.conv2d(bases, h["enc.weight"][m], h["enc.bias"][m])
//!         z = h["scale"][m] * z + h["shift"][m]
//!         images.append(F.conv_transpose2d(z, h["dec.weight"][m], h["dec.bias"][m]))
//!     images = torch.cat(images)  # [M * N, C, H, W], hallucinator-major
//!     labels = labels.repeat(len(images) // len(labels))
//! else:  # plain DM / MTT: the bases are the images
//!     images = bases
//!
//! # The images are normalised like the run's data; map them back to [0, 1] pixels to view.
//! pre = meta["preprocessing"]
//! if pre["kind"] == "zca":
//!     pixels = (images.flatten(1) @ t["zca.unwhiten"] + t["zca.mean"]).view_as(images)
//! else:  # "mean_std"
//!     mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
//!     std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
//!     pixels = images * std + mean
//! lr = t["lr"].item() if "lr" in t else None  # learned learning rate (MTT runs)
//! print(meta["dataset"], meta["method"], meta["classes"], images.shape, labels.shape, lr)
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, ImageShape, LabelledImages, Normalization};
use crate::error::{Error, Result};
use crate::haba::{Factorization, HallucinatorShape, Hallucinators, Storage};

/// The artifact's file name inside a run directory.
pub const FILE_NAME: &str = "distilled.safetensors";

/// Bumped whenever a reader of the previous version would misread a new file.
pub const FORMAT_VERSION: u32 = 1;

/// The safetensors metadata key holding the JSON document.
pub const METADATA_KEY: &str = "haba";

/// Prefix of the six hallucinator tensors' names (`hallucinators.enc.weight`, ...).
pub const HALLUCINATOR_PREFIX: &str = "hallucinators.";

/// What the caller knows about a run that the tensors do not say.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    /// Dataset name, e.g. `cifar10`.
    pub dataset: String,
    /// Class names; label `i` means `classes[i]`.
    pub classes: Vec<String>,
    /// Shape of the dataset's images (and of the images the artifact makes).
    pub image: ImageShape,
    /// The distillation method, e.g. `haba-dm`, `haba-mtt`, `dm`.
    pub method: String,
    /// Free-form settings of the run, stored as given.
    pub settings: serde_json::Value,
}

/// A distilled set with what it takes to use it.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub factorization: Factorization,
    /// How the images the factorization makes are normalised (to train on them, and to
    /// show them in true colour).
    pub normalization: Normalization,
    pub meta: ArtifactMeta,
    /// The learned learning rate, for methods that learn one (MTT).
    pub lr: Option<f32>,
}

/// The JSON document stored under [`METADATA_KEY`].
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format_version: u32,
    dataset: String,
    classes: Vec<String>,
    image_shape: ImageShape,
    preprocessing: Preprocessing,
    method: String,
    hallucinators: Option<HallucinatorInfo>,
    storage: Storage,
    settings: serde_json::Value,
}

/// The preprocessing as the header states it; the ZCA matrices live in tensors.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Preprocessing {
    MeanStd { mean: Vec<f32>, std: Vec<f32> },
    Zca { eps: f32 },
}

#[derive(Debug, Serialize, Deserialize)]
struct HallucinatorInfo {
    count: usize,
    kernel: usize,
}

/// One tensor ready to be written: name, dtype, shape, little-endian bytes.
type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

impl Artifact {
    /// The test split of the dataset this set was distilled from, normalised as the run's
    /// data was; refuses a dataset whose image shape or class count differs.
    pub fn test_set(&self, dataset: &Dataset, device: &Device) -> Result<LabelledImages> {
        if dataset.shape != self.meta.image || dataset.classes.len() != self.meta.classes.len() {
            return Err(Error::ArtifactBytes(format!(
                "distilled from {:?} images of {} classes, but {} has {:?} images of {}",
                self.meta.image,
                self.meta.classes.len(),
                dataset.name,
                dataset.shape,
                dataset.classes.len()
            )));
        }
        Ok(LabelledImages {
            images: self
                .normalization
                .apply(&dataset.test.images, dataset.shape, device)?,
            labels: dataset.test.labels.clone(),
        })
    }

    /// Floats stored, counted as [`Factorization::storage`] does.
    pub fn storage(&self) -> Storage {
        self.factorization
            .storage(self.meta.image, self.meta.classes.len())
    }

    /// Writes the artifact to `path`, through `path.tmp` and a rename, so an interrupted
    /// write never leaves a broken file under the real name.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self
            .encode()
            .map_err(|reason| artifact_error(path, reason))?;
        write_atomic(path, &bytes)
    }

    /// Reads an artifact written by [`save`](Self::save), with its tensors on `device`.
    /// Every tensor's name, dtype and shape is checked against the metadata, and errors
    /// name the tensor with what was expected and found.
    pub fn load(path: &Path, device: &Device) -> Result<Artifact> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::decode(&bytes, device).map_err(|reason| artifact_error(path, reason))
    }

    /// The file's bytes, for fronts that keep them elsewhere than in a file (a browser's
    /// download, a network reply); [`save`](Self::save) writes the same bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.encode().map_err(Error::ArtifactBytes)
    }

    /// An artifact from the bytes of a `distilled.safetensors`, checked as
    /// [`load`](Self::load) checks a file.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Artifact> {
        Self::decode(bytes, device).map_err(Error::ArtifactBytes)
    }

    fn encode(&self) -> Result<Vec<u8>, String> {
        self.validate()?;
        let tensors = self.raw_tensors()?;
        let header = serde_json::to_string(&self.header())
            .map_err(|e| format!("encoding the metadata: {e}"))?;
        let views = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| format!("tensor `{name}`: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let metadata = HashMap::from([(METADATA_KEY.to_string(), header)]);
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| format!("encoding safetensors: {e}"))
    }

    fn decode(bytes: &[u8], device: &Device) -> Result<Artifact, String> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| {
            format!("not a readable safetensors file (truncated or not an artifact?): {e}")
        })?;
        let artifact = parse(bytes, &file, device)?;
        artifact.validate()?;
        Ok(artifact)
    }

    fn header(&self) -> Header {
        let preprocessing = match &self.normalization {
            Normalization::MeanStd { mean, std } => Preprocessing::MeanStd {
                mean: mean.clone(),
                std: std.clone(),
            },
            Normalization::Zca { eps, .. } => Preprocessing::Zca { eps: *eps },
        };
        Header {
            format_version: FORMAT_VERSION,
            dataset: self.meta.dataset.clone(),
            classes: self.meta.classes.clone(),
            image_shape: self.meta.image,
            preprocessing,
            method: self.meta.method.clone(),
            hallucinators: self
                .factorization
                .hallucinators
                .as_ref()
                .map(|h| HallucinatorInfo {
                    count: h.shape.count,
                    kernel: h.shape.kernel,
                }),
            storage: self.storage(),
            settings: self.meta.settings.clone(),
        }
    }

    /// Every tensor of the file, read back from the device.
    fn raw_tensors(&self) -> Result<Vec<RawTensor>, String> {
        let f = &self.factorization;
        let f32s = |name: &str, shape: Vec<usize>, v: &[f32]| -> RawTensor {
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (name.to_string(), Dtype::F32, shape, bytes)
        };
        let bases = read_f32(&f.bases, "bases")?;
        let labels = f.labels.iter().flat_map(|&l| (l as i64).to_le_bytes());
        let mut out = vec![
            f32s("bases", f.bases.dims().to_vec(), &bases),
            (
                "labels".to_string(),
                Dtype::I64,
                vec![f.labels.len()],
                labels.collect(),
            ),
        ];
        if let Some(h) = &f.hallucinators {
            let params = read_f32(&h.params, "hallucinator parameters")?;
            for (name, shape, offset) in h.shape.tensors() {
                let len: usize = shape.iter().product();
                let name = format!("{HALLUCINATOR_PREFIX}{name}");
                out.push(f32s(&name, shape, &params[offset..offset + len]));
            }
        }
        if let Some(lr) = self.lr {
            out.push(f32s("lr", vec![1], &[lr]));
        }
        if let Normalization::Zca {
            mean,
            whiten,
            unwhiten,
            ..
        } = &self.normalization
        {
            let d = mean.len();
            out.push(f32s("zca.mean", vec![d], mean));
            out.push(f32s("zca.whiten", vec![d, d], whiten));
            out.push(f32s("zca.unwhiten", vec![d, d], unwhiten));
        }
        Ok(out)
    }

    /// Errors unless all parts agree with each other (checked before writing and after
    /// reading, so a file on disk is always usable).
    fn validate(&self) -> Result<(), String> {
        let f = &self.factorization;
        let img = self.meta.image;
        let classes = self.meta.classes.len();
        let [n, cb, h, w] = f.bases.dims();
        if n != f.labels.len() {
            return Err(format!("{n} bases but {} labels", f.labels.len()));
        }
        if (h, w) != (img.height, img.width) {
            return Err(format!(
                "bases are {h}x{w}, the dataset's images {}x{}",
                img.height, img.width
            ));
        }
        let single_channel_ok = f.hallucinators.is_some() && cb == 1;
        if cb != img.channels && !single_channel_ok {
            return Err(format!(
                "bases have {cb} channels, the images {} (1-channel bases need hallucinators)",
                img.channels
            ));
        }
        if let Some(&bad) = f.labels.iter().find(|&&l| l as usize >= classes) {
            return Err(format!("label {bad} but only {classes} class names"));
        }
        if let Some(hal) = &f.hallucinators {
            let want = HallucinatorShape {
                count: hal.shape.count,
                basis_channels: cb,
                channels: img.channels,
                kernel: hal.shape.kernel,
                height: h,
                width: w,
            };
            if hal.shape != want {
                return Err(format!(
                    "hallucinators are shaped {:?}, the bases and images need {want:?}",
                    hal.shape
                ));
            }
            if hal.shape.kernel == 0 || hal.shape.kernel > h.min(w) || hal.shape.count == 0 {
                return Err(format!(
                    "{} hallucinators with kernel {} cannot make {h}x{w} images",
                    hal.shape.count, hal.shape.kernel
                ));
            }
            let found = hal.params.dims()[0];
            if found != hal.shape.num_params() {
                return Err(format!(
                    "hallucinators need {} parameters, found {found}",
                    hal.shape.num_params()
                ));
            }
        }
        match &self.normalization {
            Normalization::MeanStd { mean, std } => {
                if mean.len() != img.channels || std.len() != img.channels {
                    return Err(format!(
                        "mean/std normalisation with {} means and {} stds for {}-channel images",
                        mean.len(),
                        std.len(),
                        img.channels
                    ));
                }
            }
            Normalization::Zca {
                mean,
                whiten,
                unwhiten,
                ..
            } => {
                let d = img.numel();
                if mean.len() != d || whiten.len() != d * d || unwhiten.len() != d * d {
                    return Err(format!(
                        "ZCA for {d} features needs a mean of {d} and two {d}x{d} matrices, \
                         found {}, {} and {} numbers",
                        mean.len(),
                        whiten.len(),
                        unwhiten.len()
                    ));
                }
            }
        }
        if let Some(lr) = self.lr
            && !lr.is_finite()
        {
            return Err(format!("learning rate {lr} is not finite"));
        }
        Ok(())
    }
}

/// Builds the artifact from an opened file; errors name the tensor or metadata entry.
fn parse(bytes: &[u8], file: &SafeTensors, device: &Device) -> Result<Artifact, String> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| format!("no `{METADATA_KEY}` metadata entry: not written by haba"))?;
    let header: Header = serde_json::from_str(json)
        .map_err(|e| format!("metadata `{METADATA_KEY}` is not a valid header: {e}"))?;
    if header.format_version == 0 {
        return Err(format!(
            "format version 0 was never written by haba (versions start at 1; this \
             program reads up to {FORMAT_VERSION})"
        ));
    }
    if header.format_version > FORMAT_VERSION {
        return Err(format!(
            "format version {} is newer than this program reads ({FORMAT_VERSION}); \
             update haba",
            header.format_version
        ));
    }
    plausible(&header, bytes.len())?;
    let img = header.image_shape;
    let (h, w) = (img.height, img.width);

    let labels_view = tensor(file, "labels", Dtype::I64)?;
    let n = match labels_view.shape() {
        &[n] => n,
        found => return Err(shape_error("labels", "[N]", found)),
    };
    let labels = labels_view
        .data()
        .chunks_exact(8)
        .map(|b| {
            let l = i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            u16::try_from(l).map_err(|_| format!("tensor `labels` holds {l}, not a class index"))
        })
        .collect::<Result<Vec<u16>, String>>()?;

    let bases_view = tensor(file, "bases", Dtype::F32)?;
    let single_channel_ok = header.hallucinators.is_some();
    let cb = match bases_view.shape() {
        &[bn, cb, bh, bw]
            if bn == n
                && (bh, bw) == (h, w)
                && (cb == img.channels || (cb == 1 && single_channel_ok)) =>
        {
            cb
        }
        found => {
            let c = img.channels;
            let want = if single_channel_ok {
                format!("[{n}, {c} or 1, {h}, {w}]")
            } else {
                format!("[{n}, {c}, {h}, {w}]")
            };
            return Err(shape_error("bases", &want, found));
        }
    };
    if n == 0 {
        return Err("no bases (tensor `bases` is empty): nothing to train on".into());
    }
    let bases = Tensor::<4>::from_data(
        TensorData::new(
            finite("bases", f32_values(bases_view.data()))?,
            [n, cb, h, w],
        ),
        device,
    );

    let hallucinators = match &header.hallucinators {
        None => {
            // A file whose metadata lost its hallucinators would silently train on bases.
            if let Some(name) = file
                .names()
                .into_iter()
                .find(|n| n.starts_with(HALLUCINATOR_PREFIX))
            {
                return Err(format!(
                    "metadata says there are no hallucinators (`hallucinators`: null), but \
                     the file holds tensor `{name}`"
                ));
            }
            None
        }
        Some(info) => {
            let shape = HallucinatorShape {
                count: info.count,
                basis_channels: cb,
                channels: img.channels,
                kernel: info.kernel,
                height: h,
                width: w,
            };
            // The flat vector is the six tensors one after the other, in `tensors()` order.
            let mut params = Vec::new();
            for (name, expected, offset) in shape.tensors() {
                let name = format!("{HALLUCINATOR_PREFIX}{name}");
                debug_assert_eq!(offset, params.len());
                params.extend(f32_tensor(file, &name, &expected)?);
            }
            let len = params.len();
            Some(Hallucinators {
                shape,
                params: Tensor::<1>::from_data(TensorData::new(params, [len]), device),
            })
        }
    };

    let lr = match file.tensor("lr") {
        Err(_) => None,
        Ok(_) => Some(f32_tensor(file, "lr", &[1])?[0]),
    };

    let normalization = match header.preprocessing {
        Preprocessing::MeanStd { mean, std } => {
            let mean = finite("metadata mean", mean)?;
            let std = finite("metadata std", std)?;
            if let Some(s) = std.iter().find(|&&s| s <= 0.0) {
                return Err(format!(
                    "metadata std {s}: a standard deviation must be positive"
                ));
            }
            Normalization::MeanStd { mean, std }
        }
        Preprocessing::Zca { eps } => {
            let d = img.numel();
            Normalization::Zca {
                mean: f32_tensor(file, "zca.mean", &[d])?,
                whiten: f32_tensor(file, "zca.whiten", &[d, d])?,
                unwhiten: f32_tensor(file, "zca.unwhiten", &[d, d])?,
                eps,
            }
        }
    };

    Ok(Artifact {
        factorization: Factorization {
            bases,
            labels,
            hallucinators,
        },
        normalization,
        meta: ArtifactMeta {
            dataset: header.dataset,
            classes: header.classes,
            image: img,
            method: header.method,
            settings: header.settings,
        },
        lr,
    })
}

/// Errors unless the header's sizes are small enough for the file to hold them, so that
/// a corrupt header cannot make the reader overflow or allocate without bound.
fn plausible(header: &Header, file_len: usize) -> Result<(), String> {
    let img = header.image_shape;
    let floats = (file_len / 4) as u128;
    let (c, h, w) = (img.channels as u128, img.height as u128, img.width as u128);
    if c == 0 || h == 0 || w == 0 || c * h * w > floats {
        return Err(format!(
            "metadata image shape {}x{}x{} does not fit a file of {file_len} bytes",
            img.channels, img.height, img.width
        ));
    }
    if let Some(info) = &header.hallucinators {
        let k = info.kernel as u128;
        // Each hallucinator stores at least its decoder weight, C * C * k * k floats.
        if k == 0 || k > h.min(w) || info.count == 0 || info.count as u128 * c * c * k * k > floats
        {
            return Err(format!(
                "metadata promises {} hallucinators with kernel {} for {}x{}x{} images, \
                 which a file of {file_len} bytes cannot hold",
                info.count, info.kernel, img.channels, img.height, img.width
            ));
        }
    }
    Ok(())
}

/// The tensor `name`, which must exist and have `dtype`.
fn tensor<'a>(file: &SafeTensors<'a>, name: &str, dtype: Dtype) -> Result<TensorView<'a>, String> {
    let view = file
        .tensor(name)
        .map_err(|_| format!("missing tensor `{name}`"))?;
    if view.dtype() != dtype {
        return Err(format!(
            "tensor `{name}` has dtype {:?}, expected {dtype:?}",
            view.dtype()
        ));
    }
    Ok(view)
}

/// The values of the F32 tensor `name`, which must have shape `expected`.
fn f32_tensor(file: &SafeTensors, name: &str, expected: &[usize]) -> Result<Vec<f32>, String> {
    let view = tensor(file, name, Dtype::F32)?;
    if view.shape() != expected {
        return Err(shape_error(name, &format!("{expected:?}"), view.shape()));
    }
    finite(&format!("tensor `{name}`"), f32_values(view.data()))
}

/// `values` when every one is finite, else an error naming `what` and the first bad one:
/// a NaN that reached training would only show as chance accuracy.
fn finite(what: &str, values: Vec<f32>) -> Result<Vec<f32>, String> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(values),
        Some(i) => Err(format!(
            "{what} holds {} at index {i}: the file is damaged, or the run that wrote it \
             diverged",
            values[i]
        )),
    }
}

fn shape_error(name: &str, expected: &str, found: &[usize]) -> String {
    format!("tensor `{name}` has shape {found:?}, expected {expected}")
}

/// Little-endian f32s (safetensors has already checked the length against the shape).
pub(crate) fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A tensor's values on the CPU, as f32 whatever the device stores.
fn read_f32<const D: usize>(t: &Tensor<D>, what: &str) -> Result<Vec<f32>, String> {
    t.try_to_vec_as::<f32>()
        .map_err(|e| format!("reading the {what} from the device: {e}"))
}

fn artifact_error(path: &Path, reason: String) -> Error {
    Error::Artifact {
        path: path.to_path_buf(),
        reason,
    }
}

/// `path` with `.tmp` appended to its file name: where [`write_atomic`] writes first.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path.tmp`, syncs it and renames it over `path`: readers see either
/// the old file or the complete new one, never a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
pub(crate) mod tests;
