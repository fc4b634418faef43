//! Matching training trajectories (MTT, Cazenavette et al.; `distill.py` of
//! mtt-distillation), with HaBa's views as in DatasetFactorization's `distill_fac.py`.
//!
//! Each iteration: a random expert and start epoch t < `max_start_epoch`; the student
//! starts at the expert's θ_t and takes `syn_steps` SGD steps on synthetic minibatches with
//! the learnable learning rate α; the loss is `||θ_N − θ_{t+M}||² / ||θ_t − θ_{t+M}||²`.
//! Its gradient reaches the bases, the hallucinators and α through every student step,
//! which needs the gradient of each step's gradient: the student's backward is
//! [`crate::nets::student::piece_grads`], written from differentiable ops, on parameters
//! kept one tensor per layer entry ([`ParamPieces`]).
//!
//! Reference details this follows: minibatches walk random permutations of the synthetic
//! set in chunks of `batch_syn` (all of it by default); each step's images get a fresh,
//! per-sample DSA draw; with HaBa each student step runs its whole batch through one
//! hallucinator drawn at random; α has its own SGD (`lr_lr`, momentum 0.9 with HaBa, 0.5
//! without) and is kept at 0.001 or above.
//!
//! Two ways to the same gradient ([`Unroll`]): `graph` keeps one autodiff graph over every
//! step, as the reference; `recompute` keeps each step's parameters and walks the steps
//! backwards, replaying each step whose graph it did not keep (the last ones, as many as
//! its memory budget holds), so its memory does not grow with `syn_steps`.

use burn::tensor::{Device, Gradients, Tensor};

use super::buffer::{BufferKey, Trajectory, read_buffer, read_buffer_any_model};
use super::config::{DistillConfig, Preset, Rates};
use super::objective::{Learned, Objective, ObjectiveConfig, ObjectiveLoss, Source, Synthetic};
use crate::data::NormKind;
use crate::data::Prepared;
use crate::data::index_tensor;
use crate::error::{Error, Result};
use crate::haba::{Factorization, Hallucinators};
use crate::nets::Arch;
use crate::nets::student::{check_student, conv_outputs, piece_grads};
use crate::nets::{Network, ParamPieces};
use crate::optim::{Sgd, descend};
use crate::rng::Rng;

/// How MTT computes the gradient through the unrolled student steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unroll {
    /// One autodiff graph over every student step, as the reference: memory grows with
    /// `syn_steps`.
    #[default]
    Graph,
    /// Keep each step's parameters and walk the steps backwards, replaying them one graph
    /// at a time except the last ones that [`MttConfig::recompute_memory_mb`] holds: the
    /// same gradient in memory that does not grow with `syn_steps`.
    Recompute,
}

impl std::fmt::Display for Unroll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unroll::Graph => "graph",
            Unroll::Recompute => "recompute",
        })
    }
}

impl std::str::FromStr for Unroll {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "graph" => Ok(Unroll::Graph),
            "recompute" => Ok(Unroll::Recompute),
            _ => Err(Error::Config(format!(
                "unknown unroll `{s}`; use `graph` or `recompute`"
            ))),
        }
    }
}

/// Trajectory matching's own settings (`[objective]` with `method = "mtt"`), named as
/// the reference's flags.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MttConfig {
    /// The directory of expert trajectories (`haba buffer --out`).
    pub buffer: String,
    /// The student network; empty: the buffer's model.
    pub student: Option<Arch>,
    /// Student SGD steps on synthetic batches per iteration.
    pub syn_steps: usize,
    /// Expert epochs the student should cover in `syn_steps` steps (M).
    pub expert_epochs: usize,
    /// Start epochs are drawn below this.
    pub max_start_epoch: usize,
    /// The student's initial learning rate α (learned from there).
    pub lr_teacher: f32,
    /// SGD on α.
    pub lr_lr: f32,
    pub momentum_lr: f32,
    /// Synthetic images per student step; 0: every image (the reference's default).
    pub batch_syn: usize,
    pub unroll: Unroll,
    /// MiB that `recompute` may spend on graphs of the last student steps, kept from the
    /// forward walk instead of being replayed (each kept step saves one forward and
    /// backward of the student); 0 replays every step.
    pub recompute_memory_mb: f64,
}

