//! Distillation: the settings ([`config`]), the objectives ([`dm`]) and the loop that
//! optimises a factorization with them ([`runner`]).

pub mod config;
pub mod dm;
pub mod runner;

pub use config::{DistillConfig, EvalSettings, Method, PRESETS};
pub use runner::{Distiller, Losses};
