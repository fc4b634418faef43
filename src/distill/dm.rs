//! Distribution matching (DM, Zhao & Bilen), as DatasetCondensation's `main_DM.py`
//! computes it: a freshly initialised, never trained embedder maps a real and a synthetic
//! batch of every class to features, and the loss is the squared distance between the two
//! mean features, summed over features and classes.
//!
//! Reference details this follows:
//! - the embedder is the network without its classifier (`net.embed`), in `train()` mode,
//!   with `requires_grad = False` on its parameters: here the parameters enter as
//!   constants, so no gradient is ever computed for them;
//! - the real embeddings are `.detach()`ed: here the real images enter without a graph;
//! - each class gets its own seed, used for both DiffAugment calls (Siamese: the real and
//!   the synthetic batch of a class see one and the same transform);
//! - the loss is a sum over classes, not a mean (the reference divides by the class count
//!   only for the value it prints);
//! - BatchNorm embedders (`'BN' in args.model`): the reference augments per class as above
//!   but then embeds all classes' real images as one batch and all synthetic images as
//!   another, so the batch statistics are taken over every class at once. We do the same.
//!   Other embedders normalise per sample, where one batch or per-class batches give the
//!   same features; we embed per class to bound memory.

use burn::tensor::Tensor;

use super::config::{DistillConfig, EvalSettings, Preset, Rates};
use super::objective::{Objective, ObjectiveConfig, ObjectiveLoss, Synthetic, Views};
use crate::augment::Dsa;
use crate::data::Prepared;
use crate::data::subset::indices_by_class;
use crate::error::{Error, Result};
use crate::nets::{Arch, BnMode, Network};
use crate::rng::Rng;

/// Distribution matching's own settings (`[objective]` with `method = "dm"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DmConfig {
    /// Real images per class per iteration.
    pub batch_real: usize,
    /// The randomly initialised network whose embeddings DM matches.
    pub embedder: Arch,
    /// Hallucinated views per basis in each iteration.
    pub views: Views,
}

impl Default for DmConfig {
    fn default() -> Self {
        Self {
            batch_real: 256,
            embedder: Arch::default(),
            views: Views::All,
        }
    }
}

impl DmConfig {
    pub fn validate(&self) -> Result<()> {
        if self.batch_real == 0 {
            return Err(Error::Config(
                "`objective.batch_real = 0`: at least 1 real image per class".into(),
            ));
        }
        Ok(())
    }

    pub fn init(&self, data: &Prepared) -> Result<Dm> {
        Dm::new(self, data)
    }
}

/// DM's optimiser (`main_DM.py`: images SGD lr 1, momentum 0.5); the hallucinators far
/// below the bases' rate: DM's gradient on the shared encoder/decoder weights sums over
/// every pixel of every basis, and at the bases' rate of 1 those weights grow without
/// bound within a few dozen iterations.
pub const RATES: Rates = Rates {
    lr_bases: 1.0,
    momentum_bases: 0.5,
    lr_hallucinators: 1e-3,
    momentum_hallucinators: 0.5,
};

/// DM's presets: the main job's quick run and the official settings.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "quick",
        about: "the grey main job: HaBa-DM on the embedded Fashion-MNIST subset, minutes on a CPU",
        settings: quick,
    },
    Preset {
        name: "quick-cifar10",
        about: "the main job's HaBa-DM on colour data: the built-in CIFAR-10 subset",
        settings: quick_cifar10,
    },
    Preset {
        name: "dm-cifar10",
        about: "DM's official CIFAR-10 settings (20k iterations, lr 1, momentum 0.5), with HaBa",
        settings: || DistillConfig {
            dataset: "cifar10".into(),
            ..DistillConfig::default()
        },
    },
    Preset {
        name: "dm-fashion-mnist",
        about: "DM's official settings on Fashion-MNIST, with HaBa",
        settings: || DistillConfig {
            dataset: "fashion-mnist".into(),
            ..DistillConfig::default()
        },
    },
];

