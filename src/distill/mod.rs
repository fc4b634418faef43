//! Distillation objectives and (later) the loop that optimises a factorization with them.

pub mod dm;
