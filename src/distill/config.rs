//! Every setting of a distillation run, as one serde struct: the command line, a TOML
//! file and the named presets all fill this in, and the run directory records it.

use crate::data::NormKind;
use crate::error::{Error, Result};
use crate::haba::BaseInit;
use crate::haba::contrastive::ContrastiveWeights;
use crate::nets::Arch;

/// The base distillation objective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Distribution matching (Zhao & Bilen).
    #[default]
    Dm,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "dm" => Ok(Method::Dm),
            "mtt" | "dc" | "dsa" => Err(Error::Config(format!(
                "method `{s}` is not implemented yet; available: dm"
            ))),
            _ => Err(Error::Config(format!(
                "unknown method `{s}`; available: dm"
            ))),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Dm => "dm",
        })
    }
}

/// Which hallucinated images stand for the bases in one step of the base objective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Views {
    /// Each basis through one hallucinator drawn at random, as the reference's MTT code.
    Sample,
    /// Each basis through every hallucinator (the default for DM). DM matches a class's
    /// mean embedding, so with one random view per step the optimum is every view alone at
    /// that mean (the views collapse); with all views only their average must match.
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

/// The short evaluation run every `eval_every` iterations and at the end.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSettings {
    pub model: Arch,
    pub nets: usize,
    pub epochs: usize,
    pub lr: f32,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            model: Arch::default(),
            nets: 5,
            epochs: 1000,
            lr: 0.01,
        }
    }
}

/// One distillation run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    pub method: Method,
    /// Factorize into bases and hallucinators (HaBa); `false` learns plain images.
    pub haba: bool,
    pub dataset: String,
    pub preprocess: NormKind,
    /// Bases per class with HaBa, images per class without.
    pub ipc: usize,
    /// Shrink the bases per class so HaBa's total floats fit the plain method's at `ipc`.
    pub budget_equal: bool,
    pub hallucinators: usize,
    /// Encoder/decoder kernel size of the hallucinators.
    pub kernel: usize,
    /// One-channel bases for colour data (three cost one RGB image).
    pub single_channel: bool,
    /// Start hallucinators close to the identity instead of PyTorch's random filters
    /// (an experiment, not the reference's choice).
    pub near_identity: bool,
    /// Hallucinated views per basis in each step of the objective.
    pub views: Views,
    pub init: BaseInit,
    pub iterations: usize,
    /// SGD on the bases (or plain images).
    pub lr_bases: f32,
    pub momentum_bases: f32,
    /// SGD on the hallucinators. Far below the bases' rate: DM's gradient on the shared
    /// encoder/decoder weights sums over every pixel of every basis, and at the bases'
    /// rate of 1 those weights grow without bound within a few dozen iterations.
    pub lr_hallucinators: f32,
    pub momentum_hallucinators: f32,
    /// Real images per class per iteration (DM).
    pub batch_real: usize,
    /// The randomly initialised network whose embeddings DM matches.
    pub embedder: Arch,
    /// DSA strategy, or `none`.
    pub dsa: String,
    /// HaBa's adversarial contrastive constraints (on by default with HaBa).
    pub contrastive: bool,
    pub contrastive_weights: ContrastiveWeights,
    /// Evaluate every this many iterations (0: only at the end).
    pub eval_every: usize,
    /// Write a checkpoint every this many iterations.
    pub checkpoint_every: usize,
    pub eval: EvalSettings,
    pub seed: u64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            method: Method::Dm,
            haba: true,
            dataset: "embedded".into(),
            preprocess: NormKind::MeanStd,
            ipc: 10,
            budget_equal: false,
            hallucinators: 5,
            kernel: 3,
            single_channel: false,
            near_identity: false,
            views: Views::All,
            init: BaseInit::Real,
            iterations: 20_000,
            lr_bases: 1.0,
            momentum_bases: 0.5,
            lr_hallucinators: 1e-3,
            momentum_hallucinators: 0.5,
            batch_real: 256,
            embedder: Arch::default(),
            dsa: crate::eval::DEFAULT_DSA.into(),
            contrastive: true,
            contrastive_weights: ContrastiveWeights::default(),
            eval_every: 0,
            checkpoint_every: 500,
            eval: EvalSettings::default(),
            seed: 0,
        }
    }
}

