//! `config.json` of a DynamicHybridModel (docs/dynamic_hybrid.md): model geometry and the
//! training hyper-parameters in one flat object, with defaults that give the ~380M-parameter
//! model over the Granite vocabulary, and [`DynamicHybridConfig::validate`] naming the field
//! at fault.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The `architectures[0]` class name of a DynamicHybridModel checkpoint.
pub const ARCHITECTURE: &str = "DynamicHybridForCausalLM";
/// Its `model_type`.
pub const MODEL_TYPE: &str = "dynamic_hybrid";

/// A DynamicHybridModel config; every field has a default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicHybridConfig {
    /// Always `["DynamicHybridForCausalLM"]`.
    pub architectures: Vec<String>,
    /// Always `"dynamic_hybrid"`.
    pub model_type: String,
    /// Vocabulary rows (Granite's tokenizer: 100352).
    pub vocab_size: usize,
    /// Residual width H.
    pub hidden_dim: usize,
    /// Hybrid layers.
    pub num_layers: usize,
    /// Attention query heads (must divide `hidden_dim`).
    pub num_heads: usize,
    /// Attention key/value heads (GQA); `None` means `num_heads`.
    pub num_kv_heads: Option<usize>,
    /// Longest sequence the model is trained or served at.
    pub max_seq_len: usize,
    /// Width K of the SSM path's causal conv.
    pub ssm_kernel_size: usize,
    /// SSM state size N per channel before compression.
    pub ssm_d_state: usize,
    /// SSM channels per head P.
    pub ssm_head_dim: usize,
    /// SSM inner width is `ssm_expand * hidden_dim`.
    pub ssm_expand: usize,
    /// B/C groups of the SSM path.
    pub ssm_n_groups: usize,
    /// Intermediate width of the Transformer path's SwiGLU feed-forward.
    pub ffn_dim: usize,
    /// The SSM state may be compressed by up to this factor (>= 1).
    pub compression_factor: f64,
    /// Importance logit below which a state dimension is dropped (unless it is needed to stay
    /// within `compression_factor`).
    pub compression_threshold: f64,
    /// Fraction of each sequence's tokens routed to the SSM path, in [0, 1].
    pub router_capacity: f64,
    /// How many tokens the running SSM count may stray from `router_capacity · t`.
    pub router_slack: f64,
    /// Weight of the router balance loss.
    pub aux_loss_weight: f64,
    /// Weight of the state-importance sparsity loss (drives compression).
    pub compression_loss_weight: f64,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Whether the output head reuses the embedding.
    pub tie_word_embeddings: bool,
    /// Scale of token embeddings (Granite's `embedding_multiplier`).
    pub embedding_multiplier: f64,
    /// Scale of each layer's update before it joins the residual.
    pub residual_multiplier: f64,
    /// Logits are divided by this.
    pub logits_scaling: f64,
    /// Attention softmax scale; `None` means `1/sqrt(head_dim)`.
    pub attention_multiplier: Option<f64>,
    /// Ids that end generation.
    pub eos_token_id: Option<u32>,
    /// AdamW peak learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay (matrices only).
    pub weight_decay: f64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum_steps: usize,
    /// Linear warm-up steps before the cosine decay.
    pub warmup_steps: usize,
    /// Optimizer steps of a run (unless `--steps` overrides it).
    pub max_steps: usize,
    /// Cosine floor as a fraction of the peak learning rate.
    pub min_lr_ratio: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f64,
    /// Fraction of packed sequences held out for evaluation.
    pub eval_fraction: f64,
    /// Sequences per evaluation.
    pub eval_sequences: usize,
    /// Recompute layer activations in the backward pass instead of storing them.
    pub gradient_checkpointing: bool,
    /// Run matmuls on BF16-rounded operands, keeping f32 master weights.
    pub mixed_precision: bool,
    /// Seed of initialisation and data order.
    pub seed: u64,
}

