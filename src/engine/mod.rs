//! The path from tokens to sampled tokens: batches, the model runner and the sampler.

pub mod batch;
pub mod generator;
pub mod sampler;