/// The main job's HaBa-DM on colour data: [`quick`] on the built-in CIFAR-10 subset at a
/// budget of 1 image per class, which HaBa spends on two one-channel bases per class and
/// one hallucinator (so no contrastive terms, which need two): the paper's setting at
/// 1 image per class, where its factorization pays most.
pub fn quick_cifar10() -> DistillConfig {
    DistillConfig {
        dataset: "embedded-cifar10".into(),
        ipc: 1,
        single_channel: true,
        hallucinators: 1,
        contrastive: false,
        eval: EvalSettings {
            nets: 5,
            ..quick().eval
        },
        ..quick()
    }
}

/// The main job's HaBa-DM: 300 iterations at a budget of 2 images per class, small
/// networks, minutes on a CPU.
pub fn quick() -> DistillConfig {
    let w32: Arch = "ConvNetW32".parse().expect("a known network");
    DistillConfig {
        dataset: "embedded".into(),
        ipc: 2,
        budget_equal: true,
        iterations: 300,
        objective: ObjectiveConfig::Dm(DmConfig {
            batch_real: 64,
            embedder: w32,
            views: Views::All,
        }),
        eval: EvalSettings {
            model: w32,
            nets: 2,
            epochs: 300,
            lr: 0.01,
        },
        checkpoint_every: 100,
        ..DistillConfig::default()
    }
}

/// DM as an [`Objective`]: per iteration a fresh embedder, one real batch per class, and
/// [`dm_loss`] against the class's synthetic views.
pub struct Dm {
    settings: DmConfig,
    embedder: Network,
    /// Indices of each class's training images.
    by_class: Vec<Vec<usize>>,
}

impl Dm {
    pub fn new(settings: &DmConfig, data: &Prepared) -> Result<Self> {
        let by_class = indices_by_class(&data.train.labels, data.classes);
        let embedder = Network::new(&settings.embedder, data.shape, data.classes)?;
        check_real_batches(settings, &embedder, by_class.iter().map(Vec::len))?;
        Ok(Self {
            settings: settings.clone(),
            embedder,
            by_class,
        })
    }
}

/// Refuses real batches that cannot fit in memory, with the estimate: a step holds every
/// class's batch at once, and the embedder's first layer makes `width` planes of each
/// image it sees (all classes together for a BatchNorm embedder, one class at a time
/// otherwise), its output and the activation after it.
fn check_real_batches(
    settings: &DmConfig,
    embedder: &Network,
    class_sizes: impl Iterator<Item = usize> + Clone,
) -> Result<()> {
    let shape = embedder.shape();
    let takes = class_sizes.map(|n| settings.batch_real.min(n) as u128);
    let total: u128 = takes.clone().sum();
    let at_once = if settings.embedder.has_batch_norm() {
        total
    } else {
        takes.max().unwrap_or(0)
    };
    let width = embedder
        .params()
        .first()
        .filter(|e| e.shape.len() == 4)
        .map_or(0, |e| e.shape[0] as u128);
    let planes = (shape.height * shape.width) as u128;
    let floats = total
        .checked_mul(shape.numel() as u128)
        .zip(
            at_once
                .checked_mul(width * planes)
                .and_then(|f| f.checked_mul(2)),
        )
        .and_then(|(images, layer)| images.checked_add(layer));
    crate::device::fits_in_memory(floats.and_then(|f| f.checked_mul(4))).map_err(|why| {
        Error::Config(format!(
            "`objective.batch_real = {}` ({total} real images a step through {}) {why}: \
             lower it",
            settings.batch_real, settings.embedder
        ))
    })
}

impl Objective for Dm {
    fn loss(
        &mut self,
        syn: &Synthetic<'_>,
        _learned: &[Tensor<1>],
        data: &Prepared,
        rng: &mut Rng,
    ) -> Result<ObjectiveLoss> {
        let device = syn.fact.bases.device();
        // A fresh, untrained embedder each iteration.
        let params = self.embedder.init(rng, &device);
        let synthetic = syn.class_views(self.settings.views, rng)?;
        let real: Vec<Tensor<4>> = self
            .by_class
            .iter()
            .map(|idx| {
                let take = self.settings.batch_real.min(idx.len());
                let pick: Vec<usize> = (0..take).map(|_| idx[rng.below(idx.len())]).collect();
                data.train.batch(&pick).0
            })
            .collect();
        Ok(dm_loss(
            &self.embedder,
            &params,
            &real,
            &synthetic,
            syn.dsa,
            rng.next_u64(),
        )
        .into())
    }
}

