//! Llama (`LlamaForCausalLM`): pre-norm decoder layers of RoPE grouped-query attention and a
//! gated MLP, each added to the residual stream; final RMSNorm; tied or untied head.
//!
//! The same body, with Granite's four scalars (embedding, residual, attention, logits) and an
//! optional MoE in place of the MLP, is [`crate::models::granite`]; both build a
//! [`LlamaStack`] from a [`StackSpec`].

use candle_core::Tensor;
use serde::Deserialize;

use super::{eos_ids, LayerKind, Model, ModelInfo};
use crate::cache::{LayerCache, LayerCacheSpec, ModelCache};
use crate::engine::batch::Batch;
use crate::error::{Error, Result};
use crate::layers::attention::{Attention, AttentionConfig};
use crate::layers::embedding::Embedding;
use crate::layers::linear::Linear;
use crate::layers::lm_head::{no_logits, project, select_logit_rows};
use crate::layers::mlp::{Activation, GatedMlp};
use crate::layers::moe::{Moe, MoeConfig};
use crate::layers::norm::RmsNorm;
use crate::layers::rope::RopeParams;
use crate::layers::{from_vec, to_vec};
use crate::loader::config_json;
use crate::loader::safetensors::WeightStore;

/// `config.json` of a Llama checkpoint; defaults are transformers' `LlamaConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    /// Vocabulary rows.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// KV heads (defaults to the query heads).
    pub num_key_value_heads: Option<usize>,
    /// Head size override (otherwise hidden / heads).
    pub head_dim: Option<usize>,
    /// MLP gate activation.
    pub hidden_act: String,
    /// Declared context length (also the llama3 `original_max_position_embeddings` fallback).
    pub max_position_embeddings: Option<usize>,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Whether the head reuses the embedding.
    pub tie_word_embeddings: bool,
    /// Legacy RoPE base (used when the RoPE object has no `rope_theta`).
    pub rope_theta: Option<f64>,
    /// transformers-5 RoPE parameters (`rope_type`, `rope_theta`, `factor`, ...).
    pub rope_parameters: Option<serde_json::Value>,
    /// Legacy spelling of `rope_parameters`; wins over it, as in transformers.
    pub rope_scaling: Option<serde_json::Value>,
    /// Biases on q/k/v/o.
    pub attention_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            hidden_act: "silu".into(),
            max_position_embeddings: Some(2048),
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            rope_theta: None,
            rope_parameters: None,
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
        }
    }
}

impl LlamaConfig {
    /// Checks the geometry and builds the attention of every layer; `scale` overrides the
    /// softmax scale (Granite's `attention_multiplier`), otherwise `1/sqrt(head_dim)`.
    pub(crate) fn attention(&self, scale: Option<f64>) -> Result<AttentionConfig> {
        positive("vocab_size", self.vocab_size)?;
        positive("hidden_size", self.hidden_size)?;
        positive("num_hidden_layers", self.num_hidden_layers)?;
        if self.rms_norm_eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(Error::config("rms_norm_eps", "must be positive"));
        }
        let (h, n_heads) = (self.hidden_size, self.num_attention_heads);
        positive("num_attention_heads", n_heads)?;
        let n_kv = self.num_key_value_heads.unwrap_or(n_heads);
        positive("num_key_value_heads", n_kv)?;
        if !n_heads.is_multiple_of(n_kv) {
            return Err(Error::config(
                "num_key_value_heads",
                format!("{n_kv} does not divide num_attention_heads {n_heads}"),
            ));
        }
        if self.head_dim.is_none() && !h.is_multiple_of(n_heads) {
            return Err(Error::config(
                "num_attention_heads",
                format!("{n_heads} does not divide hidden_size {h}"),
            ));
        }
        let head_dim = self.head_dim.unwrap_or(h / n_heads);
        positive("head_dim", head_dim)?;
        if !head_dim.is_multiple_of(2) {
            return Err(Error::config("head_dim", "RoPE needs an even head size"));
        }
        // transformers: `rope_scaling or rope_parameters`, then `rope_theta` fills a missing base.
        let (field, params) = match &self.rope_scaling {
            Some(v) if !v.is_null() => ("rope_scaling", Some(v)),
            _ => ("rope_parameters", self.rope_parameters.as_ref()),
        };
        let rope = RopeParams::parse(
            params,
            field,
            self.rope_theta.unwrap_or(10000.0),
            self.max_position_embeddings,
        )?;
        Ok(AttentionConfig {
            hidden_size: h,
            n_heads,
            n_kv_heads: n_kv,
            head_dim,
            scale: scale.unwrap_or((head_dim as f64).powf(-0.5)) as f32,
            bias: self.attention_bias,
            rope: Some(rope.rope(head_dim)),
        })
    }
}

