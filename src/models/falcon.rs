//! TII Falcon (`FalconForCausalLM`), rotary variants: LayerNorm blocks whose attention and GELU
//! MLP run in parallel off the same residual (or in sequence when `parallel_attn` is false).
//! Two forms share this file:
//! - falcon-7b: `multi_query` (one KV head whatever `num_kv_heads` says) and one LayerNorm
//!   (`input_layernorm`) feeding both branches;
//! - the "new decoder architecture" (40b/180b, Falcon2): grouped KV heads and, by default, two
//!   LayerNorms (`ln_attn`, `ln_mlp`); `num_ln_in_parallel_attn: 1` shares one.
//!
//! `query_key_value` fuses the projections per KV group as `[q × (heads/kv), k, v]` (transformers
//! `FalconAttention._split_heads`); it is split into q/k/v once at load. ALiBi variants are
//! rejected.

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
use crate::layers::mlp::{Activation, Mlp};
use crate::layers::norm::LayerNorm;
use crate::layers::rope::Rope;
use crate::loader::config_json::{self, float_from_value};
use crate::loader::safetensors::WeightStore;

fn yes() -> Option<bool> {
    Some(true)
}

/// `config.json` of a Falcon checkpoint; defaults are transformers' `FalconConfig`. The
/// `Option<bool>` flags keep transformers' reading of an explicit `null`: falsy, unlike a
/// missing key, which takes the default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FalconConfig {
    /// Vocabulary rows.
    pub vocab_size: usize,
    /// Residual width (`n_embed` in old configs).
    #[serde(alias = "n_embed")]
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// KV heads (null means the query heads); ignored by the multi-query form.
    pub num_kv_heads: Option<usize>,
    /// LayerNorms per parallel block (null means 2 in the new decoder architecture).
    pub num_ln_in_parallel_attn: Option<usize>,
    /// Epsilon of every LayerNorm.
    pub layer_norm_epsilon: f64,
    /// ALiBi instead of rotary (not supported).
    pub alibi: Option<bool>,
    /// The 40b/180b layout: grouped KV, parallel attention, `ln_attn`/`ln_mlp`.
    pub new_decoder_architecture: Option<bool>,
    /// One KV head (falcon-7b form).
    #[serde(default = "yes")]
    pub multi_query: Option<bool>,
    /// Attention and MLP both read the block input (else MLP follows attention).
    #[serde(default = "yes")]
    pub parallel_attn: Option<bool>,
    /// Biases on every linear layer.
    pub bias: Option<bool>,
    /// Declared context length.
    pub max_position_embeddings: usize,
    /// Legacy RoPE base.
    pub rope_theta: Option<f64>,
    /// transformers-5 RoPE parameters (`rope_theta`, `rope_type`).
    pub rope_parameters: Option<serde_json::Value>,
    /// Legacy RoPE scaling (only unscaled RoPE is supported).
    pub rope_scaling: Option<serde_json::Value>,
    /// MLP width (null means 4 × hidden).
    pub ffn_hidden_size: Option<usize>,
    /// MLP activation (`gelu` is exact erf GELU).
    pub activation: String,
    /// Whether the head reuses the embedding.
    pub tie_word_embeddings: bool,
}

impl Default for FalconConfig {
    fn default() -> Self {
        Self {
            vocab_size: 65024,
            hidden_size: 4544,
            num_hidden_layers: 32,
            num_attention_heads: 71,
            num_kv_heads: None,
            num_ln_in_parallel_attn: None,
            layer_norm_epsilon: 1e-5,
            alibi: Some(false),
            new_decoder_architecture: Some(false),
            multi_query: Some(true),
            parallel_attn: Some(true),
            bias: Some(false),
            max_position_embeddings: 2048,
            rope_theta: None,
            rope_parameters: None,
            rope_scaling: None,
            ffn_hidden_size: None,
            activation: "gelu".into(),
            tie_word_embeddings: true,
        }
    }
}

/// Which LayerNorms a block has and what each branch reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NormLayout {
    /// `input_layernorm` feeds attention and MLP, both added to the block input.
    ParallelShared,
    /// `ln_attn` feeds attention and `ln_mlp` the MLP, both added to the block input.
    ParallelTwo,
    /// `input_layernorm` → attention → residual; `post_attention_layernorm` → MLP → residual.
    Sequential,
}

struct Resolved {
    attention: AttentionConfig,
    layout: NormLayout,
    ffn: usize,
    act: Activation,
}

