//! The evaluation protocol of the dataset-distillation papers: train K fresh networks on a training set and
//! report their test accuracy, mean ± std.

use crate::augment::{Dsa, DsaParams, Strategy};
use crate::data::LabelledImages;
use crate::error::{Error, Result};
use crate::haba::Factorization;
use crate::nets::{Arch, Network};
use crate::rng::Rng;
use crate::train::{TrainConfig, accuracy, train};

/// More evaluation networks than any protocol trains (the reference uses 5 to 10); a
/// bound, so that a typo cannot ask for billions.
pub const MAX_NETS: usize = 10_000;

/// Settings of one evaluation; every field lands in the JSON report.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EvalConfig {
    pub model: Arch,
    /// Number of fresh networks trained (K).
    pub nets: usize,
    pub train: TrainConfig,
    /// DSA strategy used while training (`none` for no augmentation).
    pub dsa: String,
    pub test_batch: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            model: Arch::default(),
            nets: 5,
            train: TrainConfig::protocol(1000, 0.01),
            dsa: DEFAULT_DSA.into(),
            test_batch: 1000,
        }
    }
}

/// The DSA strategy of the official scripts.
pub const DEFAULT_DSA: &str = "color_crop_cutout_flip_scale_rotate";

/// Test accuracies of the K networks, with their mean and (population) std, as the
/// reference code reports them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EvalResult {
    pub accuracies: Vec<f32>,
    pub mean: f32,
    pub std: f32,
    /// The learning rate the networks trained at (an MTT run's learned α, or the
    /// protocol's); absent in reports written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f32>,
}

impl EvalResult {
    pub fn from_accuracies(accuracies: Vec<f32>) -> Self {
        let n = accuracies.len().max(1) as f64;
        let mean = accuracies.iter().map(|&a| a as f64).sum::<f64>() / n;
        let var = accuracies
            .iter()
            .map(|&a| (a as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        Self {
            accuracies,
            mean: mean as f32,
            std: var.sqrt() as f32,
            lr: None,
        }
    }

    /// "71.23 ± 0.45" in percent.
    pub fn percent(&self) -> String {
        format!("{:.2} ± {:.2}", 100.0 * self.mean, 100.0 * self.std)
    }
}

/// Progress of an evaluation, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub enum EvalProgress {
    Epoch { net: usize, epoch: usize, loss: f32 },
    NetDone { net: usize, accuracy: f32 },
}

pub fn dsa_from_name(name: &str) -> Result<Dsa> {
    if name == "none" || name.is_empty() {
        return Ok(Dsa::none());
    }
    let strategy: Strategy = name
        .parse()
        .map_err(|e| Error::Config(format!("`dsa = {name:?}`: {e}")))?;
    Ok(Dsa::new(strategy, DsaParams::default()))
}

/// Runs the protocol: K networks, each freshly initialised from `seed`, trained on
/// `train_set` and tested on `test_set`.
pub fn evaluate(
    train_set: &LabelledImages,
    test_set: &LabelledImages,
    classes: usize,
    cfg: &EvalConfig,
    seed: u64,
    on_progress: &mut dyn FnMut(EvalProgress),
) -> Result<EvalResult> {
    if cfg.nets == 0 || cfg.nets > MAX_NETS {
        return Err(Error::Config(format!(
            "the number of networks must be between 1 and {MAX_NETS}, found {}",
            cfg.nets
        )));
    }
    let lr = cfg.train.sgd.lr;
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::Config(format!(
            "the learning rate must be a finite number > 0, found {lr}"
        )));
    }
    let [_, c, h, w] = train_set.images.dims();
    let shape = crate::data::ImageShape {
        channels: c,
        height: h,
        width: w,
    };
    let net = Network::new(&cfg.model, shape, classes)?;
    let dsa = dsa_from_name(&cfg.dsa)?;
    let device = train_set.images.device();
    let mut root = Rng::new(seed);
    let mut accuracies = Vec::with_capacity(cfg.nets);
    for k in 0..cfg.nets {
        let mut rng = root.fork(k as u64);
        let params = net.init(&mut rng, &device);
        let mut state = net.init_state(&device);
        let params = train(
            &net,
            params,
            &mut state,
            train_set,
            &cfg.train,
            &dsa,
            &mut rng,
            &mut |epoch, loss| {
                on_progress(EvalProgress::Epoch {
                    net: k,
                    epoch,
                    loss,
                })
            },
        )?;
        let acc = accuracy(&net, &params, &state, test_set, cfg.test_batch)?;
        on_progress(EvalProgress::NetDone {
            net: k,
            accuracy: acc,
        });
        accuracies.push(acc);
    }
    Ok(EvalResult {
        lr: Some(lr),
        ..EvalResult::from_accuracies(accuracies)
    })
}

/// Every image a factorization makes (every basis through every hallucinator, view-major),
/// labelled, and how many views of each basis that is: what a network trains on.
pub fn training_set(fact: &Factorization) -> Result<(LabelledImages, usize)> {
    let (images, labels) = fact.all_images()?;
    let set = LabelledImages {
        images: images.inner(),
        labels,
    };
    Ok((set, fact.hallucinator_count().max(1)))
}

/// The evaluation protocol on a factorization's images. HaBa sets hold M views of each
/// basis and each epoch draws one, as HaBa's evaluation does. Whether batches are standardised is
/// `cfg.train.standardize_batches` (see `DistillConfig::eval_config`).
pub fn evaluate_factorization(
    fact: &Factorization,
    test: &LabelledImages,
    classes: usize,
    cfg: &EvalConfig,
    seed: u64,
    on_progress: &mut dyn FnMut(EvalProgress),
) -> Result<EvalResult> {
    let (set, views) = training_set(fact)?;
    let cfg = EvalConfig {
        train: TrainConfig {
            views,
            ..cfg.train.clone()
        },
        ..cfg.clone()
    };
    evaluate(&set, test, classes, &cfg, seed, on_progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_population_std_by_hand() {
        let r = EvalResult::from_accuracies(vec![0.5, 0.7, 0.6]);
        assert!((r.mean - 0.6).abs() < 1e-6);
        // population std of {.5,.7,.6} = sqrt(((.1)^2 + (.1)^2 + 0) / 3)
        assert!((r.std as f64 - (0.02f64 / 3.0).sqrt()).abs() < 1e-6);
        assert_eq!(r.percent(), "60.00 ± 8.16");
    }
}
