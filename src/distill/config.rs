//! Every setting of a distillation run, as one serde struct: the command line, a TOML
//! file and the named presets all fill this in, and the run directory records it. The
//! base objective's own settings are one section, `[objective]`, owned by the objective's
//! file (see [`super::objective::ObjectiveConfig`]); so are its presets.

use super::contrastive::ContrastiveWeights;
use super::objective::ObjectiveConfig;
use crate::data::NormKind;
use crate::error::{Error, Result};
use crate::eval::EvalConfig;
use crate::haba::BaseInit;
use crate::nets::Arch;
use crate::train::TrainConfig;

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
    /// Factorize into bases and hallucinators (HaBa); `false` learns plain images.
    pub haba: bool,
    pub dataset: String,
    /// Preprocessing fitted on the train split; empty: MTT's buffer's, mean/std for the
    /// other methods (see [`DistillConfig::preprocessing`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<NormKind>,
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
    /// Steps of the loop: one optimiser step of the synthetic set each.
    pub iterations: usize,
    /// SGD on the bases (or plain images), and on the hallucinators; each empty: the
    /// objective's own ([`ObjectiveConfig::rates`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_bases: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum_bases: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_hallucinators: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum_hallucinators: Option<f32>,
    /// DSA strategy, or `none`.
    pub dsa: String,
    /// HaBa's adversarial contrastive constraints (on by default with HaBa).
    pub contrastive: bool,
    pub contrastive_weights: ContrastiveWeights,
    /// Evaluate every this many iterations (0: only at the end).
    pub eval_every: usize,
    /// Write a checkpoint every this many iterations.
    pub checkpoint_every: usize,
    pub seed: u64,
    pub eval: EvalSettings,
    /// The base objective (`method`) and its own settings.
    pub objective: ObjectiveConfig,
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            haba: true,
            dataset: "embedded".into(),
            preprocess: None,
            ipc: 10,
            budget_equal: false,
            hallucinators: 5,
            kernel: 3,
            single_channel: false,
            near_identity: false,
            init: BaseInit::Real,
            iterations: 20_000,
            lr_bases: None,
            momentum_bases: None,
            lr_hallucinators: None,
            momentum_hallucinators: None,
            dsa: crate::eval::DEFAULT_DSA.into(),
            contrastive: true,
            contrastive_weights: ContrastiveWeights::default(),
            eval_every: 0,
            checkpoint_every: 500,
            seed: 0,
            eval: EvalSettings::default(),
            objective: ObjectiveConfig::default(),
        }
    }
}

/// The synthetic set's optimisers: SGD on the bases (or plain images) and on the
/// hallucinators.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    pub lr_bases: f32,
    pub momentum_bases: f32,
    pub lr_hallucinators: f32,
    pub momentum_hallucinators: f32,
}

/// A named starting point (the official settings of a paper's run) that flags override.
/// Each objective's file lists its own.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub settings: fn() -> DistillConfig,
}

/// Every preset, each objective's in turn.
pub fn presets() -> Vec<Preset> {
    [super::dm::PRESETS, super::mtt::PRESETS, super::dc::PRESETS].concat()
}

impl DistillConfig {
    /// The settings of a named preset (see [`presets`]).
    pub fn preset(name: &str) -> Result<Self> {
        let all = presets();
        match all.iter().find(|p| p.name == name) {
            Some(p) => Ok((p.settings)()),
            None => {
                let names: Vec<&str> = all.iter().map(|p| p.name).collect();
                Err(Error::Config(format!(
                    "unknown preset `{name}`; presets: {}",
                    names.join(", ")
                )))
            }
        }
    }

