//! Training a network on a labelled image set: the loop shared by the evaluation protocol,
//! expert trajectories and baselines. Parameters are one flat vector (see [`crate::nets`]).

use burn::tensor::Tensor;

use crate::augment::Dsa;
use crate::data::LabelledImages;
use crate::error::{Error, Result};
use crate::nets::{BnMode, NetState, Network, cross_entropy};
use crate::optim::Sgd;
use crate::rng::Rng;

/// How to train one network (the reference evaluation protocol's defaults).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub sgd: Sgd,
    /// The learning rate is multiplied by 0.1 from this epoch on (by default just past half
    /// the epochs, as the reference's `Epoch // 2 + 1`).
    pub decay_epoch: Option<usize>,
    /// Standardise every batch with its own per-channel mean and std (the HaBa evaluation
    /// of hallucinated images does this; plain real-image training does not).
    pub standardize_batches: bool,
    /// The set holds this many views of each item, view-major (HaBa: one view per
    /// hallucinator). Each epoch visits every item once, through a randomly drawn view.
    #[serde(default = "one")]
    pub views: usize,
}

fn one() -> usize {
    1
}

impl TrainConfig {
    pub fn protocol(epochs: usize, lr: f32) -> Self {
        Self {
            epochs,
            batch: 256,
            sgd: Sgd {
                lr,
                momentum: 0.9,
                weight_decay: 5e-4,
            },
            decay_epoch: Some(epochs / 2 + 1),
            standardize_batches: false,
            views: 1,
        }
    }
}

/// Per-channel standardisation of a batch over (N, H, W).
pub fn standardize(x: Tensor<4>) -> Tensor<4> {
    let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3);
    let centred = x - mean;
    let var = centred
        .clone()
        .powi_scalar(2)
        .mean_dim(0)
        .mean_dim(2)
        .mean_dim(3);
    centred / (var + 1e-8).sqrt()
}

/// Trains `params` of `net` on `set` for `cfg.epochs` epochs and returns them.
/// `on_epoch(epoch, mean_loss)` is called after every epoch (progress, logging).
#[allow(clippy::too_many_arguments)]
pub fn train(
    net: &Network,
    params: Tensor<1>,
    state: &mut NetState,
    set: &LabelledImages,
    cfg: &TrainConfig,
    dsa: &Dsa,
    rng: &mut Rng,
    on_epoch: &mut dyn FnMut(usize, f32),
) -> Result<Tensor<1>> {
    if set.is_empty() {
        return Err(Error::Config("cannot train on an empty set".into()));
    }
    let views = cfg.views.max(1);
    if !set.len().is_multiple_of(views) {
        return Err(Error::Config(format!(
            "{} images cannot be {views} views of the same items",
            set.len()
        )));
    }
    let items = set.len() / views;
    let mut params = params;
    let mut opt_state = cfg.sgd.state();
    for epoch in 0..cfg.epochs {
        let mut sgd = cfg.sgd.clone();
        if cfg.decay_epoch.is_some_and(|d| epoch >= d) {
            sgd.lr *= 0.1;
        }
        let order: Vec<usize> = rng
            .permutation(items)
            .into_iter()
            .map(|i| rng.below(views) * items + i)
            .collect();
        let mut loss_sum = Tensor::<1>::zeros([1], &params.device());
        let mut batches = 0;
        for chunk in order.chunks(cfg.batch.max(1)) {
            let (x, y) = set.batch(chunk);
            let mut x = dsa.apply(x, rng.next_u64());
            if cfg.standardize_batches {
                x = standardize(x);
            }
            let p = params.clone().autodiff().require_grad();
            let logits = net.forward(&p, x.autodiff(), BnMode::Train(state));
            let loss = cross_entropy(logits, &y);
            let grads = loss.backward();
            let grad = p
                .grad(&grads)
                .ok_or_else(|| Error::NonFinite("no gradient reached the parameters".into()))?;
            loss_sum = loss_sum + loss.inner();
            params = sgd.step(params, grad, &mut opt_state);
            batches += 1;
        }
        let mean_loss = loss_sum.into_scalar::<f32>() / batches as f32;
        if !mean_loss.is_finite() {
            return Err(Error::NonFinite(format!(
                "the training loss became {mean_loss} at epoch {epoch}; lower the learning rate"
            )));
        }
        on_epoch(epoch, mean_loss);
    }
    Ok(params)
}

/// Fraction of `set` classified correctly (no augmentation, running norm statistics).
pub fn accuracy(
    net: &Network,
    params: &Tensor<1>,
    state: &NetState,
    set: &LabelledImages,
    batch: usize,
) -> Result<f32> {
    let mut correct = 0usize;
    let all: Vec<usize> = (0..set.len()).collect();
    for chunk in all.chunks(batch.max(1)) {
        let (x, y) = set.batch(chunk);
        let pred = net.forward(params, x, BnMode::Eval(state)).argmax(1);
        let pred = pred
            .into_data()
            .try_into_vec_as::<i64>()
            .map_err(|e| Error::Device(format!("reading predictions back: {e:?}")))?;
        correct += pred
            .iter()
            .zip(&y)
            .filter(|(p, l)| **p == **l as i64)
            .count();
    }
    Ok(correct as f32 / set.len().max(1) as f32)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;

    #[test]
    fn standardize_gives_zero_mean_unit_variance_per_channel() {
        let device = Device::flex();
        let mut rng = Rng::new(1);
        let v: Vec<f32> = (0..2 * 3 * 4 * 4).map(|_| rng.range(-3.0, 7.0)).collect();
        let x = Tensor::<4>::from_data(TensorData::new(v, [2, 3, 4, 4]), &device);
        let y = standardize(x).into_data().try_to_vec::<f32>().unwrap();
        for c in 0..3 {
            let vals: Vec<f64> = (0..2)
                .flat_map(|n| (0..16).map(move |i| (n, i)))
                .map(|(n, i)| y[n * 48 + c * 16 + i] as f64)
                .collect();
            let m = vals.iter().sum::<f64>() / 32.0;
            let var = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / 32.0;
            assert!(m.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "{m} {var}");
        }
    }
}
