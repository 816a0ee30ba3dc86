//! Gemma 3, text only (`Gemma3ForCausalLM`, model_type `gemma3_text`): embeddings times
//! `sqrt(hidden_size)`; each layer is sandwich-normed attention then a GELU-gated MLP, every
//! RMSNorm scaling by `1 + w`; attention has per-head q/k RMSNorm before RoPE, softmax scale
//! `query_pre_attn_scalar^-0.5`, and is either sliding-window (local RoPE base) or global
//! (global RoPE base, optional scaling) as `layer_types` says; optional tanh soft-capping of
//! the final logits. Tied head. `attn_logit_softcapping` is accepted but, as in transformers
//! 5.23, not applied (see tests/fixtures/gemma3/README.md).

use candle_core::Tensor;
use serde::Deserialize;

use super::llama::positive;
use super::{eos_ids, LayerKind, Model, ModelInfo};
use crate::cache::{LayerCache, LayerCacheSpec, ModelCache};
use crate::engine::batch::Batch;
use crate::error::{Error, Result};
use crate::layers::attention::{Attention, AttentionConfig, AttentionOptions, QkNorm};
use crate::layers::embedding::Embedding;
use crate::layers::linear::Linear;
use crate::layers::lm_head::{no_logits, project, select_logit_rows};
use crate::layers::mlp::{Activation, GatedMlp};
use crate::layers::norm::RmsNorm;
use crate::layers::rope::RopeParams;
use crate::layers::{from_vec, to_vec};
use crate::loader::config_json;
use crate::loader::safetensors::WeightStore;

/// `config.json` of a Gemma 3 text checkpoint; defaults are transformers' `Gemma3TextConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Gemma3Config {
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
    /// KV heads.
    pub num_key_value_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// MLP gate activation.
    pub hidden_activation: String,
    /// Declared context length.
    pub max_position_embeddings: Option<usize>,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Whether the head reuses the embedding.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o.
    pub attention_bias: bool,
    /// The softmax scale is `query_pre_attn_scalar^-0.5` (not `head_dim^-0.5`).
    pub query_pre_attn_scalar: f64,
    /// Keys a sliding layer's query sees, its own position included.
    pub sliding_window: Option<usize>,
    /// `sliding_attention` or `full_attention` per layer.
    pub layer_types: Option<Vec<String>>,
    /// Used only when `layer_types` is missing: every `n`-th layer is global.
    pub sliding_window_pattern: Option<usize>,
    /// Final logits become `cap · tanh(logits / cap)`.
    pub final_logit_softcapping: Option<f64>,
    /// Read but not applied: transformers 5.23's Gemma 3 attention never passes it on (Gemma 2's
    /// does), so capping here would disagree with it.
    pub attn_logit_softcapping: Option<f64>,
    /// Encoder-style attention (embedding models); not supported.
    pub use_bidirectional_attention: Option<bool>,
    /// Per layer type RoPE parameters (`full_attention`, `sliding_attention`).
    pub rope_parameters: Option<serde_json::Value>,
    /// Legacy global RoPE base.
    pub rope_theta: Option<f64>,
    /// Legacy local (sliding) RoPE base.
    pub rope_local_base_freq: Option<f64>,
    /// Legacy RoPE scaling of the global layers.
    pub rope_scaling: Option<serde_json::Value>,
}

impl Default for Gemma3Config {
    fn default() -> Self {
        Self {
            vocab_size: 262_208,
            hidden_size: 2304,
            intermediate_size: 9216,
            num_hidden_layers: 26,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            head_dim: 256,
            hidden_activation: "gelu_pytorch_tanh".into(),
            max_position_embeddings: Some(131_072),
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            attention_bias: false,
            query_pre_attn_scalar: 256.0,
            sliding_window: Some(4096),
            layer_types: None,
            sliding_window_pattern: None,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
            use_bidirectional_attention: None,
            rope_parameters: None,
            rope_theta: None,
            rope_local_base_freq: None,
            rope_scaling: None,
        }
    }
}

/// Per-layer attention flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttnType {
    Sliding,
    Full,
}

impl Gemma3Config {
    fn layer_types(&self) -> Result<Vec<AttnType>> {
        let Some(names) = &self.layer_types else {
            // transformers: only `sliding_window_pattern` (default 6) counts here; a saved
            // `_sliding_window_pattern` is ignored, and `layer_types` always wins over both.
            let pattern = self.sliding_window_pattern.unwrap_or(6);
            positive("sliding_window_pattern", pattern)?;
            return Ok((0..self.num_hidden_layers)
                .map(|i| {
                    if (i + 1) % pattern != 0 {
                        AttnType::Sliding
                    } else {
                        AttnType::Full
                    }
                })
                .collect());
        };
        if names.len() != self.num_hidden_layers {
            return Err(Error::config(
                "layer_types",
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
                "sliding_attention" => Ok(AttnType::Sliding),
                "full_attention" => Ok(AttnType::Full),
                other => Err(Error::config(
                    "layer_types",
                    format!("unknown layer type `{other}` (expected sliding_attention or full_attention)"),
                )),
            })
            .collect()
    }

    /// RoPE of one layer type: `rope_parameters.<type>` if nested there, else the legacy
    /// `rope_theta` / `rope_local_base_freq`; legacy `rope_scaling` applies to global layers.
    fn rope(&self, ty: AttnType) -> Result<RopeParams> {
        let (key, legacy_theta, default_theta) = match ty {
            AttnType::Full => ("full_attention", self.rope_theta, 1_000_000.0),
            AttnType::Sliding => ("sliding_attention", self.rope_local_base_freq, 10_000.0),
        };
        let mut params = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get(key))
            .filter(|p| !p.is_null())
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        if ty == AttnType::Full {
            if let (Some(serde_json::Value::Object(scaling)), Some(obj)) =
                (&self.rope_scaling, params.as_object_mut())
            {
                obj.extend(scaling.clone());
            }
        }
        RopeParams::parse(
            Some(&params),
            &format!("rope_parameters.{key}"),
            legacy_theta.unwrap_or(default_theta),
            self.max_position_embeddings,
        )
    }

