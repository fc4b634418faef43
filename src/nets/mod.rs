//! Networks, written functionally over one flat parameter vector.

mod arch;

pub use arch::{Act, Arch, ConvNetConfig, Norm, Pool};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Invalid(String),
}
