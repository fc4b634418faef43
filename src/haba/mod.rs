//! HaBa's factorization: bases and hallucinators (SPEC.md section 1).

pub mod affine;
pub mod hallucinator;
