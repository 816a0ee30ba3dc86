//! IBM Granite 4.0 / 4.0-H (`GraniteMoeHybridForCausalLM`): a stack of Mamba2 or NoPE/RoPE
//! attention mixers, each followed by a shared SwiGLU MLP plus optional top-k MoE, with
//! Granite's embedding, residual and logits multipliers. Spec: shared/reference/granite-4.0-h.md.

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
use crate::layers::mamba2_mixer::{time_step_limit, Mamba2Config, Mamba2Mixer};
use crate::layers::mlp::GatedMlp;
use crate::layers::moe::{Moe, MoeConfig};
use crate::layers::norm::RmsNorm;
use crate::layers::rope::Rope;
use crate::loader::config_json::{self, float_from_value};
use crate::loader::safetensors::WeightStore;

/// `config.json` of a GraniteMoeHybrid checkpoint; defaults are transformers' (spec §1).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GraniteHybridConfig {
    /// Vocabulary rows.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Per-layer mixer (`mamba`/`linear_attention` or `attention`/`full_attention`).
    pub layer_types: Option<Vec<String>>,
    /// Legacy spelling of `layer_types`.
    pub layers_block_type: Option<Vec<String>>,
    /// Query heads.
    pub num_attention_heads: usize,
    /// KV heads (defaults to the query heads).
    pub num_key_value_heads: Option<usize>,
    /// Head size override (otherwise hidden / heads).
    pub head_dim: Option<usize>,
    /// The whole attention softmax scale.
    pub attention_multiplier: f64,
    /// Biases on q/k/v/o.
    pub attention_bias: bool,
    /// `"rope"` enables RoPE; anything else is NoPE.
    pub position_embedding_type: Option<String>,
    /// Legacy RoPE base.
    pub rope_theta: Option<f64>,
    /// transformers-5 RoPE parameters (`rope_theta`, `rope_type`).
    pub rope_parameters: Option<serde_json::Value>,
    /// Legacy RoPE scaling (only unscaled RoPE is supported).
    pub rope_scaling: Option<serde_json::Value>,
    /// Scale of token embeddings.
    pub embedding_multiplier: f64,
    /// Scale of each branch before it joins the residual.
    pub residual_multiplier: f64,
    /// Logits are divided by this.
    pub logits_scaling: f64,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// MLP and conv activation (only `silu`).
    pub hidden_act: String,
    /// Whether the head reuses the embedding.
    pub tie_word_embeddings: bool,
    /// Routed experts (0 = dense).
    pub num_local_experts: usize,
    /// Experts per token.
    pub num_experts_per_tok: usize,
    /// Width of each routed expert.
    pub intermediate_size: usize,
    /// Width of the always-on shared MLP.
    pub shared_intermediate_size: usize,
    /// SSM heads.
    pub mamba_n_heads: usize,
    /// SSM head size, or `"auto"`.
    pub mamba_d_head: serde_json::Value,
    /// Inner expansion of the Mamba2 mixer.
    pub mamba_expand: usize,
    /// B/C groups.
    pub mamba_n_groups: usize,
    /// SSM state size.
    pub mamba_d_state: usize,
    /// Conv kernel width.
    pub mamba_d_conv: usize,
    /// SSD chunk length (numerics only).
    pub mamba_chunk_size: usize,
    /// Conv bias.
    pub mamba_conv_bias: bool,
    /// in/out projection biases.
    pub mamba_proj_bias: bool,
    /// Clamp on dt after softplus; absent or null means none.
    pub time_step_limit: Option<Vec<serde_json::Value>>,
    /// Declared context length.
    pub max_position_embeddings: Option<usize>,
    /// `model_type` string.
    pub model_type: String,
}

