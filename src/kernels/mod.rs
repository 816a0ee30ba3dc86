//! Numeric kernels of the recurrent layers. `reference` states the math plainly (spec §3.2,
//! §4.3); faster versions must match it on random inputs within stated tolerances.

pub mod cpu;
pub mod ggml_math;
pub mod reference;
