//! nanovllm: a small, exact and fast LLM inference engine for hybrid (Mamba2 + attention)
//! models such as IBM Granite 4.0-H, on CPU.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod cache;
pub mod engine;
pub mod error;
pub mod kernels;
pub mod layers;
pub mod llm;
pub mod loader;
pub mod models;
pub mod outputs;
pub mod sampling_params;
pub mod server;
pub mod tokenizer;
pub mod train;
pub mod validate;

pub use error::{Error, Result};
pub use llm::{EngineConfig, Prompt, LLM};
pub use outputs::{CompletionOutput, FinishReason, RequestOutput};
pub use sampling_params::SamplingParams;