impl Default for MttConfig {
    /// The official CIFAR-10 IPC 10 script.
    fn default() -> Self {
        Self {
            buffer: String::new(),
            student: None,
            syn_steps: 30,
            expert_epochs: 2,
            max_start_epoch: 20,
            lr_teacher: 0.01,
            lr_lr: 1e-5,
            momentum_lr: 0.5,
            batch_syn: 0,
            unroll: Unroll::Graph,
            recompute_memory_mb: 2048.0,
        }
    }
}

impl MttConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.buffer.is_empty() {
            return bad(
                "`objective.buffer` is empty: MTT needs expert trajectories, a directory made \
                 by `haba buffer`"
                    .into(),
            );
        }
        for (name, v) in [
            ("syn_steps", self.syn_steps),
            ("expert_epochs", self.expert_epochs),
            ("max_start_epoch", self.max_start_epoch),
        ] {
            if v == 0 {
                return bad(format!("`objective.{name} = 0`: at least 1"));
            }
        }
        if !(self.lr_teacher.is_finite() && self.lr_teacher > 0.0) {
            return bad(format!(
                "`objective.lr_teacher = {}`: must be a finite number > 0",
                self.lr_teacher
            ));
        }
        if !(self.recompute_memory_mb.is_finite() && self.recompute_memory_mb >= 0.0) {
            return bad(format!(
                "`objective.recompute_memory_mb = {}`: must be a finite number of MiB >= 0",
                self.recompute_memory_mb
            ));
        }
        for (name, v) in [("lr_lr", self.lr_lr), ("momentum_lr", self.momentum_lr)] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!(
                    "`objective.{name} = {v}`: must be a finite number >= 0"
                ));
            }
        }
        Ok(())
    }

    /// Reads the buffer and checks it against the run's data and student.
    pub fn init(&self, data: &Prepared, source: Source) -> Result<Mtt> {
        let dir = std::path::Path::new(&self.buffer);
        let model = self.student.unwrap_or_default();
        let key = BufferKey::of(source.dataset, source.preprocess, data, model);
        let experts = match self.student {
            Some(_) => read_buffer(dir, &key)?,
            None => read_buffer_any_model(dir, &key)?,
        };
        Mtt::with_experts(self, experts, data)
    }
}

/// MTT's presets: the main job's quick run and the official CIFAR-10 scripts.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "quick-mtt",
        about: "the grey main job's HaBa-MTT: the quick settings over a small expert buffer (needs one)",
        settings: quick,
    },
    Preset {
        name: "quick-mtt-cifar10",
        about: "the main job's HaBa-MTT on colour data: the built-in CIFAR-10 subset (needs an expert buffer)",
        settings: quick_cifar10,
    },
    Preset {
        name: "haba-mtt-cifar10-ipc1",
        about: "HaBa's official MTT script, CIFAR-10 at 1 image per class (needs an expert buffer)",
        settings: || cifar10(1, true),
    },
    Preset {
        name: "haba-mtt-cifar10-ipc1-sc",
        about: "the same with single-channel bases",
        settings: || DistillConfig {
            single_channel: true,
            ..cifar10(1, true)
        },
    },
    Preset {
        name: "haba-mtt-cifar10-ipc10",
        about: "HaBa's official MTT script, CIFAR-10 at 10 images per class (needs an expert buffer)",
        settings: || cifar10(10, true),
    },
    Preset {
        name: "haba-mtt-cifar10-ipc50",
        about: "HaBa's official MTT script, CIFAR-10 at 50 images per class (needs an expert buffer)",
        settings: || cifar10(50, true),
    },
    Preset {
        name: "mtt-cifar10-ipc1",
        about: "MTT's official CIFAR-10 script at 1 image per class, no HaBa (needs an expert buffer)",
        settings: || cifar10(1, false),
    },
    Preset {
        name: "mtt-cifar10-ipc10",
        about: "MTT's official CIFAR-10 script at 10 images per class, no HaBa (needs an expert buffer)",
        settings: || cifar10(10, false),
    },
    Preset {
        name: "mtt-cifar10-ipc50",
        about: "MTT's official CIFAR-10 script at 50 images per class, no HaBa (needs an expert buffer)",
        settings: || cifar10(50, false),
    },
];

