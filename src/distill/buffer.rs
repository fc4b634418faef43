//! Expert trajectories for trajectory matching (MTT's `buffer.py`): networks trained on the
//! real data, their flat parameters saved after every epoch (epoch 0 = initialisation).
//!
//! One expert is one file, `expert-NNNNN.safetensors`, holding a `[epochs + 1, P]` tensor
//! `trajectory` and JSON metadata saying what made it. Expert i draws from its own stream
//! of the run's seed, so any set of shards (`--experts 40..60` on many machines) adds up
//! to the same buffer as one machine running them all, and a directory is read as the
//! union of its files.
//!
//! Reference details this follows: SGD lr 0.01, no momentum, no weight decay, batch 256,
//! DSA on every batch (per-sample draws), no learning-rate decay (`--decay` is off in the
//! official scripts), no per-batch standardisation (the real data is already
//! normalised or ZCA-whitened). Unlike the reference on the CPU, every epoch is a copy,
//! so saved epochs differ.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::artifact::{f32_values, write_atomic};
use crate::data::{LabelledImages, NormKind, Normalization, Prepared};
use crate::error::{Error, Result};
use crate::eval::dsa_from_name;
use crate::nets::{Arch, Network};
use crate::optim::Sgd;
use crate::rng::Rng;
use crate::train::{TrainConfig, train};

/// The metadata key of an expert file.
const META_KEY: &str = "haba_expert";
const TENSOR: &str = "trajectory";
const FORMAT_VERSION: u32 = 1;

/// How experts are trained (the reference's `buffer.py` flags).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExpertSettings {
    pub model: Arch,
    pub epochs: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub batch: usize,
    pub dsa: String,
    pub seed: u64,
}

impl Default for ExpertSettings {
    fn default() -> Self {
        Self {
            model: Arch::default(),
            epochs: 50,
            lr: 0.01,
            momentum: 0.0,
            weight_decay: 0.0,
            batch: 256,
            dsa: crate::eval::DEFAULT_DSA.into(),
            seed: 0,
        }
    }
}

/// What the distillation must agree with: the data an expert saw and the network it is.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BufferKey {
    pub dataset: String,
    pub preprocess: NormKind,
    /// FNV-1a of the fitted normalisation's numbers (the ZCA matrix itself), so data
    /// whitened by another fit is told apart from data with the same name.
    pub normalization: String,
    pub model: Arch,
    pub classes: usize,
    pub image: [usize; 3],
}

impl BufferKey {
    pub fn of(dataset: &str, preprocess: NormKind, data: &Prepared, model: Arch) -> Self {
        Self {
            dataset: dataset.into(),
            preprocess,
            normalization: digest(&data.normalization),
            model,
            classes: data.classes,
            image: [data.shape.channels, data.shape.height, data.shape.width],
        }
    }

    /// `Ok` when `other` describes the same data and network, else what differs.
    pub fn check(&self, other: &BufferKey) -> std::result::Result<(), String> {
        let mut diffs = Vec::new();
        let mut cmp = |what: &str, a: String, b: String| {
            if a != b {
                diffs.push(format!("{what}: buffer {b}, run {a}"));
            }
        };
        cmp("dataset", self.dataset.clone(), other.dataset.clone());
        cmp(
            "preprocessing",
            self.preprocess.to_string(),
            other.preprocess.to_string(),
        );
        if self.preprocess == other.preprocess {
            cmp(
                "normalisation fit",
                self.normalization.clone(),
                other.normalization.clone(),
            );
        }
        cmp("model", self.model.to_string(), other.model.to_string());
        cmp(
            "classes",
            self.classes.to_string(),
            other.classes.to_string(),
        );
        cmp(
            "image shape",
            format!("{:?}", self.image),
            format!("{:?}", other.image),
        );
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(diffs.join("; "))
        }
    }
}

fn digest(n: &Normalization) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |v: &[f32]| {
        for x in v {
            for b in x.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    };
    match n {
        Normalization::MeanStd { mean, std } => {
            eat(mean);
            eat(std);
        }
        Normalization::Zca {
            mean, whiten, eps, ..
        } => {
            eat(mean);
            eat(whiten);
            eat(&[*eps]);
        }
    }
    format!("{h:016x}")
}

