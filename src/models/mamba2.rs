//! Pure Mamba2 (`Mamba2ForCausalLM`, e.g. Mamba-Codestral): a stack of pre-RMSNorm residual
//! blocks whose only mixer is the Mamba2 SSD layer (the same mixer as Granite 4.0-H; spec:
//! shared/reference/granite-4.0-h.md §4.3), then a final RMSNorm and the head. Each sequence
//! keeps its conv and SSM state in a recurrent slot; there is no KV cache.

use candle_core::Tensor;
use serde::Deserialize;

use super::{eos_ids, LayerKind, Model, ModelInfo};
use crate::cache::{LayerCache, LayerCacheSpec, ModelCache};
use crate::engine::batch::Batch;
use crate::error::{Error, Result};
use crate::layers::embedding::Embedding;
use crate::layers::linear::Linear;
use crate::layers::lm_head::{no_logits, project, select_logit_rows};
use crate::layers::mamba2_mixer::{time_step_limit, Mamba2Config as MixerConfig, Mamba2Mixer};
use crate::layers::norm::RmsNorm;
use crate::loader::config_json;
use crate::loader::safetensors::WeightStore;

/// `config.json` of a Mamba2 checkpoint; defaults are transformers' `Mamba2Config`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Mamba2Config {
    /// Vocabulary rows.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// SSM heads.
    pub num_heads: usize,
    /// Channels per SSM head (`num_heads · head_dim` must be `expand · hidden_size`).
    pub head_dim: usize,
    /// Inner expansion of the mixer.
    pub expand: usize,
    /// B/C groups, also the groups of the gated RMSNorm.
    pub n_groups: usize,
    /// SSM state size.
    pub state_size: usize,
    /// Conv kernel width.
    pub conv_kernel: usize,
    /// SSD chunk length (numerics only).
    pub chunk_size: usize,
    /// Conv bias.
    pub use_conv_bias: bool,
    /// in_proj / out_proj biases.
    pub use_bias: bool,
    /// Conv activation (only `silu`).
    pub hidden_act: String,
    /// Epsilon of every RMSNorm, the gated one included.
    pub layer_norm_epsilon: f64,
    /// Clamp on dt after softplus; absent or null means none.
    pub time_step_limit: Option<Vec<serde_json::Value>>,
    /// Whether the head reuses the embedding.
    pub tie_word_embeddings: bool,
}

impl Default for Mamba2Config {
    fn default() -> Self {
        Self {
            vocab_size: 32768,
            hidden_size: 4096,
            num_hidden_layers: 64,
            num_heads: 128,
            head_dim: 64,
            expand: 2,
            n_groups: 8,
            state_size: 128,
            conv_kernel: 4,
            chunk_size: 256,
            use_conv_bias: true,
            use_bias: false,
            hidden_act: "silu".into(),
            layer_norm_epsilon: 1e-5,
            time_step_limit: None,
            tie_word_embeddings: false,
        }
    }
}

impl Mamba2Config {
    fn mixer(&self) -> Result<MixerConfig> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_heads", self.num_heads),
            ("head_dim", self.head_dim),
            ("n_groups", self.n_groups),
            ("state_size", self.state_size),
            ("conv_kernel", self.conv_kernel),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be greater than 0"));
            }
        }
        if self.hidden_act != "silu" {
            return Err(Error::config(
                "hidden_act",
                format!("only `silu` is supported, got `{}`", self.hidden_act),
            ));
        }
        if self.layer_norm_epsilon.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(Error::config("layer_norm_epsilon", "must be positive"));
        }
        let (nh, p) = (self.num_heads, self.head_dim);
        if nh * p != self.expand * self.hidden_size {
            return Err(Error::config(
                "head_dim",
                format!(
                    "num_heads * head_dim = {nh} * {p} must equal expand * hidden_size = {}",
                    self.expand * self.hidden_size
                ),
            ));
        }
        if !nh.is_multiple_of(self.n_groups) {
            return Err(Error::config(
                "n_groups",
                format!("{} does not divide num_heads {nh}", self.n_groups),
            ));
        }
        Ok(MixerConfig {
            hidden_size: self.hidden_size,
            n_heads: nh,
            head_dim: p,
            n_groups: self.n_groups,
            d_state: self.state_size,
            d_conv: self.conv_kernel,
            conv_bias: self.use_conv_bias,
            proj_bias: self.use_bias,
            dt_limit: time_step_limit(self.time_step_limit.as_deref())?,
            norm_eps: self.layer_norm_epsilon,
        })
    }
}