/// The optimisers of the official scripts: HaBa's (bases and hallucinators lr 100,
/// momentum 0.95), MTT's own for plain images (lr 1000, momentum 0.5).
pub fn rates(haba: bool) -> Rates {
    let (lr, momentum) = if haba { (100.0, 0.95) } else { (1000.0, 0.5) };
    Rates {
        lr_bases: lr,
        momentum_bases: momentum,
        lr_hallucinators: lr,
        momentum_hallucinators: momentum,
    }
}

/// The main job's HaBa-MTT: the quick settings over a small buffer.
fn quick() -> DistillConfig {
    quick_over(super::dm::quick())
}

/// MTT's short run over a small buffer, with the rest of `dm`'s settings. The set's
/// optimiser is MTT's own for the bases (lr 1000, momentum 0.5) and a gentle one for the
/// hallucinators (lr 1, momentum 0.5), not HaBa's (both lr 100, momentum 0.95): that one
/// is made for 15,000 iterations on whitened CIFAR-10; at momentum 0.95 a basis takes some
/// 20 iterations to reach speed, and on mean/std-normalised data lr 100 grows the
/// hallucinators' weights a thousandfold within 60 iterations, until their views
/// saturate (measured in the README's main-job section).
fn quick_over(dm: DistillConfig) -> DistillConfig {
    DistillConfig {
        iterations: 60,
        checkpoint_every: 20,
        lr_bases: Some(1000.0),
        momentum_bases: Some(0.5),
        lr_hallucinators: Some(1.0),
        momentum_hallucinators: Some(0.5),
        objective: ObjectiveConfig::Mtt(MttConfig {
            syn_steps: 10,
            expert_epochs: 1,
            max_start_epoch: 2,
            lr_teacher: 0.01,
            lr_lr: 1e-5,
            momentum_lr: 0.9,
            ..MttConfig::default()
        }),
        ..dm
    }
}

/// The main job's HaBa-MTT on colour data: [`quick`] over the main job's colour HaBa-DM,
/// for 200 iterations.
fn quick_cifar10() -> DistillConfig {
    DistillConfig {
        iterations: 200,
        checkpoint_every: 50,
        lr_hallucinators: Some(10.0),
        ..quick_over(super::dm::quick_cifar10())
    }
}

/// The official CIFAR-10 trajectory-matching settings at `ipc`: HaBa's scripts
/// with `haba`, MTT's own (images lr 1000, momentum 0.5) without.
fn cifar10(ipc: usize, haba: bool) -> DistillConfig {
    let (syn_steps, max_start_epoch, lr_lr, lr_teacher) = match ipc {
        1 => (50, 2, 1e-7, 0.01),
        10 => (30, 20, 1e-5, if haba { 0.001 } else { 0.01 }),
        _ => (30, 20, 1e-5, 0.01),
    };
    DistillConfig {
        haba,
        dataset: "cifar10".into(),
        preprocess: Some(NormKind::Zca { eps: 0.1 }),
        ipc,
        iterations: 15_000,
        objective: ObjectiveConfig::Mtt(MttConfig {
            syn_steps,
            expert_epochs: 2,
            max_start_epoch,
            lr_teacher,
            lr_lr,
            momentum_lr: if haba { 0.9 } else { 0.5 },
            ..MttConfig::default()
        }),
        ..DistillConfig::default()
    }
}

/// The lowest learning rate α may take.
pub const MIN_LR: f32 = 0.001;

/// The random choices of one student step, drawn before any step runs so that the
/// recompute sweep can replay them.
#[derive(Clone, Debug)]
struct Draw {
    /// Rows of the synthetic set in this minibatch.
    rows: Vec<usize>,
    hallucinator: usize,
    dsa_seed: u64,
}

/// MTT as an [`Objective`]: it learns α ([`Learned`]), which the loop optimises.
pub struct Mtt {
    settings: MttConfig,
    student: Network,
    experts: Vec<Trajectory>,
    /// Where α starts.
    device: Device,
}

