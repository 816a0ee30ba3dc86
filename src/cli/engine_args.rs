//! Engine options shared by `generate`, `bench`, `chat` and `serve`.

use std::path::Path;

use anyhow::Context;
use nanovllm::llm::{EngineConfig, LLM};
use nanovllm::loader::LoadOptions;

/// Sizing and caching options of the engine.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Most sequences running at once (recurrent-state slots).
    #[arg(long, default_value_t = 16)]
    pub max_num_seqs: usize,
    /// Most tokens per forward pass; longer prompts are processed in chunks.
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Longest prompt + output (default: the model's limit, capped at 16384).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Tokens per KV block (also the prefix-cache granularity).
    #[arg(long, default_value_t = 16)]
    pub kv_block_size: usize,
    /// MiB for the KV cache of attention layers.
    #[arg(long, default_value_t = 2048)]
    pub kv_cache_mib: usize,
    /// MiB for prefix-cache snapshots of recurrent state.
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_mib: usize,
    /// Disable prefix caching.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Quantize safetensors weights at load time: q8_0 or q4_k (GGUF files keep their types).
    #[arg(long)]
    pub quantize: Option<nanovllm::loader::Quantization>,
    /// bf16 weights: `fast` rounds prefill activations to bf16 (as PyTorch and llama.cpp do;
    /// decode stays exact), `exact` keeps every matmul in f32.
    #[arg(long, default_value = "fast")]
    pub matmul_precision: nanovllm::loader::MatmulPrecision,
}

impl EngineArgs {
    /// Load-time options (`--quantize`, `--matmul-precision`).
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            quantize: self.quantize,
            matmul_precision: self.matmul_precision,
        }
    }

    /// Loads `model` (a directory or `.gguf` file) into an engine with these options.
    pub fn load(&self, model: &Path) -> anyhow::Result<LLM> {
        LLM::with_options(model, self.config(), &self.load_options())
            .with_context(|| format!("loading {}", model.display()))
    }

    /// The library configuration these options describe.
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len: self.max_model_len,
            kv_block_size: self.kv_block_size,
            kv_cache_memory: self.kv_cache_mib << 20,
            prefix_cache_memory: self.prefix_cache_mib << 20,
            enable_prefix_caching: !self.no_prefix_caching,
            threads: self.threads,
            ..EngineConfig::default()
        }
    }
}
