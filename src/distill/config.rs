//! Every setting of a distillation run, as one serde struct: the command line, a TOML
//! file and the named presets all fill this in, and the run directory records it.

use super::contrastive::ContrastiveWeights;
use crate::data::NormKind;
use crate::error::{Error, Result};
use crate::eval::EvalConfig;
use crate::haba::BaseInit;
use crate::nets::Arch;
use crate::train::TrainConfig;

/// The base distillation objective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Distribution matching (Zhao & Bilen).
    #[default]
    Dm,
    /// Matching training trajectories (Cazenavette et al.), over an expert buffer.
    Mtt,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "dm" => Ok(Method::Dm),
            "mtt" => Ok(Method::Mtt),
            "dc" | "dsa" => Err(Error::Config(format!(
                "method `{s}` is not implemented yet; available: dm, mtt"
            ))),
            _ => Err(Error::Config(format!(
                "unknown method `{s}`; available: dm, mtt"
            ))),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Dm => "dm",
            Method::Mtt => "mtt",
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

/// Distribution matching's own settings (`[dm]` in TOML).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DmSettings {
    /// Real images per class per iteration.
    pub batch_real: usize,
    /// The randomly initialised network whose embeddings DM matches.
    pub embedder: Arch,
    /// Hallucinated views per basis in each iteration.
    pub views: Views,
}

impl Default for DmSettings {
    fn default() -> Self {
        Self {
            batch_real: 256,
            embedder: Arch::default(),
            views: Views::All,
        }
    }
}

/// How MTT computes the gradient through the unrolled student steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unroll {
    /// One autodiff graph over every student step, as the reference: memory grows with
    /// `syn_steps`.
    #[default]
    Graph,
    /// Keep only each step's parameters and replay the steps backwards, one step's graph
    /// at a time: the same gradient in memory that does not grow with `syn_steps`.
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

/// Trajectory matching's own settings (`[mtt]` in TOML), named as the reference's flags.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MttSettings {
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
}

impl Default for MttSettings {
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

/// More hallucinators than anyone trains (the paper uses 5); a bound, so that a typo
/// cannot ask for billions.
pub const MAX_HALLUCINATORS: usize = 1024;

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
    pub dm: DmSettings,
    pub mtt: MttSettings,
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
            init: BaseInit::Real,
            iterations: 20_000,
            lr_bases: 1.0,
            momentum_bases: 0.5,
            lr_hallucinators: 1e-3,
            momentum_hallucinators: 0.5,
            dsa: crate::eval::DEFAULT_DSA.into(),
            contrastive: true,
            contrastive_weights: ContrastiveWeights::default(),
            eval_every: 0,
            checkpoint_every: 500,
            eval: EvalSettings::default(),
            seed: 0,
            dm: DmSettings::default(),
            mtt: MttSettings::default(),
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
        "quick-mtt",
        "the main job's HaBa-MTT: the quick settings over a small expert buffer (needs --buffer)",
    ),
    (
        "dm-cifar10",
        "DM's official CIFAR-10 settings (20k iterations, lr 1, momentum 0.5), with HaBa",
    ),
    (
        "dm-fashion-mnist",
        "DM's official settings on Fashion-MNIST, with HaBa",
    ),
    (
        "haba-mtt-cifar10-ipc1",
        "HaBa's official MTT script, CIFAR-10 at 1 image per class (needs --buffer)",
    ),
    (
        "haba-mtt-cifar10-ipc1-sc",
        "the same with single-channel bases",
    ),
    (
        "haba-mtt-cifar10-ipc10",
        "HaBa's official MTT script, CIFAR-10 at 10 images per class (needs --buffer)",
    ),
    (
        "haba-mtt-cifar10-ipc50",
        "HaBa's official MTT script, CIFAR-10 at 50 images per class (needs --buffer)",
    ),
    (
        "mtt-cifar10-ipc1",
        "MTT's official CIFAR-10 script at 1 image per class, no HaBa (needs --buffer)",
    ),
    (
        "mtt-cifar10-ipc10",
        "MTT's official CIFAR-10 script at 10 images per class, no HaBa (needs --buffer)",
    ),
    (
        "mtt-cifar10-ipc50",
        "MTT's official CIFAR-10 script at 50 images per class, no HaBa (needs --buffer)",
    ),
];