/// Everything an expert file says about itself.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExpertMeta {
    pub format_version: u32,
    pub index: usize,
    pub key: BufferKey,
    pub settings: ExpertSettings,
    /// PyTorch names of the flat parameter vector's tensors, in order, with shapes.
    pub layout: Vec<(String, Vec<usize>)>,
}

/// One expert: its parameters after every epoch, `epochs[0]` the initialisation.
#[derive(Clone, Debug)]
pub struct Trajectory {
    pub meta: ExpertMeta,
    pub epochs: Vec<Vec<f32>>,
}

impl Trajectory {
    /// A trajectory of `model` on `data` from given epochs (benchmarks, tests): trained
    /// with the default expert settings as far as the metadata says.
    pub fn new(model: Arch, data: &Prepared, index: usize, epochs: Vec<Vec<f32>>) -> Result<Self> {
        let net = Network::new(&model, data.shape, data.classes)?;
        if epochs.is_empty() || epochs.iter().any(|e| e.len() != net.num_params()) {
            return Err(Error::Config(format!(
                "a trajectory of {model} needs at least one epoch of {} parameters",
                net.num_params()
            )));
        }
        Ok(Self {
            meta: ExpertMeta {
                format_version: FORMAT_VERSION,
                index,
                key: BufferKey::of("", NormKind::MeanStd, data, model),
                settings: ExpertSettings {
                    model,
                    epochs: epochs.len() - 1,
                    ..ExpertSettings::default()
                },
                layout: layout(&net),
            },
            epochs,
        })
    }

    /// The parameters after `epoch` epochs, on `device`.
    pub fn params(&self, epoch: usize, device: &Device) -> Tensor<1> {
        let v = self.epochs[epoch].clone();
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), device)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let rows = self.epochs.len();
        let p = self.epochs.first().map_or(0, Vec::len);
        let bytes: Vec<u8> = self
            .epochs
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::F32, vec![rows, p], &bytes)
            .map_err(|e| Error::Config(format!("expert {}: {e}", self.meta.index)))?;
        let meta = serde_json::to_string(&self.meta).expect("metadata serialises");
        safetensors::serialize(
            [(TENSOR, view)],
            Some(HashMap::from([(META_KEY.to_string(), meta)])),
        )
        .map_err(|e| Error::Config(format!("encoding expert {}: {e}", self.meta.index)))
    }

    /// Reads bytes from [`Trajectory::to_bytes`], checking the tensor against the layout.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let meta = meta_of(bytes)?;
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("not a readable safetensors file: {e}"))?;
        let t = file
            .tensor(TENSOR)
            .map_err(|e| format!("tensor `{TENSOR}`: {e}"))?;
        let p: usize = meta
            .layout
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        let rows = meta.settings.epochs + 1;
        if t.dtype() != Dtype::F32 || t.shape() != [rows, p] {
            return Err(format!(
                "`{TENSOR}` is {:?} {:?}; its metadata says f32 [{rows}, {p}]",
                t.dtype(),
                t.shape()
            ));
        }
        let values = f32_values(t.data());
        if values.iter().any(|v| !v.is_finite()) {
            return Err("the trajectory holds NaN or infinite parameters".into());
        }
        let epochs = values.chunks(p.max(1)).map(<[f32]>::to_vec).collect();
        Ok(Self { meta, epochs })
    }
}

const NO_META: &str = "no expert metadata: not a file written by the buffer command";

/// An expert file's metadata, from its bytes.
fn meta_of(bytes: &[u8]) -> std::result::Result<ExpertMeta, String> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a readable safetensors file: {e}"))?;
    let meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or(NO_META)?;
    parse_meta(meta)
}

/// The metadata entry of an expert file, checked for its format version.
fn parse_meta(meta: &str) -> std::result::Result<ExpertMeta, String> {
    let meta: ExpertMeta =
        serde_json::from_str(meta).map_err(|e| format!("expert metadata: {e}"))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(format!(
            "expert format version {}, this haba reads {FORMAT_VERSION}",
            meta.format_version
        ));
    }
    Ok(meta)
}

/// The file of expert `index` in `dir`.
pub fn expert_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("expert-{index:05}.safetensors"))
}