impl Mtt {
    /// MTT over trajectories already in memory (all from one model).
    pub fn with_experts(s: &MttConfig, experts: Vec<Trajectory>, data: &Prepared) -> Result<Self> {
        let first = experts
            .first()
            .ok_or_else(|| Error::Config("the expert buffer is empty".into()))?;
        let model = first.meta.key.model;
        let student = Network::new(&model, data.shape, data.classes)?;
        check_student(&student)?;
        let epochs = first.meta.settings.epochs;
        let needed = s.max_start_epoch.max(1) - 1 + s.expert_epochs;
        if needed > epochs {
            return Err(Error::Config(format!(
                "`objective.max_start_epoch = {}` and `objective.expert_epochs = {}` need \
                 experts of at least {needed} epochs; the buffer's have {epochs}",
                s.max_start_epoch, s.expert_epochs,
            )));
        }
        if first.epochs[0].len() != student.num_params() {
            return Err(Error::Config(format!(
                "the experts hold {} parameters; {model} on this data has {}",
                first.epochs[0].len(),
                student.num_params()
            )));
        }
        // Each unrolled step keeps at least the student's parameters and their gradient
        // (the graph unroll much more); recompute keeps them once per step too.
        let per_step = 2 * 4 * student.num_params() as u128;
        crate::device::fits_in_memory((s.syn_steps as u128).checked_mul(per_step)).map_err(
            |why| {
                Error::Config(format!(
                    "`objective.syn_steps = {}` of {model}'s student {why}: use fewer steps",
                    s.syn_steps
                ))
            },
        )?;
        Ok(Self {
            settings: s.clone(),
            student,
            experts,
            device: data.train.images.device(),
        })
    }

    /// Every step's draws, from `rng`, as the reference walks permutations in chunks.
    fn draws(&self, n: usize, hallucinators: usize, rng: &mut Rng) -> Vec<Draw> {
        let batch = match self.settings.batch_syn {
            0 => n,
            b => b.min(n),
        };
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        (0..self.settings.syn_steps)
            .map(|_| {
                if chunks.is_empty() {
                    let perm = rng.permutation(n);
                    chunks = perm.chunks(batch).map(<[usize]>::to_vec).collect();
                    chunks.reverse(); // popped from the end, first chunk first
                }
                Draw {
                    rows: chunks.pop().expect("refilled above"),
                    hallucinator: rng.below(hallucinators),
                    dsa_seed: rng.next_u64(),
                }
            })
            .collect()
    }

    /// How many of the last steps `recompute` keeps on their graphs from the forward walk:
    /// as many as `recompute_memory_mb` holds at [`GRAPH_BYTES_PER_OUTPUT`] per conv output.
    fn kept_graphs(&self, draws: &[Draw]) -> usize {
        let images = draws.iter().map(|d| d.rows.len()).max().unwrap_or(0);
        let step = GRAPH_BYTES_PER_OUTPUT * conv_outputs(&self.student, images);
        // Saturating: a budget beyond usize keeps every step.
        (self.settings.recompute_memory_mb * (1u64 << 20) as f64 / step.max(1) as f64) as usize
    }

    /// One student step's images (augmented) and labels.
    fn batch(fact: &Factorization, syn: &Synthetic<'_>, d: &Draw) -> Result<(Tensor<4>, Vec<u16>)> {
        let device = fact.bases.device();
        let bases = fact.bases.clone().select(0, index_tensor(&d.rows, &device));
        let x = fact.images(bases, &vec![d.hallucinator; d.rows.len()])?;
        let labels = d.rows.iter().map(|&r| fact.labels[r]).collect();
        Ok((syn.dsa.apply(x, d.dsa_seed), labels))
    }

    /// The student's gradient at `params` on one draw.
    fn grad(
        &self,
        fact: &Factorization,
        syn: &Synthetic<'_>,
        params: &ParamPieces,
        d: &Draw,
    ) -> Result<ParamPieces> {
        let (x, y) = Self::batch(fact, syn, d)?;
        Ok(piece_grads(&self.student, params, x, &y)?)
    }

    /// One student step on its own graph, for the sweep of [`Self::recomputed`]: the
    /// parameters it starts from and the factorization as fresh tracked leaves, and the
    /// gradient built from them.
    fn tracked_step(
        &self,
        syn: &Synthetic<'_>,
        theta: &ParamPieces,
        d: &Draw,
    ) -> Result<(ParamPieces, Factorization, ParamPieces)> {
        let theta = theta.map(Tensor::require_grad);
        let fresh = refreshed(syn.fact, true);
        let g = self.grad(&fresh, syn, &theta, d)?;
        Ok((theta, fresh, g))
    }