impl FalconConfig {
    fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(float_from_value)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    fn resolve(&self) -> Result<Resolved> {
        if self.alibi.unwrap_or(false) {
            return Err(Error::config(
                "alibi",
                "ALiBi Falcon variants are not supported (only rotary position embeddings)",
            ));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be greater than 0"));
            }
        }
        if self.layer_norm_epsilon.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(Error::config("layer_norm_epsilon", "must be positive"));
        }
        let (h, nh) = (self.hidden_size, self.num_attention_heads);
        if !h.is_multiple_of(nh) {
            return Err(Error::config(
                "num_attention_heads",
                format!("{nh} does not divide hidden_size {h}"),
            ));
        }
        let head_dim = h / nh;
        if !head_dim.is_multiple_of(2) {
            return Err(Error::config(
                "num_attention_heads",
                "RoPE needs an even head size",
            ));
        }
        let new_arch = self.new_decoder_architecture.unwrap_or(false);
        let multi_query = self.multi_query.unwrap_or(false);
        let parallel = self.parallel_attn.unwrap_or(false);
        // checkpoint-quirks: multi_query uses one KV head whatever num_kv_heads says.
        let n_kv = if new_arch || !multi_query {
            self.num_kv_heads.unwrap_or(nh)
        } else {
            1
        };
        if n_kv == 0 || !nh.is_multiple_of(n_kv) {
            return Err(Error::config(
                "num_kv_heads",
                format!("{n_kv} does not divide num_attention_heads {nh}"),
            ));
        }
        if !new_arch && !multi_query && n_kv != nh {
            // transformers' per-head [q, k, v] split has one KV head per query head here.
            return Err(Error::config(
                "num_kv_heads",
                format!("must equal num_attention_heads ({nh}) without multi_query or new_decoder_architecture, got {n_kv}"),
            ));
        }
        // The combinations rejected below crash transformers' FalconDecoderLayer (missing
        // LayerNorm attributes), so no checkpoint can rely on them.
        let layout = match (new_arch, parallel, self.num_ln_in_parallel_attn) {
            (true, false, _) => {
                return Err(Error::config(
                    "parallel_attn",
                    "new_decoder_architecture requires parallel_attn: true",
                ))
            }
            // checkpoint-quirks: transformers turns null into 2 for the new architecture.
            (true, true, None | Some(2)) => NormLayout::ParallelTwo,
            (true, true, Some(1)) => NormLayout::ParallelShared,
            (true, true, Some(n)) => {
                return Err(Error::config(
                    "num_ln_in_parallel_attn",
                    format!("must be 1 or 2, got {n}"),
                ))
            }
            (false, true, Some(2)) => {
                return Err(Error::config(
                    "num_ln_in_parallel_attn",
                    "2 needs new_decoder_architecture: true",
                ))
            }
            (false, true, _) => NormLayout::ParallelShared,
            (false, false, _) => NormLayout::Sequential,
        };
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
                format!("RoPE scaling `{t}` is not supported for Falcon"),
            ));
        }
        let ffn = self.ffn_hidden_size.unwrap_or(4 * h);
        if ffn == 0 {
            return Err(Error::config("ffn_hidden_size", "must be greater than 0"));
        }
        Ok(Resolved {
            attention: AttentionConfig {
                hidden_size: h,
                n_heads: nh,
                n_kv_heads: n_kv,
                head_dim,
                scale: (1.0 / (head_dim as f64).sqrt()) as f32,
                bias: self.bias.unwrap_or(false),
                rope: Some(Rope::new(self.rope_theta(), head_dim)),
            },
            layout,
            ffn,
            act: Activation::parse(&self.activation, "activation")?,
        })
    }
}

/// Row indices of q, k and v inside a fused `query_key_value` output: KV group `g` holds
/// `heads/kv` query heads, then its key head, then its value head, each `head_dim` rows. This
/// one rule covers all three forms: multi-query (`kv = 1`: `[q × heads, k, v]`), per-head MHA
/// (`kv = heads`: `[q, k, v]` per head) and the new architecture's groups.
pub fn split_qkv_rows(n_heads: usize, n_kv: usize, head_dim: usize) -> [Vec<usize>; 3] {
    let per_group = n_heads / n_kv;
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    let rows = |start: usize| start..start + head_dim;
    for g in 0..n_kv {
        let base = g * (per_group + 2) * head_dim;
        for i in 0..per_group {
            q.extend(rows(base + i * head_dim));
        }
        k.extend(rows(base + per_group * head_dim));
        v.extend(rows(base + (per_group + 1) * head_dim));
    }
    [q, k, v]
}

