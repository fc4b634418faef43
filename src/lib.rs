//! haba: dataset distillation via factorization (HaBa) on any WebGPU device.
//!
//! The pipeline reads top to bottom: [`data`] -> (bases, hallucinators) -> [`augment`]
//! -> [`nets`] -> objective -> optimiser step -> artifact. This crate is the library;
//! the CLI (`src/main.rs`, `src/cli/`) is a thin front over it.

#[cfg(not(target_arch = "wasm32"))]
pub mod alloc;
pub mod artifact;
pub mod augment;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod clock;
pub mod data;
pub mod device;
pub mod distill;
pub mod error;
pub mod eval;
pub mod haba;
pub mod kernels;
pub mod nets;
pub mod optim;
pub mod report;
pub mod rng;
pub mod train;
#[cfg(all(feature = "viewer", not(target_arch = "wasm32")))]
pub mod viewer;

pub use burn;
pub use error::{Error, Result};
