//! Numeric kernels of the recurrent layers. `reference` states the math plainly (spec §3.2,
//! §4.3); the fast versions (`conv1d`, `ssd` for prefill, `ssm_step` for decode) must match it
//! on random inputs within stated tolerances.

pub mod conv1d;
pub mod cpu;
pub mod fast_math;
pub mod ggml_attention;
pub mod ggml_math;
pub mod reference;
pub mod scan_layout;
pub mod ssd;
pub mod ssm_step;
