//! Distillation: the settings ([`config`]), the objectives ([`dm`]) and the loop that
//! optimises a factorization with them ([`runner`]), on disk with checkpoints ([`run`]).

pub mod config;
pub mod dm;
pub mod run;
pub mod runner;

pub use config::{DistillConfig, EvalSettings, Method, PRESETS, Views};
pub use runner::{Distiller, Losses};
