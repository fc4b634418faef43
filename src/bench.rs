//! The work units haba runs, timed one at a time: what `haba bench` measures and compares
//! with the same units written in PyTorch (`benches/torch_reference.py`).
//!
//! Every unit runs on random data of a dataset's shape: timing does not depend on the
//! pixels, and the benchmark then needs no download. Each iteration ends by reading a
//! number back to the host, so a GPU has finished its work when the clock stops.
//! Wherever a unit augments, iteration `i` uses DSA family `i % 6` (in [`Family::ALL`]
//! order) rather than a random one, so both sides run the same mix of families.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};

use crate::augment::{Dsa, DsaParams, Family, Strategy};
use crate::data::{Dataset, ImageShape, LabelledImages, NormKind, Prepared, Split};
use crate::distill::buffer::Trajectory;
use crate::distill::mtt::Mtt;
use crate::distill::{DistillConfig, Distiller, DmConfig, MttConfig, ObjectiveConfig, Unroll};
use crate::error::{Error, Result};
use crate::nets::{Arch, BnMode, Network};
use crate::rng::Rng;
use crate::train::{TrainConfig, accuracy, train};

/// One thing haba does many times in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unit {
    /// DSA alone on one batch, a draw per sample.
    Dsa,
    /// The embedder's forward pass on one batch, no gradient.
    Embed,
    /// Classifying the test set in batches.
    TestPass,
    /// One SGD step of a classifier on one augmented batch (an expert epoch is
    /// `ceil(train_size / batch)` of these).
    TrainStep,
    /// One epoch of the evaluation protocol on the `classes * ipc` synthetic images.
    EvalEpoch,
    /// One distribution-matching iteration on plain images.
    Dm,
    /// One HaBa-DM iteration: every view, the contrastive terms, the adversary's step.
    HabaDm,
    /// One MTT iteration on plain images: `syn_steps` student steps over every image,
    /// the parameter-matching loss, the gradient through all steps, the updates.
    Mtt,
    /// One HaBa-MTT iteration: the same with a random hallucinator per student step, plus
    /// the contrastive terms and the adversary's step.
    HabaMtt,
}

impl Unit {
    pub const ALL: [Unit; 9] = [
        Unit::Dsa,
        Unit::Embed,
        Unit::TestPass,
        Unit::TrainStep,
        Unit::EvalEpoch,
        Unit::Dm,
        Unit::HabaDm,
        Unit::Mtt,
        Unit::HabaMtt,
    ];

    /// Whether the unit augments: those run every DSA family once per six iterations.
    pub fn augments(self) -> bool {
        !matches!(self, Unit::Embed | Unit::TestPass)
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Dsa => "dsa",
            Unit::Embed => "embed",
            Unit::TestPass => "test-pass",
            Unit::TrainStep => "train-step",
            Unit::EvalEpoch => "eval-epoch",
            Unit::Dm => "dm",
            Unit::HabaDm => "haba-dm",
            Unit::Mtt => "mtt",
            Unit::HabaMtt => "haba-mtt",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Unit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Unit::ALL
            .into_iter()
            .find(|u| u.name() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Unit::ALL.iter().map(|u| u.name()).collect();
                Error::Config(format!(
                    "unknown benchmark unit `{s}`; known: {}",
                    known.join(", ")
                ))
            })
    }
}

/// The shapes every unit runs at. The defaults follow the official settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BenchSettings {
    /// The dataset whose shapes these are (for the report).
    pub dataset: String,
    pub shape: ImageShape,
    pub classes: usize,
    /// Training images of the real dataset (only to state an expert epoch's steps).
    pub train_size: usize,
    pub test_size: usize,
    /// Synthetic images (DM) or bases (HaBa-DM) per class.
    pub ipc: usize,
    /// Real images per class in a DM iteration.
    pub batch_real: usize,
    /// Training and test batch size.
    pub batch: usize,
    pub hallucinators: usize,
    /// Every network: the embedder, the classifier, the evaluation network.
    pub model: Arch,
    /// Student steps per MTT iteration, and how their gradient is computed.
    pub syn_steps: usize,
    pub unroll: Unroll,
    pub recompute_memory_mb: f64,
    /// Untimed iterations first (kernel compilation, allocator warm-up).
    pub warmup: usize,
    pub iters: usize,
}

impl BenchSettings {
    /// Fashion-MNIST at the official DM/evaluation settings: ConvNet-128, IPC 10,
    /// 256 real images per class, batch 256.
    pub fn fashion_mnist() -> Self {
        Self {
            dataset: "fashion-mnist".into(),
            shape: ImageShape {
                channels: 1,
                height: 28,
                width: 28,
            },
            classes: 10,
            train_size: 60_000,
            test_size: 10_000,
            ipc: 10,
            batch_real: 256,
            batch: 256,
            hallucinators: 5,
            model: Arch::default(),
            syn_steps: 10,
            unroll: Unroll::Graph,
            recompute_memory_mb: MttConfig::default().recompute_memory_mb,
            warmup: 1,
            iters: 6,
        }
    }