impl Default for DynamicHybridConfig {
    fn default() -> Self {
        Self {
            architectures: vec![ARCHITECTURE.into()],
            model_type: MODEL_TYPE.into(),
            vocab_size: 100352,
            hidden_dim: 768,
            num_layers: 12,
            num_heads: 12,
            num_kv_heads: None,
            max_seq_len: 2048,
            ssm_kernel_size: 4,
            ssm_d_state: 128,
            ssm_head_dim: 64,
            ssm_expand: 2,
            ssm_n_groups: 1,
            ffn_dim: 4096,
            compression_factor: 4.0,
            compression_threshold: -3.0,
            router_capacity: 0.5,
            router_slack: 4.0,
            aux_loss_weight: 0.01,
            compression_loss_weight: 0.001,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: false,
            embedding_multiplier: 1.0,
            residual_multiplier: 1.0,
            logits_scaling: 1.0,
            attention_multiplier: None,
            eos_token_id: None,
            learning_rate: 3e-4,
            weight_decay: 0.01,
            batch_size: 8,
            seq_len: 256,
            grad_accum_steps: 1,
            warmup_steps: 100,
            max_steps: 1000,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
            eval_fraction: 0.05,
            eval_sequences: 32,
            gradient_checkpointing: false,
            mixed_precision: false,
            seed: 0,
        }
    }
}

impl DynamicHybridConfig {
    /// Parses and validates a config value.
    pub fn from_value(value: &serde_json::Value) -> Result<Self> {
        let cfg: Self = crate::loader::config_json::typed(value)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        Self::from_value(&crate::loader::config_json::read(path)?)
    }

    /// Attention KV heads.
    pub fn kv_heads(&self) -> usize {
        self.num_kv_heads.unwrap_or(self.num_heads)
    }

    /// Attention head size.
    pub fn head_dim(&self) -> usize {
        self.hidden_dim / self.num_heads.max(1)
    }

    /// Attention softmax scale.
    pub fn attention_scale(&self) -> f64 {
        self.attention_multiplier
            .unwrap_or(1.0 / (self.head_dim().max(1) as f64).sqrt())
    }

    /// SSM inner width `nH · P`.
    pub fn d_inner(&self) -> usize {
        self.ssm_expand * self.hidden_dim
    }

    /// SSM heads nH.
    pub fn ssm_heads(&self) -> usize {
        self.d_inner() / self.ssm_head_dim.max(1)
    }

    /// Channels through the SSM conv (x, B, C) at full state size.
    pub fn conv_dim(&self) -> usize {
        self.d_inner() + 2 * self.ssm_n_groups * self.ssm_d_state
    }

    /// Rows of the SSM input projection: z, xBC, dt.
    pub fn in_proj_dim(&self) -> usize {
        self.d_inner() + self.conv_dim() + self.ssm_heads()
    }