    fn softcap(field: &str, v: Option<f64>) -> Result<Option<f32>> {
        match v {
            None => Ok(None),
            Some(c) if c.is_finite() && c > 0.0 => Ok(Some(c as f32)),
            Some(c) => Err(Error::config(field, format!("must be positive, got {c}"))),
        }
    }

    /// Attention geometry and options of every layer, after every consistency check.
    fn resolve(&self) -> Result<Vec<(AttentionConfig, AttentionOptions)>> {
        positive("vocab_size", self.vocab_size)?;
        positive("hidden_size", self.hidden_size)?;
        positive("intermediate_size", self.intermediate_size)?;
        positive("num_hidden_layers", self.num_hidden_layers)?;
        positive("num_attention_heads", self.num_attention_heads)?;
        positive("num_key_value_heads", self.num_key_value_heads)?;
        positive("head_dim", self.head_dim)?;
        if self.rms_norm_eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(Error::config("rms_norm_eps", "must be positive"));
        }
        let (nh, nkv) = (self.num_attention_heads, self.num_key_value_heads);
        if !nh.is_multiple_of(nkv) {
            return Err(Error::config(
                "num_key_value_heads",
                format!("{nkv} does not divide num_attention_heads {nh}"),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config("head_dim", "RoPE needs an even head size"));
        }
        if !(self.query_pre_attn_scalar.is_finite() && self.query_pre_attn_scalar > 0.0) {
            return Err(Error::config(
                "query_pre_attn_scalar",
                format!("must be positive, got {}", self.query_pre_attn_scalar),
            ));
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err(Error::config(
                "use_bidirectional_attention",
                "bidirectional (embedding-model) attention is not supported",
            ));
        }
        let types = self.layer_types()?;
        let window = if types.contains(&AttnType::Sliding) {
            match self.sliding_window {
                Some(w) if w > 0 => Some(w),
                _ => {
                    return Err(Error::config(
                        "sliding_window",
                        "must be a positive integer when a layer is sliding_attention",
                    ))
                }
            }
        } else {
            None
        };
        let ignored_cap = Self::softcap("attn_logit_softcapping", self.attn_logit_softcapping)?;
        let full = self.rope(AttnType::Full)?.rope(self.head_dim);
        let local = self.rope(AttnType::Sliding)?.rope(self.head_dim);
        let scale = self.query_pre_attn_scalar.powf(-0.5) as f32;
        // Warned only once the config is known to be valid, so a bad config prints one error.
        if let Some(cap) = ignored_cap {
            tracing::warn!(
                cap,
                "attn_logit_softcapping is ignored for Gemma 3, as transformers ignores it"
            );
        }
        Ok(types
            .into_iter()
            .map(|ty| {
                let cfg = AttentionConfig {
                    hidden_size: self.hidden_size,
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: self.head_dim,
                    scale,
                    bias: self.attention_bias,
                    rope: Some(match ty {
                        AttnType::Full => full.clone(),
                        AttnType::Sliding => local.clone(),
                    }),
                };
                let opts = AttentionOptions {
                    sliding_window: if ty == AttnType::Sliding {
                        window
                    } else {
                        None
                    },
                    logit_softcap: None,
                    qk_norm: Some(QkNorm {
                        eps: self.rms_norm_eps,
                        unit_offset: true,
                    }),
                };
                (cfg, opts)
            })
            .collect())
    }
}

struct DecoderLayer {
    input_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    pre_ffn_norm: RmsNorm,
    mlp: GatedMlp,
    post_ffn_norm: RmsNorm,
}

/// A loaded Gemma 3 text model.
pub struct Gemma3 {
    embed: Embedding,
    embed_scale: f32,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    final_softcap: Option<f32>,
    specs: Vec<LayerCacheSpec>,
    info: ModelInfo,
}