    /// The loss on the graph of every step (the reference's way).
    fn unrolled(
        &self,
        syn: &Synthetic<'_>,
        start: &Tensor<1>,
        target: &Tensor<1>,
        draws: &[Draw],
        lr: &Tensor<1>,
    ) -> Result<Tensor<1>> {
        let start_pieces = ParamPieces::split(&self.student, start);
        let theta = self
            .walk(syn.fact, syn, start_pieces, draws, lr, |_| {})?
            .flat();
        let span = (start.clone() - target.clone()).square().sum();
        Ok((theta - target.clone()).square().sum() / span)
    }

    /// The student's parameters after one step per draw from `start`, on `fact`'s images;
    /// `visit` sees the parameters each step starts from.
    fn walk(
        &self,
        fact: &Factorization,
        syn: &Synthetic<'_>,
        start: ParamPieces,
        draws: &[Draw],
        lr: &Tensor<1>,
        mut visit: impl FnMut(&ParamPieces),
    ) -> Result<ParamPieces> {
        let mut theta = start;
        for d in draws {
            let g = self.grad(fact, syn, &theta, d)?;
            visit(&theta);
            theta = advance(&theta, g, lr);
        }
        Ok(theta)
    }

    /// The same loss and its gradient by replaying the steps backwards, returned
    /// as a surrogate whose value is the loss and whose gradient with respect to the
    /// tracked bases, hallucinators and `lr` is the unrolled graph's.
    fn recomputed(
        &self,
        syn: &Synthetic<'_>,
        start: &Tensor<1>,
        target: &Tensor<1>,
        draws: &[Draw],
        lr: &Tensor<1>,
    ) -> Result<Tensor<1>> {
        // Constants on the autodiff device (untracked), so every op rounds as in the
        // graph mode and as in the sweep below.
        let plain = refreshed(syn.fact, false);
        let alpha = constant(lr.clone());
        let (start, target) = (constant(start.clone()), constant(target.clone()));
        // Forward without a graph, keeping θ_0 .. θ_{N-1}, except the last steps the memory
        // budget holds: they run on graphs of their own, which the sweep then uses instead
        // of replaying them.
        let (early, late) = draws.split_at(draws.len().saturating_sub(self.kept_graphs(draws)));
        let mut thetas = Vec::with_capacity(draws.len());
        let start_pieces = ParamPieces::split(&self.student, &start);
        let mut theta = self.walk(&plain, syn, start_pieces, early, &alpha, |t| {
            thetas.push(t.clone())
        })?;
        let mut kept = Vec::with_capacity(late.len());
        for d in late {
            let step = self.tracked_step(syn, &theta, d)?;
            let g = step.2.map(constant);
            thetas.push(theta.clone());
            theta = advance(&theta, g, &alpha);
            kept.push(step);
        }
        let theta = theta.flat();
        let span = (start - target.clone()).square().sum();
        let diff = theta - target;
        let loss = diff.clone().square().sum() / span.clone();
        // λ_N = ∂L/∂θ_N, then back through each step: λ_i = λ_{i+1} − α H_i λ_{i+1}.
        let mut adjoint = diff * 2.0 / span;
        let mut d_bases = plain.bases.zeros_like();
        let mut d_hal = plain.hallucinators.as_ref().map(|h| h.params.zeros_like());
        let mut d_lr = alpha.zeros_like();
        let alpha4 = alpha.clone().reshape([1, 1, 1, 1]);
        for (d, theta) in draws.iter().zip(thetas).rev() {
            let (theta, fresh, g) = match kept.pop() {
                Some(step) => step,
                None => self.tracked_step(syn, &theta, d)?,
            };
            // s = <g_i, λ_{i+1}>: one backward gives H_i λ and ∂s/∂(bases, hallucinators).
            let s = (g.flat() * adjoint.clone()).sum();
            let grads = s.backward();
            let hvp = theta
                .pieces()
                .iter()
                .map(|t| grad_of(t, &grads, "student parameters"))
                .collect::<Result<Vec<_>>>()?;
            let hvp = Tensor::cat(hvp, 0);
            d_bases = d_bases - grad_of(&fresh.bases, &grads, "bases")? * alpha4.clone();
            if let (Some(acc), Some(h)) = (d_hal.as_mut(), &fresh.hallucinators) {
                *acc = acc.clone() - grad_of(&h.params, &grads, "hallucinators")? * alpha.clone();
            }
            d_lr = d_lr - constant(s);
            adjoint = adjoint - hvp * alpha.clone();
        }
        // loss + <x, dL/dx> − <x, dL/dx>|value: the loss's value, the sweep's gradient.
        let mut linear = (syn.fact.bases.clone() * d_bases).sum() + lr.clone() * d_lr;
        if let (Some(h), Some(dh)) = (&syn.fact.hallucinators, d_hal) {
            linear = linear + (h.params.clone() * dh).sum();
        }
        Ok(loss + linear.clone() - constant(linear))
    }
}