    /// CIFAR-10 at the same settings (3x32x32, 50,000 training images).
    pub fn cifar10() -> Self {
        Self {
            dataset: "cifar10".into(),
            shape: ImageShape {
                channels: 3,
                height: 32,
                width: 32,
            },
            train_size: 50_000,
            ..Self::fashion_mnist()
        }
    }

    /// Settings by dataset name (`fashion-mnist`, `cifar10`).
    pub fn for_dataset(name: &str) -> Result<Self> {
        match name {
            "fashion-mnist" | "mnist" => Ok(Self::fashion_mnist()),
            "cifar10" => Ok(Self::cifar10()),
            _ => Err(Error::Config(format!(
                "the benchmark knows the shapes of fashion-mnist and cifar10, not `{name}`"
            ))),
        }
    }

    /// Small enough for a 2-core CI machine: ConvNet-32, 64 real images per class,
    /// batch 64, 1,000 test images, one timed round of the six DSA families.
    pub fn quick(self) -> Self {
        Self {
            batch_real: 64,
            batch: 64,
            test_size: 1_000,
            model: "ConvNetW32".parse().expect("a known architecture"),
            warmup: 1,
            iters: 6,
            ..self
        }
    }

    /// Timed iterations of `unit`: a third of `iters` for the units without DSA, which
    /// need no round of six families and are the slowest to repeat (the test pass).
    pub fn iterations(&self, unit: Unit) -> usize {
        if unit.augments() {
            self.iters
        } else {
            self.iters.div_ceil(3)
        }
    }

    /// SGD steps in one expert epoch (the last batch may be short).
    pub fn expert_epoch_steps(&self) -> usize {
        self.train_size.div_ceil(self.batch.max(1))
    }

    /// Refuses a zero count, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("classes", self.classes),
            ("ipc", self.ipc),
            ("batch_real", self.batch_real),
            ("batch", self.batch),
            ("test_size", self.test_size),
            ("syn_steps", self.syn_steps),
            ("iters", self.iters),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::Config(format!(
                    "benchmark setting {name} must be at least 1"
                )));
            }
        }
        Ok(())
    }
}

/// The timings of one unit.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    pub unit: Unit,
    /// Wall time of each timed iteration.
    pub seconds: Vec<f64>,
    /// The process's peak resident memory (Linux), which on the CPU backend is the
    /// tensors' peak too.
    pub peak_rss_bytes: Option<u64>,
    /// The most a GPU's allocator held after any iteration.
    pub peak_device_bytes: Option<u64>,
    /// Host buffers of at least 64 KiB allocated per timed iteration (see
    /// [`crate::alloc::buffers_allocated`]): on the CPU backend, about one per op on an
    /// activation; `None` without the caching allocator.
    #[serde(default)]
    pub buffers_per_iteration: Option<f64>,
}

impl Measurement {
    /// The median iteration: robust to one slow outlier on a shared machine.
    pub fn median(&self) -> f64 {
        median(&self.seconds)
    }
}

/// The CPU a benchmark ran on, and which SIMD kernels its matrix products (gemm's,
/// shared by Burn's CPU backend and our fused convolution) chose at run time: numbers
/// from an AVX-512 machine say little about an AVX2-only one or Apple silicon.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cpu {
    /// The model name the operating system reports ("unknown" where it is not read).
    pub model: String,
    /// The widest kernels gemm takes here: "AVX-512", "AVX2+FMA", "NEON", or "scalar/SSE".
    pub kernels: String,
}

impl Cpu {
    pub fn detect() -> Self {
        Self {
            model: cpu_model().unwrap_or_else(|| "unknown".into()),
            kernels: simd_kernels().into(),
        }
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} kernels)", self.model, self.kernels)
    }
}

/// `model name` of /proc/cpuinfo (Linux); None elsewhere.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, name)| name.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// gemm's own choice: its x86-v4 kernels (built in on x86-64, see Cargo.toml) need
/// AVX-512F, its x86-v3 ones AVX2 and FMA; on aarch64 it uses NEON.
fn simd_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "AVX2+FMA";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            return "NEON";
        }
    }
    "scalar/SSE"
}

