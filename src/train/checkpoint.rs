//! A training checkpoint directory: `config.json` + `model.safetensors` (what the engine
//! loads), plus `optimizer.safetensors` (AdamW moments) and `trainer_state.json` (step, best
//! eval perplexity) so `--resume` continues exactly, and the `tokenizer.json` trained with.

use std::path::Path;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use crate::error::{Error, Result};
use crate::models::dynamic_hybrid::config::DynamicHybridConfig;
use crate::models::dynamic_hybrid::params::ParamStore;

/// Loop state saved next to the weights.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Lowest evaluation perplexity so far.
    pub best_eval_ppl: Option<f64>,
    /// Training tokens consumed.
    pub tokens_seen: u64,
}

/// Writes a checkpoint into `dir` (created if needed).
pub fn save(
    dir: &Path,
    cfg: &DynamicHybridConfig,
    params: &ParamStore,
    opt: &AdamW,
    state: &TrainerState,
    tokenizer: Option<&Path>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let write = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
    };
    write("config.json", pretty(cfg)?)?;
    write("trainer_state.json", pretty(state)?)?;
    params.save(&dir.join("model.safetensors"))?;
    candle_core::safetensors::save(&opt.state_tensors(), dir.join("optimizer.safetensors"))?;
    if let Some(t) = tokenizer {
        let to = dir.join("tokenizer.json");
        std::fs::copy(t, &to).map_err(|e| Error::io(&to, e))?;
    }
    Ok(())
}

/// What [`load`] returns.
pub struct Checkpoint {
    /// The config.
    pub config: DynamicHybridConfig,
    /// The parameters.
    pub params: ParamStore,
    /// The loop state.
    pub state: TrainerState,
    /// AdamW moments for [`AdamW::restore`].
    pub moments: HashMap<String, Tensor>,
}

/// Loads the config, parameters (as `dtype`), optimizer moments and loop state of `dir`.
pub fn load(dir: &Path, dtype: DType) -> Result<Checkpoint> {
    let cfg = DynamicHybridConfig::from_file(&dir.join("config.json"))?;
    let weights = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| Error::request("resume", format!("{}: {e}", weights.display())))?;
    let params = ParamStore::from_tensors(&cfg, &tensors, dtype, &weights)?;
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::request("resume", format!("{}: {e}", state_path.display())))?;
    let opt_path = dir.join("optimizer.safetensors");
    let moments = candle_core::safetensors::load(&opt_path, &Device::Cpu)
        .map_err(|e| Error::request("resume", format!("{}: {e}", opt_path.display())))?;
    Ok(Checkpoint {
        config: cfg,
        params,
        state,
        moments,
    })
}

fn pretty<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::request("checkpoint", e.to_string()))
}