impl Default for GraniteHybridConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            num_hidden_layers: 32,
            layer_types: None,
            layers_block_type: None,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            attention_multiplier: 1.0,
            attention_bias: false,
            position_embedding_type: None,
            rope_theta: None,
            rope_parameters: None,
            rope_scaling: None,
            embedding_multiplier: 1.0,
            residual_multiplier: 1.0,
            logits_scaling: 1.0,
            rms_norm_eps: 1e-6,
            hidden_act: "silu".into(),
            tie_word_embeddings: false,
            num_local_experts: 8,
            num_experts_per_tok: 2,
            intermediate_size: 11008,
            shared_intermediate_size: 1024,
            mamba_n_heads: 128,
            mamba_d_head: serde_json::Value::String("auto".into()),
            mamba_expand: 2,
            mamba_n_groups: 1,
            mamba_d_state: 256,
            mamba_d_conv: 4,
            mamba_chunk_size: 256,
            mamba_conv_bias: true,
            mamba_proj_bias: false,
            time_step_limit: None,
            max_position_embeddings: None,
            model_type: "granitemoehybrid".into(),
        }
    }
}

/// The config resolved into layer geometry, after every consistency check.
struct Resolved {
    kinds: Vec<LayerKind>,
    attention: AttentionConfig,
    mamba: Mamba2Config,
    moe: Option<MoeConfig>,
}

impl GraniteHybridConfig {
    fn layer_kinds(&self) -> Result<Vec<LayerKind>> {
        let (field, names) = match (&self.layer_types, &self.layers_block_type) {
            (Some(t), _) => ("layer_types", t),
            (None, Some(t)) => ("layers_block_type", t),
            // transformers makes every layer Mamba when the list is missing (spec pitfall 12).
            (None, None) => return Ok(vec![LayerKind::Mamba; self.num_hidden_layers]),
        };
        if names.len() != self.num_hidden_layers {
            return Err(Error::config(
                field,
                format!(
                    "has {} entries but num_hidden_layers is {}",
                    names.len(),
                    self.num_hidden_layers
                ),
            ));
        }
        names
            .iter()
            .map(|n| match n.as_str() {
                "mamba" | "linear_attention" => Ok(LayerKind::Mamba),
                "attention" | "full_attention" => Ok(LayerKind::Attention),
                other => Err(Error::config(
                    field,
                    format!("unknown layer type `{other}` (expected mamba/linear_attention or attention/full_attention)"),
                )),
            })
            .collect()
    }

    fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(float_from_value)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    fn resolve(&self) -> Result<Resolved> {
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(Error::config(field, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        positive("vocab_size", self.vocab_size)?;
        positive("hidden_size", self.hidden_size)?;
        positive("num_hidden_layers", self.num_hidden_layers)?;
        positive("shared_intermediate_size", self.shared_intermediate_size)?;
        if self.hidden_act != "silu" {
            return Err(Error::config(
                "hidden_act",
                format!("only `silu` is supported, got `{}`", self.hidden_act),
            ));
        }
        if self.rms_norm_eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(Error::config("rms_norm_eps", "must be positive"));
        }
        let kinds = self.layer_kinds()?;
        let h = self.hidden_size;

        let has_attention = kinds.contains(&LayerKind::Attention);
        let n_heads = self.num_attention_heads;
        let n_kv = self.num_key_value_heads.unwrap_or(n_heads);
        let mut head_dim = self.head_dim.unwrap_or(h.checked_div(n_heads).unwrap_or(0));
        let rope_on = self.position_embedding_type.as_deref() == Some("rope");
        if has_attention {
            positive("num_attention_heads", n_heads)?;
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
            positive("head_dim", head_dim)?;
            if rope_on && !head_dim.is_multiple_of(2) {
                return Err(Error::config("head_dim", "RoPE needs an even head size"));
            }
            if rope_on {
                let scaled = self
                    .rope_scaling
                    .as_ref()
                    .filter(|v| !v.is_null())
                    .or(self.rope_parameters.as_ref())
                    .and_then(|v| v.get("rope_type").or_else(|| v.get("type")))
                    .and_then(|t| t.as_str())
                    .filter(|t| *t != "default");
                if let Some(t) = scaled {
                    return Err(Error::config(
                        "rope_scaling",
                        format!("RoPE scaling `{t}` is not supported for Granite"),
                    ));
                }
            }
        } else {
            head_dim = head_dim.max(1);
        }
        let attention = AttentionConfig {
            hidden_size: h,
            n_heads: n_heads.max(1),
            n_kv_heads: n_kv.max(1),
            head_dim,
            scale: self.attention_multiplier as f32,
            bias: self.attention_bias,
            rope: rope_on.then(|| Rope::new(self.rope_theta(), head_dim)),
        };

        let nh = self.mamba_n_heads;
        let d_head = match &self.mamba_d_head {
            serde_json::Value::String(s) if s == "auto" => {
                (self.mamba_expand * h).checked_div(nh).unwrap_or(0)
            }
            v => v.as_u64().map(|v| v as usize).ok_or_else(|| {
                Error::config(
                    "mamba_d_head",
                    format!("expected an integer or \"auto\", got {v}"),
                )
            })?,
        };
        if kinds.contains(&LayerKind::Mamba) {
            positive("mamba_n_heads", nh)?;
            positive("mamba_d_head", d_head)?;
            positive("mamba_n_groups", self.mamba_n_groups)?;
            positive("mamba_d_state", self.mamba_d_state)?;
            positive("mamba_d_conv", self.mamba_d_conv)?;
            if nh * d_head != self.mamba_expand * h {
                return Err(Error::config(
                    "mamba_d_head",
                    format!(
                        "mamba_n_heads * mamba_d_head = {nh} * {d_head} must equal mamba_expand * hidden_size = {}",
                        self.mamba_expand * h
                    ),
                ));
            }
            if !nh.is_multiple_of(self.mamba_n_groups) {
                return Err(Error::config(
                    "mamba_n_groups",
                    format!("{} does not divide mamba_n_heads {nh}", self.mamba_n_groups),
                ));
            }
        }
        let mamba = Mamba2Config {
            hidden_size: h,
            n_heads: nh.max(1),
            head_dim: d_head.max(1),
            n_groups: self.mamba_n_groups.max(1),
            d_state: self.mamba_d_state,
            d_conv: self.mamba_d_conv.max(1),
            conv_bias: self.mamba_conv_bias,
            proj_bias: self.mamba_proj_bias,
            dt_limit: time_step_limit(self.time_step_limit.as_deref())?,
            norm_eps: self.rms_norm_eps,
        };

        let moe = if self.num_local_experts > 0 {
            positive("intermediate_size", self.intermediate_size)?;
            let cfg = MoeConfig {
                hidden: h,
                intermediate: self.intermediate_size,
                num_experts: self.num_local_experts,
                top_k: self.num_experts_per_tok,
            };
            Moe::check_config(&cfg)?;
            Some(cfg)
        } else {
            None
        };
        Ok(Resolved {
            kinds,
            attention,
            mamba,
            moe,
        })
    }
}

enum Mixer {
    Attention(Attention),
    Mamba(Mamba2Mixer),
}

struct DecoderLayer {
    input_norm: RmsNorm,
    mixer: Mixer,
    post_norm: RmsNorm,
    shared_mlp: GatedMlp,
    moe: Option<Moe>,
}

/// A loaded Granite 4.0 / 4.0-H model.
pub struct GraniteHybrid {
    cfg: GraniteHybridConfig,
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    specs: Vec<LayerCacheSpec>,
    info: ModelInfo,
    /// llama.cpp's arithmetic (GGUF files).
    ggml: bool,
}

/// Builds a [`GraniteHybrid`] from a parsed config and its weights.
pub fn load(config: &serde_json::Value, store: &WeightStore) -> Result<Box<dyn Model>> {
    let cfg: GraniteHybridConfig = config_json::typed(config)?;
    let r = cfg.resolve()?;
    let (h, v, eps) = (cfg.hidden_size, cfg.vocab_size, cfg.rms_norm_eps);
    let embed = Embedding::load(store, "model.embed_tokens.weight", v, h)?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    let mut specs = Vec::with_capacity(cfg.num_hidden_layers);
    for (i, kind) in r.kinds.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let mixer = match kind {
            LayerKind::Attention => {
                specs.push(LayerCacheSpec::Attention {
                    n_kv_heads: r.attention.n_kv_heads,
                    head_dim: r.attention.head_dim,
                });
                Mixer::Attention(Attention::load(
                    store,
                    &format!("{p}.self_attn"),
                    r.attention.clone(),
                )?)
            }
            // layer_kinds() never yields Hybrid (that is DynamicHybridModel's).
            LayerKind::Mamba | LayerKind::Hybrid => {
                specs.push(LayerCacheSpec::Recurrent(r.mamba.state_shape()));
                Mixer::Mamba(Mamba2Mixer::load(store, &format!("{p}.mamba"), r.mamba)?)
            }
        };
        layers.push(DecoderLayer {
            input_norm: RmsNorm::load(store, &format!("{p}.input_layernorm.weight"), h, eps)?,
            mixer,
            post_norm: RmsNorm::load(
                store,
                &format!("{p}.post_attention_layernorm.weight"),
                h,
                eps,
            )?,
            shared_mlp: GatedMlp::load_granite(
                store,
                &format!("{p}.shared_mlp"),
                h,
                cfg.shared_intermediate_size,
            )?,
            moe: match &r.moe {
                Some(m) => Some(Moe::load_granite(
                    store,
                    &format!("{p}.block_sparse_moe"),
                    *m,
                )?),
                None => None,
            },
        });
    }
    let norm = RmsNorm::load(store, "model.norm.weight", h, eps)?;
    // spec pitfall 14: a tied config uses the embedding even if lm_head.weight is present.
    let lm_head = if cfg.tie_word_embeddings {
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
                    + l.post_norm.num_params()
                    + l.shared_mlp.num_params()
                    + l.moe.as_ref().map_or(0, |m| m.num_params())
                    + match &l.mixer {
                        Mixer::Attention(a) => a.num_params(),
                        Mixer::Mamba(m) => m.num_params(),
                    }
            })
            .sum::<usize>();
    let info = ModelInfo {
        architecture: "GraniteMoeHybridForCausalLM".into(),
        vocab_size: v,
        hidden_size: h,
        layer_kinds: r.kinds,
        num_params,
        weight_bytes: store.loaded_bytes(),
        max_position_embeddings: cfg.max_position_embeddings,
        eos_token_ids: eos_ids(config),
    };
    Ok(Box::new(GraniteHybrid {
        cfg,
        embed,
        layers,
        norm,
        lm_head,
        specs,
        info,
        ggml: store.gguf().is_some(),
    }))
}