/// Trains expert `index` and returns its trajectory. `on_epoch(epoch, loss)` after each
/// epoch (progress bars).
pub fn train_expert(
    key: &BufferKey,
    settings: &ExpertSettings,
    index: usize,
    train_set: &LabelledImages,
    on_epoch: &mut dyn FnMut(usize, f32),
) -> Result<Trajectory> {
    let image = crate::data::ImageShape {
        channels: key.image[0],
        height: key.image[1],
        width: key.image[2],
    };
    let net = Network::new(&settings.model, image, key.classes)?;
    if settings.model.has_batch_norm() {
        return Err(Error::Config(format!(
            "{}: experts with BatchNorm cannot be matched (the student has no running \
             statistics); use a model without BN",
            settings.model
        )));
    }
    let device = train_set.images.device();
    let mut rng = Rng::new(settings.seed).fork(index as u64);
    let mut params = net.init(&mut rng, &device);
    let mut state = net.init_state(&device);
    let dsa = dsa_from_name(&settings.dsa)?;
    let cfg = TrainConfig {
        epochs: 1,
        batch: settings.batch,
        sgd: Sgd {
            lr: settings.lr,
            momentum: settings.momentum,
            weight_decay: settings.weight_decay,
        },
        decay_epoch: None,
        standardize_batches: false,
        views: 1,
    };
    let host = |t: &Tensor<1>| {
        t.try_to_vec_as::<f32>()
            .map_err(|e| Error::Device(format!("reading expert parameters: {e}")))
    };
    let mut epochs = vec![host(&params)?];
    for epoch in 0..settings.epochs {
        // One epoch at a time; momentum (off by default) restarts each epoch.
        params = train(
            &net,
            params,
            &mut state,
            train_set,
            &cfg,
            &dsa,
            &mut rng,
            &mut |_, loss| on_epoch(epoch, loss),
        )?;
        epochs.push(host(&params)?);
    }
    let layout = layout(&net);
    Ok(Trajectory {
        meta: ExpertMeta {
            format_version: FORMAT_VERSION,
            index,
            key: key.clone(),
            settings: settings.clone(),
            layout,
        },
        epochs,
    })
}

/// The names and shapes of `net`'s flat parameters.
fn layout(net: &Network) -> Vec<(String, Vec<usize>)> {
    net.params()
        .iter()
        .map(|e| (e.name.clone(), e.shape.clone()))
        .collect()
}

/// Writes one expert's file atomically (a killed run never leaves half an expert).
pub fn write_expert(dir: &Path, t: &Trajectory) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_atomic(&expert_path(dir, t.meta.index), &t.to_bytes()?)
}

/// What the first expert of `dir` says about itself (the buffer's data, preprocessing and
/// network), read from its header alone.
pub fn buffer_meta(dir: &Path) -> Result<ExpertMeta> {
    let path = expert_paths(dir)?.remove(0);
    let fail = |reason: String| Error::Artifact {
        path: path.clone(),
        reason,
    };
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::open(&path).map_err(io)?;
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut file, &mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    // safetensors caps its header at 100 MB; an expert's is a few kB.
    if n > 100 << 20 {
        return Err(fail(format!("a safetensors header of {n} bytes")));
    }
    let mut head = vec![0; n as usize];
    std::io::Read::read_exact(&mut file, &mut head).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&head)
        .map_err(|e| fail(format!("not a readable safetensors header: {e}")))?;
    let meta = header["__metadata__"][META_KEY]
        .as_str()
        .ok_or_else(|| fail(NO_META.into()))?;
    parse_meta(meta).map_err(fail)
}

/// The expert files of `dir`, in order; an error when there are none.
fn expert_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("expert-") && n.ends_with(".safetensors"))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::Artifact {
            path: dir.to_path_buf(),
            reason: "no expert-*.safetensors files: train experts into it first".into(),
        });
    }
    Ok(paths)
}

/// Every expert in `dir` (the union of its shards), checked against what the run needs.
pub fn read_buffer(dir: &Path, want: &BufferKey) -> Result<Vec<Trajectory>> {
    read(dir, want, Some(want.model))
}

/// [`read_buffer`] for a run that takes the buffer's model, whatever it is (every expert
/// must still share it).
pub fn read_buffer_any_model(dir: &Path, want: &BufferKey) -> Result<Vec<Trajectory>> {
    read(dir, want, None)
}