/// Named presets: the official settings as a starting point that flags can override.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "quick",
        "the main job: HaBa-DM on the embedded Fashion-MNIST subset, minutes on a CPU",
    ),
    (
        "dm-cifar10",
        "DM's official CIFAR-10 settings (20k iterations, lr 1, momentum 0.5), with HaBa",
    ),
    (
        "dm-fashion-mnist",
        "DM's official settings on Fashion-MNIST, with HaBa",
    ),
];

impl DistillConfig {
    /// The settings of a named preset (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        let base = Self::default();
        Ok(match name {
            "quick" => Self {
                dataset: "embedded".into(),
                ipc: 2,
                budget_equal: true,
                iterations: 300,
                batch_real: 64,
                embedder: "ConvNetW32".parse()?,
                eval: EvalSettings {
                    model: "ConvNetW32".parse()?,
                    nets: 2,
                    epochs: 300,
                    lr: 0.01,
                },
                checkpoint_every: 100,
                ..base
            },
            "dm-cifar10" => Self {
                dataset: "cifar10".into(),
                ..base
            },
            "dm-fashion-mnist" => Self {
                dataset: "fashion-mnist".into(),
                ..base
            },
            _ => {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                return Err(Error::Config(format!(
                    "unknown preset `{name}`; presets: {}",
                    names.join(", ")
                )));
            }
        })
    }

    /// Reads a TOML file; unknown keys are errors so a typo cannot pass silently.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(format!("config file: {e}")))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serialises")
    }

    /// Rejects settings that cannot run, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.ipc == 0 {
            return bad("ipc must be at least 1".into());
        }
        if self.haba && self.hallucinators == 0 {
            return bad("HaBa needs at least 1 hallucinator (or use --no-haba)".into());
        }
        if self.haba && self.contrastive && self.hallucinators < 2 {
            return bad(
                "the contrastive constraints compare two different hallucinators: use at least 2, \
                 or --no-contrastive"
                    .into(),
            );
        }
        if self.kernel == 0 {
            return bad("kernel must be at least 1".into());
        }
        if self.batch_real == 0 {
            return bad("batch_real must be at least 1".into());
        }
        for (name, v) in [
            ("lr_bases", self.lr_bases),
            ("lr_hallucinators", self.lr_hallucinators),
            ("momentum_bases", self.momentum_bases),
            ("momentum_hallucinators", self.momentum_hallucinators),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!("{name} must be a finite number >= 0, found {v}"));
            }
        }
        if self.eval.nets == 0 || self.eval.epochs == 0 {
            return bad("eval.nets and eval.epochs must be at least 1".into());
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every must be at least 1".into());
        }
        Ok(())
    }

    /// "haba-dm" or "dm": the method's name in reports.
    pub fn label(&self) -> String {
        if self.haba {
            format!("haba-{}", self.method)
        } else {
            self.method.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_unknown_keys_rejected() {
        let cfg = DistillConfig::preset("quick").unwrap();
        let back = DistillConfig::from_toml(&cfg.to_toml()).unwrap();
        assert_eq!(cfg, back);
        let partial = DistillConfig::from_toml("ipc = 3\nhaba = false\n").unwrap();
        assert_eq!((partial.ipc, partial.haba), (3, false));
        assert_eq!(partial.iterations, DistillConfig::default().iterations);
        let err = DistillConfig::from_toml("ipcc = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ipcc"), "{err}");
    }

    #[test]
    fn switches_survive_a_round_trip() {
        let cfg = DistillConfig {
            contrastive: false,
            haba: false,
            ..DistillConfig::default()
        };
        assert_eq!(DistillConfig::from_toml(&cfg.to_toml()).unwrap(), cfg);
    }

    #[test]
    fn presets_are_valid_and_unknown_ones_named() {
        for (name, _) in PRESETS {
            DistillConfig::preset(name).unwrap().validate().unwrap();
        }
        let err = DistillConfig::preset("nope").unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("quick"), "{err}");
    }

    #[test]
    fn impossible_settings_are_named() {
        let cfg = DistillConfig {
            hallucinators: 1,
            ..DistillConfig::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("two different")
        );
        let cfg = DistillConfig {
            lr_bases: f32::NAN,
            ..DistillConfig::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("lr_bases"));
    }
}