/// The bytes of one student step's autodiff graph per value its conv layers output: its
/// activations, the hand-written backward's tensors and what autodiff saves of both.
/// Measured on ConvNet-128 at 32x32 (the peak's growth per kept step): 5.9 floats at 1
/// image per class, 5.7 at 10, the same with HaBa; 6 rounds up.
const GRAPH_BYTES_PER_OUTPUT: usize = 6 * 4;

/// `theta - lr * g`, piece by piece: one SGD step of the student.
fn advance(theta: &ParamPieces, g: ParamPieces, lr: &Tensor<1>) -> ParamPieces {
    let next = theta
        .pieces()
        .iter()
        .zip(g.into_pieces())
        .map(|(t, g)| descend(t.clone(), g, lr))
        .collect();
    theta.with_pieces(next)
}

/// `t`'s values as an untracked autodiff tensor: a constant in any graph.
fn constant<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    t.inner().autodiff()
}

/// `fact`'s values on fresh leaves: tracked ones for a sweep step's own graph, or
/// untracked constants.
fn refreshed(fact: &Factorization, track: bool) -> Factorization {
    Factorization {
        bases: leaf(&fact.bases, track),
        labels: fact.labels.clone(),
        hallucinators: fact.hallucinators.as_ref().map(|h| Hallucinators {
            shape: h.shape,
            params: leaf(&h.params, track),
        }),
    }
}

/// `t`'s values as a new leaf: tracked, or an untracked constant.
fn leaf<const D: usize>(t: &Tensor<D>, track: bool) -> Tensor<D> {
    let c = constant(t.clone());
    if track { c.require_grad() } else { c }
}

/// The gradient `grads` holds for `t`, as a constant on the autodiff device.
fn grad_of<const D: usize>(t: &Tensor<D>, grads: &Gradients, what: &str) -> Result<Tensor<D>> {
    t.grad(grads)
        .map(constant)
        .ok_or_else(|| Error::NonFinite(format!("no gradient reached the {what}")))
}

impl Objective for Mtt {
    fn learned(&self) -> Vec<Learned> {
        vec![Learned {
            name: "lr",
            value: Tensor::from_floats([self.settings.lr_teacher], &self.device),
            sgd: Sgd {
                lr: self.settings.lr_lr,
                momentum: self.settings.momentum_lr,
                weight_decay: 0.0,
            },
            floor: Some(MIN_LR),
            training_lr: true,
        }]
    }

