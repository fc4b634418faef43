//! What a base distillation method contributes to one step: a loss on the synthetic images
//! that the shared loop ([`super::Distiller::step`]) differentiates with respect to the
//! bases and hallucinators, the tensors it learns itself (MTT's learning rate), which the
//! loop optimises too, and any numbers of its own worth logging.
//!
//! One file per method holds its settings (a serde struct, the `[objective]` section of a
//! run's TOML), their validation, its presets and an `init` that builds it, in the manner
//! of burn-nn's `XConfig { .. }.init(device)`: [`super::dm`], [`super::mtt`], [`super::dc`].
//! [`ObjectiveConfig`] is the one enum of those settings: adding a method is one new file
//! and one variant, and the compiler points at every `match` that must learn of it.

use burn::tensor::Tensor;

use super::checkpoint::Checkpoint;
use super::config::Rates;
use super::dc::DcConfig;
use super::dm::DmConfig;
use super::mtt::MttConfig;
use crate::augment::Dsa;
use crate::data::{NormKind, Prepared};
use crate::error::{Error, Result};
use crate::haba::Factorization;
use crate::optim::Sgd;
use crate::rng::Rng;

/// The synthetic set of one step, its learnable tensors on the autodiff graph.
pub struct Synthetic<'a> {
    /// Bases and hallucinator weights, tracked.
    pub fact: &'a Factorization,
    pub classes: usize,
    /// Bases (or plain images) per class; class c holds rows `c * per_class ..`.
    pub per_class: usize,
    /// The run's augmentation (`dsa`); an objective that learns without augmentation
    /// (DC) ignores it.
    pub dsa: &'a Dsa,
}

impl Synthetic<'_> {
    /// How many hallucinators there are (1 without HaBa: the bases are the images).
    pub fn hallucinators(&self) -> usize {
        self.fact.hallucinator_count().max(1)
    }

    /// Every basis through hallucinator `h[i]`, on the graph.
    pub fn images(&self, h: &[usize]) -> Result<Tensor<4>> {
        self.fact.images(self.fact.bases.clone(), h)
    }

    /// Every basis through every hallucinator, hallucinator-major, on the graph.
    pub fn every_view(&self) -> Result<Tensor<4>> {
        self.fact.every_view(self.fact.bases.clone())
    }

    /// Class c's images as [`Views`] asks, on the graph: its bases through one drawn
    /// hallucinator each, or through every hallucinator (per class, hallucinator-major).
    pub fn class_views(&self, views: Views, rng: &mut Rng) -> Result<Vec<Tensor<4>>> {
        let (n, per_class) = (self.fact.len(), self.per_class);
        let (images, count) = match views {
            Views::Sample => {
                let m = self.hallucinators();
                let h: Vec<usize> = (0..n).map(|_| rng.below(m)).collect();
                (self.images(&h)?, 1)
            }
            Views::All => (self.every_view()?, self.hallucinators()),
        };
        Ok((0..self.classes)
            .map(|c| {
                let of = |j: usize| images.clone().narrow(0, j * n + c * per_class, per_class);
                Tensor::cat((0..count).map(of).collect(), 0)
            })
            .collect())
    }
}

/// Which hallucinated images stand for the bases in one step of a base objective that
/// compares a class's synthetic images with real ones (DM, DC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Views {
    /// Each basis through one hallucinator drawn at random, as the reference's MTT code.
    Sample,
    /// Each basis through every hallucinator (the default). DM matches a class's mean
    /// embedding and DC its mean gradient, so with one random view per step the optimum is
    /// every view alone at that mean (the views collapse); with all views only their
    /// average must match.
    #[default]
    All,
}

impl std::str::FromStr for Views {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sample" => Ok(Views::Sample),
            "all" => Ok(Views::All),
            _ => Err(Error::Config(format!(
                "unknown views `{s}`; use `sample` or `all`"
            ))),
        }
    }
}

/// A tensor an objective learns beside the synthetic set (MTT's learning rate α). The
/// shared loop tracks it in every step, steps it with `sgd` after the backward, keeps it
/// in checkpoints (as `<method>.<name>`) and logs it under `name` when it is one number.
#[derive(Clone, Debug)]
pub struct Learned {
    pub name: &'static str,
    /// Its initial value.
    pub value: Tensor<1>,
    pub sgd: Sgd,
    /// Kept at or above this after every step.
    pub floor: Option<f32>,
    /// Networks trained on the distilled set train at this rate (MTT's α).
    pub training_lr: bool,
}

