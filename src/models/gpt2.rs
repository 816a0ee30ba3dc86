//! OpenAI GPT-2 (`GPT2LMHeadModel`): token + learned absolute position embeddings, then
//! pre-LayerNorm blocks of multi-head attention and a GELU MLP, a final LayerNorm and a head
//! tied to the token embedding. transformers stores the projections as `Conv1D` (`[in, out]`)
//! with `c_attn` fusing q | k | v; they are transposed and split once at load.

use candle_core::Tensor;
use serde::Deserialize;

use super::{eos_ids, LayerKind, Model, ModelInfo};
use crate::cache::{LayerCache, LayerCacheSpec, ModelCache};
use crate::engine::batch::Batch;
use crate::error::{Error, Result};
use crate::layers::attention::{Attention, AttentionConfig};
use crate::layers::embedding::{Embedding, PositionEmbedding};
use crate::layers::linear::Linear;
use crate::layers::lm_head::{no_logits, project, select_logit_rows};
use crate::layers::mlp::{Activation, Mlp};
use crate::layers::norm::LayerNorm;
use crate::loader::config_json;
use crate::loader::safetensors::WeightStore;

/// `config.json` of a GPT-2 checkpoint; defaults are transformers' `GPT2Config`. The generic
/// names (`hidden_size`, ...) are accepted as aliases, as transformers' `attribute_map` does.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Gpt2Config {
    /// Vocabulary rows.
    pub vocab_size: usize,
    /// Residual width.
    #[serde(alias = "hidden_size")]
    pub n_embd: usize,
    /// Blocks.
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    /// Attention heads.
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    /// Rows of the position table (the longest context).
    #[serde(alias = "max_position_embeddings")]
    pub n_positions: usize,
    /// MLP width (null means 4 × n_embd).
    pub n_inner: Option<usize>,
    /// MLP activation (`gelu_new` is the tanh approximation).
    pub activation_function: String,
    /// Epsilon of every LayerNorm.
    pub layer_norm_epsilon: f64,
    /// Scale attention scores by `1/sqrt(head_dim)`.
    pub scale_attn_weights: bool,
    /// Further divide layer `i`'s attention scores by `i + 1`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Whether the head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// `model_type` string.
    pub model_type: String,
}

impl Default for Gpt2Config {
    fn default() -> Self {
        Self {
            vocab_size: 50257,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_positions: 1024,
            n_inner: None,
            activation_function: "gelu_new".into(),
            layer_norm_epsilon: 1e-5,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            tie_word_embeddings: true,
            model_type: "gpt2".into(),
        }
    }
}

impl Gpt2Config {
    /// Checks the geometry; returns (head_dim, mlp width, activation).
    fn resolve(&self) -> Result<(usize, usize, Activation)> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_positions", self.n_positions),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be greater than 0"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::config(
                "n_head",
                format!("{} does not divide n_embd {}", self.n_head, self.n_embd),
            ));
        }
        let inner = self.n_inner.unwrap_or(4 * self.n_embd);
        if inner == 0 {
            return Err(Error::config("n_inner", "must be greater than 0"));
        }
        if self.layer_norm_epsilon.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(Error::config("layer_norm_epsilon", "must be positive"));
        }
        let act = Activation::parse(&self.activation_function, "activation_function")?;
        Ok((self.n_embd / self.n_head, inner, act))
    }

    /// The softmax scale of block `layer` (transformers' `GPT2Attention.scaling`).
    fn attention_scale(&self, layer: usize, head_dim: usize) -> f32 {
        let mut scale = 1.0f64;
        if self.scale_attn_weights {
            scale = (head_dim as f64).powf(-0.5);
        }
        if self.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        scale as f32
    }
}

struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

/// A loaded GPT-2 model.
pub struct Gpt2 {
    vocab_size: usize,
    wte: Embedding,
    wpe: PositionEmbedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Option<Linear>,
    specs: Vec<LayerCacheSpec>,
    info: ModelInfo,
}