impl Model for GraniteHybrid {
    fn forward(&self, batch: &Batch, cache: &mut ModelCache) -> Result<Tensor> {
        batch.validate(self.cfg.vocab_size)?;
        if cache.layers.len() != self.layers.len() {
            return Err(Error::request("cache", "cache was built for another model"));
        }
        let res = self.cfg.residual_multiplier;
        let mut x = self
            .embed
            .forward(&batch.tokens, self.cfg.embedding_multiplier)?;
        let last = self.layers.len() - 1;
        for (i, (layer, layer_cache)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate()
        {
            let h = layer.input_norm.forward(&x)?;
            let mut m = match (&layer.mixer, layer_cache) {
                (Mixer::Attention(a), LayerCache::Attention(kv)) => a.forward(&h, batch, kv)?,
                (Mixer::Mamba(m), LayerCache::Recurrent(st)) => m.forward(&h, batch, st)?,
                _ => {
                    return Err(Error::request(
                        "cache",
                        "cache layout does not match the model",
                    ))
                }
            };
            if i == last {
                // Past the last mixer only the rows whose logits are asked for matter (llama.cpp
                // selects them here too, and the number of rows decides its matmul kernels).
                let (Some(xs), Some(ms)) =
                    (select_logit_rows(&x, batch)?, select_logit_rows(&m, batch)?)
                else {
                    return no_logits(self.cfg.vocab_size);
                };
                (x, m) = (xs, ms);
            }
            x = (x + m.affine(res, 0.0)?)?;
            let h2 = layer.post_norm.forward(&x)?;
            let mut f = layer.shared_mlp.forward(&h2)?;
            if let Some(moe) = &layer.moe {
                f = (moe.forward(&h2)? + f)?;
            }
            x = (x + f.affine(res, 0.0)?)?;
        }
        let x = self.norm.forward(&x)?;
        let logits = project(self.lm_head.as_ref(), &self.embed, &x)?;
        Ok(if self.ggml {
            // llama.cpp scales by the f32 reciprocal.
            logits.affine((1.0 / self.cfg.logits_scaling as f32) as f64, 0.0)?
        } else {
            (logits / self.cfg.logits_scaling)?
        })
    }

    fn cache_specs(&self) -> &[LayerCacheSpec] {
        &self.specs
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}