    /// Reads a TOML file; unknown keys are errors so a typo cannot pass silently.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(format!("config file: {e}")))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serialises")
    }

    /// Rejects settings that cannot run, naming the setting and its value.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.ipc == 0 {
            return bad("`ipc = 0`: at least 1 image (or basis) per class".into());
        }
        if self.haba && self.hallucinators == 0 {
            return bad(
                "`hallucinators = 0`: HaBa needs at least 1 hallucinator (or set `haba = false`)"
                    .into(),
            );
        }
        if self.haba && self.contrastive && self.hallucinators < 2 {
            return bad(format!(
                "`hallucinators = {}`: the contrastive constraints compare two different \
                 hallucinators: use at least 2, or set `contrastive = false`",
                self.hallucinators
            ));
        }
        if self.kernel == 0 {
            return bad("`kernel = 0`: the hallucinators' kernel must be at least 1".into());
        }
        self.objective.validate(self.ipc)?;
        let r = self.rates();
        for (name, v) in [
            ("lr_bases", r.lr_bases),
            ("lr_hallucinators", r.lr_hallucinators),
            ("momentum_bases", r.momentum_bases),
            ("momentum_hallucinators", r.momentum_hallucinators),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!("`{name} = {v}`: must be a finite number >= 0"));
            }
        }
        let w = &self.contrastive_weights;
        for (name, v) in [
            ("contrastive_weights.cos", w.cos),
            ("contrastive_weights.cls", w.cls),
            ("contrastive_weights.like", w.like),
            ("contrastive_weights.con", w.con),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!("`{name} = {v}`: must be a finite number >= 0"));
            }
        }
        if !(w.temperature.is_finite() && w.temperature > 0.0) {
            return bad(format!(
                "`contrastive_weights.temperature = {}`: SupCon's τ (0.07) must be a finite \
                 number > 0",
                w.temperature
            ));
        }
        if self.hallucinators > MAX_HALLUCINATORS {
            return bad(format!(
                "`hallucinators = {}`: at most {MAX_HALLUCINATORS} (the paper uses 5)",
                self.hallucinators
            ));
        }
        let max_nets = crate::eval::MAX_NETS;
        if self.eval.nets == 0 || self.eval.nets > max_nets {
            return bad(format!(
                "`eval.nets = {}`: between 1 and {max_nets}",
                self.eval.nets
            ));
        }
        if self.eval.epochs == 0 {
            return bad("`eval.epochs = 0`: at least 1".into());
        }
        if !(self.eval.lr.is_finite() && self.eval.lr > 0.0) {
            return bad(format!(
                "`eval.lr = {}`: must be a finite number > 0",
                self.eval.lr
            ));
        }
        if self.checkpoint_every == 0 {
            return bad("`checkpoint_every = 0`: at least 1".into());
        }
        Ok(())
    }

    /// The preprocessing the run's data needs: the one set, else MTT's buffer's (so
    /// `haba buffer` and `haba distill` agree with their defaults), else mean/std.
    pub fn preprocessing(&self) -> Result<NormKind> {
        match (&self.preprocess, &self.objective) {
            (Some(p), _) => Ok(*p),
            (None, ObjectiveConfig::Mtt(m)) if !m.buffer.is_empty() => {
                Ok(super::buffer::buffer_meta(std::path::Path::new(&m.buffer))?
                    .key
                    .preprocess)
            }
            _ => Ok(NormKind::MeanStd),
        }
    }

    /// The synthetic set's optimisers: what is set, else the objective's own.
    pub fn rates(&self) -> Rates {
        let own = self.objective.rates(self.haba);
        Rates {
            lr_bases: self.lr_bases.unwrap_or(own.lr_bases),
            momentum_bases: self.momentum_bases.unwrap_or(own.momentum_bases),
            lr_hallucinators: self.lr_hallucinators.unwrap_or(own.lr_hallucinators),
            momentum_hallucinators: self
                .momentum_hallucinators
                .unwrap_or(own.momentum_hallucinators),
        }
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

    /// What the measurements say against these settings on data of `shape` (see the
    /// README's Results), for the fronts to show once: HaBa on one-channel data, where a
    /// hallucinator can only filter and modulate its one channel and its views come out
    /// more alike than distinct images.
    pub fn cautions(&self, shape: crate::data::ImageShape) -> Vec<String> {
        let mut out = Vec::new();
        if self.haba && shape.channels == 1 {
            out.push(format!(
                "HaBa on one-channel data (`ipc = {}`): on Fashion-MNIST it measured behind \
                 the plain method at equal storage (HaBa-DM 71.4 % against DM's 74.2 % at 2 \
                 images per class, 78.3 against 79.1 at 10, a tie at 3; HaBa-MTT 66.9 \
                 against MTT's 71.5 at 2, 75.1 against 78.9 at 10): views of a grey basis \
                 are more alike than distinct images. Set `haba = false` for the plain \
                 method.",
                self.ipc
            ));
        }
        out
    }

    /// "haba-dm" or "dm": the method's name in reports.
    pub fn label(&self) -> String {
        if self.haba {
            format!("haba-{}", self.objective)
        } else {
            self.objective.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::mtt::MttConfig;

    #[test]
    fn toml_round_trip_and_unknown_keys_rejected() {
        for p in presets() {
            let cfg = (p.settings)();
            let back = DistillConfig::from_toml(&cfg.to_toml()).unwrap();
            assert_eq!(cfg, back, "{}", p.name);
        }
        let partial = DistillConfig::from_toml("ipc = 3\nhaba = false\n").unwrap();
        assert_eq!((partial.ipc, partial.haba), (3, false));
        assert_eq!(partial.iterations, DistillConfig::default().iterations);
        let err = DistillConfig::from_toml("ipcc = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ipcc"), "{err}");
        // The objective's section: its method's defaults, its own keys only.
        let mtt =
            DistillConfig::from_toml("[objective]\nmethod = \"mtt\"\nsyn_steps = 7\n").unwrap();
        assert_eq!(
            mtt.objective,
            ObjectiveConfig::Mtt(MttConfig {
                syn_steps: 7,
                ..MttConfig::default()
            })
        );
        let err = DistillConfig::from_toml("[objective]\nmethod = \"dm\"\nsyn_steps = 7\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("syn_steps"), "{err}");
        let err = DistillConfig::from_toml("[objective]\nmethod = \"dd\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dd") && err.contains("dsa"), "{err}");
    }

    #[test]
    fn methods_are_named_by_their_tag() {
        for name in ["dm", "mtt", "dc", "DSA"] {
            let o = ObjectiveConfig::named(name).unwrap();
            assert_eq!(o.name(), name.to_ascii_lowercase());
        }
        let err = ObjectiveConfig::named("kip").unwrap_err().to_string();
        assert!(err.contains("kip") && err.contains("mtt"), "{err}");
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
        for p in presets() {
            let mut cfg = (p.settings)();
            if matches!(cfg.objective, ObjectiveConfig::Mtt(_)) {
                let err = cfg.validate().unwrap_err().to_string();
                assert!(err.contains("objective.buffer"), "{}: {err}", p.name);
            }
            if let ObjectiveConfig::Mtt(m) = &mut cfg.objective {
                m.buffer = "buffers/cifar10".into();
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
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("`hallucinators = 1`") && err.contains("two different"),
            "{err}"
        );
        let cfg = DistillConfig {
            lr_bases: Some(f32::NAN),
            ..DistillConfig::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("`lr_bases = NaN`")
        );
    }
}
