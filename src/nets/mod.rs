//! Networks, written functionally over one flat parameter vector.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Invalid(String),
}