enum Norms {
    Shared(LayerNorm),
    Two { attn: LayerNorm, mlp: LayerNorm },
    Sequential { input: LayerNorm, post: LayerNorm },
}

struct DecoderLayer {
    norms: Norms,
    attn: Attention,
    mlp: Mlp,
}

/// A loaded Falcon model.
pub struct Falcon {
    vocab_size: usize,
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    ln_f: LayerNorm,
    lm_head: Option<Linear>,
    specs: Vec<LayerCacheSpec>,
    info: ModelInfo,
}

/// Builds a [`Falcon`] from a parsed config and its weights.
pub fn load(config: &serde_json::Value, store: &WeightStore) -> Result<Box<dyn Model>> {
    let cfg: FalconConfig = config_json::typed(config)?;
    let r = cfg.resolve()?;
    let (h, eps, bias) = (cfg.hidden_size, cfg.layer_norm_epsilon, r.attention.bias);
    let a = &r.attention;
    let fused_rows = (a.n_heads + 2 * a.n_kv_heads) * a.head_dim;
    let [q_rows, k_rows, v_rows] = split_qkv_rows(a.n_heads, a.n_kv_heads, a.head_dim);
    let embed = Embedding::load(
        store,
        "transformer.word_embeddings.weight",
        cfg.vocab_size,
        h,
    )?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("transformer.h.{i}");
        let ln = |name: &str| LayerNorm::load(store, &format!("{p}.{name}"), h, eps);
        let norms = match r.layout {
            NormLayout::ParallelShared => Norms::Shared(ln("input_layernorm")?),
            NormLayout::ParallelTwo => Norms::Two {
                attn: ln("ln_attn")?,
                mlp: ln("ln_mlp")?,
            },
            NormLayout::Sequential => Norms::Sequential {
                input: ln("input_layernorm")?,
                post: ln("post_attention_layernorm")?,
            },
        };
        let qkv = Linear::load(
            store,
            &format!("{p}.self_attention.query_key_value"),
            fused_rows,
            h,
            bias,
        )?;
        let attn = Attention::from_projections(
            r.attention.clone(),
            qkv.select_outputs(&q_rows)?,
            qkv.select_outputs(&k_rows)?,
            qkv.select_outputs(&v_rows)?,
            Linear::load(store, &format!("{p}.self_attention.dense"), h, h, bias)?,
        )?;
        let mlp = Mlp::new(
            Linear::load(store, &format!("{p}.mlp.dense_h_to_4h"), r.ffn, h, bias)?,
            Linear::load(store, &format!("{p}.mlp.dense_4h_to_h"), h, r.ffn, bias)?,
            r.act,
        );
        layers.push(DecoderLayer { norms, attn, mlp });
    }
    let ln_f = LayerNorm::load(store, "transformer.ln_f", h, eps)?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(Linear::load(store, "lm_head", cfg.vocab_size, h, false)?)
    };
    let specs = vec![
        LayerCacheSpec::Attention {
            n_kv_heads: a.n_kv_heads,
            head_dim: a.head_dim,
        };
        cfg.num_hidden_layers
    ];
    let num_params = embed.num_params()
        + ln_f.num_params()
        + lm_head.as_ref().map_or(0, |l| l.num_params())
        + layers
            .iter()
            .map(|l| {
                let norms = match &l.norms {
                    Norms::Shared(n) => n.num_params(),
                    Norms::Two { attn, mlp } => attn.num_params() + mlp.num_params(),
                    Norms::Sequential { input, post } => input.num_params() + post.num_params(),
                };
                norms + l.attn.num_params() + l.mlp.num_params()
            })
            .sum::<usize>();
    let info = ModelInfo {
        architecture: "FalconForCausalLM".into(),
        vocab_size: cfg.vocab_size,
        hidden_size: h,
        layer_kinds: vec![LayerKind::Attention; cfg.num_hidden_layers],
        num_params,
        weight_bytes: store.loaded_bytes(),
        max_position_embeddings: Some(cfg.max_position_embeddings),
        eos_token_ids: eos_ids(config),
    };
    Ok(Box::new(Falcon {
        vocab_size: cfg.vocab_size,
        embed,
        layers,
        ln_f,
        lm_head,
        specs,
        info,
    }))
}