fn read(dir: &Path, want: &BufferKey, mut model: Option<Arch>) -> Result<Vec<Trajectory>> {
    let paths = expert_paths(dir)?;
    let mut experts: Vec<Trajectory> = Vec::with_capacity(paths.len());
    for path in &paths {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let t = Trajectory::from_bytes(&bytes).map_err(|reason| Error::Artifact {
            path: path.clone(),
            reason,
        })?;
        let model = *model.get_or_insert(t.meta.key.model);
        let want = BufferKey {
            model,
            ..want.clone()
        };
        want.check(&t.meta.key).map_err(|d| Error::Artifact {
            path: path.clone(),
            reason: format!("this expert was made for other data or another network ({d})"),
        })?;
        if let Some(first) = experts.first()
            && first.meta.settings.epochs != t.meta.settings.epochs
        {
            return Err(Error::Artifact {
                path: path.clone(),
                reason: format!(
                    "{} epochs where {} has {}: one buffer, one length",
                    t.meta.settings.epochs,
                    expert_path(dir, first.meta.index).display(),
                    first.meta.settings.epochs
                ),
            });
        }
        experts.push(t);
    }
    Ok(experts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{NormKind, embedded};

    #[test]
    fn experts_round_trip_differ_per_epoch_and_refuse_other_runs() {
        let data = embedded::fashion_mnist_subset().unwrap();
        let device = Device::flex();
        let prepared = Prepared::new(&data, NormKind::MeanStd, &device).unwrap();
        let model: Arch = "ConvNetD2W8".parse().unwrap();
        let key = BufferKey::of("embedded", NormKind::MeanStd, &prepared, model);
        let settings = ExpertSettings {
            model,
            epochs: 2,
            batch: 128,
            ..ExpertSettings::default()
        };
        let small = LabelledImages {
            images: prepared.train.images.clone().narrow(0, 0, 300),
            labels: prepared.train.labels[..300].to_vec(),
        };
        let mut losses = Vec::new();
        let t = train_expert(&key, &settings, 3, &small, &mut |e, l| losses.push((e, l))).unwrap();
        assert_eq!(t.epochs.len(), 3);
        assert_eq!(losses.len(), 2);
        // The reference's CPU defect saved one tensor three times; these must differ.
        let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>();
        assert!(dist(&t.epochs[0], &t.epochs[1]) > 0.0);
        assert!(dist(&t.epochs[1], &t.epochs[2]) > 0.0);

        let dir = std::env::temp_dir().join(format!("haba-buffer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_expert(&dir, &t).unwrap();
        let back = read_buffer(&dir, &key).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].epochs, t.epochs);
        // The header alone says what the buffer is; an MTT run without a preprocessing
        // of its own takes the buffer's.
        assert_eq!(buffer_meta(&dir).unwrap(), t.meta);
        let zca_dir = dir.with_extension("zca");
        let _ = std::fs::remove_dir_all(&zca_dir);
        let mut zca = t.clone();
        zca.meta.key.preprocess = NormKind::zca();
        write_expert(&zca_dir, &zca).unwrap();
        let run = |buffer: &Path, preprocess| crate::distill::DistillConfig {
            preprocess,
            objective: crate::distill::ObjectiveConfig::Mtt(crate::distill::MttConfig {
                buffer: buffer.to_string_lossy().into_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            run(&zca_dir, None).preprocessing().unwrap(),
            NormKind::zca()
        );
        assert_eq!(
            run(&zca_dir, Some(NormKind::MeanStd))
                .preprocessing()
                .unwrap(),
            NormKind::MeanStd
        );
        let err = run(&dir.join("nothing"), None).preprocessing().unwrap_err();
        assert!(err.to_string().contains("nothing"), "{err}");
        let _ = std::fs::remove_dir_all(&zca_dir);
        assert_eq!(back[0].meta, t.meta);

        let other = BufferKey {
            model: "ConvNetD2W16".parse().unwrap(),
            preprocess: NormKind::zca(),
            ..key.clone()
        };
        let err = read_buffer(&dir, &other).unwrap_err().to_string();
        assert!(
            err.contains("model") && err.contains("preprocessing"),
            "{err}"
        );
        std::fs::write(expert_path(&dir, 4), b"not an expert").unwrap();
        let err = read_buffer(&dir, &key).unwrap_err().to_string();
        assert!(err.contains("expert-00004"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