/// The median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Runs `unit` `warmup` times untimed, then [`BenchSettings::iterations`] times timed.
/// Run one unit per process when peak memory matters: the resident peak never falls.
pub fn measure(
    unit: Unit,
    settings: &BenchSettings,
    device: &Device,
    seed: u64,
) -> Result<Measurement> {
    settings.validate()?;
    let mut step = prepare(unit, settings, device, seed)?;
    let iters = settings.iterations(unit);
    let mut seconds = Vec::with_capacity(iters);
    let mut peak_device = None;
    let mut buffers_before = 0;
    for i in 0..settings.warmup + iters {
        if i == settings.warmup {
            buffers_before = crate::alloc::buffers_allocated();
        }
        let start = Instant::now();
        step(i)?;
        let elapsed = start.elapsed().as_secs_f64();
        if i >= settings.warmup {
            seconds.push(elapsed);
        }
        if let Some(usage) = device.memory_pool_usage() {
            peak_device = Some(peak_device.unwrap_or(0).max(usage.bytes_reserved));
        }
    }
    let buffers = crate::alloc::buffers_allocated() - buffers_before;
    Ok(Measurement {
        unit,
        seconds,
        peak_rss_bytes: crate::device::peak_rss_bytes(),
        peak_device_bytes: peak_device,
        buffers_per_iteration: (buffers > 0).then(|| buffers as f64 / iters as f64),
    })
}

type Step = Box<dyn FnMut(usize) -> Result<()>>;

/// Iteration i steps distiller `i % len`: one distiller per DSA family, so both sides run
/// the same mix of families.
fn round_robin(mut distillers: Vec<Distiller>, data: Prepared) -> Step {
    Box::new(move |i| {
        let k = i % distillers.len();
        distillers[k].step(&data)?;
        sync(distillers[k].factorization.bases.clone());
        Ok(())
    })
}

/// DSA with family `i % 6` alone.
fn dsa_for(i: usize) -> Dsa {
    let family = Family::ALL[i % Family::ALL.len()];
    Dsa::new(Strategy(vec![family]), DsaParams::default())
}

fn random_images(rng: &mut Rng, n: usize, shape: ImageShape, device: &Device) -> Tensor<4> {
    let v: Vec<f32> = (0..n * shape.numel()).map(|_| rng.normal()).collect();
    let dims = [n, shape.channels, shape.height, shape.width];
    Tensor::from_data(TensorData::new(v, dims), device)
}

/// Labels 0, 1, ..., classes - 1, 0, 1, ...: every class equally often.
fn cyclic_labels(n: usize, classes: usize) -> Vec<u16> {
    (0..n).map(|i| (i % classes) as u16).collect()
}

fn random_set(rng: &mut Rng, n: usize, s: &BenchSettings, device: &Device) -> LabelledImages {
    LabelledImages {
        images: random_images(rng, n, s.shape, device),
        labels: cyclic_labels(n, s.classes),
    }
}

/// A dataset of random pixels with `batch_real` training images per class.
fn random_prepared(rng: &mut Rng, s: &BenchSettings, device: &Device) -> Result<Prepared> {
    let split = |rng: &mut Rng, n: usize| Split {
        images: (0..n * s.shape.numel())
            .map(|_| rng.below(256) as u8)
            .collect(),
        labels: cyclic_labels(n, s.classes),
    };
    let dataset = Dataset {
        name: s.dataset.clone(),
        classes: (0..s.classes).map(|c| c.to_string()).collect(),
        shape: s.shape,
        train: split(rng, s.classes * s.batch_real),
        test: split(rng, s.classes),
    };
    Ok(Prepared::new(&dataset, NormKind::MeanStd, device)?)
}

/// Sums `x` on the host: the device has finished when this returns.
fn sync<const D: usize>(x: Tensor<D>) -> f32 {
    x.sum().into_scalar::<f32>()
}

