//! Building blocks shared by every architecture. Activations are `[tokens, features]` f32
//! tensors; each layer takes the flat [`crate::engine::batch::Batch`] when it needs to know
//! where one sequence ends and the next begins.

pub mod attention;
pub mod embedding;
pub mod linear;
pub mod lm_head;
pub mod mamba2_mixer;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod rope;

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Copies a tensor's values into a flat row-major vector.
pub fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Wraps a flat row-major vector as a `[rows, cols]` tensor.
pub fn from_vec(v: Vec<f32>, rows: usize, cols: usize) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?)
}

/// `v · sigmoid(v)`.
#[inline]
pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}
