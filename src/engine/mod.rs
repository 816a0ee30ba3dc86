//! The path from tokens to sampled tokens: batches, the model runner and the sampler.

pub mod batch;
pub mod engine_thread;
pub mod llm_engine;
pub mod model_runner;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod text_stream;