impl Model for Falcon {
    fn forward(&self, batch: &Batch, cache: &mut ModelCache) -> Result<Tensor> {
        batch.validate(self.vocab_size)?;
        if cache.layers.len() != self.layers.len() {
            return Err(Error::request("cache", "cache was built for another model"));
        }
        let mut x = self.embed.forward(&batch.tokens, 1.0)?;
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let LayerCache::Attention(kv) = layer_cache else {
                return Err(Error::request(
                    "cache",
                    "cache layout does not match the model",
                ));
            };
            x = match &layer.norms {
                // transformers adds `mlp + attn` first, then the residual.
                Norms::Shared(ln) => {
                    let hn = ln.forward(&x)?;
                    let a = layer.attn.forward(&hn, batch, kv)?;
                    ((layer.mlp.forward(&hn)? + a)? + x)?
                }
                Norms::Two { attn, mlp } => {
                    let a = layer.attn.forward(&attn.forward(&x)?, batch, kv)?;
                    ((layer.mlp.forward(&mlp.forward(&x)?)? + a)? + x)?
                }
                Norms::Sequential { input, post } => {
                    let x = (layer.attn.forward(&input.forward(&x)?, batch, kv)? + x)?;
                    (layer.mlp.forward(&post.forward(&x)?)? + x)?
                }
            };
        }
        let Some(x) = select_logit_rows(&x, batch)? else {
            return no_logits(self.vocab_size);
        };
        let x = self.ln_f.forward(&x)?;
        project(self.lm_head.as_ref(), &self.embed, &x)
    }

    fn cache_specs(&self) -> &[LayerCacheSpec] {
        &self.specs
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::to_vec;

    /// A fused weight whose row r is filled with r, split as transformers' `_split_heads` does.
    fn split(n_heads: usize, n_kv: usize, hd: usize) -> [Vec<f32>; 3] {
        let rows = (n_heads + 2 * n_kv) * hd;
        let w: Vec<f32> = (0..rows).flat_map(|r| [r as f32; 2]).collect();
        let fused = Linear::new(
            Tensor::from_vec(w, (rows, 2), &candle_core::Device::Cpu).unwrap(),
            None,
        );
        split_qkv_rows(n_heads, n_kv, hd).map(|idx| {
            let part = fused.select_outputs(&idx).unwrap();
            to_vec(&part.weight().unwrap().narrow(1, 0, 1).unwrap()).unwrap()
        })
    }

    #[test]
    fn new_architecture_split_is_per_kv_group() {
        // 4 query heads, 2 KV heads, head_dim 2: rows [q0 q1 k0 v0 | q2 q3 k1 v1].
        let [q, k, v] = split(4, 2, 2);
        assert_eq!(q, [0., 1., 2., 3., 8., 9., 10., 11.]);
        assert_eq!(k, [4., 5., 12., 13.]);
        assert_eq!(v, [6., 7., 14., 15.]);
    }

    #[test]
    fn multi_query_split_is_all_queries_then_k_then_v() {
        let [q, k, v] = split(3, 1, 2);
        assert_eq!(q, [0., 1., 2., 3., 4., 5.]);
        assert_eq!(k, [6., 7.]);
        assert_eq!(v, [8., 9.]);
    }

    #[test]
    fn per_head_split_interleaves_q_k_v() {
        let [q, k, v] = split(2, 2, 1);
        assert_eq!(q, [0., 3.]);
        assert_eq!(k, [1., 4.]);
        assert_eq!(v, [2., 5.]);
    }

    fn resolve(json: serde_json::Value) -> Result<Resolved> {
        config_json::typed::<FalconConfig>(&json)?.resolve()
    }

    #[test]
    fn alibi_is_a_config_error_naming_the_field() {
        let err = resolve(
            serde_json::json!({"hidden_size": 32, "num_attention_heads": 4, "alibi": true}),
        )
        .err()
        .unwrap();
        assert!(
            matches!(&err, Error::InvalidConfig { field, .. } if field == "alibi"),
            "{err}"
        );
    }

    #[test]
    fn multi_query_ignores_num_kv_heads_and_null_ln_count_means_two() {
        let r = resolve(
            serde_json::json!({"hidden_size": 32, "num_attention_heads": 4, "num_kv_heads": 4}),
        )
        .unwrap();
        assert_eq!(r.attention.n_kv_heads, 1);
        assert_eq!(r.layout, NormLayout::ParallelShared);
        let r = resolve(
            serde_json::json!({"hidden_size": 32, "num_attention_heads": 4,
            "num_kv_heads": 2, "new_decoder_architecture": true, "num_ln_in_parallel_attn": null}),
        )
        .unwrap();
        assert_eq!(r.attention.n_kv_heads, 2);
        assert_eq!(r.layout, NormLayout::ParallelTwo);
    }
}
