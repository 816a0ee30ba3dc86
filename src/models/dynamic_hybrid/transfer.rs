//! Initialising a DynamicHybridModel from a Granite 4.0-H checkpoint (`nanovllm convert`):
//! the geometry is taken from Granite's config, embeddings / norms / head are copied, each
//! Mamba2 layer's mixer becomes that layer's SSM path, each attention layer's projections its
//! Transformer path's attention, and every shared MLP that layer's feed-forward. Everything
//! Granite has no counterpart for (routers, bridges, compressor importances, the attention of
//! Mamba layers and the SSM of attention layers) is freshly initialised. Copies are exact
//! (bf16 widens to f32 without rounding).

use std::path::Path;

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::config::DynamicHybridConfig;
use super::params::ParamStore;
use crate::error::{Error, Result};
use crate::loader::config_json;
use crate::loader::safetensors::WeightStore;
use crate::models::granite_hybrid::GraniteHybridConfig;

/// One copied tensor.
#[derive(Debug, Clone, Serialize)]
pub struct Copied {
    /// Name in the DynamicHybridModel.
    pub to: String,
    /// Name in the Granite checkpoint.
    pub from: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Source dtype (copied to f32).
    pub dtype: String,
}

/// What a conversion did, tensor by tensor, and how the two architectures compare.
#[derive(Debug, Clone, Serialize)]
pub struct TransferReport {
    /// Copied unchanged (values and shape).
    pub transferred: Vec<Copied>,
    /// Copied with a new shape (none for the current mapping; listed for completeness).
    pub reshaped: Vec<Copied>,
    /// Freshly initialised DynamicHybridModel tensors, with their shapes.
    pub fresh: Vec<(String, Vec<usize>)>,
    /// Granite tensors with no counterpart (e.g. MoE experts).
    pub dropped: Vec<String>,
    /// Side-by-side numbers.
    pub comparison: Vec<ComparisonRow>,
}

/// One line of the architecture comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ComparisonRow {
    /// What is compared.
    pub item: String,
    /// Granite's value.
    pub granite: String,
    /// DynamicHybridModel's value.
    pub dynamic_hybrid: String,
}

fn layer_is_mamba(g: &GraniteHybridConfig) -> Result<Vec<bool>> {
    let names = g.layer_types.as_ref().or(g.layers_block_type.as_ref());
    let Some(names) = names else {
        return Ok(vec![true; g.num_hidden_layers]);
    };
    if names.len() != g.num_hidden_layers {
        return Err(Error::config(
            "layer_types",
            "length differs from num_hidden_layers",
        ));
    }
    names
        .iter()
        .map(|n| match n.as_str() {
            "mamba" | "linear_attention" => Ok(true),
            "attention" | "full_attention" => Ok(false),
            other => Err(Error::config(
                "layer_types",
                format!("unknown layer type `{other}`"),
            )),
        })
        .collect()
}

