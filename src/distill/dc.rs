//! Gradient matching: DC (Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient
//! Matching") and DSA (Zhao & Bilen, "... with Differentiable Siamese Augmentation"), as
//! DatasetCondensation's `main.py` and `utils.py` compute them, with HaBa's views.
//!
//! The reference's iteration is a fresh network and `outer_loop` rounds of: for every
//! class, the cross-entropy gradient of the network's parameters on a real batch and on
//! the class's synthetic images, matched layer by layer ([`Metric`]), summed over classes;
//! one SGD step on the images; then (except after the last round) `inner_loop` epochs of
//! training the network on the synthetic set. Here one step of the shared loop is one
//! round, so one reference iteration is `outer_loop` steps: a step at round 0 draws a
//! fresh network, a later one first trains the network it carries on the synthetic set as
//! the previous step left it, then matches. The network between steps is this objective's
//! state, kept in checkpoints.
//!
//! Reference details this follows:
//! - real images per class are drawn without replacement; their gradient is a constant,
//!   the synthetic side's stays on the graph (a gradient of a gradient: the network's
//!   backward is [`crate::nets::student::loss_and_grad`], written from differentiable ops);
//! - DC learns without augmentation; DSA draws one seed per class and gives the real and
//!   the synthetic batch the same transform (Siamese, one draw for the whole batch);
//! - the network trains with plain SGD (`lr_net`, no momentum, no weight decay) on shuffled
//!   batches of `batch_train`, augmented per sample in DSA mode and not at all in DC mode;
//! - the loss is the sum over classes, not a mean.
//!
//! With HaBa, a class's synthetic images are its bases through the hallucinators
//! ([`Views`]: every view by default), and the network trains on the set as the
//! evaluation does (each epoch, every basis once through a random hallucinator).
//! BatchNorm networks are refused: the reference sets their statistics from 16 real
//! images per class and freezes them, which the hand-written backward does not cover.

use burn::tensor::{Device, Tensor};

use super::checkpoint::Checkpoint;
use super::config::{DistillConfig, Preset, Rates};
use super::objective::{Objective, ObjectiveConfig, ObjectiveLoss, Synthetic, Views};
use crate::augment::Dsa;
use crate::data::subset::indices_by_class;
use crate::data::{LabelledImages, Prepared};
use crate::error::{Error, Result};
use crate::haba::BaseInit;
use crate::nets::student::{check_student, loss_and_grad};
use crate::nets::{Arch, BnMode, NetState, Network, ParamEntry, cross_entropy};
use crate::optim::Sgd;
use crate::rng::Rng;
use crate::train::{TrainConfig, Trainer};

/// How two gradients are compared (`dis_metric`, the reference's `match_loss`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Per output unit of every weight tensor, 1 − cosine, summed; biases and other
    /// one-dimensional tensors count 0 (`distance_wb`).
    #[default]
    Ours,
    /// Squared distance of the whole flattened gradients, summed.
    Mse,
    /// 1 − cosine of the whole flattened gradients.
    Cos,
}

impl std::str::FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ours" => Ok(Metric::Ours),
            "mse" => Ok(Metric::Mse),
            "cos" => Ok(Metric::Cos),
            _ => Err(Error::Config(format!(
                "unknown matching distance {s:?}: use ours, mse or cos"
            ))),
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Metric::Ours => "ours",
            Metric::Mse => "mse",
            Metric::Cos => "cos",
        })
    }
}

/// The reference's cosine denominator guard.
const COS_EPS: f32 = 1e-6;

/// Gradient matching's own settings (`[objective]` with `method = "dc"` or `"dsa"`), named
/// as the reference's flags.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DcConfig {
    /// Real images per class per step.
    pub batch_real: usize,
    /// The network whose gradients are matched (a fresh one each reference iteration).
    pub network: Arch,
    pub dis_metric: Metric,
    /// Matching rounds per fresh network; empty: the reference's for `ipc`.
    pub outer_loop: Option<usize>,
    /// Training epochs of the network on the synthetic set between rounds; empty: the
    /// reference's for `ipc`.
    pub inner_loop: Option<usize>,
    /// The network's SGD learning rate in those epochs.
    pub lr_net: f32,
    /// Batch size of those epochs.
    pub batch_train: usize,
    /// Hallucinated views per basis in each matching round.
    pub views: Views,
}