fn prepare(unit: Unit, s: &BenchSettings, device: &Device, seed: u64) -> Result<Step> {
    let mut rng = Rng::new(seed);
    let net = Network::new(&s.model, s.shape, s.classes)?;
    Ok(match unit {
        Unit::Dsa => {
            let x = random_images(&mut rng, s.batch, s.shape, device);
            // Every family once per iteration, so a few iterations cover the whole mix.
            Box::new(move |i| {
                for f in 0..Family::ALL.len() {
                    sync(dsa_for(f).apply(x.clone(), (i * Family::ALL.len() + f) as u64));
                }
                Ok(())
            })
        }
        Unit::Embed => {
            let x = random_images(&mut rng, s.batch, s.shape, device);
            let params = net.init(&mut rng, device);
            Box::new(move |_| {
                sync(net.embed(&params, x.clone(), BnMode::Batch));
                Ok(())
            })
        }
        Unit::TestPass => {
            let test = random_set(&mut rng, s.test_size, s, device);
            let params = net.init(&mut rng, device);
            let state = net.init_state(device);
            let batch = s.batch;
            Box::new(move |_| accuracy(&net, &params, &state, &test, batch).map(|_| ()))
        }
        Unit::TrainStep | Unit::EvalEpoch => {
            let n = match unit {
                Unit::TrainStep => s.batch,
                _ => s.classes * s.ipc,
            };
            let set = random_set(&mut rng, n, s, device);
            let mut params = net.init(&mut rng, device);
            let mut state = net.init_state(device);
            let cfg = TrainConfig {
                batch: s.batch,
                ..TrainConfig::protocol(1, 0.01)
            };
            let device = device.clone();
            Box::new(move |i| {
                let p = std::mem::replace(&mut params, Tensor::zeros([1], &device));
                params = train(
                    &net,
                    p,
                    &mut state,
                    &set,
                    &cfg,
                    &dsa_for(i),
                    &mut rng,
                    &mut |_, _| {},
                )?;
                Ok(())
            })
        }
        Unit::Dm | Unit::HabaDm => {
            let data = random_prepared(&mut rng, s, device)?;
            // One distiller per DSA family, so iteration i can use family i % 6.
            let distillers = Family::ALL
                .iter()
                .map(|family| {
                    let cfg = DistillConfig {
                        haba: unit == Unit::HabaDm,
                        ipc: s.ipc,
                        hallucinators: s.hallucinators,
                        objective: ObjectiveConfig::Dm(DmConfig {
                            batch_real: s.batch_real,
                            embedder: s.model,
                            ..Default::default()
                        }),
                        dsa: family.name().into(),
                        seed,
                        ..DistillConfig::default()
                    };
                    Distiller::new(cfg, &data)
                })
                .collect::<Result<Vec<_>>>()?;
            round_robin(distillers, data)
        }
        Unit::Mtt | Unit::HabaMtt => {
            let data = random_prepared(&mut rng, s, device)?;
            let haba = unit == Unit::HabaMtt;
            // A made-up expert: the default init, and a target 0.01 away per parameter.
            let start: Vec<f32> = net
                .init(&mut rng, device)
                .try_to_vec_as::<f32>()
                .map_err(|e| Error::Device(format!("reading parameters back: {e}")))?;
            let target = start.iter().map(|v| v + 0.01 * rng.normal()).collect();
            let expert = Trajectory::new(s.model, &data, 0, vec![start, target])?;
            let mtt = MttConfig {
                syn_steps: s.syn_steps,
                expert_epochs: 1,
                max_start_epoch: 1,
                lr_teacher: 0.01,
                lr_lr: 1e-5,
                momentum_lr: if haba { 0.9 } else { 0.5 },
                batch_syn: 0,
                unroll: s.unroll,
                recompute_memory_mb: s.recompute_memory_mb,
                ..MttConfig::default()
            };
            let distillers = Family::ALL
                .iter()
                .map(|family| {
                    let cfg = DistillConfig {
                        haba,
                        ipc: s.ipc,
                        hallucinators: s.hallucinators,
                        objective: ObjectiveConfig::Mtt(MttConfig {
                            buffer: "(in memory)".into(),
                            ..mtt.clone()
                        }),
                        dsa: family.name().into(),
                        seed,
                        ..DistillConfig::default()
                    };
                    let objective = Mtt::with_experts(&mtt, vec![expert.clone()], &data)?;
                    Distiller::with_objective(cfg, &data, Box::new(objective))
                })
                .collect::<Result<Vec<_>>>()?;
            round_robin(distillers, data)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> BenchSettings {
        BenchSettings {
            ipc: 1,
            batch_real: 4,
            batch: 8,
            test_size: 10,
            hallucinators: 2,
            model: "ConvNetD1W4".parse().unwrap(),
            warmup: 0,
            iters: 2,
            ..BenchSettings::fashion_mnist()
        }
    }

    /// Every unit runs on the CPU backend and reports one time per iteration.
    #[test]
    fn every_unit_runs_and_reports_its_iterations() {
        let device = Device::flex();
        for unit in Unit::ALL {
            let m = measure(unit, &tiny(), &device, 0).unwrap();
            let want = if unit.augments() { 2 } else { 1 };
            assert_eq!(m.seconds.len(), want, "{unit}");
            assert!(m.seconds.iter().all(|t| *t > 0.0), "{unit}");
            assert_eq!(unit.name().parse::<Unit>().unwrap(), unit);
        }
        assert!("nope".parse::<Unit>().is_err());
    }

    #[test]
    fn median_by_hand() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn settings_refuse_zero_and_count_expert_steps() {
        let s = BenchSettings::cifar10();
        assert_eq!(s.expert_epoch_steps(), 196);
        assert_eq!(BenchSettings::fashion_mnist().expert_epoch_steps(), 235);
        let zero = BenchSettings { iters: 0, ..tiny() };
        let err = measure(Unit::Dsa, &zero, &Device::flex(), 0).unwrap_err();
        assert!(err.to_string().contains("iters"), "{err}");
        assert!(BenchSettings::for_dataset("svhn").is_err());
    }
}
