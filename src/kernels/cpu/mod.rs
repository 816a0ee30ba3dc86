//! Hand-written CPU kernels, each tested against its plain twin in `kernels::reference` or in
//! its own module.

pub mod bf16_matmul;
pub mod bf16_tiles;
pub mod ggml_bf16;
mod ggml_kquants;
#[cfg(target_arch = "x86_64")]
mod ggml_kquants_avx2;
pub mod ggml_matmul;
pub mod matmul;
pub mod packed_bf16;
pub mod tinyblas_bf16;
#[cfg(target_arch = "x86_64")]
mod tinyblas_bf16_avx512;
#[cfg(target_arch = "x86_64")]
mod tinyblas_bf16_lanes;
