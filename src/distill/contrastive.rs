//! HaBa's adversarial contrastive constraints (from the HaBa paper): an adversary F learns to
//! see through the hallucinators (two views of one basis should look alike to it and be
//! classified alike), while the bases and hallucinators learn to make the views differ.
//!
//! What the reference (`distill_fac.py`, `contrastive_loss.py` of Huage001/
//! DatasetFactorization) does, checked line by line:
//! - F is `Extractor`: three blocks Conv3x3(128, padding 1; 3 for one-channel input) +
//!   GroupNorm(128, 128, eps 1e-5, affine) + ReLU + AvgPool2, flatten, then
//!   `Linear(2048, classes)`, all with PyTorch's default initialisation. That is exactly
//!   the default ConvNet (`Arch::default()`): same layers, order, eps and init; only the
//!   parameter names differ (`model.N` there, `features.N` here). Differences: the
//!   reference hard-codes 3 input channels and 2048 classifier inputs (so it crashes on
//!   grayscale data); ours derives both from the image shape.
//! - Features: the cosine terms use the raw flattened features (2048 for 32x32), the
//!   SupCon term the same features L2-normalised (`F.normalize`, eps 1e-12).
//! - Views: one batch of bases through two different hallucinators, `x0 = H_j(b)`,
//!   `x1 = H_k(b)`, concatenated and augmented by one unseeded DiffAugment call: one
//!   family for the whole batch, independent parameters per sample, so the two views of a
//!   basis are augmented differently ([`augment_pair`]).
//! - Synthetic side (each iteration, after the base objective's forward): `λ_cos *
//!   mean((cos(F(x0), F(x1)) + 1) / 2)` is added to the base loss. Its gradient reaches
//!   F's parameters too, but the reference zeroes F's gradients before F's own backward,
//!   so F is never updated by it: here F's parameters are constants ([`Adversary::features`]).
//! - Adversary side (then, on a fresh batch and a fresh pair of hallucinators):
//!   `λ_cls * CE(logits, [y; y])` over both views in one batch, `+ λ_like * mean((1 -
//!   cos) / 2)`, `+ λ_con * SupCon([F(x0)/|.|, F(x1)/|.|], y)`, one SGD step (lr 0.001,
//!   momentum 0.9, no weight decay). That backward also reaches the images, but the
//!   reference zeroes the image gradients before they are used, so the inputs are
//!   effectively detached: here they are ([`Adversary::step`]).
//! - `SupConLoss()` is built with its defaults: temperature 0.07, base temperature 0.07,
//!   `contrast_mode='all'`.
//! - `contrastive_loss.py` also defines `club`, `likelihood` and `ProbMLP`; `distill_fac.py`
//!   uses none of them (its "club" and "likeli" losses are the two cosine terms above).
//! - Weights: the official scripts (all four) pass λ_cos = 0.1, λ_cls = 1, λ_like = 0.1,
//!   λ_con = 0.1; the argparse defaults (λ_like = λ_con = 1) are not what was run.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use crate::augment::Dsa;
use crate::data::ImageShape;
use crate::nets::cross_entropy;
use crate::nets::{Arch, BnMode, NetError, Network};
use crate::optim::{Sgd, SgdState};
use crate::rng::Rng;

/// SupConLoss's `base_temperature`: fixed by the reference whatever the temperature, so the
/// loss is scaled by `temperature / BASE_TEMPERATURE` (1 at the default temperature).
pub const BASE_TEMPERATURE: f32 = 0.07;

/// The weights of the contrastive terms (official values by default) and SupCon's
/// temperature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContrastiveWeights {
    /// λ_cos, synthetic side: diversity of the two views.
    pub cos: f32,
    /// λ_cls, adversary side: classification of both views.
    pub cls: f32,
    /// λ_like, adversary side: likeness of the two views.
    pub like: f32,
    /// λ_con, adversary side: supervised contrastive loss.
    pub con: f32,
    pub temperature: f32,
}

impl Default for ContrastiveWeights {
    fn default() -> Self {
        Self {
            cos: 0.1,
            cls: 1.0,
            like: 0.1,
            con: 0.1,
            temperature: 0.07,
        }
    }
}

/// Row-wise L2 norms `[N, 1]`, clamped below at `eps`.
fn norms(x: Tensor<2>, eps: f32) -> Tensor<2> {
    x.square().sum_dim(1).sqrt().clamp_min(eps)
}