    fn loss(
        &mut self,
        syn: &Synthetic<'_>,
        learned: &[Tensor<1>],
        _data: &Prepared,
        rng: &mut Rng,
    ) -> Result<ObjectiveLoss> {
        let device = syn.fact.bases.device();
        let expert = &self.experts[rng.below(self.experts.len())];
        let t = rng.below(self.settings.max_start_epoch.max(1));
        let start = expert.params(t, &device);
        let target = expert.params(t + self.settings.expert_epochs, &device);
        let draws = self.draws(syn.fact.len(), syn.hallucinators(), rng);
        let lr = &learned[0];
        Ok(match self.settings.unroll {
            Unroll::Graph => self.unrolled(syn, &start, &target, &draws, lr),
            Unroll::Recompute => self.recomputed(syn, &start, &target, &draws, lr),
        }?
        .into())
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::augment::Dsa;
    use crate::data::{LabelledImages, Normalization};
    use crate::distill::testing::{SHAPE, factorization, moved, randn, tensor};
    use crate::nets::{Act, Arch, ConvNetConfig, Norm, Pool};

    /// Three classes of 8x8 two-channel images, a smooth student (sigmoid, so finite
    /// differences see no kinks) and one made-up expert trajectory.
    fn setup(unroll: Unroll) -> (Prepared, Mtt, Dsa) {
        setup_on(unroll, &Device::flex())
    }

    fn setup_on(unroll: Unroll, device: &Device) -> (Prepared, Mtt, Dsa) {
        let device = device.clone();
        let mut rng = Rng::new(5);
        let images = tensor(randn(&mut rng, 6 * 128), [6, 2, 8, 8], &device);
        let split = LabelledImages {
            images,
            labels: vec![0, 1, 2, 0, 1, 2],
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
        let model = Arch::ConvNet(ConvNetConfig {
            width: 4,
            depth: 2,
            act: Act::Sigmoid,
            norm: Norm::Instance,
            pool: Pool::Avg,
        });
        let net = Network::new(&model, SHAPE, 3).unwrap();
        let start: Vec<f32> = net
            .init(&mut rng, &device)
            .into_data()
            .try_to_vec()
            .unwrap();
        let end: Vec<f32> = start.iter().map(|v| v + 0.05 * rng.normal()).collect();
        let settings = MttConfig {
            syn_steps: 3,
            expert_epochs: 1,
            max_start_epoch: 1,
            lr_teacher: 0.5,
            batch_syn: 4,
            unroll,
            ..MttConfig::default()
        };
        let expert = Trajectory::new(model, &data, 0, vec![start, end]).unwrap();
        let mtt = Mtt::with_experts(&settings, vec![expert], &data).unwrap();
        (data, mtt, crate::eval::dsa_from_name("color_crop").unwrap())
    }

    /// The MTT loss at `fact` and `lr`, and its gradients (bases, hallucinators, lr).
    fn run(
        mtt: &mut Mtt,
        data: &Prepared,
        dsa: &Dsa,
        fact: &Factorization,
        lr: f32,
    ) -> (f32, Vec<f32>, Option<Vec<f32>>, f32) {
        let device = fact.bases.device();
        let lr = Tensor::<1>::from_floats([lr], &device)
            .autodiff()
            .require_grad();
        let tracked = refreshed(fact, true);
        let syn = Synthetic {
            fact: &tracked,
            classes: 3,
            per_class: 2,
            dsa,
        };
        let loss = mtt
            .loss(&syn, std::slice::from_ref(&lr), data, &mut Rng::new(77))
            .unwrap()
            .loss;
        let grads = loss.backward();
        let host = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        let gb = host(tracked.bases.grad(&grads).unwrap().flatten(0, 3));
        let gh = tracked
            .hallucinators
            .as_ref()
            .map(|h| host(h.params.grad(&grads).unwrap()));
        let glr = host(lr.grad(&grads).unwrap())[0];
        (loss.into_scalar::<f32>(), gb, gh, glr)
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    /// Directional derivatives of the unrolled loss against central differences. In f32 a
    /// loss near 1 rounds at about 1e-7, so with eps 1e-3..1e-2 the difference quotient is
    /// good to 1e-4 or better plus the O(eps²) truncation: 2% of the derivative covers
    /// both (measured: within 0.2%).
    #[test]
    fn unrolled_gradient_matches_finite_differences() {
        let (data, mut mtt, dsa) = setup(Unroll::Graph);
        let fact = factorization(true);
        let lr = 0.5;
        let (_, gb, gh, glr) = run(&mut mtt, &data, &dsa, &fact, lr);
        let gh = gh.unwrap();
        let mut rng = Rng::new(3);
        let close = |fd: f64, an: f64, what: &str| {
            assert!(
                (fd - an).abs() <= 0.02 * an.abs().max(1e-3),
                "{what}: finite differences {fd} vs gradient {an}"
            );
        };
        // The hallucinators multiply their weights (encoder x scale x decoder), so the
        // loss curves faster along them: a smaller step keeps the truncation error small.
        for (in_bases, g, eps) in [(true, &gb, 1e-2f32), (false, &gh, 1e-3)] {
            let dir = randn(&mut rng, g.len());
            let mut at =
                |e: f32| run(&mut mtt, &data, &dsa, &moved(&fact, &dir, e, in_bases), lr).0;
            let fd = (at(eps) as f64 - at(-eps) as f64) / (2.0 * eps as f64);
            close(
                fd,
                dot(g, &dir),
                if in_bases { "pixels" } else { "hallucinators" },
            );
        }
        let mut at = |l: f32| run(&mut mtt, &data, &dsa, &fact, l).0 as f64;
        let h = 1e-2;
        close(
            (at(lr + h) - at(lr - h)) / (2.0 * h as f64),
            glr as f64,
            "learning rate",
        );
    }

    /// Both with and without HaBa, and whether the three steps are all replayed, all kept
    /// from the forward walk or some of each (the budget is a test student step's graph,
    /// 30 KiB by the estimate, times 0, 1.4, 2.4 and 34).
    #[test]
    fn recompute_gives_the_unrolled_gradient() {
        for (haba, memory, kept) in [
            (true, 0.0, 0),
            (true, 0.04, 1),
            (false, 0.07, 2),
            (false, 1.0, 3),
        ] {
            let fact = factorization(haba);
            let (data, mut graph, dsa) = setup(Unroll::Graph);
            let (data2, mut sweep, _) = setup(Unroll::Recompute);
            sweep.settings.recompute_memory_mb = memory;
            let draws = sweep.draws(fact.len(), 1, &mut Rng::new(0));
            assert_eq!(
                sweep.kept_graphs(&draws).min(draws.len()),
                kept,
                "{memory} MiB"
            );
            let a = run(&mut graph, &data, &dsa, &fact, 0.5);
            let b = run(&mut sweep, &data2, &dsa, &fact, 0.5);
            assert!(
                (a.0 - b.0).abs() <= 1e-6 * a.0.abs(),
                "loss {} vs {}",
                a.0,
                b.0
            );
            let same = |x: &[f32], y: &[f32], what: &str| {
                let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    assert!((p - q).abs() <= 1e-4 * scale, "{what}[{i}]: {p} vs {q}");
                }
            };
            same(&a.1, &b.1, "bases");
            if let (Some(x), Some(y)) = (&a.2, &b.2) {
                same(x, y, "hallucinators");
            }
            same(&[a.3], &[b.3], "learning rate");
        }
    }

    /// HaBa-MTT's gradient on wgpu (hallucinators through our WGSL kernel, the student's
    /// hand-written backward through Burn's wgpu kernels) against the CPU backend.
    #[test]
    fn wgpu_gives_the_cpu_gradient() {
        let Some(gpu) = crate::device::gpu_for_tests() else {
            return;
        };
        let fact = factorization(true);
        let on_gpu = Factorization {
            bases: fact.bases.clone().to_device(&gpu),
            labels: fact.labels.clone(),
            hallucinators: fact.hallucinators.as_ref().map(|h| Hallucinators {
                shape: h.shape,
                params: h.params.clone().to_device(&gpu),
            }),
        };
        let none = Dsa::none();
        let (data, mut cpu, _) = setup(Unroll::Graph);
        let (gpu_data, mut wgpu, _) = setup_on(Unroll::Graph, &gpu);
        let want = run(&mut cpu, &data, &none, &fact, 0.5);
        let got = run(&mut wgpu, &gpu_data, &none, &on_gpu, 0.5);
        assert!(
            (got.0 - want.0).abs() <= 1e-4 * want.0.abs(),
            "{} vs {}",
            got.0,
            want.0
        );
        for (g, w, what) in [
            (&got.1, &want.1, "bases"),
            (
                got.2.as_ref().unwrap(),
                want.2.as_ref().unwrap(),
                "hallucinators",
            ),
        ] {
            let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                assert!((a - b).abs() <= 1e-3 * scale, "{what}[{i}]: {a} vs {b}");
            }
        }
        assert!(
            (got.3 - want.3).abs() <= 1e-3 * want.3.abs(),
            "lr: {} vs {}",
            got.3,
            want.3
        );
    }
}
