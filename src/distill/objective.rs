//! What a base distillation method contributes to one iteration: a loss on the synthetic
//! images that the shared loop ([`super::Distiller::step`]) differentiates with respect to
//! the bases and hallucinators, plus any quantity the method learns itself (MTT's
//! learning rate). One file per method implements [`Objective`]: [`super::dm`],
//! [`super::mtt`].

use burn::tensor::{Gradients, Tensor};

use super::checkpoint::Checkpoint;
use crate::augment::Dsa;
use crate::data::Prepared;
use crate::error::Result;
use crate::haba::Factorization;
use crate::rng::Rng;

/// The synthetic set of one iteration, its learnable tensors on the autodiff graph.
pub struct Synthetic<'a> {
    /// Bases and hallucinator weights, tracked.
    pub fact: &'a Factorization,
    pub classes: usize,
    /// Bases (or plain images) per class; class c holds rows `c * per_class ..`.
    pub per_class: usize,
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
}

/// One base objective (DM, MTT).
pub trait Objective {
    /// This iteration's loss, shape `[1]`, with a graph to the synthetic set's tensors and
    /// to the objective's own learned tensors. Draws every random choice from `rng`.
    fn loss(&mut self, syn: &Synthetic<'_>, data: &Prepared, rng: &mut Rng) -> Result<Tensor<1>>;

    /// After the loop's backward: steps the objective's own learned tensors.
    fn update(&mut self, _grads: &Gradients) -> Result<()> {
        Ok(())
    }

    /// The learning rate the objective has learned for training on the set (MTT's α), on
    /// the device.
    fn learned_lr(&self) -> Option<Tensor<1>> {
        None
    }

    /// Puts the objective's state into a checkpoint, and takes it back out.
    fn save(&self, _ck: &mut Checkpoint) {}
    fn load(&mut self, _ck: &mut Checkpoint) -> Result<()> {
        Ok(())
    }
}