/// Row-wise cosine similarity `[N, 1]` as PyTorch's `F.cosine_similarity` (eps 1e-8 on
/// each norm; it only matters for all-zero features).
fn cosine(f0: Tensor<2>, f1: Tensor<2>) -> Tensor<2> {
    assert_eq!(f0.dims(), f1.dims(), "cosine: feature shapes differ");
    let dot = (f0.clone() * f1.clone()).sum_dim(1);
    dot / (norms(f0, 1e-8) * norms(f1, 1e-8))
}

/// `mean((cos(f0, f1) + 1) / 2)`, shape `[1]`: small when the views' features point apart.
/// The synthetic side minimises it (weighted by λ_cos) so the hallucinators make views of
/// one basis diverse.
pub fn diversity_loss(f0: Tensor<2>, f1: Tensor<2>) -> Tensor<1> {
    cosine(f0, f1).add_scalar(1.0).div_scalar(2.0).mean()
}

/// `mean((1 - cos(f0, f1)) / 2)`, shape `[1]`: the adversary's counterpart, small when the
/// views' features agree.
pub fn likeness_loss(f0: Tensor<2>, f1: Tensor<2>) -> Tensor<1> {
    cosine(f0, f1).neg().add_scalar(1.0).div_scalar(2.0).mean()
}

/// Supervised contrastive loss (Khosla et al. 2020) over two views, as the reference's
/// `SupConLoss()(stack([normalize(z0), normalize(z1)], 1), labels)` computes it; shape `[1]`.
///
/// `z0`, `z1` `[N, D]` are raw features (row i of each is a view of sample i); they are
/// L2-normalised here, as the reference does before the call. Anchors are all 2N rows
/// (`contrast_mode='all'`); for anchor i the candidates are every other row, the positives
/// those with i's label (so always at least i's other view):
/// `loss_i = -(T / T_base) * mean_{p in P(i)} log(exp(s_ip / T) / Σ_{a != i} exp(s_ia / T))`,
/// averaged over anchors, with `s` the cosine similarities and `T_base` =
/// [`BASE_TEMPERATURE`].
pub fn supcon_loss(z0: Tensor<2>, z1: Tensor<2>, labels: &[u16], temperature: f32) -> Tensor<1> {
    let [n, _] = z0.dims();
    assert_eq!(z0.dims(), z1.dims(), "supcon_loss: view shapes differ");
    assert_eq!(labels.len(), n, "supcon_loss: one label per sample");
    let device = z0.device();
    let normalize = |z: Tensor<2>| z.clone() / norms(z, 1e-12);
    let z = Tensor::cat(vec![normalize(z0), normalize(z1)], 0);
    let logits = z.clone().matmul(z.transpose()).div_scalar(temperature);
    // Subtracting each row's (detached) maximum changes nothing but the range of exp.
    let logits = logits.clone() - logits.detach().max_dim(1);

    let m = 2 * n;
    let label = |i: usize| labels[i % n];
    let mut others = vec![1.0f32; m * m];
    let mut positives = vec![0.0f32; m * m];
    let mut counts = vec![0.0f32; m];
    for i in 0..m {
        others[i * m + i] = 0.0;
        for j in (0..m).filter(|&j| j != i && label(j) == label(i)) {
            positives[i * m + j] = 1.0;
            counts[i] += 1.0;
        }
    }
    let square = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [m, m]), &device);
    let counts = Tensor::<2>::from_data(TensorData::new(counts, [m, 1]), &device);

    let log_denominator = (logits.clone().exp() * square(others)).sum_dim(1).log();
    let log_prob = logits - log_denominator;
    let mean_log_prob_pos = (log_prob * square(positives)).sum_dim(1) / counts;
    mean_log_prob_pos
        .mean()
        .mul_scalar(-(temperature / BASE_TEMPERATURE))
}

/// Augments the two views as the reference does: their concatenation in one [`Dsa::apply`]
/// call (one family, an independent draw per sample, so the views differ in augmentation).
pub fn augment_pair(dsa: &Dsa, x0: Tensor<4>, x1: Tensor<4>, seed: u64) -> (Tensor<4>, Tensor<4>) {
    let n = x0.dims()[0];
    let both = dsa.apply(Tensor::cat(vec![x0, x1], 0), seed);
    let total = both.dims()[0];
    let mut halves = both.split_with_sizes(vec![n, total - n], 0).into_iter();
    (halves.next().unwrap(), halves.next().unwrap())
}

