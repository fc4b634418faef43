//! Training a network on a labelled image set: the loop shared by the evaluation protocol,
//! expert trajectories and baselines. Parameters are one flat vector (see [`crate::nets`]).

use burn::tensor::{Int, Tensor, TensorData};

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

/// Training one network epoch by epoch. Each epoch returns its mean loss as a tensor
/// still on the device, so the caller decides how to read it: [`train`] reads it at once,
/// a browser (where synchronous reads of a GPU are impossible) awaits it.
pub struct Trainer {
    net: Network,
    cfg: TrainConfig,
    pub params: Tensor<1>,
    pub state: NetState,
    opt_state: crate::optim::SgdState,
    items: usize,
    views: usize,
    /// Epochs done so far.
    pub epoch: usize,
}

impl Trainer {
    /// Refuses an empty set and one whose size is not a whole number of `cfg.views` views.
    pub fn new(
        net: Network,
        params: Tensor<1>,
        state: NetState,
        set: &LabelledImages,
        cfg: TrainConfig,
    ) -> Result<Self> {
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
        Ok(Self {
            opt_state: cfg.sgd.state(),
            net,
            cfg,
            params,
            state,
            items: set.len() / views,
            views,
            epoch: 0,
        })
    }

    /// One epoch over `set` (the set [`Trainer::new`] was given): every item once, in a
    /// random order, through a random view, with DSA. Returns the mean batch loss.
    pub fn epoch(&mut self, set: &LabelledImages, dsa: &Dsa, rng: &mut Rng) -> Result<Tensor<1>> {
        let mut sgd = self.cfg.sgd.clone();
        if self.cfg.decay_epoch.is_some_and(|d| self.epoch >= d) {
            sgd.lr *= 0.1;
        }
        let order: Vec<usize> = rng
            .permutation(self.items)
            .into_iter()
            .map(|i| rng.below(self.views) * self.items + i)
            .collect();
        let mut loss_sum = Tensor::<1>::zeros([1], &self.params.device());
        let mut batches = 0;
        for chunk in order.chunks(self.cfg.batch.max(1)) {
            let (x, y) = set.batch(chunk);
            let mut x = dsa.apply(x, rng.next_u64());
            if self.cfg.standardize_batches {
                x = standardize(x);
            }
            let p = self.params.clone().autodiff().require_grad();
            let logits = self
                .net
                .forward(&p, x.autodiff(), BnMode::Train(&mut self.state));
            let loss = cross_entropy(logits, &y);
            let grads = loss.backward();
            let grad = p
                .grad(&grads)
                .ok_or_else(|| Error::NonFinite("no gradient reached the parameters".into()))?;
            loss_sum = loss_sum + loss.inner();
            self.params = sgd.step(self.params.clone(), grad, &mut self.opt_state);
            batches += 1;
        }
        self.epoch += 1;
        Ok(loss_sum / batches as f32)
    }

    /// How many images of `set` the network classifies correctly now (see [`correct`]).
    pub fn correct(&self, set: &LabelledImages, batch: usize) -> Tensor<1, Int> {
        correct(&self.net, &self.params, &self.state, set, batch)
    }
}

/// The error for a mean epoch loss that is not a number, naming the epoch (0-based).
pub fn check_loss(mean_loss: f32, epoch: usize) -> Result<f32> {
    if mean_loss.is_finite() {
        Ok(mean_loss)
    } else {
        Err(Error::NonFinite(format!(
            "the training loss became {mean_loss} at epoch {epoch}; lower the learning rate"
        )))
    }
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
    let mut trainer = Trainer::new(net.clone(), params, std::mem::take(state), set, cfg.clone())?;
    for epoch in 0..cfg.epochs {
        let loss = trainer.epoch(set, dsa, rng)?.into_scalar::<f32>();
        on_epoch(epoch, check_loss(loss, epoch)?);
    }
    *state = trainer.state;
    Ok(trainer.params)
}

/// The number of images of `set` classified correctly (no augmentation, running norm
/// statistics), as a tensor on the device: one read gives the count, however many
/// batches it took.
pub fn correct(
    net: &Network,
    params: &Tensor<1>,
    state: &NetState,
    set: &LabelledImages,
    batch: usize,
) -> Tensor<1, Int> {
    let device = params.device();
    let mut count = Tensor::<1, Int>::zeros([1], &device);
    let all: Vec<usize> = (0..set.len()).collect();
    for chunk in all.chunks(batch.max(1)) {
        let (x, y) = set.batch(chunk);
        let pred = net
            .forward(params, x, BnMode::Eval(state))
            .argmax(1)
            .flatten::<1>(0, 1);
        let labels: Vec<i64> = y.iter().map(|&l| i64::from(l)).collect();
        let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [y.len()]), &device);
        count = count + pred.equal(labels).int().sum();
    }
    count
}

/// Fraction of `set` classified correctly (see [`correct`]).
pub fn accuracy(
    net: &Network,
    params: &Tensor<1>,
    state: &NetState,
    set: &LabelledImages,
    batch: usize,
) -> Result<f32> {
    let count = correct(net, params, state, set, batch)
        .into_data()
        .try_into_vec_as::<i64>()
        .map_err(|e| Error::Device(format!("reading predictions back: {e:?}")))?;
    Ok(count[0] as f32 / set.len().max(1) as f32)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

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

    /// The on-device count equals a count of the predictions read back one by one.
    #[test]
    fn correct_counts_what_the_network_predicts() {
        use crate::data::ImageShape;
        use crate::nets::Arch;
        let device = Device::flex();
        let shape = ImageShape {
            channels: 1,
            height: 8,
            width: 8,
        };
        let net = Network::new(&"ConvNetW8D1".parse::<Arch>().unwrap(), shape, 3).unwrap();
        let mut rng = Rng::new(4);
        let params = net.init(&mut rng, &device);
        let state = net.init_state(&device);
        let v: Vec<f32> = (0..7 * 64).map(|_| rng.normal()).collect();
        let images = Tensor::<4>::from_data(TensorData::new(v, [7, 1, 8, 8]), &device);
        let predicted: Vec<i64> = net
            .forward(&params, images.clone(), BnMode::Eval(&state))
            .argmax(1)
            .into_data()
            .try_into_vec_as::<i64>()
            .unwrap();
        // Labels that agree with the network on exactly the even images.
        let labels: Vec<u16> = predicted
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                if i % 2 == 0 {
                    p as u16
                } else {
                    (p as u16 + 1) % 3
                }
            })
            .collect();
        let set = LabelledImages { images, labels };
        // Batches of 3 leave a last batch of 1: the count must span all of them.
        let acc = accuracy(&net, &params, &state, &set, 3).unwrap();
        assert!((acc - 4.0 / 7.0).abs() < 1e-6, "{acc}");
    }
}