impl Default for DcConfig {
    fn default() -> Self {
        Self {
            batch_real: 256,
            network: Arch::default(),
            dis_metric: Metric::Ours,
            outer_loop: None,
            inner_loop: None,
            lr_net: 0.01,
            batch_train: 256,
            views: Views::All,
        }
    }
}

/// The reference's `get_loops`: (outer_loop, inner_loop) for the IPCs it defines.
pub fn reference_loops(ipc: usize) -> Option<(usize, usize)> {
    Some(match ipc {
        1 => (1, 1),
        10 => (10, 50),
        20 => (20, 25),
        30 => (30, 20),
        40 => (40, 15),
        50 => (50, 10),
        _ => return None,
    })
}

impl DcConfig {
    /// The matching rounds per network and training epochs between them at `ipc`.
    pub fn loops(&self, ipc: usize) -> Result<(usize, usize)> {
        let reference = reference_loops(ipc);
        match (self.outer_loop, self.inner_loop, reference) {
            (Some(o), Some(i), _) => Ok((o, i)),
            (o, i, Some((ro, ri))) => Ok((o.unwrap_or(ro), i.unwrap_or(ri))),
            _ => Err(Error::Config(format!(
                "`ipc = {ipc}`: the reference defines gradient matching's loops only for 1, 10, \
                 20, 30, 40 and 50 images per class; set both `objective.outer_loop` and \
                 `objective.inner_loop`"
            ))),
        }
    }

    pub fn validate(&self, ipc: usize) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        let (outer, _) = self.loops(ipc)?;
        if outer == 0 {
            return bad("`objective.outer_loop = 0`: at least 1".into());
        }
        for (name, v) in [
            ("batch_real", self.batch_real),
            ("batch_train", self.batch_train),
        ] {
            if v == 0 {
                return bad(format!("`objective.{name} = 0`: at least 1"));
            }
        }
        if !(self.lr_net.is_finite() && self.lr_net >= 0.0) {
            return bad(format!(
                "`objective.lr_net = {}`: must be a finite number >= 0",
                self.lr_net
            ));
        }
        Ok(())
    }

    /// The objective at `ipc` (which sets the loops), with Siamese augmentation (DSA) or
    /// none (DC).
    pub fn init(&self, ipc: usize, siamese: bool, data: &Prepared) -> Result<Dc> {
        self.validate(ipc)?;
        let (outer, inner) = self.loops(ipc)?;
        let net = Network::new(&self.network, data.shape, data.classes)?;
        check_student(&net)?;
        let by_class = indices_by_class(&data.train.labels, data.classes);
        if let Some(c) = by_class.iter().position(Vec::is_empty) {
            return Err(Error::Config(format!(
                "class {c} has no training images: gradient matching needs real images of \
                 every class"
            )));
        }
        // A round holds one class's real batch with the network's first layer over it,
        // and every class's two gradients.
        let largest = by_class.iter().map(Vec::len).max().unwrap_or(0);
        let batch = self.batch_real.min(largest) as u128;
        let width = net.params().first().map_or(1, |e| e.shape[0]) as u128;
        let planes = (data.shape.height * data.shape.width) as u128;
        let floats = batch * (data.shape.numel() as u128 + 3 * width * planes)
            + 2 * data.classes as u128 * net.num_params() as u128;
        crate::device::fits_in_memory(Some(4 * floats)).map_err(|why| {
            Error::Config(format!(
                "`objective.batch_real = {}` through {} {why}: lower it",
                self.batch_real, self.network
            ))
        })?;
        Ok(Dc {
            settings: self.clone(),
            outer,
            inner,
            siamese,
            net,
            by_class,
            current: None,
            steps: 0,
        })
    }
}

/// One preset of [`PRESETS`]: its name, its description and its settings from
/// [`reference`].
macro_rules! preset {
    ($method:literal, $dataset:literal, $ipc:literal) => {
        Preset {
            name: concat!($method, "-", $dataset, "-ipc", $ipc),
            about: concat!(
                "the reference's ",
                $method,
                " run on ",
                $dataset,
                " at ",
                $ipc,
                " image(s) per class (1,000 of its iterations), with HaBa"
            ),
            settings: || reference($method == "dsa", $dataset, $ipc),
        }
    };
}