/// The DM loss `Σ_c Σ_f (mean embed(DSA(real_c)) - mean embed(DSA(syn_c)))²`, shape `[1]`.
///
/// `real[c]` and `syn[c]` are class c's real batch and synthetic images (any non-zero
/// counts). The synthetic images carry the graph to the learnable tensors (bases,
/// hallucinators) on an autodiff device; the real images and `params` (a fresh random
/// init of `embedder`, e.g. `embedder.init(rng, device)`) are treated as constants.
/// `seed` determines every augmentation draw.
pub fn dm_loss(
    embedder: &Network,
    params: &Tensor<1>,
    real: &[Tensor<4>],
    syn: &[Tensor<4>],
    dsa: &Dsa,
    seed: u64,
) -> Tensor<1> {
    assert_eq!(
        real.len(),
        syn.len(),
        "dm_loss: one real and one synthetic batch per class"
    );
    assert!(!real.is_empty(), "dm_loss: no classes");
    // Constants: the embedder is sampled, not trained, and real data needs no gradient.
    let params = params.clone().inner();
    let mut seeds = Rng::new(seed);
    let mut reals = Vec::with_capacity(real.len());
    let mut syns = Vec::with_capacity(syn.len());
    for (c, (r, s)) in real.iter().zip(syn).enumerate() {
        assert!(
            r.dims()[0] > 0 && s.dims()[0] > 0,
            "dm_loss: class {c} has an empty real or synthetic batch"
        );
        // Real images go through the same kind of device as the synthetic ones (autodiff,
        // untracked): Burn's grid sampling (DSA scale and rotate) rounds differently with
        // and without autodiff, and the Siamese draw should give bit-identical transforms.
        let r = r.clone().inner();
        let r = if s.is_autodiff() { r.autodiff() } else { r };
        let (r, s) = dsa.siamese(r, s.clone(), seeds.next_u64());
        reals.push(r);
        syns.push(s);
    }
    let embed = |x: Tensor<4>| embedder.embed(&params, x, BnMode::Batch);
    let (real_means, syn_means) = if embedder.arch().has_batch_norm() {
        (
            class_means(embed(Tensor::cat(reals.clone(), 0)), &reals),
            class_means(embed(Tensor::cat(syns.clone(), 0)), &syns),
        )
    } else {
        let mean = |x: Tensor<4>| embed(x).mean_dim(0);
        (
            reals.into_iter().map(mean).collect(),
            syns.into_iter().map(mean).collect(),
        )
    };
    // [classes, features]: real means are constants, synthetic means carry the graph.
    let diff = Tensor::cat(real_means, 0) - Tensor::cat(syn_means, 0);
    diff.square().sum()
}

