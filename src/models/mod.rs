//! Architectures. Each file holds one architecture's config and its forward as a loop over
//! shared layers; this module holds the [`Model`] trait and the table that maps a checkpoint's
//! `architectures` / `model_type` to a loader.

pub mod dynamic_hybrid;
pub mod falcon;
pub mod gemma3;
pub mod gpt2;
pub mod granite;
pub mod granite_hybrid;
pub mod llama;
pub mod mamba2;

use std::path::Path;

use candle_core::Tensor;
use serde::Serialize;

use crate::cache::{CacheCosts, LayerCacheSpec, ModelCache};
use crate::engine::batch::Batch;
use crate::error::{Error, Result};
use crate::loader::config_json;
use crate::loader::safetensors::WeightStore;
use crate::loader::LoadOptions;

/// What a layer mixes tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Softmax attention over a KV cache.
    Attention,
    /// A Mamba2 state-space mixer.
    Mamba,
    /// Both, with per-token routing between them (DynamicHybridModel).
    Hybrid,
}

/// Static facts about a loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The `architectures[0]` class name it was loaded as.
    pub architecture: String,
    /// Vocabulary rows of the embedding / head.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Mixer of each layer.
    pub layer_kinds: Vec<LayerKind>,
    /// Parameters (a tied head counted once).
    pub num_params: usize,
    /// Bytes the weights occupy in memory.
    pub weight_bytes: usize,
    /// Longest context the config declares, if any.
    pub max_position_embeddings: Option<usize>,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
}

/// A causal language model over a flat, padding-free batch.
pub trait Model: Send + Sync {
    /// Runs the batch's new tokens through the model, reading and writing `cache` in place;
    /// returns `[rows, vocab]` logits for the rows `batch.logits` selects.
    fn forward(&self, batch: &Batch, cache: &mut ModelCache) -> Result<Tensor>;
    /// The cache each layer needs.
    fn cache_specs(&self) -> &[LayerCacheSpec];
    /// Static facts about the model.
    fn info(&self) -> &ModelInfo;
    /// Per-sequence and per-token cache costs.
    fn cache_costs(&self) -> CacheCosts {
        CacheCosts::of(self.cache_specs())
    }
}

type Loader = fn(&serde_json::Value, &WeightStore) -> Result<Box<dyn Model>>;

/// Supported architectures: (`architectures` class name, `model_type`, loader).
const ARCHITECTURES: &[(&str, &str, Loader)] = &[
    (
        "GraniteMoeHybridForCausalLM",
        "granitemoehybrid",
        granite_hybrid::load,
    ),
    ("GPT2LMHeadModel", "gpt2", gpt2::load),
    ("FalconForCausalLM", "falcon", falcon::load),
    ("Mamba2ForCausalLM", "mamba2", mamba2::load),
    ("LlamaForCausalLM", "llama", llama::load),
    ("GraniteForCausalLM", "granite", granite::load),
    ("GraniteMoeForCausalLM", "granitemoe", granite::load_moe),
    ("Gemma3ForCausalLM", "gemma3_text", gemma3::load),
    (
        dynamic_hybrid::config::ARCHITECTURE,
        dynamic_hybrid::config::MODEL_TYPE,
        dynamic_hybrid::load,
    ),
];

/// Loads a model directory (`config.json` + safetensors) or a `.gguf` file.
pub fn load(path: &Path) -> Result<Box<dyn Model>> {
    load_with(path, &LoadOptions::default())
}

/// [`load`] with load-time options (e.g. quantizing safetensors weights).
pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Box<dyn Model>> {
    let (config, store) = open(path)?;
    let store = store
        .with_quantization(options.quantize)
        .with_precision(options.matmul_precision);
    let loader = pick_loader(&config)?;
    loader(&config, &store)
}

/// Whether `path` names a GGUF file (by extension or magic bytes).
pub fn is_gguf(path: &Path) -> bool {
    if path.is_dir() {
        return false;
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// The config and weights of a model directory or GGUF file, without building the model.
pub fn open(path: &Path) -> Result<(serde_json::Value, WeightStore)> {
    if is_gguf(path) {
        let store = WeightStore::open_gguf(path)?;
        let config = store
            .gguf_config()
            .cloned()
            .ok_or_else(|| Error::config("general.architecture", "not a GGUF model"))?;
        return Ok((config, store));
    }
    let config_path = path.join("config.json");
    if !config_path.is_file() {
        return Err(Error::config(
            "config.json",
            format!(
                "no config.json in {} (and not a .gguf file)",
                path.display()
            ),
        ));
    }
    let config = config_json::read(&config_path)?;
    pick_loader(&config)?;
    let store = WeightStore::open_dir(path)?;
    Ok((config, store))
}

fn pick_loader(config: &serde_json::Value) -> Result<Loader> {
    let arch = config
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.as_str());
    let model_type = config.get("model_type").and_then(|m| m.as_str());
    let supported = || {
        ARCHITECTURES
            .iter()
            .map(|(a, m, _)| format!("{a} ({m})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(arch) = arch {
        if let Some((_, _, l)) = ARCHITECTURES.iter().find(|(a, _, _)| *a == arch) {
            return Ok(*l);
        }
    }
    if let Some(mt) = model_type {
        if let Some((_, _, l)) = ARCHITECTURES.iter().find(|(_, m, _)| *m == mt) {
            return Ok(*l);
        }
        return Err(Error::config(
            "model_type",
            format!(
                "unsupported architecture `{mt}`; supported: {}",
                supported()
            ),
        ));
    }
    Err(Error::config(
        "model_type",
        format!(
            "missing (architectures: {:?}); supported: {}",
            arch.unwrap_or("none"),
            supported()
        ),
    ))
}

/// Reads `eos_token_id` (a number or a list) from a config.
pub fn eos_ids(config: &serde_json::Value) -> Vec<u32> {
    match config.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as u32))
            .collect(),
        _ => Vec::new(),
    }
}