/// One step's loss, shape `[1]`, with a graph to the synthetic set's tensors and to the
/// objective's learned ones, and numbers of the objective's own to log (detached, `[1]`).
pub struct ObjectiveLoss {
    pub loss: Tensor<1>,
    pub scalars: Vec<(&'static str, Tensor<1>)>,
}

impl From<Tensor<1>> for ObjectiveLoss {
    fn from(loss: Tensor<1>) -> Self {
        Self {
            loss,
            scalars: Vec::new(),
        }
    }
}

/// One base objective (DM, MTT, DC, DSA).
pub trait Objective {
    /// The tensors this objective learns itself, at their initial values (see [`Learned`]).
    fn learned(&self) -> Vec<Learned> {
        Vec::new()
    }

    /// This step's loss. `learned` holds the current values of [`Objective::learned`]'s
    /// tensors, in that order, tracked. Draws every random choice from `rng`.
    fn loss(
        &mut self,
        syn: &Synthetic<'_>,
        learned: &[Tensor<1>],
        data: &Prepared,
        rng: &mut Rng,
    ) -> Result<ObjectiveLoss>;

    /// Puts state the objective carries from step to step (DC's network) into a
    /// checkpoint, and takes it back out. Learned tensors are the loop's to save.
    fn save(&self, _ck: &mut Checkpoint) {}
    fn load(&mut self, _ck: &mut Checkpoint) -> Result<()> {
        Ok(())
    }
}

/// Where the run's data came from, for objectives whose inputs are keyed by it (MTT's
/// expert buffer).
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub dataset: &'a str,
    pub preprocess: NormKind,
}

/// The base objective and its settings: the `[objective]` section of a run's TOML, tagged
/// by `method`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum ObjectiveConfig {
    /// Distribution matching (Zhao & Bilen).
    Dm(DmConfig),
    /// Matching training trajectories (Cazenavette et al.), over an expert buffer.
    Mtt(MttConfig),
    /// Gradient matching (Zhao, Mopuri & Bilen), no augmentation while learning.
    Dc(DcConfig),
    /// Gradient matching with Siamese augmentation (Zhao & Bilen).
    Dsa(DcConfig),
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self::Dm(DmConfig::default())
    }
}

impl ObjectiveConfig {
    /// The default settings of the method called `name` (`dm`, `mtt`, `dc`, `dsa`).
    pub fn named(name: &str) -> Result<Self> {
        // The enum's own tag parser: no list of names to keep beside the variants.
        let tagged = serde_json::json!({ "method": name.to_ascii_lowercase() });
        serde_json::from_value(tagged).map_err(|e| {
            Error::Config(format!(
                "method = {name:?}: {}",
                e.to_string().replace("variant", "method")
            ))
        })
    }

    /// The method's name, as `method` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Dm(_) => "dm",
            Self::Mtt(_) => "mtt",
            Self::Dc(_) => "dc",
            Self::Dsa(_) => "dsa",
        }
    }

    /// Rejects settings that cannot run, naming the setting.
    pub fn validate(&self, ipc: usize) -> Result<()> {
        match self {
            Self::Dm(c) => c.validate(),
            Self::Mtt(c) => c.validate(),
            Self::Dc(c) | Self::Dsa(c) => c.validate(ipc),
        }
    }

    /// The synthetic set's optimisers the method's reference uses, for a factorized set
    /// (`haba`) or plain images.
    pub fn rates(&self, haba: bool) -> Rates {
        match self {
            Self::Dm(_) => super::dm::RATES,
            Self::Mtt(_) => super::mtt::rates(haba),
            Self::Dc(_) | Self::Dsa(_) => super::dc::RATES,
        }
    }

    /// Builds the objective for `data`.
    pub fn init(&self, ipc: usize, data: &Prepared, source: Source) -> Result<Box<dyn Objective>> {
        Ok(match self {
            Self::Dm(c) => Box::new(c.init(data)?),
            Self::Mtt(c) => Box::new(c.init(data, source)?),
            Self::Dc(c) => Box::new(c.init(ipc, false, data)?),
            Self::Dsa(c) => Box::new(c.init(ipc, true, data)?),
        })
    }
}

impl std::fmt::Display for ObjectiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