/// Fails with a config error naming `field` when `v` is 0.
pub(crate) fn positive(field: &str, v: usize) -> Result<()> {
    if v == 0 {
        Err(Error::config(field, "must be greater than 0"))
    } else {
        Ok(())
    }
}

/// The feed-forward block of every layer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FfnSpec {
    /// `mlp.{gate,up,down}_proj`.
    Dense {
        intermediate: usize,
        act: Activation,
        bias: bool,
    },
    /// Granite's `block_sparse_moe` (top-k, then softmax over the k).
    Moe(MoeConfig),
}

/// Granite's scalars; all 1 for Llama.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Multipliers {
    /// Scale of the token embeddings.
    pub embedding: f64,
    /// Scale of each block's output before it joins the residual.
    pub residual: f64,
    /// Logits are divided by this.
    pub logits_scaling: f64,
}

impl Multipliers {
    /// No scaling (Llama).
    pub const NONE: Self = Self {
        embedding: 1.0,
        residual: 1.0,
        logits_scaling: 1.0,
    };
}

/// Everything a [`LlamaStack`] is built from.
pub(crate) struct StackSpec {
    /// `architectures` class name.
    pub architecture: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub rms_norm_eps: f64,
    pub attention: AttentionConfig,
    pub ffn: FfnSpec,
    pub multipliers: Multipliers,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: Option<usize>,
}

enum Ffn {
    Dense(GatedMlp),
    Moe(Moe),
}

impl Ffn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Ffn::Dense(m) => m.forward(x),
            Ffn::Moe(m) => m.forward(x),
        }
    }

    fn num_params(&self) -> usize {
        match self {
            Ffn::Dense(m) => m.num_params(),
            Ffn::Moe(m) => m.num_params(),
        }
    }
}

struct DecoderLayer {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    ffn: Ffn,
}

/// A loaded Llama-style decoder (Llama, Granite, GraniteMoe).
pub struct LlamaStack {
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    mult: Multipliers,
    specs: Vec<LayerCacheSpec>,
    info: ModelInfo,
}

impl LlamaStack {
    /// Loads the weights `spec` describes, by their checkpoint names.
    pub(crate) fn load(
        spec: StackSpec,
        config: &serde_json::Value,
        store: &WeightStore,
    ) -> Result<Self> {
        let (h, v, eps) = (spec.hidden_size, spec.vocab_size, spec.rms_norm_eps);
        let embed = Embedding::load(store, "model.embed_tokens.weight", v, h)?;
        let mut layers = Vec::with_capacity(spec.num_layers);
        for i in 0..spec.num_layers {
            let p = format!("model.layers.{i}");
            let ffn = match spec.ffn {
                FfnSpec::Dense {
                    intermediate,
                    act,
                    bias,
                } => Ffn::Dense(GatedMlp::load_split(
                    store,
                    &format!("{p}.mlp"),
                    h,
                    intermediate,
                    act,
                    bias,
                )?),
                FfnSpec::Moe(m) => Ffn::Moe(Moe::load_granite(
                    store,
                    &format!("{p}.block_sparse_moe"),
                    m,
                )?),
            };
            layers.push(DecoderLayer {
                input_norm: RmsNorm::load(store, &format!("{p}.input_layernorm.weight"), h, eps)?,
                attn: Attention::load(store, &format!("{p}.self_attn"), spec.attention.clone())?,
                post_norm: RmsNorm::load(
                    store,
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    eps,
                )?,
                ffn,
            });
        }
        let norm = RmsNorm::load(store, "model.norm.weight", h, eps)?;
        // A tied config uses the embedding even if the file also holds lm_head.weight.
        let lm_head = if spec.tie_word_embeddings {
            None
        } else {
            Some(Linear::load(store, "lm_head", v, h, false)?)
        };
        let num_params = embed.num_params()
            + norm.num_params()
            + lm_head.as_ref().map_or(0, |l| l.num_params())
            + layers
                .iter()
                .map(|l| {
                    l.input_norm.num_params()
                        + l.attn.num_params()
                        + l.post_norm.num_params()
                        + l.ffn.num_params()
                })
                .sum::<usize>();
        let specs = vec![
            LayerCacheSpec::Attention {
                n_kv_heads: spec.attention.n_kv_heads,
                head_dim: spec.attention.head_dim,
            };
            spec.num_layers
        ];
        let info = ModelInfo {
            architecture: spec.architecture.into(),
            vocab_size: v,
            hidden_size: h,
            layer_kinds: vec![LayerKind::Attention; spec.num_layers],
            num_params,
            weight_bytes: store.loaded_bytes(),
            max_position_embeddings: spec.max_position_embeddings,
            eos_token_ids: eos_ids(config),
        };
        Ok(Self {
            embed,
            layers,
            norm,
            lm_head,
            mult: spec.multipliers,
            specs,
            info,
        })
    }
}