/// The official CIFAR-10 trajectory-matching settings at `ipc`: HaBa's scripts
/// with `haba`, MTT's own (images lr 1000, momentum 0.5) without.
fn mtt_cifar10(ipc: usize, haba: bool) -> DistillConfig {
    let (syn_steps, max_start_epoch, lr_lr, lr_teacher) = match ipc {
        1 => (50, 2, 1e-7, 0.01),
        10 => (30, 20, 1e-5, if haba { 0.001 } else { 0.01 }),
        _ => (30, 20, 1e-5, 0.01),
    };
    let (lr, momentum) = if haba { (100.0, 0.95) } else { (1000.0, 0.5) };
    DistillConfig {
        method: Method::Mtt,
        haba,
        dataset: "cifar10".into(),
        preprocess: NormKind::Zca { eps: 0.1 },
        ipc,
        iterations: 15_000,
        lr_bases: lr,
        momentum_bases: momentum,
        lr_hallucinators: lr,
        momentum_hallucinators: momentum,
        mtt: MttSettings {
            syn_steps,
            expert_epochs: 2,
            max_start_epoch,
            lr_teacher,
            lr_lr,
            momentum_lr: if haba { 0.9 } else { 0.5 },
            ..MttSettings::default()
        },
        ..DistillConfig::default()
    }
}

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
                dm: DmSettings {
                    batch_real: 64,
                    embedder: "ConvNetW32".parse()?,
                    views: Views::All,
                },
                eval: EvalSettings {
                    model: "ConvNetW32".parse()?,
                    nets: 2,
                    epochs: 300,
                    lr: 0.01,
                },
                checkpoint_every: 100,
                ..base
            },
            "quick-mtt" => Self {
                method: Method::Mtt,
                iterations: 60,
                checkpoint_every: 20,
                lr_bases: 100.0,
                momentum_bases: 0.95,
                lr_hallucinators: 100.0,
                momentum_hallucinators: 0.95,
                mtt: MttSettings {
                    syn_steps: 10,
                    expert_epochs: 1,
                    max_start_epoch: 2,
                    lr_teacher: 0.01,
                    lr_lr: 1e-5,
                    momentum_lr: 0.9,
                    ..MttSettings::default()
                },
                ..Self::preset("quick")?
            },
            "dm-cifar10" => Self {
                dataset: "cifar10".into(),
                ..base
            },
            "dm-fashion-mnist" => Self {
                dataset: "fashion-mnist".into(),
                ..base
            },
            "haba-mtt-cifar10-ipc1" => mtt_cifar10(1, true),
            "haba-mtt-cifar10-ipc1-sc" => Self {
                single_channel: true,
                ..mtt_cifar10(1, true)
            },
            "haba-mtt-cifar10-ipc10" => mtt_cifar10(10, true),
            "haba-mtt-cifar10-ipc50" => mtt_cifar10(50, true),
            "mtt-cifar10-ipc1" => mtt_cifar10(1, false),
            "mtt-cifar10-ipc10" => mtt_cifar10(10, false),
            "mtt-cifar10-ipc50" => mtt_cifar10(50, false),
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
        if self.dm.batch_real == 0 {
            return bad("dm.batch_real must be at least 1".into());
        }
        let mtt = &self.mtt;
        if self.method == Method::Mtt {
            if mtt.buffer.is_empty() {
                return bad(
                    "MTT needs expert trajectories: set mtt.buffer to a directory made by \
                     `haba buffer`"
                        .into(),
                );
            }
            if mtt.syn_steps == 0 || mtt.expert_epochs == 0 || mtt.max_start_epoch == 0 {
                return bad(format!(
                    "mtt.syn_steps ({}), mtt.expert_epochs ({}) and mtt.max_start_epoch ({}) \
                     must each be at least 1",
                    mtt.syn_steps, mtt.expert_epochs, mtt.max_start_epoch
                ));
            }
            if !(mtt.lr_teacher.is_finite() && mtt.lr_teacher > 0.0) {
                return bad(format!(
                    "mtt.lr_teacher must be a finite number > 0, found {}",
                    mtt.lr_teacher
                ));
            }
        }
        for (name, v) in [
            ("lr_bases", self.lr_bases),
            ("lr_hallucinators", self.lr_hallucinators),
            ("momentum_bases", self.momentum_bases),
            ("momentum_hallucinators", self.momentum_hallucinators),
            ("mtt.lr_lr", mtt.lr_lr),
            ("mtt.momentum_lr", mtt.momentum_lr),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!("{name} must be a finite number >= 0, found {v}"));
            }
        }
        let w = &self.contrastive_weights;
        for (name, v) in [
            ("contrastive_weights.cos (λ_cos)", w.cos),
            ("contrastive_weights.cls (λ_cls)", w.cls),
            ("contrastive_weights.like (λ_like)", w.like),
            ("contrastive_weights.con (λ_con)", w.con),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!("{name} must be a finite number >= 0, found {v}"));
            }
        }
        if !(w.temperature.is_finite() && w.temperature > 0.0) {
            return bad(format!(
                "contrastive_weights.temperature (SupCon's τ, 0.07) must be a finite number > 0, \
                 found {}",
                w.temperature
            ));
        }
        if self.hallucinators > MAX_HALLUCINATORS {
            return bad(format!(
                "hallucinators must be at most {MAX_HALLUCINATORS} (the paper uses 5), found {}",
                self.hallucinators
            ));
        }
        let max_nets = crate::eval::MAX_NETS;
        if self.eval.nets == 0 || self.eval.epochs == 0 || self.eval.nets > max_nets {
            return bad(format!(
                "eval.nets must be between 1 and {max_nets} and eval.epochs at least 1, \
                 found {} and {}",
                self.eval.nets, self.eval.epochs
            ));
        }
        if !(self.eval.lr.is_finite() && self.eval.lr > 0.0) {
            return bad(format!(
                "eval.lr must be a finite number > 0, found {}",
                self.eval.lr
            ));
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every must be at least 1".into());
        }
        Ok(())
    }

    /// The evaluation settings of a run's config. HaBa runs standardise every batch, as the
    /// reference HaBa evaluation does (per channel here, not with one scalar).
    /// `lr` replaces the configured learning rate when the objective learned one (MTT's α).
    pub fn eval_config(&self, lr: Option<f32>) -> EvalConfig {
        EvalConfig {
            model: self.eval.model,
            nets: self.eval.nets,
            train: TrainConfig {
                standardize_batches: self.haba,
                ..TrainConfig::protocol(self.eval.epochs, lr.unwrap_or(self.eval.lr))
            },
            dsa: self.dsa.clone(),
            ..EvalConfig::default()
        }
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
            let mut cfg = DistillConfig::preset(name).unwrap();
            if cfg.method == Method::Mtt {
                let err = cfg.validate().unwrap_err().to_string();
                assert!(err.contains("haba buffer"), "{name}: {err}");
                cfg.mtt.buffer = "buffers/cifar10".into();
            }
            cfg.validate().unwrap();
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