/// The adversary F: the reference `Extractor` (the default ConvNet) with its own SGD.
pub struct Adversary {
    net: Network,
    /// Kept without autodiff: the synthetic side must treat them as constants.
    params: Tensor<1>,
    sgd: Sgd,
    state: SgdState,
}

impl Adversary {
    /// A fresh extractor for `shape` images and `classes` classes, PyTorch's default init.
    pub fn new(
        shape: ImageShape,
        classes: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self, NetError> {
        let net = Network::new(&Arch::default(), shape, classes)?;
        let params = net.init(rng, device).inner();
        let sgd = Sgd {
            lr: 0.001,
            momentum: 0.9,
            weight_decay: 0.0,
        };
        let state = sgd.state();
        Ok(Self {
            net,
            params,
            sgd,
            state,
        })
    }

    pub fn net(&self) -> &Network {
        &self.net
    }

    /// The current parameters (flat, as [`Network`] lays them out).
    pub fn params(&self) -> &Tensor<1> {
        &self.params
    }

    /// Puts the parameters and momentum into a checkpoint.
    pub fn save(&self, ck: &mut Checkpoint) {
        ck.put("adversary.params", &self.params);
        ck.put_opt("adversary.velocity", self.state.velocity.as_ref());
    }

    /// Takes back what [`Adversary::save`] stored, refusing tensors of another size.
    pub fn load(&mut self, ck: &mut Checkpoint) -> crate::Result<()> {
        let len = [self.net.num_params()];
        self.params = ck.require("adversary.params", len)?;
        self.state.velocity = ck.take("adversary.velocity", len)?;
        Ok(())
    }

    /// Flattened features `[N, embed_dim]` of `x`: gradients flow to `x` (when it is on an
    /// autodiff device), never to the adversary's parameters.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        self.net.embed(&self.params, x, BnMode::Batch)
    }

    /// The synthetic side's term `λ_cos * diversity_loss(F(x0), F(x1))` for two (already
    /// augmented) views, computed in one pass over both as the reference does.
    pub fn diversity(
        &self,
        x0: Tensor<4>,
        x1: Tensor<4>,
        weights: &ContrastiveWeights,
    ) -> Tensor<1> {
        let n = x0.dims()[0];
        let (f0, f1) = halves(self.features(Tensor::cat(vec![x0, x1], 0)), n);
        diversity_loss(f0, f1).mul_scalar(weights.cos)
    }

    /// One adversary step on two (already augmented) views of the bases labelled `labels`:
    /// `λ_cls * CE over both views + λ_like * likeness + λ_con * SupCon`, with the inputs
    /// detached, then one SGD step on F's parameters. Returns the loss before the step,
    /// still on the device.
    pub fn step(
        &mut self,
        x0: Tensor<4>,
        x1: Tensor<4>,
        labels: &[u16],
        weights: &ContrastiveWeights,
    ) -> Tensor<1> {
        let n = labels.len();
        assert!(
            x0.dims()[0] == n && x1.dims()[0] == n,
            "Adversary::step: one label per view pair"
        );
        let p = self.params.clone().autodiff().require_grad();
        let x = Tensor::cat(vec![x0.inner(), x1.inner()], 0);
        let features = self.net.embed(&p, x, BnMode::Batch);
        let logits = self.net.classify(&p, features.clone());
        let both: Vec<u16> = labels.iter().chain(labels).copied().collect();
        let (f0, f1) = halves(features, n);
        let loss = cross_entropy(logits, &both).mul_scalar(weights.cls)
            + likeness_loss(f0.clone(), f1.clone()).mul_scalar(weights.like)
            + supcon_loss(f0, f1, labels, weights.temperature).mul_scalar(weights.con);
        let grads = loss.backward();
        let grad = p
            .grad(&grads)
            .expect("the adversary's parameters require a gradient");
        self.params = self
            .sgd
            .step(self.params.clone(), grad, &mut self.state)
            .inner();
        loss.inner()
    }
}