/// DC and DSA's presets: the reference's runs on CIFAR-10, SVHN, Fashion-MNIST and MNIST
/// at 1, 10 and 50 images per class, with HaBa (plain with `haba = false`).
pub const PRESETS: &[Preset] = &[
    preset!("dc", "cifar10", 1),
    preset!("dc", "cifar10", 10),
    preset!("dc", "cifar10", 50),
    preset!("dc", "svhn", 1),
    preset!("dc", "svhn", 10),
    preset!("dc", "svhn", 50),
    preset!("dc", "fashion-mnist", 1),
    preset!("dc", "fashion-mnist", 10),
    preset!("dc", "fashion-mnist", 50),
    preset!("dc", "mnist", 1),
    preset!("dc", "mnist", 10),
    preset!("dc", "mnist", 50),
    preset!("dsa", "cifar10", 1),
    preset!("dsa", "cifar10", 10),
    preset!("dsa", "cifar10", 50),
    preset!("dsa", "svhn", 1),
    preset!("dsa", "svhn", 10),
    preset!("dsa", "svhn", 50),
    preset!("dsa", "fashion-mnist", 1),
    preset!("dsa", "fashion-mnist", 10),
    preset!("dsa", "fashion-mnist", 50),
    preset!("dsa", "mnist", 1),
    preset!("dsa", "mnist", 10),
    preset!("dsa", "mnist", 50),
];

/// The reference's settings (`main.py` with its README's command lines): 1,000
/// iterations of `outer_loop` steps, images SGD lr 0.1 momentum 0.5; DC from noise,
/// DSA from real images with the README's strategy (no flips for digits); the images'
/// optimiser is [`RATES`].
fn reference(siamese: bool, dataset: &str, ipc: usize) -> DistillConfig {
    let (outer, _) = reference_loops(ipc).expect("presets use the reference's IPCs");
    let digits = dataset == "mnist" || dataset == "svhn";
    let dsa = if digits {
        "color_crop_cutout_scale_rotate"
    } else {
        crate::eval::DEFAULT_DSA
    };
    let settings = DcConfig::default();
    DistillConfig {
        dataset: dataset.into(),
        ipc,
        iterations: 1000 * outer,
        init: if siamese {
            BaseInit::Real
        } else {
            BaseInit::Noise
        },
        dsa: dsa.into(),
        objective: if siamese {
            ObjectiveConfig::Dsa(settings)
        } else {
            ObjectiveConfig::Dc(settings)
        },
        ..DistillConfig::default()
    }
}

/// The reference's optimiser of the images (SGD lr 0.1, momentum 0.5); the hallucinators'
/// far below it, in the same proportion as DM's.
pub const RATES: Rates = Rates {
    lr_bases: 0.1,
    momentum_bases: 0.5,
    lr_hallucinators: 1e-4,
    momentum_hallucinators: 0.5,
};

/// The network a run of rounds carries from step to step.
struct Current {
    params: Tensor<1>,
    state: NetState,
}

/// DC or DSA as an [`Objective`].
pub struct Dc {
    settings: DcConfig,
    outer: usize,
    inner: usize,
    /// DSA: Siamese augmentation while matching and training; DC: none.
    siamese: bool,
    net: Network,
    /// Indices of each class's training images.
    by_class: Vec<Vec<usize>>,
    /// The network of this reference iteration (none before the first step).
    current: Option<Current>,
    /// Steps taken (the loop's iteration): the round is `steps % outer`.
    steps: usize,
}

/// Checkpoint name of the network between rounds.
const NET_KEY: &str = "dc.network";

