//! `report.json`: one typed schema that `haba distill`, `haba eval --json` and the main
//! job write and that `haba compare` and the viewer read back.

use serde::{Deserialize, Serialize};

use crate::data::NormKind;
use crate::distill::DistillConfig;
use crate::eval::{EvalConfig, EvalResult};
use crate::haba::Storage;

/// The schema's version; reports without it (or of another one) are refused by name.
pub const REPORT_VERSION: u32 = 2;

/// What a run or an evaluation measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub version: u32,
    /// The dataset the sets were made from and tested on, and its classes.
    pub dataset: String,
    pub classes: Vec<String>,
    /// The device the numbers were measured on.
    pub device: String,
    pub seed: u64,
    /// The preprocessing fitted on the train split (absent for an artifact, which holds
    /// its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<NormKind>,
    /// The distillation that made the first set (absent when `haba eval` evaluated real
    /// images or a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<Distillation>,
    /// Every set evaluated: the run's own first, then any baselines beside it.
    pub sets: Vec<EvaluatedSet>,
}

/// How a distilled set was made.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distillation {
    /// `haba-dm`, `mtt`, ...
    pub method: String,
    pub iterations: usize,
    pub bases_per_class: usize,
    /// The learning rate the objective learned for training on the set (MTT's α).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_lr: Option<f32>,
    pub settings: DistillConfig,
}

/// One training set, its storage and how networks trained on it scored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatedSet {
    /// The method (`haba-dm`, `DM`, ...) or the baseline's name (`random real`).
    pub name: String,
    pub storage: Storage,
    /// Distillation steps that made it (none for real images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
    pub evaluation: EvalConfig,
    pub result: EvalResult,
}

impl EvaluatedSet {
    /// Whether the set is factorized (bases and hallucinators).
    pub fn haba(&self) -> bool {
        self.storage.hallucinator_floats > 0
    }

    /// The learning rate the networks trained at: the result's (an MTT run's α) or the
    /// protocol's.
    pub fn lr(&self) -> f32 {
        self.result.lr.unwrap_or(self.evaluation.train.sgd.lr)
    }

    /// The evaluation in words: networks, model, epochs, learning rate.
    pub fn protocol(&self) -> String {
        format!(
            "{} x {}, {} epochs, lr {}",
            self.evaluation.nets,
            self.evaluation.model,
            self.evaluation.train.epochs,
            self.lr()
        )
    }
}

impl Report {
    /// A report of version [`REPORT_VERSION`] with no sets yet.
    pub fn new(dataset: &str, classes: &[String], device: &str, seed: u64) -> Self {
        Self {
            version: REPORT_VERSION,
            dataset: dataset.to_string(),
            classes: classes.to_vec(),
            device: device.to_string(),
            seed,
            preprocess: None,
            distillation: None,
            sets: Vec::new(),
        }
    }

    /// Parses a report, saying what is wrong with one that is not (or of another version).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(REPORT_VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "a report of version {v}; this haba reads version {REPORT_VERSION}"
                ));
            }
            None => {
                return Err(
                    "not a report of this haba (no version): it was written by an older one; \
                     evaluate the run's artifact again to write a new report"
                        .into(),
                );
            }
        }
        serde_json::from_value(value).map_err(|e| format!("not a valid report ({e})"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }
}