    /// Fewest state dimensions the compressor keeps: `ceil(N / compression_factor)`.
    pub fn min_kept_state(&self) -> usize {
        ((self.ssm_d_state as f64 / self.compression_factor).ceil() as usize).max(1)
    }

    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<()> {
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(Error::config(field, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        if self.model_type != MODEL_TYPE {
            return Err(Error::config(
                "model_type",
                format!("expected `{MODEL_TYPE}`, got `{}`", self.model_type),
            ));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_dim", self.hidden_dim),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("max_seq_len", self.max_seq_len),
            ("ssm_kernel_size", self.ssm_kernel_size),
            ("ssm_d_state", self.ssm_d_state),
            ("ssm_head_dim", self.ssm_head_dim),
            ("ssm_expand", self.ssm_expand),
            ("ssm_n_groups", self.ssm_n_groups),
            ("ffn_dim", self.ffn_dim),
            ("batch_size", self.batch_size),
            ("seq_len", self.seq_len),
            ("grad_accum_steps", self.grad_accum_steps),
            ("eval_sequences", self.eval_sequences),
        ] {
            positive(field, v)?;
        }
        if !self.hidden_dim.is_multiple_of(self.num_heads) {
            return Err(Error::config(
                "num_heads",
                format!(
                    "{} does not divide hidden_dim {}",
                    self.num_heads, self.hidden_dim
                ),
            ));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_heads.is_multiple_of(kv) {
            return Err(Error::config(
                "num_kv_heads",
                format!("{kv} does not divide num_heads {}", self.num_heads),
            ));
        }
        if !self.d_inner().is_multiple_of(self.ssm_head_dim) {
            return Err(Error::config(
                "ssm_head_dim",
                format!(
                    "{} does not divide ssm_expand * hidden_dim = {}",
                    self.ssm_head_dim,
                    self.d_inner()
                ),
            ));
        }
        if !self.ssm_heads().is_multiple_of(self.ssm_n_groups) {
            return Err(Error::config(
                "ssm_n_groups",
                format!(
                    "{} does not divide the {} SSM heads",
                    self.ssm_n_groups,
                    self.ssm_heads()
                ),
            ));
        }
        if !(self.router_capacity.is_finite() && (0.0..=1.0).contains(&self.router_capacity)) {
            return Err(Error::config(
                "router_capacity",
                format!("must be in [0, 1], got {}", self.router_capacity),
            ));
        }
        if !(self.compression_factor.is_finite() && self.compression_factor >= 1.0) {
            return Err(Error::config(
                "compression_factor",
                format!("must be >= 1, got {}", self.compression_factor),
            ));
        }
        let non_negative = [
            ("router_slack", self.router_slack),
            ("aux_loss_weight", self.aux_loss_weight),
            ("compression_loss_weight", self.compression_loss_weight),
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
            ("min_lr_ratio", self.min_lr_ratio),
        ];
        for (field, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(field, format!("must be >= 0, got {v}")));
            }
        }
        let strictly_positive = [
            ("rms_norm_eps", self.rms_norm_eps),
            ("learning_rate", self.learning_rate),
            ("embedding_multiplier", self.embedding_multiplier),
            ("residual_multiplier", self.residual_multiplier),
            ("logits_scaling", self.logits_scaling),
            ("attention_multiplier", self.attention_scale()),
        ];
        for (field, v) in strictly_positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(field, format!("must be > 0, got {v}")));
            }
        }
        if !self.compression_threshold.is_finite() {
            return Err(Error::config("compression_threshold", "must be finite"));
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return Err(Error::config(
                "eval_fraction",
                format!("must be in [0, 1), got {}", self.eval_fraction),
            ));
        }
        if self.seq_len > self.max_seq_len {
            return Err(Error::config(
                "seq_len",
                format!(
                    "{} is longer than max_seq_len {}",
                    self.seq_len, self.max_seq_len
                ),
            ));
        }
        Ok(())
    }

    /// Parameters of the model this config describes (a tied head counted once).
    pub fn num_params(&self) -> usize {
        let (h, v, l) = (self.hidden_dim, self.vocab_size, self.num_layers);
        let (di, cd, nh) = (self.d_inner(), self.conv_dim(), self.ssm_heads());
        let kv = self.kv_heads() * self.head_dim();
        let ssm = self.in_proj_dim() * h + cd * self.ssm_kernel_size + cd + 3 * nh + di + h * di;
        let compressor = self.ssm_d_state;
        let attention = 2 * h * h + 2 * h * kv;
        let ffn = 3 * h * self.ffn_dim + h;
        let bridge = 2 * (2 * h * h + h + h * h);
        let router = h + 1;
        let layer = h + router + ssm + compressor + attention + ffn + bridge;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + head + h + l * layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_near_380m_parameters() {
        let cfg = DynamicHybridConfig::default();
        cfg.validate().unwrap();
        let n = cfg.num_params();
        assert!((370_000_000..395_000_000).contains(&n), "{n}");
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: [(&str, serde_json::Value); 6] = [
            (
                "router_capacity",
                serde_json::json!({"router_capacity": 1.5}),
            ),
            (
                "router_capacity",
                serde_json::json!({"router_capacity": -0.1}),
            ),
            (
                "num_heads",
                serde_json::json!({"hidden_dim": 100, "num_heads": 12}),
            ),
            (
                "compression_factor",
                serde_json::json!({"compression_factor": 0.5}),
            ),
            ("seq_len", serde_json::json!({"seq_len": 4096})),
            ("hidden_dimm", serde_json::json!({"hidden_dimm": 4})),
        ];
        for (field, v) in cases {
            let e = DynamicHybridConfig::from_value(&v).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