/// Per-class mean rows `[1, F]` of features computed for the concatenation of `batches`.
fn class_means(features: Tensor<2>, batches: &[Tensor<4>]) -> Vec<Tensor<2>> {
    let sizes = batches.iter().map(|b| b.dims()[0]).collect();
    features
        .split_with_sizes(sizes, 0)
        .into_iter()
        .map(|f| f.mean_dim(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::data::ImageShape;

    const SHAPE: ImageShape = ImageShape {
        channels: 2,
        height: 4,
        width: 4,
    };

    fn tiny(name: &str) -> Network {
        Network::new(&name.parse().unwrap(), SHAPE, 2).unwrap()
    }

    fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal()).collect()
    }

    fn images(v: &[f32], n: usize, device: &Device) -> Tensor<4> {
        Tensor::from_data(TensorData::new(v.to_vec(), [n, 2, 4, 4]), device)
    }

    fn scalar(t: Tensor<1>) -> f64 {
        t.into_scalar::<f32>() as f64
    }

    /// ConvNetD1W4 on 2x4x4 images in float64, written from the reference layers:
    /// conv3x3 (pad 1) -> GroupNorm(4, 4) -> ReLU -> AvgPool2 -> flatten (16 features).
    fn embed64(net: &Network, p: &[f64], x: &[f64]) -> Vec<f64> {
        let at = |name: &str| net.params().iter().find(|e| e.name == name).unwrap().offset;
        let (w, b) = (at("features.0.weight"), at("features.0.bias"));
        let (gw, gb) = (at("features.1.weight"), at("features.1.bias"));
        let mut out = Vec::with_capacity(16);
        for o in 0..4 {
            let mut map = [0.0f64; 16];
            for (yx, v) in map.iter_mut().enumerate() {
                let (y, xx) = ((yx / 4) as i64, (yx % 4) as i64);
                *v = p[b + o];
                for i in 0..2 {
                    for ky in 0..3i64 {
                        for kx in 0..3i64 {
                            let (sy, sx) = (y + ky - 1, xx + kx - 1);
                            if (0..4).contains(&sy) && (0..4).contains(&sx) {
                                let wi = w + ((o * 2 + i) * 3 + ky as usize) * 3 + kx as usize;
                                *v += p[wi] * x[i * 16 + (sy * 4 + sx) as usize];
                            }
                        }
                    }
                }
            }
            let mean = map.iter().sum::<f64>() / 16.0;
            let var = map.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 16.0;
            let act: Vec<f64> = map
                .iter()
                .map(|v| ((v - mean) / (var + 1e-5).sqrt() * p[gw + o] + p[gb + o]).max(0.0))
                .collect();
            for (py, px) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let s: f64 = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .iter()
                    .map(|(dy, dx)| act[(2 * py + dy) * 4 + 2 * px + dx])
                    .sum();
                out.push(s / 4.0);
            }
        }
        out
    }

    /// The reference loss in float64; `real`/`syn` are per-class flat image lists.
    fn loss64(net: &Network, p: &[f64], real: &[Vec<f64>], syn: &[Vec<f64>]) -> f64 {
        let mean = |imgs: &[f64]| {
            let n = imgs.len() / 32;
            let mut m = vec![0.0; 16];
            for img in imgs.chunks(32) {
                for (a, e) in m.iter_mut().zip(embed64(net, p, img)) {
                    *a += e / n as f64;
                }
            }
            m
        };
        real.iter()
            .zip(syn)
            .map(|(r, s)| {
                let (mr, ms) = (mean(r), mean(s));
                mr.iter()
                    .zip(&ms)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
            })
            .sum()
    }

    /// Two classes: real batches of 3 and 4 images, synthetic sets of 2 and 1 images
    /// (one learnable tensor of 3 images sliced per class, as the bases are stored).
    struct Case {
        net: Network,
        params: Vec<f32>,
        real: Vec<Vec<f32>>,
        syn: Vec<f32>,
    }

    const SYN_COUNTS: [usize; 2] = [2, 1];

    fn case() -> Case {
        let mut rng = Rng::new(5);
        let net = tiny("ConvNetD1W4");
        // Random norm weights too, so the affine part is exercised.
        let params = randn(&mut rng, net.num_params());
        let real = vec![randn(&mut rng, 3 * 32), randn(&mut rng, 4 * 32)];
        let syn = randn(&mut rng, 3 * 32);
        Case {
            net,
            params,
            real,
            syn,
        }
    }

    fn per_class(syn: &Tensor<4>) -> Vec<Tensor<4>> {
        syn.clone().split_with_sizes(SYN_COUNTS.to_vec(), 0)
    }

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    fn syn64(syn: &[f64]) -> Vec<Vec<f64>> {
        vec![syn[..64].to_vec(), syn[64..].to_vec()]
    }

    #[test]
    fn matches_float64_and_gradient_matches_finite_differences() {
        let c = case();
        let flex = Device::flex();
        let ad = Device::flex().autodiff();
        let params =
            Tensor::<1>::from_data(TensorData::new(c.params.clone(), [c.params.len()]), &flex);
        let real: Vec<Tensor<4>> = c
            .real
            .iter()
            .map(|r| images(r, r.len() / 32, &flex))
            .collect();
        let syn = images(&c.syn, 3, &ad).require_grad();
        let loss = dm_loss(&c.net, &params, &real, &per_class(&syn), &Dsa::none(), 1);
        let grads = loss.backward();
        let got = scalar(loss.inner());

        let p64 = f64s(&c.params);
        let real64: Vec<Vec<f64>> = c.real.iter().map(|r| f64s(r)).collect();
        let s64 = f64s(&c.syn);
        let want = loss64(&c.net, &p64, &real64, &syn64(&s64));
        assert!(want > 0.1, "a non-trivial case: {want}");
        assert!((got - want).abs() < 1e-4 * (1.0 + want), "{got} vs {want}");

        let grad = syn
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let h = 1e-6;
        let mut worst = 0.0f64;
        for i in 0..s64.len() {
            let (mut up, mut down) = (s64.clone(), s64.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (loss64(&c.net, &p64, &real64, &syn64(&up))
                - loss64(&c.net, &p64, &real64, &syn64(&down)))
                / (2.0 * h);
            worst = worst.max((grad[i] as f64 - fd).abs() / (1e-2 + fd.abs()));
        }
        assert!(worst < 2e-3, "worst relative gradient error {worst}");
    }

    /// Identical real and synthetic sets give exactly zero, with full DSA (the Siamese draw
    /// makes both sides see the same transform), for the per-class and the BatchNorm path.
    #[test]
    fn identical_sets_give_exactly_zero() {
        let c = case();
        let flex = Device::flex();
        let ad = Device::flex().autodiff();
        for name in ["ConvNetD1W4", "ConvNetD1W4BN"] {
            let net = tiny(name);
            let params = net.init(&mut Rng::new(2), &flex);
            let real: Vec<Tensor<4>> = c
                .real
                .iter()
                .map(|r| images(r, r.len() / 32, &flex))
                .collect();
            let syn: Vec<Tensor<4>> = c
                .real
                .iter()
                .map(|r| images(r, r.len() / 32, &ad).require_grad())
                .collect();
            for seed in 0..3 {
                let loss = dm_loss(&net, &params, &real, &syn, &Dsa::full(), seed);
                assert_eq!(scalar(loss.inner()), 0.0, "{name} seed {seed}");
            }
            // And a different synthetic set does not.
            let other: Vec<Tensor<4>> = syn.iter().map(|s| s.clone().add_scalar(0.5)).collect();
            let loss = dm_loss(&net, &params, &real, &other, &Dsa::full(), 0);
            assert!(scalar(loss.inner()) > 0.0, "{name}");
        }
    }

    /// Real batches are sized from each class's count and refused, with the estimate, when
    /// they cannot fit; a class smaller than `batch_real` caps its batch.
    #[test]
    fn real_batches_beyond_memory_are_refused_by_setting() {
        let settings = |batch_real: usize, embedder: &str| DmConfig {
            batch_real,
            embedder: embedder.parse().unwrap(),
            ..DmConfig::default()
        };
        let net = tiny("ConvNetD1W4");
        let huge = [1usize << 50; 2];
        check_real_batches(&settings(256, "ConvNetD1W4"), &net, huge.iter().copied()).unwrap();
        let err = check_real_batches(
            &settings(usize::MAX, "ConvNetD1W4"),
            &net,
            huge.iter().copied(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("objective.batch_real") && err.contains("GB"),
            "{err}"
        );
        // Two small classes cap any batch_real.
        check_real_batches(
            &settings(usize::MAX, "ConvNetD1W4"),
            &net,
            [3usize, 5].into_iter(),
        )
        .unwrap();
        // The largest counts a machine can name: still an error, never a wrapped size.
        let bn = tiny("ConvNetD1W4BN");
        let err = check_real_batches(
            &settings(usize::MAX, "ConvNetD1W4BN"),
            &bn,
            [usize::MAX; 4].into_iter(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("objective.batch_real"), "{err}");
    }
}
