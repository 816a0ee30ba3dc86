//! Hand-written CPU kernels, each tested against its plain twin in `kernels::reference` or in
//! its own module.

pub mod ggml_matmul;
pub mod matmul;
