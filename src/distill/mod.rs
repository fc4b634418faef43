//! Distillation: the settings ([`config`]), the objectives behind one abstraction
//! ([`objective`]: [`dm`], [`mtt`] over expert trajectories from [`buffer`], [`dc`] for
//! DC and DSA), HaBa's adversarial terms ([`contrastive`]), and the loop that optimises a
//! factorization with them ([`runner`]), on disk with checkpoints ([`checkpoint`], [`run`]).

pub mod buffer;
pub mod checkpoint;
pub mod config;
pub mod contrastive;
pub mod dc;
pub mod dm;
pub mod mtt;
pub mod objective;
pub mod run;
pub mod runner;
#[cfg(test)]
mod testing;

pub use config::{DistillConfig, EvalSettings, Preset, presets};
pub use dc::{DcConfig, Metric};
pub use dm::DmConfig;
pub use mtt::{MttConfig, Unroll};
pub use objective::{ObjectiveConfig, Views};
pub use runner::{Distiller, Losses};