/// The DynamicHybridModel config that matches a Granite config's geometry.
pub fn config_from_granite(config: &serde_json::Value) -> Result<DynamicHybridConfig> {
    let g: GraniteHybridConfig = config_json::typed(config)?;
    if g.mamba_proj_bias || g.attention_bias {
        return Err(Error::config(
            "mamba_proj_bias",
            "projection biases cannot be transferred",
        ));
    }
    let d_head = match &g.mamba_d_head {
        serde_json::Value::String(s) if s == "auto" => {
            (g.mamba_expand * g.hidden_size) / g.mamba_n_heads.max(1)
        }
        v => v
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| Error::config("mamba_d_head", "not an integer"))?,
    };
    let eos = match config.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32),
        _ => None,
    };
    let cfg = DynamicHybridConfig {
        vocab_size: g.vocab_size,
        hidden_dim: g.hidden_size,
        num_layers: g.num_hidden_layers,
        num_heads: g.num_attention_heads,
        num_kv_heads: g.num_key_value_heads,
        max_seq_len: g.max_position_embeddings.unwrap_or(4096),
        ssm_kernel_size: g.mamba_d_conv,
        ssm_d_state: g.mamba_d_state,
        ssm_head_dim: d_head,
        ssm_expand: g.mamba_expand,
        ssm_n_groups: g.mamba_n_groups,
        ffn_dim: g.shared_intermediate_size,
        rms_norm_eps: g.rms_norm_eps,
        tie_word_embeddings: g.tie_word_embeddings,
        embedding_multiplier: g.embedding_multiplier,
        residual_multiplier: g.residual_multiplier,
        logits_scaling: g.logits_scaling,
        attention_multiplier: Some(g.attention_multiplier),
        eos_token_id: eos,
        seq_len: 256.min(g.max_position_embeddings.unwrap_or(4096)),
        ..Default::default()
    };
    if g.head_dim.is_some_and(|hd| hd != cfg.head_dim()) {
        return Err(Error::config(
            "head_dim",
            "must equal hidden_size / num_attention_heads",
        ));
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The Granite name each DynamicHybridModel tensor is copied from, if any.
fn source_name(to: &str, mamba: &[bool]) -> Option<String> {
    match to {
        "embed_tokens.weight" => return Some("model.embed_tokens.weight".into()),
        "norm.weight" => return Some("model.norm.weight".into()),
        "lm_head.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = to.strip_prefix("layers.")?;
    let (idx, name) = rest.split_once('.')?;
    let l: usize = idx.parse().ok()?;
    let p = format!("model.layers.{l}");
    let is_mamba = *mamba.get(l)?;
    Some(match name {
        "input_norm.weight" => format!("{p}.input_layernorm.weight"),
        "ffn_norm.weight" => format!("{p}.post_attention_layernorm.weight"),
        "ffn.input_linear.weight" => format!("{p}.shared_mlp.input_linear.weight"),
        "ffn.output_linear.weight" => format!("{p}.shared_mlp.output_linear.weight"),
        n if is_mamba && n.starts_with("ssm.") && n != "ssm.state_importance" => {
            format!("{p}.mamba.{}", &n[4..])
        }
        n if !is_mamba && n.starts_with("attn.") => format!("{p}.self_attn.{}", &n[5..]),
        _ => return None,
    })
}

/// Converts the Granite checkpoint in `granite` into a DynamicHybridModel in `out`
/// (`config.json`, `model.safetensors`, and the tokenizer files if present).
pub fn convert(granite: &Path, out: &Path, seed: u64) -> Result<TransferReport> {
    let gconfig = config_json::read(&granite.join("config.json"))?;
    let g: GraniteHybridConfig = config_json::typed(&gconfig)?;
    let mamba = layer_is_mamba(&g)?;
    let cfg = DynamicHybridConfig {
        seed,
        ..config_from_granite(&gconfig)?
    };
    let store = WeightStore::open_dir(granite)?;
    let fresh_params = ParamStore::init(&cfg, DType::F32)?;
    let mut tensors = std::collections::HashMap::new();
    let mut report = TransferReport {
        transferred: Vec::new(),
        reshaped: Vec::new(),
        fresh: Vec::new(),
        dropped: Vec::new(),
        comparison: Vec::new(),
    };
    let mut used = std::collections::HashSet::new();
    for (name, var, _) in fresh_params.iter() {
        let shape = var.dims().to_vec();
        match source_name(name, &mamba).filter(|s| store.contains(s)) {
            Some(src) => {
                let t = store.f32(&src, &shape)?;
                report.transferred.push(Copied {
                    to: name.to_string(),
                    from: src.clone(),
                    shape,
                    dtype: format!("{:?}", store.raw(&src)?.dtype()),
                });
                used.insert(src);
                tensors.insert(name.to_string(), t);
            }
            None => {
                report.fresh.push((name.to_string(), shape));
                tensors.insert(name.to_string(), var.as_detached_tensor());
            }
        }
    }
    let mut dropped: Vec<String> = store
        .names()
        .into_iter()
        .filter(|n| !used.contains(*n))
        .map(String::from)
        .collect();
    dropped.sort();
    report.dropped = dropped;
    report.comparison = compare(&g, &mamba, &cfg);
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let cfg_path = out.join("config.json");
    let text =
        serde_json::to_string_pretty(&cfg).map_err(|e| Error::request("config", e.to_string()))?;
    std::fs::write(&cfg_path, text).map_err(|e| Error::io(&cfg_path, e))?;
    let ordered: std::collections::BTreeMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(
        &ordered.into_iter().collect(),
        out.join("model.safetensors"),
    )?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let src = granite.join(f);
        if src.is_file() {
            std::fs::copy(&src, out.join(f)).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(report)
}

fn compare(g: &GraniteHybridConfig, mamba: &[bool], d: &DynamicHybridConfig) -> Vec<ComparisonRow> {
    let h = g.hidden_size;
    let n_mamba = mamba.iter().filter(|m| **m).count();
    let n_attn = mamba.len() - n_mamba;
    let kv = d.kv_heads() * d.head_dim();
    let ssm = d.in_proj_dim() * h
        + d.conv_dim() * (d.ssm_kernel_size + 1)
        + 3 * d.ssm_heads()
        + d.d_inner() * (1 + h);
    let attn = 2 * h * h + 2 * h * kv;
    let ffn = 3 * h * d.ffn_dim;
    let embed = d.vocab_size * h * if d.tie_word_embeddings { 1 } else { 2 };
    let state = (d.ssm_kernel_size - 1) * d.conv_dim() + d.d_inner() * d.ssm_d_state;
    let kv_tok = 2 * kv;
    let bridge = 6 * h * h + 2 * h;
    let mib = |floats: usize| format!("{:.3} MiB", (floats * 4) as f64 / 1048576.0);
    let kib = |floats: usize| format!("{:.1} KiB", (floats * 4) as f64 / 1024.0);
    let row = |item: &str, a: String, b: String| ComparisonRow {
        item: item.into(),
        granite: a,
        dynamic_hybrid: b,
    };
    let l = d.num_layers;
    vec![
        row(
            "layers",
            format!("{} ({n_mamba} Mamba2, {n_attn} attention)", mamba.len()),
            format!("{l} hybrid (SSM + Transformer path each)"),
        ),
        row(
            "embedding + head params",
            embed.to_string(),
            embed.to_string(),
        ),
        row(
            "SSM params",
            (n_mamba * ssm).to_string(),
            (l * ssm).to_string(),
        ),
        row(
            "attention params",
            (n_attn * attn).to_string(),
            (l * attn).to_string(),
        ),
        row(
            "feed-forward params (shared MLP)",
            (mamba.len() * ffn).to_string(),
            (l * ffn).to_string(),
        ),
        row(
            "MoE params",
            if g.num_local_experts > 0 {
                format!("{} experts/layer (not transferred)", g.num_local_experts)
            } else {
                "0".into()
            },
            "0".into(),
        ),
        row("bridge params", "0".into(), (l * bridge).to_string()),
        row(
            "router + compressor params",
            "0".into(),
            (l * (h + 1 + d.ssm_d_state)).to_string(),
        ),
        row(
            "total params",
            granite_params(g, mamba).to_string(),
            d.num_params().to_string(),
        ),
        row(
            "recurrent state per sequence",
            mib(n_mamba * state),
            format!(
                "{} (before compression; up to {}x less)",
                mib(l * state + l),
                d.compression_factor
            ),
        ),
        row("KV cache per token", kib(n_attn * kv_tok), kib(l * kv_tok)),
    ]
}

fn granite_params(g: &GraniteHybridConfig, mamba: &[bool]) -> usize {
    let h = g.hidden_size;
    let nh = g.mamba_n_heads;
    let di = g.mamba_expand * h;
    let cd = di + 2 * g.mamba_n_groups * g.mamba_d_state;
    let ssm = (di + cd + nh) * h + cd * (g.mamba_d_conv + 1) + 3 * nh + di + h * di;
    let hd = g.head_dim.unwrap_or(h / g.num_attention_heads.max(1));
    let kv = g.num_key_value_heads.unwrap_or(g.num_attention_heads) * hd;
    let attn = 2 * h * g.num_attention_heads * hd + 2 * h * kv;
    let ffn = 3 * h * g.shared_intermediate_size;
    let moe = if g.num_local_experts > 0 {
        g.num_local_experts * (3 * h * g.intermediate_size) + g.num_local_experts * h
    } else {
        0
    };
    let layers: usize = mamba
        .iter()
        .map(|&m| 2 * h + ffn + moe + if m { ssm } else { attn })
        .sum();
    g.vocab_size * h * if g.tie_word_embeddings { 1 } else { 2 } + h + layers
}