struct Block {
    norm: RmsNorm,
    mixer: Mamba2Mixer,
}

/// A loaded Mamba2 model.
pub struct Mamba2 {
    vocab_size: usize,
    embed: Embedding,
    blocks: Vec<Block>,
    norm_f: RmsNorm,
    lm_head: Option<Linear>,
    specs: Vec<LayerCacheSpec>,
    info: ModelInfo,
}

/// Builds a [`Mamba2`] from a parsed config and its weights.
pub fn load(config: &serde_json::Value, store: &WeightStore) -> Result<Box<dyn Model>> {
    let cfg: Mamba2Config = config_json::typed(config)?;
    let mixer_cfg = cfg.mixer()?;
    let (h, v, eps) = (cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_epsilon);
    // transformers' load hook renames the older `embedding.` to `embeddings.`.
    let embed_name = if store.contains("backbone.embedding.weight") {
        "backbone.embedding.weight"
    } else {
        "backbone.embeddings.weight"
    };
    let embed = Embedding::load(store, embed_name, v, h)?;
    let blocks = (0..cfg.num_hidden_layers)
        .map(|i| {
            let p = format!("backbone.layers.{i}");
            Ok(Block {
                norm: RmsNorm::load(store, &format!("{p}.norm.weight"), h, eps)?,
                mixer: Mamba2Mixer::load(store, &format!("{p}.mixer"), mixer_cfg)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let norm_f = RmsNorm::load(store, "backbone.norm_f.weight", h, eps)?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(Linear::load(store, "lm_head", v, h, false)?)
    };
    let specs = vec![LayerCacheSpec::Recurrent(mixer_cfg.state_shape()); cfg.num_hidden_layers];
    let num_params = embed.num_params()
        + norm_f.num_params()
        + lm_head.as_ref().map_or(0, |l| l.num_params())
        + blocks
            .iter()
            .map(|b| b.norm.num_params() + b.mixer.num_params())
            .sum::<usize>();
    let info = ModelInfo {
        architecture: "Mamba2ForCausalLM".into(),
        vocab_size: v,
        hidden_size: h,
        layer_kinds: vec![LayerKind::Mamba; cfg.num_hidden_layers],
        num_params,
        weight_bytes: store.loaded_bytes(),
        max_position_embeddings: None,
        eos_token_ids: eos_ids(config),
    };
    Ok(Box::new(Mamba2 {
        vocab_size: v,
        embed,
        blocks,
        norm_f,
        lm_head,
        specs,
        info,
    }))
}

impl Model for Mamba2 {
    fn forward(&self, batch: &Batch, cache: &mut ModelCache) -> Result<Tensor> {
        batch.validate(self.vocab_size)?;
        if cache.layers.len() != self.blocks.len() {
            return Err(Error::request("cache", "cache was built for another model"));
        }
        let mut x = self.embed.forward(&batch.tokens, 1.0)?;
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let LayerCache::Recurrent(state) = layer_cache else {
                return Err(Error::request(
                    "cache",
                    "cache layout does not match the model",
                ));
            };
            let m = block
                .mixer
                .forward(&block.norm.forward(&x)?, batch, state)?;
            x = (x + m)?;
        }
        let Some(x) = select_logit_rows(&x, batch)? else {
            return no_logits(self.vocab_size);
        };
        let x = self.norm_f.forward(&x)?;
        project(self.lm_head.as_ref(), &self.embed, &x)
    }

    fn cache_specs(&self) -> &[LayerCacheSpec] {
        &self.specs
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}