/// Builds a [`Gemma3`] from a parsed config and its weights.
pub fn load(config: &serde_json::Value, store: &WeightStore) -> Result<Box<dyn Model>> {
    let cfg: Gemma3Config = config_json::typed(config)?;
    let layer_attn = cfg.resolve()?;
    let act = Activation::parse(&cfg.hidden_activation, "hidden_activation")?;
    let final_softcap =
        Gemma3Config::softcap("final_logit_softcapping", cfg.final_logit_softcapping)?;
    let (h, v, eps) = (cfg.hidden_size, cfg.vocab_size, cfg.rms_norm_eps);
    let norm = |name: &str| RmsNorm::load_unit_offset(store, name, h, eps);
    let embed = Embedding::load(store, "model.embed_tokens.weight", v, h)?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    let mut specs = Vec::with_capacity(cfg.num_hidden_layers);
    for (i, (attn_cfg, opts)) in layer_attn.into_iter().enumerate() {
        let p = format!("model.layers.{i}");
        specs.push(LayerCacheSpec::Attention {
            n_kv_heads: attn_cfg.n_kv_heads,
            head_dim: attn_cfg.head_dim,
        });
        layers.push(DecoderLayer {
            input_norm: norm(&format!("{p}.input_layernorm.weight"))?,
            attn: Attention::load_with(store, &format!("{p}.self_attn"), attn_cfg, opts)?,
            post_attn_norm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
            pre_ffn_norm: norm(&format!("{p}.pre_feedforward_layernorm.weight"))?,
            mlp: GatedMlp::load_split(
                store,
                &format!("{p}.mlp"),
                h,
                cfg.intermediate_size,
                act,
                false,
            )?,
            post_ffn_norm: norm(&format!("{p}.post_feedforward_layernorm.weight"))?,
        });
    }
    let final_norm = norm("model.norm.weight")?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(Linear::load(store, "lm_head", v, h, false)?)
    };
    let num_params = embed.num_params()
        + final_norm.num_params()
        + lm_head.as_ref().map_or(0, |l| l.num_params())
        + layers
            .iter()
            .map(|l| {
                l.input_norm.num_params()
                    + l.attn.num_params()
                    + l.post_attn_norm.num_params()
                    + l.pre_ffn_norm.num_params()
                    + l.mlp.num_params()
                    + l.post_ffn_norm.num_params()
            })
            .sum::<usize>();
    let info = ModelInfo {
        architecture: "Gemma3ForCausalLM".into(),
        vocab_size: v,
        hidden_size: h,
        layer_kinds: vec![LayerKind::Attention; cfg.num_hidden_layers],
        num_params,
        weight_bytes: store.loaded_bytes(),
        max_position_embeddings: cfg.max_position_embeddings,
        eos_token_ids: eos_ids(config),
    };
    Ok(Box::new(Gemma3 {
        embed,
        // transformers keeps `sqrt(hidden_size)` as a tensor cast to the weights' dtype (f32
        // here; a bf16 run rounds it, e.g. sqrt(3072) = 55.43 -> 55.5).
        embed_scale: (h as f32).sqrt(),
        layers,
        norm: final_norm,
        lm_head,
        final_softcap,
        specs,
        info,
    }))
}

impl Model for Gemma3 {
    fn forward(&self, batch: &Batch, cache: &mut ModelCache) -> Result<Tensor> {
        batch.validate(self.info.vocab_size)?;
        if cache.layers.len() != self.layers.len() {
            return Err(Error::request("cache", "cache was built for another model"));
        }
        let mut x = self
            .embed
            .forward(&batch.tokens, f64::from(self.embed_scale))?;
        let last = self.layers.len().saturating_sub(1);
        for (i, (layer, layer_cache)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate()
        {
            let LayerCache::Attention(kv) = layer_cache else {
                return Err(Error::request(
                    "cache",
                    "cache layout does not match the model",
                ));
            };
            let h = layer.input_norm.forward(&x)?;
            let mut a = layer.attn.forward(&h, batch, kv)?;
            if i == last {
                // Only the rows whose logits are wanted go on (llama.cpp's `inp_out_ids`): less
                // work, and the FFN matmuls see llama.cpp's token count, which picks its kernel.
                let (Some(ax), Some(xx)) =
                    (select_logit_rows(&a, batch)?, select_logit_rows(&x, batch)?)
                else {
                    return no_logits(self.info.vocab_size);
                };
                (a, x) = (ax, xx);
            }
            x = (x + layer.post_attn_norm.forward(&a)?)?;
            let h = layer.pre_ffn_norm.forward(&x)?;
            let f = layer.mlp.forward(&h)?;
            x = (x + layer.post_ffn_norm.forward(&f)?)?;
        }
        if self.layers.is_empty() {
            let Some(rows) = select_logit_rows(&x, batch)? else {
                return no_logits(self.info.vocab_size);
            };
            x = rows;
        }
        let x = self.norm.forward(&x)?;
        let logits = project(self.lm_head.as_ref(), &self.embed, &x)?;
        let Some(cap) = self.final_softcap else {
            return Ok(logits);
        };
        let (r, c) = logits.dims2()?;
        let capped = to_vec(&logits)?
            .into_iter()
            .map(|v| (v / cap).tanh() * cap)
            .collect();
        from_vec(capped, r, c)
    }

    fn cache_specs(&self) -> &[LayerCacheSpec] {
        &self.specs
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}