impl Dc {
    /// The network of this step: fresh at round 0, else the last one trained `inner`
    /// epochs on the synthetic set as it is now.
    fn network(
        &mut self,
        syn: &Synthetic<'_>,
        dsa: &Dsa,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Tensor<1>> {
        let current = match self.current.take() {
            Some(c) if !self.steps.is_multiple_of(self.outer) => self.train(c, syn, dsa, rng)?,
            _ => Current {
                params: self.net.init(rng, device),
                state: self.net.init_state(device),
            },
        };
        let params = current.params.clone();
        self.current = Some(current);
        Ok(params)
    }

    /// `inner` epochs of plain SGD on the synthetic set (detached), as the evaluation
    /// sees it: every basis once per epoch, through a random hallucinator.
    fn train(&self, c: Current, syn: &Synthetic<'_>, dsa: &Dsa, rng: &mut Rng) -> Result<Current> {
        if self.inner == 0 {
            return Ok(c);
        }
        let (images, labels) = syn.fact.detached().all_images()?;
        let set = LabelledImages { images, labels };
        let cfg = TrainConfig {
            epochs: self.inner,
            batch: self.settings.batch_train,
            sgd: Sgd {
                lr: self.settings.lr_net,
                momentum: 0.0,
                weight_decay: 0.0,
            },
            decay_epoch: None,
            standardize_batches: false,
            views: syn.hallucinators(),
        };
        let mut trainer = Trainer::new(self.net.clone(), c.params, c.state, &set, cfg)?;
        for _ in 0..self.inner {
            trainer.epoch(&set, dsa, rng)?;
        }
        Ok(Current {
            params: trainer.params,
            state: trainer.state,
        })
    }

    /// `k` distinct training images of class `c`, at random.
    fn real_indices(&self, c: usize, k: usize, rng: &mut Rng) -> Vec<usize> {
        let mut idx = self.by_class[c].clone();
        let k = k.min(idx.len());
        for i in 0..k {
            let j = i + rng.below(idx.len() - i);
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx
    }
}

impl Objective for Dc {
    fn loss(
        &mut self,
        syn: &Synthetic<'_>,
        _learned: &[Tensor<1>],
        data: &Prepared,
        rng: &mut Rng,
    ) -> Result<ObjectiveLoss> {
        let none = Dsa::none();
        let dsa = if self.siamese { syn.dsa } else { &none };
        let device = data.train.images.device();
        let params = self.network(syn, dsa, &device, rng)?;
        self.steps += 1;
        let synthetic = syn.class_views(self.settings.views, rng)?;
        let tracked = syn.fact.bases.is_autodiff();
        // The network's parameters are constants of this step's graph.
        let params = if tracked { params.autodiff() } else { params };
        let (mut real_grads, mut syn_grads, mut real_losses) = (vec![], vec![], vec![]);
        for (c, s) in synthetic.into_iter().enumerate() {
            let pick = self.real_indices(c, self.settings.batch_real, rng);
            let (real, _) = data.train.batch(&pick);
            // On the same kind of device as the synthetic images, so that a Siamese draw
            // rounds alike on both (see `dm_loss`).
            let real = if tracked { real.autodiff() } else { real };
            let (real, s) = dsa.siamese(real, s, rng.next_u64());
            let label = [c as u16];
            let labels = label.repeat(real.dims()[0]);
            let (loss, g) = real_gradient(&self.net, &params, real, &labels)?;
            real_grads.push(g);
            real_losses.push(loss);
            let n = s.dims()[0];
            syn_grads.push(loss_and_grad(&self.net, &params, s, &label.repeat(n))?.1);
        }
        let classes = real_grads.len() as f32;
        let real = Tensor::stack::<2>(real_grads, 0);
        let real = if tracked { real.autodiff() } else { real };
        let loss = match_loss(
            self.settings.dis_metric,
            self.net.params(),
            Tensor::stack(syn_grads, 0),
            real,
        );
        Ok(ObjectiveLoss {
            loss,
            scalars: vec![(
                "network_loss",
                Tensor::cat(real_losses, 0).sum().div_scalar(classes),
            )],
        })
    }

    fn save(&self, ck: &mut Checkpoint) {
        // At round 0 the next step draws a fresh network: nothing to keep.
        if let Some(c) = self
            .current
            .as_ref()
            .filter(|_| !self.steps.is_multiple_of(self.outer))
        {
            ck.put(NET_KEY, &c.params);
            ck.put_opt(&format!("{NET_KEY}.running"), c.state.running.as_ref());
        }
    }

    fn load(&mut self, ck: &mut Checkpoint) -> Result<()> {
        self.steps = ck.iteration;
        let params = ck.take(NET_KEY, [self.net.num_params()])?;
        let buffers = self.net.buffers().iter().map(ParamEntry::numel).sum();
        let running = ck.take(&format!("{NET_KEY}.running"), [buffers])?;
        self.current = match params {
            Some(params) => Some(Current {
                params,
                state: NetState { running },
            }),
            None if self.steps.is_multiple_of(self.outer) => None,
            None => {
                return Err(Error::Config(format!(
                    "the checkpoint of step {} has no `{NET_KEY}`: it stopped inside a \
                     reference iteration of {} rounds, whose network it must hold",
                    self.steps, self.outer
                )));
            }
        };
        Ok(())
    }
}

/// The cross-entropy of `net` on a real batch and its gradient with respect to `params`,
/// both constants: one first-order backward of the network's forward (the fused CPU ops'
/// own backward), cheaper than the differentiable gradient the synthetic side needs.
fn real_gradient(
    net: &Network,
    params: &Tensor<1>,
    images: Tensor<4>,
    labels: &[u16],
) -> Result<(Tensor<1>, Tensor<1>)> {
    let p = params.clone().inner().autodiff().require_grad();
    let logits = net.forward(&p, images.inner().autodiff(), BnMode::Batch);
    let loss = cross_entropy(logits, labels);
    let grad = p
        .grad(&loss.backward())
        .ok_or_else(|| Error::NonFinite("no gradient reached the network".into()))?;
    Ok((loss.inner(), grad))
}

/// The matching distance between synthetic and real gradients, `[classes, P]` each (rows
/// of flat gradients laid out as `entries`), summed over classes: the reference's
/// `match_loss`, shape `[1]`. The synthetic side carries the graph.
pub fn match_loss(
    metric: Metric,
    entries: &[ParamEntry],
    syn: Tensor<2>,
    real: Tensor<2>,
) -> Tensor<1> {
    let [classes, _] = syn.dims();
    let cosine_distance = |a: Tensor<3>, b: Tensor<3>| {
        // 1 - <a, b> / (|a| |b| + eps) along the last axis, summed.
        let dot = (a.clone() * b.clone()).sum_dim(2);
        let norms = a.square().sum_dim(2).sqrt() * b.square().sum_dim(2).sqrt();
        (dot / norms.add_scalar(COS_EPS))
            .neg()
            .add_scalar(1.0)
            .sum()
    };
    match metric {
        Metric::Ours => {
            let mut total: Option<Tensor<1>> = None;
            for e in entries.iter().filter(|e| e.shape.len() > 1) {
                let rows = e.shape[0];
                let cols = e.numel() / rows;
                let part = |g: &Tensor<2>| {
                    g.clone()
                        .narrow(1, e.offset, e.numel())
                        .reshape([classes, rows, cols])
                };
                let d = cosine_distance(part(&syn), part(&real));
                total = Some(match total {
                    Some(t) => t + d,
                    None => d,
                });
            }
            total.unwrap_or_else(|| Tensor::zeros([1], &syn.device()))
        }
        Metric::Mse => (syn - real).square().sum(),
        Metric::Cos => {
            let p = syn.dims()[1];
            cosine_distance(syn.reshape([classes, 1, p]), real.reshape([classes, 1, p]))
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::data::Normalization;
    use crate::distill::testing::{SHAPE, factorization, moved, randn, tensor};
    use crate::haba::{Factorization, Hallucinators};
    use crate::nets::{Act, ConvNetConfig, Norm, Pool};

    /// The reference's `match_loss` in float64, written from its code: per parameter
    /// tensor, 4-D reshaped to [out, rest], 3-D to [s0, s1 s2], 2-D as is, 1-D skipped,
    /// then Σ_rows 1 - <a, b> / (|a| |b| + 1e-6); 'mse' and 'cos' over the concatenation.
    fn reference(metric: Metric, entries: &[ParamEntry], syn: &[f64], real: &[f64]) -> f64 {
        let cos = |a: &[f64], b: &[f64]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
            let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
            1.0 - dot / (na * nb + 1e-6)
        };
        match metric {
            Metric::Ours => entries
                .iter()
                .map(|e| {
                    let rows = match e.shape.len() {
                        1 => return 0.0,
                        _ => e.shape[0],
                    };
                    let cols = e.numel() / rows;
                    (0..rows)
                        .map(|r| {
                            let at = e.offset + r * cols;
                            cos(&syn[at..at + cols], &real[at..at + cols])
                        })
                        .sum::<f64>()
                })
                .sum(),
            Metric::Mse => syn.iter().zip(real).map(|(a, b)| (a - b) * (a - b)).sum(),
            Metric::Cos => cos(syn, real),
        }
    }

    #[test]
    fn the_distance_is_the_references_in_float64() {
        let device = Device::flex();
        // Conv weights (4-D), biases and norm weights (1-D), LayerNorm weights (3-D) and
        // the classifier (2-D).
        let net = Network::new(&"ConvNetLND2W4".parse().unwrap(), SHAPE, 3).unwrap();
        let shapes: Vec<usize> = net.params().iter().map(|e| e.shape.len()).collect();
        assert!(
            [1, 2, 3, 4].iter().all(|d| shapes.contains(d)),
            "{shapes:?}"
        );
        let p = net.num_params();
        let mut rng = Rng::new(1);
        let (classes, n) = (2, 2 * p);
        let syn = randn(&mut rng, n);
        // Real gradients correlated with the synthetic ones, so the cosines are not ~0.
        let real: Vec<f32> = syn.iter().map(|s| 0.7 * s + 0.5 * rng.normal()).collect();
        for metric in [Metric::Ours, Metric::Mse, Metric::Cos] {
            let got = match_loss(
                metric,
                net.params(),
                tensor(syn.clone(), [classes, p], &device),
                tensor(real.clone(), [classes, p], &device),
            )
            .into_scalar::<f32>() as f64;
            let want: f64 = (0..classes)
                .map(|c| {
                    let f = |v: &[f32]| v[c * p..(c + 1) * p].iter().map(|&x| x as f64).collect();
                    let (s, r): (Vec<f64>, Vec<f64>) = (f(&syn), f(&real));
                    reference(metric, net.params(), &s, &r)
                })
                .sum();
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{metric}: {got} vs {want}"
            );
        }
    }

    /// Three classes of 8x8 two-channel images and DC over a smooth network (sigmoid, so
    /// finite differences see no kinks), at one reference IPC of 2 matching rounds.
    fn setup(siamese: bool) -> (Prepared, Dc) {
        let device = Device::flex();
        let mut rng = Rng::new(5);
        let images = tensor(randn(&mut rng, 9 * 128), [9, 2, 8, 8], &device);
        let split = LabelledImages {
            images,
            labels: vec![0, 1, 2, 0, 1, 2, 0, 1, 2],
        };
        let data = Prepared {
            train: split.clone(),
            test: split,
            classes: 3,
            shape: SHAPE,
            normalization: Normalization::MeanStd {
                mean: vec![0.0; 2],
                std: vec![1.0; 2],
            },
        };
        let cfg = DcConfig {
            batch_real: 2,
            network: Arch::ConvNet(ConvNetConfig {
                width: 4,
                depth: 2,
                act: Act::Sigmoid,
                norm: Norm::Instance,
                pool: Pool::Avg,
            }),
            outer_loop: Some(2),
            inner_loop: Some(1),
            ..DcConfig::default()
        };
        let dc = cfg.init(2, siamese, &data).unwrap();
        (data, dc)
    }

    /// The loss at `fact` and its gradients (bases, hallucinators): a fresh network's
    /// round, or with `carried`, a later round at that network (not trained further).
    fn run(
        dc: &mut Dc,
        data: &Prepared,
        dsa: &Dsa,
        fact: &Factorization,
        carried: Option<&Tensor<1>>,
    ) -> (f32, Vec<f32>, Option<Vec<f32>>) {
        let tracked = Factorization {
            bases: fact.bases.clone().autodiff().require_grad(),
            labels: fact.labels.clone(),
            hallucinators: fact.hallucinators.as_ref().map(|h| Hallucinators {
                shape: h.shape,
                params: h.params.clone().autodiff().require_grad(),
            }),
        };
        let syn = Synthetic {
            fact: &tracked,
            classes: 3,
            per_class: 2,
            dsa,
        };
        dc.inner = 0;
        dc.steps = usize::from(carried.is_some());
        dc.current = carried.map(|p| Current {
            params: p.clone(),
            state: NetState::default(),
        });
        let loss = dc.loss(&syn, &[], data, &mut Rng::new(77)).unwrap().loss;
        let grads = loss.backward();
        let host = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        let gb = host(tracked.bases.grad(&grads).unwrap().flatten(0, 3));
        let gh = tracked
            .hallucinators
            .as_ref()
            .map(|h| host(h.params.grad(&grads).unwrap()));
        (loss.into_scalar::<f32>(), gb, gh)
    }

    /// Directional derivatives of the matching loss (a gradient of a gradient) against
    /// central differences, with and without HaBa, at a fresh network and at a carried one,
    /// for DC and for DSA under a smooth augmentation (colour).
    #[test]
    fn gradient_matches_finite_differences() {
        let colour = crate::eval::dsa_from_name("color").unwrap();
        for (siamese, haba, carried) in [
            (false, true, false),
            (false, false, true),
            (true, true, true),
        ] {
            let (data, mut dc) = setup(siamese);
            let carried = carried.then(|| {
                let p = dc.net.init(&mut Rng::new(11), &Device::flex());
                p.clone() + p.mul_scalar(0.3)
            });
            let fact = factorization(haba);
            let (_, gb, gh) = run(&mut dc, &data, &colour, &fact, carried.as_ref());
            let mut rng = Rng::new(3);
            let mut check = |in_bases: bool, g: &[f32], eps: f32| {
                let dir = randn(&mut rng, g.len());
                let mut at = |e: f32| {
                    let f = moved(&fact, &dir, e, in_bases);
                    run(&mut dc, &data, &colour, &f, carried.as_ref()).0 as f64
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                let an: f64 = g.iter().zip(&dir).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!(
                    (fd - an).abs() <= 0.02 * an.abs().max(1e-3),
                    "siamese {siamese}, haba {haba}, bases {in_bases}: finite differences \
                     {fd} vs gradient {an}"
                );
            };
            check(true, &gb, 1e-2);
            if let Some(gh) = gh {
                check(false, &gh, 1e-3);
            }
        }
    }

    #[test]
    fn a_later_round_trains_the_network_it_carries_and_checkpoints_it() {
        let (data, mut dc) = setup(false);
        let fact = factorization(true);
        let syn = Synthetic {
            fact: &fact,
            classes: 3,
            per_class: 2,
            dsa: &Dsa::none(),
        };
        let values = |t: &Tensor<1>| t.clone().into_data().try_to_vec::<f32>().unwrap();
        dc.loss(&syn, &[], &data, &mut Rng::new(1)).unwrap();
        let fresh = values(&dc.current.as_ref().unwrap().params);
        let mut ck = Checkpoint::new(1);
        dc.save(&mut ck);
        assert_eq!(ck.remaining(), vec![NET_KEY]);
        // Round 1 of 2: the same network, trained one epoch on the set.
        dc.loss(&syn, &[], &data, &mut Rng::new(2)).unwrap();
        let trained = values(&dc.current.as_ref().unwrap().params);
        assert_ne!(fresh, trained);
        // At a reference iteration's end the next step draws afresh: nothing to keep.
        let mut end = Checkpoint::new(2);
        dc.save(&mut end);
        assert!(end.remaining().is_empty());
        // A resumed objective takes the network back and trains it as the first did.
        let (_, mut other) = setup(false);
        other.load(&mut ck).unwrap();
        other.loss(&syn, &[], &data, &mut Rng::new(2)).unwrap();
        assert_eq!(values(&other.current.as_ref().unwrap().params), trained);
        // A checkpoint inside a reference iteration without its network is refused.
        let (_, mut third) = setup(false);
        let err = third.load(&mut Checkpoint::new(1)).unwrap_err().to_string();
        assert!(err.contains(NET_KEY), "{err}");
    }

    #[test]
    fn loops_follow_the_reference_and_bad_settings_are_named() {
        let dc = DcConfig::default();
        assert_eq!(dc.loops(1).unwrap(), (1, 1));
        assert_eq!(dc.loops(10).unwrap(), (10, 50));
        assert_eq!(dc.loops(50).unwrap(), (50, 10));
        let err = dc.loops(7).unwrap_err().to_string();
        assert!(
            err.contains("`ipc = 7`") && err.contains("objective.outer_loop"),
            "{err}"
        );
        let both = DcConfig {
            outer_loop: Some(3),
            inner_loop: Some(4),
            ..DcConfig::default()
        };
        assert_eq!(both.loops(7).unwrap(), (3, 4));
        let one = DcConfig {
            inner_loop: Some(4),
            ..DcConfig::default()
        };
        assert_eq!(one.loops(10).unwrap(), (10, 4));
        assert!(one.loops(7).is_err());
        let err = "l1".parse::<Metric>().unwrap_err().to_string();
        assert!(err.contains("l1") && err.contains("ours"), "{err}");
        // BatchNorm and other families are refused by name.
        let (data, _) = setup(false);
        for name in ["ConvNetBN", "MLP"] {
            let cfg = DcConfig {
                network: name.parse().unwrap(),
                ..DcConfig::default()
            };
            let err = cfg.init(1, false, &data).err().unwrap().to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
