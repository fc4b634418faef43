//! Distilling in the page: a short HaBa-DM run on the shipped Fashion-MNIST subset, with
//! the CLI's `quick` settings, stepped from JavaScript so the page stays responsive.

use haba::artifact::Artifact;
use haba::burn::tensor::Device;
use haba::data::{Dataset, Prepared};
use haba::distill::config::DistillConfig;
use haba::distill::run::artifact_of;
use haba::distill::runner::{Distiller, PendingLosses};
use wasm_bindgen::prelude::*;

use crate::{factorization_on, js, read_f32};

/// A distillation in progress.
#[wasm_bindgen]
pub struct Distilling {
    distiller: Distiller,
    data: Prepared,
    dataset: Dataset,
}

impl Distilling {
    pub(crate) fn new(
        subset: &Dataset,
        device: &Device,
        iterations: usize,
        seed: u64,
    ) -> Result<Self, JsError> {
        if iterations == 0 || iterations > 100_000 {
            return Err(JsError::new("iterations must be between 1 and 100000"));
        }
        let cfg = DistillConfig {
            iterations,
            seed,
            ..DistillConfig::preset("quick").map_err(js)?
        };
        let data = Prepared::new(subset, cfg.preprocessing().map_err(js)?, device).map_err(js)?;
        let distiller = Distiller::new(cfg, &data).map_err(js)?;
        Ok(Self {
            distiller,
            data,
            dataset: subset.clone(),
        })
    }

    /// The set as distilled so far, on the device it was distilled on.
    pub(crate) fn artifact(&self) -> Artifact {
        artifact_of(&self.distiller, &self.data, &self.dataset)
    }
}

#[wasm_bindgen]
impl Distilling {
    /// Iterations done so far.
    pub fn iteration(&self) -> usize {
        self.distiller.iteration
    }

    /// Iterations the run was started for.
    pub fn iterations(&self) -> usize {
        self.distiller.cfg.iterations
    }

    /// One iteration; await `read()` for its DM loss.
    pub fn step(&mut self) -> Result<PendingStep, JsError> {
        let pending = self.distiller.step_deferred(&self.data).map_err(js)?;
        Ok(PendingStep { pending })
    }

    /// The set as a `distilled.safetensors`; await `read()` for its bytes.
    pub fn download(&self) -> PendingArtifact {
        PendingArtifact {
            artifact: self.artifact(),
        }
    }
}

/// An iteration's losses being read back.
#[wasm_bindgen]
pub struct PendingStep {
    pending: PendingLosses,
}

#[wasm_bindgen]
impl PendingStep {
    /// The iteration's DM loss; an error when it is not a number.
    pub async fn read(self) -> Result<f32, JsError> {
        let values = read_f32(self.pending.stacked()).await?;
        Ok(self.pending.losses(&values).map_err(js)?.objective)
    }
}

/// An artifact whose tensors are being read back for encoding.
#[wasm_bindgen]
pub struct PendingArtifact {
    artifact: Artifact,
}

#[wasm_bindgen]
impl PendingArtifact {
    /// The bytes `haba eval` and `haba view` read.
    pub async fn read(self) -> Result<Vec<u8>, JsError> {
        let host = Device::flex();
        let factorization = factorization_on(&self.artifact.factorization, &host).await?;
        let artifact = Artifact {
            factorization,
            ..self.artifact
        };
        artifact.to_bytes().map_err(js)
    }
}
