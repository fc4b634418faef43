//! Distillation: the settings ([`config`]), the objectives behind one abstraction
//! ([`objective`]: [`dm`], [`mtt`] over expert trajectories from [`buffer`]), HaBa's
//! adversarial terms ([`contrastive`]), and the loop that optimises a factorization with
//! them ([`runner`]), on disk with checkpoints ([`checkpoint`], [`run`]).

pub mod buffer;
pub mod checkpoint;
pub mod config;
pub mod contrastive;
pub mod dm;
pub mod mtt;
pub mod objective;
pub mod run;
pub mod runner;

pub use config::{
    DistillConfig, DmSettings, EvalSettings, Method, MttSettings, PRESETS, Unroll, Views,
};
pub use runner::{Distiller, Losses};
