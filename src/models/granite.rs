//! IBM Granite 3 (`GraniteForCausalLM`) and Granite 3 MoE (`GraniteMoeForCausalLM`): the Llama
//! body with four scalars — embeddings times `embedding_multiplier`, each block's output times
//! `residual_multiplier` before it joins the residual, `attention_multiplier` as the whole
//! softmax scale, logits divided by `logits_scaling` — and, for MoE, `block_sparse_moe` (top-k
//! of the router logits, softmax over those k) in place of the MLP.

use serde::Deserialize;

use super::llama::{positive, FfnSpec, LlamaConfig, LlamaStack, Multipliers, StackSpec};
use super::Model;
use crate::error::{Error, Result};
use crate::layers::mlp::Activation;
use crate::layers::moe::{Moe, MoeConfig};
use crate::loader::config_json;
use crate::loader::safetensors::WeightStore;

/// `config.json` of a Granite 3 / Granite 3 MoE checkpoint: Llama's fields plus the
/// multipliers; defaults are transformers' `GraniteConfig` / `GraniteMoeConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GraniteConfig {
    /// The fields shared with Llama.
    #[serde(flatten)]
    pub llama: LlamaConfig,
    /// Scale of token embeddings.
    pub embedding_multiplier: f64,
    /// Scale of each block's output before it joins the residual.
    pub residual_multiplier: f64,
    /// The whole attention softmax scale.
    pub attention_multiplier: f64,
    /// Logits are divided by this.
    pub logits_scaling: f64,
    /// Routed experts (GraniteMoe; transformers' default 8).
    pub num_local_experts: Option<usize>,
    /// Experts per token (GraniteMoe; transformers' default 2).
    pub num_experts_per_tok: Option<usize>,
}

impl Default for GraniteConfig {
    fn default() -> Self {
        Self {
            llama: LlamaConfig::default(),
            embedding_multiplier: 1.0,
            residual_multiplier: 1.0,
            attention_multiplier: 1.0,
            logits_scaling: 1.0,
            num_local_experts: None,
            num_experts_per_tok: None,
        }
    }
}

impl GraniteConfig {
    fn stack(&self, architecture: &'static str, ffn: FfnSpec) -> Result<StackSpec> {
        for (field, v) in [
            ("embedding_multiplier", self.embedding_multiplier),
            ("residual_multiplier", self.residual_multiplier),
            ("attention_multiplier", self.attention_multiplier),
        ] {
            if !v.is_finite() {
                return Err(Error::config(field, format!("must be finite, got {v}")));
            }
        }
        if !(self.logits_scaling.is_finite() && self.logits_scaling != 0.0) {
            return Err(Error::config(
                "logits_scaling",
                format!("must be finite and non-zero, got {}", self.logits_scaling),
            ));
        }
        let l = &self.llama;
        Ok(StackSpec {
            architecture,
            vocab_size: l.vocab_size,
            hidden_size: l.hidden_size,
            num_layers: l.num_hidden_layers,
            rms_norm_eps: l.rms_norm_eps,
            attention: l.attention(Some(self.attention_multiplier))?,
            ffn,
            multipliers: Multipliers {
                embedding: self.embedding_multiplier,
                residual: self.residual_multiplier,
                logits_scaling: self.logits_scaling,
            },
            tie_word_embeddings: l.tie_word_embeddings,
            max_position_embeddings: l.max_position_embeddings,
        })
    }
}

/// Builds a dense Granite 3 model from a parsed config and its weights.
pub fn load(config: &serde_json::Value, store: &WeightStore) -> Result<Box<dyn Model>> {
    let cfg: GraniteConfig = config_json::typed(config)?;
    positive("intermediate_size", cfg.llama.intermediate_size)?;
    let ffn = FfnSpec::Dense {
        intermediate: cfg.llama.intermediate_size,
        act: Activation::parse(&cfg.llama.hidden_act, "hidden_act")?,
        bias: cfg.llama.mlp_bias,
    };
    let spec = cfg.stack("GraniteForCausalLM", ffn)?;
    Ok(Box::new(LlamaStack::load(spec, config, store)?))
}

/// Builds a Granite 3 MoE model from a parsed config and its weights.
pub fn load_moe(config: &serde_json::Value, store: &WeightStore) -> Result<Box<dyn Model>> {
    let cfg: GraniteConfig = config_json::typed(config)?;
    positive("intermediate_size", cfg.llama.intermediate_size)?;
    if Activation::parse(&cfg.llama.hidden_act, "hidden_act")? != Activation::Silu {
        return Err(Error::config(
            "hidden_act",
            "GraniteMoe experts support only `silu`",
        ));
    }
    let moe = MoeConfig {
        hidden: cfg.llama.hidden_size,
        intermediate: cfg.llama.intermediate_size,
        num_experts: cfg.num_local_experts.unwrap_or(8),
        top_k: cfg.num_experts_per_tok.unwrap_or(2),
    };
    Moe::check_config(&moe)?;
    let spec = cfg.stack("GraniteMoeForCausalLM", FfnSpec::Moe(moe))?;
    Ok(Box::new(LlamaStack::load(spec, config, store)?))
}