/// Builds a [`Gpt2`] from a parsed config and its weights.
pub fn load(config: &serde_json::Value, store: &WeightStore) -> Result<Box<dyn Model>> {
    let cfg: Gpt2Config = config_json::typed(config)?;
    let (head_dim, inner, act) = cfg.resolve()?;
    let (h, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
    // transformers saves `transformer.`-prefixed names; OpenAI's original upload has none.
    let root = if store.contains("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let wte = Embedding::load(store, &format!("{root}wte.weight"), cfg.vocab_size, h)?;
    let wpe = PositionEmbedding::load(store, &format!("{root}wpe.weight"), cfg.n_positions, h)?;
    let mut blocks = Vec::with_capacity(cfg.n_layer);
    for i in 0..cfg.n_layer {
        let p = format!("{root}h.{i}");
        // c_attn's outputs are [q (H) | k (H) | v (H)], heads contiguous within each.
        let c_attn = Linear::load_conv1d(store, &format!("{p}.attn.c_attn"), h, 3 * h)?;
        let part = |k: usize| -> Result<Linear> {
            c_attn.select_outputs(&(k * h..(k + 1) * h).collect::<Vec<_>>())
        };
        let attn_cfg = AttentionConfig {
            hidden_size: h,
            n_heads: cfg.n_head,
            n_kv_heads: cfg.n_head,
            head_dim,
            scale: cfg.attention_scale(i, head_dim),
            bias: true,
            rope: None,
        };
        let attn = Attention::from_projections(
            attn_cfg,
            part(0)?,
            part(1)?,
            part(2)?,
            Linear::load_conv1d(store, &format!("{p}.attn.c_proj"), h, h)?,
        )?;
        let mlp = Mlp::new(
            Linear::load_conv1d(store, &format!("{p}.mlp.c_fc"), h, inner)?,
            Linear::load_conv1d(store, &format!("{p}.mlp.c_proj"), inner, h)?,
            act,
        );
        blocks.push(Block {
            ln_1: LayerNorm::load(store, &format!("{p}.ln_1"), h, eps)?,
            attn,
            ln_2: LayerNorm::load(store, &format!("{p}.ln_2"), h, eps)?,
            mlp,
        });
    }
    let ln_f = LayerNorm::load(store, &format!("{root}ln_f"), h, eps)?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(Linear::load(store, "lm_head", cfg.vocab_size, h, false)?)
    };
    let specs = vec![
        LayerCacheSpec::Attention {
            n_kv_heads: cfg.n_head,
            head_dim,
        };
        cfg.n_layer
    ];
    let num_params = wte.num_params()
        + wpe.num_params()
        + ln_f.num_params()
        + lm_head.as_ref().map_or(0, |l| l.num_params())
        + blocks
            .iter()
            .map(|b| {
                b.ln_1.num_params() + b.attn.num_params() + b.ln_2.num_params() + b.mlp.num_params()
            })
            .sum::<usize>();
    let info = ModelInfo {
        architecture: "GPT2LMHeadModel".into(),
        vocab_size: cfg.vocab_size,
        hidden_size: h,
        layer_kinds: vec![LayerKind::Attention; cfg.n_layer],
        num_params,
        weight_bytes: store.loaded_bytes(),
        max_position_embeddings: Some(cfg.n_positions),
        eos_token_ids: eos_ids(config),
    };
    Ok(Box::new(Gpt2 {
        vocab_size: cfg.vocab_size,
        wte,
        wpe,
        blocks,
        ln_f,
        lm_head,
        specs,
        info,
    }))
}

impl Model for Gpt2 {
    fn forward(&self, batch: &Batch, cache: &mut ModelCache) -> Result<Tensor> {
        batch.validate(self.vocab_size)?;
        if cache.layers.len() != self.blocks.len() {
            return Err(Error::request("cache", "cache was built for another model"));
        }
        let mut x = (self.wte.forward(&batch.tokens, 1.0)? + self.wpe.forward(batch)?)?;
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let LayerCache::Attention(kv) = layer_cache else {
                return Err(Error::request(
                    "cache",
                    "cache layout does not match the model",
                ));
            };
            let a = block.attn.forward(&block.ln_1.forward(&x)?, batch, kv)?;
            x = (a + x)?;
            let m = block.mlp.forward(&block.ln_2.forward(&x)?)?;
            x = (x + m)?;
        }
        let Some(x) = select_logit_rows(&x, batch)? else {
            return no_logits(self.vocab_size);
        };
        let x = self.ln_f.forward(&x)?;
        project(self.lm_head.as_ref(), &self.wte, &x)
    }

    fn cache_specs(&self) -> &[LayerCacheSpec] {
        &self.specs
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}