/// Rows `0..n` and `n..2n` of features computed for two concatenated views.
fn halves(f: Tensor<2>, n: usize) -> (Tensor<2>, Tensor<2>) {
    (f.clone().narrow(0, 0, n), f.narrow(0, n, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.inner().into_data().try_to_vec::<f32>().unwrap()
    }

    fn matrix(v: &[f32], rows: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [rows, v.len() / rows]), device)
    }

    fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal()).collect()
    }

    fn rows(v: &[f64], d: usize) -> Vec<&[f64]> {
        v.chunks(d).collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn cos64(a: &[f64], b: &[f64]) -> f64 {
        dot(a, b) / (dot(a, a).sqrt().max(1e-8) * dot(b, b).sqrt().max(1e-8))
    }

    /// The reference SupConLoss in float64, written from its code: features [bsz, 2, D]
    /// (already normalised) -> contrast_feature = cat(unbind(dim 1)), anchors = all.
    fn supcon64(z0: &[f64], z1: &[f64], labels: &[u16], d: usize, t: f64) -> f64 {
        let n = labels.len();
        let unit = |v: &[f64]| -> Vec<f64> {
            let l = dot(v, v).sqrt().max(1e-12);
            v.iter().map(|x| x / l).collect()
        };
        let feats: Vec<Vec<f64>> = rows(z0, d)
            .into_iter()
            .chain(rows(z1, d))
            .map(unit)
            .collect();
        let m = 2 * n;
        let mut total = 0.0;
        for i in 0..m {
            let logits: Vec<f64> = (0..m).map(|j| dot(&feats[i], &feats[j]) / t).collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let l: Vec<f64> = logits.iter().map(|v| v - max).collect();
            let denom: f64 = (0..m).filter(|&j| j != i).map(|j| l[j].exp()).sum();
            let pos: Vec<usize> = (0..m)
                .filter(|&j| j != i && labels[j % n] == labels[i % n])
                .collect();
            let mean_pos = pos.iter().map(|&j| l[j] - denom.ln()).sum::<f64>() / pos.len() as f64;
            total += -(t / 0.07) * mean_pos;
        }
        total / m as f64
    }

    #[test]
    fn cosine_losses_match_float64() {
        let device = Device::flex();
        let mut rng = Rng::new(3);
        let (a, b) = (randn(&mut rng, 3 * 4), randn(&mut rng, 3 * 4));
        // Row 2 of b is a positive multiple of row 2 of a: cosine exactly 1 there.
        let mut b = b;
        for k in 0..4 {
            b[8 + k] = 2.5 * a[8 + k];
        }
        let (a64, b64): (Vec<f64>, Vec<f64>) = (
            a.iter().map(|&v| v as f64).collect(),
            b.iter().map(|&v| v as f64).collect(),
        );
        let cos: Vec<f64> = rows(&a64, 4)
            .into_iter()
            .zip(rows(&b64, 4))
            .map(|(x, y)| cos64(x, y))
            .collect();
        let want_div = cos.iter().map(|c| (c + 1.0) / 2.0).sum::<f64>() / 3.0;
        let want_like = cos.iter().map(|c| (1.0 - c) / 2.0).sum::<f64>() / 3.0;
        let (ta, tb) = (matrix(&a, 3, &device), matrix(&b, 3, &device));
        let div = host(diversity_loss(ta.clone(), tb.clone()))[0] as f64;
        let like = host(likeness_loss(ta, tb))[0] as f64;
        assert!((div - want_div).abs() < 1e-6, "{div} vs {want_div}");
        assert!((like - want_like).abs() < 1e-6, "{like} vs {want_like}");
        assert!((div + like - 1.0).abs() < 1e-6);
    }

    #[test]
    fn supcon_matches_float64_reference() {
        let device = Device::flex();
        let mut rng = Rng::new(4);
        for (labels, d) in [
            (&[0u16, 1, 0, 2][..], 3),
            (&[1, 1][..], 5),
            (&[0, 1, 2][..], 2),
        ] {
            let n = labels.len();
            let (z0, z1) = (randn(&mut rng, n * d), randn(&mut rng, n * d));
            let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            for t in [0.07f32, 0.5] {
                let want = supcon64(&f64s(&z0), &f64s(&z1), labels, d, t as f64);
                let got = host(supcon_loss(
                    matrix(&z0, n, &device),
                    matrix(&z1, n, &device),
                    labels,
                    t,
                ))[0] as f64;
                assert!(
                    (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "labels {labels:?} T {t}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn supcon_gradient_matches_finite_differences() {
        let ad = Device::flex().autodiff();
        let mut rng = Rng::new(6);
        let (labels, d) = ([0u16, 1, 0, 1], 3);
        let (z0, z1) = (randn(&mut rng, 4 * d), randn(&mut rng, 4 * d));
        let t0 = matrix(&z0, 4, &ad).require_grad();
        let loss = supcon_loss(t0.clone(), matrix(&z1, 4, &ad), &labels, 0.07);
        let grads = loss.backward();
        let grad = host(t0.grad(&grads).unwrap());
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (a, b) = (f64s(&z0), f64s(&z1));
        let h = 1e-6;
        assert!(grad.iter().any(|g| g.abs() > 0.1), "{grad:?}");
        for i in 0..a.len() {
            let (mut up, mut down) = (a.clone(), a.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (supcon64(&up, &b, &labels, d, 0.07) - supcon64(&down, &b, &labels, d, 0.07))
                / (2.0 * h);
            let err = (grad[i] as f64 - fd).abs();
            assert!(
                err < 1e-3 * (1.0 + fd.abs()),
                "entry {i}: {} vs {fd}",
                grad[i]
            );
        }
    }

    /// The reference Extractor's shapes: 2048 features for 32x32 (and, with padding 3, for
    /// 28x28 grayscale), 320,010 parameters for CIFAR-10.
    #[test]
    fn adversary_is_the_reference_extractor() {
        let device = Device::flex();
        let mut rng = Rng::new(1);
        let shape = |channels, side| ImageShape {
            channels,
            height: side,
            width: side,
        };
        let cifar = Adversary::new(shape(3, 32), 10, &mut rng, &device).unwrap();
        assert_eq!(cifar.net().embed_dim(), 2048);
        assert_eq!(cifar.net().num_params(), 320_010);
        let mnist = Adversary::new(shape(1, 28), 10, &mut rng, &device).unwrap();
        assert_eq!(mnist.net().embed_dim(), 2048);
    }

    fn tiny_views(rng: &mut Rng, device: &Device) -> (Tensor<4>, Tensor<4>) {
        let x0 = randn(rng, 6 * 3 * 8 * 8);
        let noise = randn(rng, 6 * 3 * 8 * 8);
        let x1: Vec<f32> = x0.iter().zip(&noise).map(|(a, e)| a + 0.5 * e).collect();
        let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [6, 3, 8, 8]), device);
        (t(x0), t(x1))
    }

    const TINY: ImageShape = ImageShape {
        channels: 3,
        height: 8,
        width: 8,
    };

    #[test]
    fn adversary_step_reduces_its_loss() {
        let device = Device::flex();
        let mut rng = Rng::new(7);
        let mut adv = Adversary::new(TINY, 3, &mut rng, &device).unwrap();
        let (x0, x1) = tiny_views(&mut rng, &device);
        let labels = [0u16, 1, 2, 0, 1, 2];
        let w = ContrastiveWeights::default();
        let losses: Vec<f32> = (0..20)
            .map(|_| {
                adv.step(x0.clone(), x1.clone(), &labels, &w)
                    .into_scalar::<f32>()
            })
            .collect();
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        assert!(losses[19] < 0.9 * losses[0], "{losses:?}");
    }

    /// The synthetic side: gradients reach the images, the adversary is left as it was.
    #[test]
    fn diversity_reaches_the_images_not_the_adversary() {
        let ad = Device::flex().autodiff();
        let mut rng = Rng::new(8);
        let adv = Adversary::new(TINY, 3, &mut rng, &Device::flex()).unwrap();
        let before = host(adv.params().clone());
        let (x0, x1) = tiny_views(&mut rng, &ad);
        let (x0, x1) = (x0.require_grad(), x1.require_grad());
        let (a0, a1) = augment_pair(&Dsa::full(), x0.clone(), x1.clone(), 3);
        let loss = adv.diversity(a0, a1, &ContrastiveWeights::default());
        let grads = loss.backward();
        for x in [&x0, &x1] {
            let g = host(x.grad(&grads).unwrap());
            assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|&v| v != 0.0));
        }
        assert!(!adv.params().is_autodiff());
        assert_eq!(host(adv.params().clone()), before);
    }

    #[test]
    fn weights_default_to_the_official_values() {
        let w: ContrastiveWeights = serde_json::from_str("{}").unwrap();
        assert_eq!(w, ContrastiveWeights::default());
        assert_eq!(
            (w.cos, w.cls, w.like, w.con, w.temperature),
            (0.1, 1.0, 0.1, 0.1, 0.07)
        );
        let w: ContrastiveWeights = serde_json::from_str(r#"{"con": 0.5}"#).unwrap();
        assert_eq!(w.con, 0.5);
        assert!(serde_json::from_str::<ContrastiveWeights>(r#"{"lambda": 1}"#).is_err());
    }
}