/// Builds a Llama model from a parsed config and its weights.
pub fn load(config: &serde_json::Value, store: &WeightStore) -> Result<Box<dyn Model>> {
    let cfg: LlamaConfig = config_json::typed(config)?;
    let attention = cfg.attention(None)?;
    positive("intermediate_size", cfg.intermediate_size)?;
    let spec = StackSpec {
        architecture: "LlamaForCausalLM",
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        num_layers: cfg.num_hidden_layers,
        rms_norm_eps: cfg.rms_norm_eps,
        attention,
        ffn: FfnSpec::Dense {
            intermediate: cfg.intermediate_size,
            act: Activation::parse(&cfg.hidden_act, "hidden_act")?,
            bias: cfg.mlp_bias,
        },
        multipliers: Multipliers::NONE,
        tie_word_embeddings: cfg.tie_word_embeddings,
        max_position_embeddings: cfg.max_position_embeddings,
    };
    Ok(Box::new(LlamaStack::load(spec, config, store)?))
}

/// `t · m`, skipped when `m` is 1.
fn scaled(t: Tensor, m: f64) -> Result<Tensor> {
    Ok(if m == 1.0 { t } else { t.affine(m, 0.0)? })
}

impl Model for LlamaStack {
    fn forward(&self, batch: &Batch, cache: &mut ModelCache) -> Result<Tensor> {
        batch.validate(self.info.vocab_size)?;
        if cache.layers.len() != self.layers.len() {
            return Err(Error::request("cache", "cache was built for another model"));
        }
        let res = self.mult.residual;
        let mut x = self.embed.forward(&batch.tokens, self.mult.embedding)?;
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let LayerCache::Attention(kv) = layer_cache else {
                return Err(Error::request(
                    "cache",
                    "cache layout does not match the model",
                ));
            };
            let h = layer.input_norm.forward(&x)?;
            let a = layer.attn.forward(&h, batch, kv)?;
            x = (x + scaled(a, res)?)?;
            let h = layer.post_norm.forward(&x)?;
            let f = layer.ffn.forward(&h)?;
            x = (x + scaled(f, res)?)?;
        }
        let Some(x) = select_logit_rows(&x, batch)? else {
            return no_logits(self.info.vocab_size);
        };
        let x = self.norm.forward(&x)?;
        let logits = project(self.lm_head.as_ref(), &self.embed, &x)?;
        if self.mult.logits_scaling == 1.0 {
            return Ok(logits);
        }
        // A true division, as transformers' `logits / logits_scaling` (not a reciprocal multiply).
        let s = self.mult.logits_scaling as f32;
        let (r, c) = logits.dims2()?;
        from_vec(to_vec(&logits)?.into_iter().map(|v| v / s).collect(), r, c)
    }

    fn cache_specs(&self) -> &[LayerCacheSpec] {
        &self.specs
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}
