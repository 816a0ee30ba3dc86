//! The whole training forward (embedding → hybrid layers → norm → head), its loss, and the
//! backward pass with or without gradient checkpointing. With checkpointing only each layer's
//! input is kept from the forward; the backward recomputes one layer at a time with the graph
//! on and pushes the incoming gradient through it as `sum(y ⊙ ∂L/∂y)`.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use serde::Serialize;

use super::config::DynamicHybridConfig;
use super::layer::{layer_forward, LayerStats};
use super::ops::{cross_entropy, linear, rms_norm};
use super::params::{ParamStore, Weights};
use crate::error::{Error, Result};

/// The metrics of one forward.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForwardStats {
    /// Mean token cross-entropy (0 when only logits were computed).
    pub loss: f64,
    /// Weighted auxiliary loss (router balance + compression sparsity).
    pub aux_loss: f64,
    /// Fraction of tokens routed to the SSM path, averaged over layers.
    pub ssm_fraction: f64,
    /// Fraction routed to the Transformer path (`1 - ssm_fraction`).
    pub transformer_fraction: f64,
    /// Mean router probability of the SSM path.
    pub router_prob: f64,
    /// Achieved state compression `N / kept`, averaged over layers.
    pub compression_rate: f64,
    /// Per-layer compression rates.
    pub layer_compression: Vec<f64>,
    /// Per-layer SSM fractions.
    pub layer_ssm_fraction: Vec<f64>,
}

impl ForwardStats {
    fn from_layers(layers: &[LayerStats]) -> Result<Self> {
        let n = layers.len().max(1) as f64;
        let mut aux = 0.0;
        for l in layers {
            aux += l
                .aux
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
        let ssm = layers.iter().map(|l| l.ssm_fraction).sum::<f64>() / n;
        Ok(Self {
            loss: 0.0,
            aux_loss: aux,
            ssm_fraction: ssm,
            transformer_fraction: 1.0 - ssm,
            router_prob: layers.iter().map(|l| l.mean_prob).sum::<f64>() / n,
            compression_rate: layers.iter().map(|l| l.compression_rate).sum::<f64>() / n,
            layer_compression: layers.iter().map(|l| l.compression_rate).collect(),
            layer_ssm_fraction: layers.iter().map(|l| l.ssm_fraction).collect(),
        })
    }
}

/// Token embeddings `[B, T, H]` of `tokens` `[B, T]` (u32).
pub fn embed(tokens: &Tensor, w: &Weights, cfg: &DynamicHybridConfig) -> Result<Tensor> {
    let (b, t) = tokens.dims2()?;
    let table = w.get("embed_tokens.weight")?;
    Ok(table
        .index_select(&tokens.flatten_all()?, 0)?
        .reshape((b, t, cfg.hidden_dim))?
        .affine(cfg.embedding_multiplier, 0.0)?)
}

/// Logits `[B, T, V]` of the last residual stream.
pub fn head(x: &Tensor, w: &Weights, cfg: &DynamicHybridConfig) -> Result<Tensor> {
    let x = rms_norm(x, &w.get("norm.weight")?, cfg.rms_norm_eps)?;
    let table = if cfg.tie_word_embeddings {
        w.get("embed_tokens.weight")?
    } else {
        w.get("lm_head.weight")?
    };
    Ok(linear(&x, &table, w.bf16)?.affine(1.0 / cfg.logits_scaling, 0.0)?)
}

/// Full forward: logits `[B, T, V]` and the metrics.
pub fn forward(
    tokens: &Tensor,
    w: &Weights,
    cfg: &DynamicHybridConfig,
) -> Result<(Tensor, ForwardStats, Tensor)> {
    let mut x = embed(tokens, w, cfg)?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let (y, st) = layer_forward(&x, w, l, cfg)?;
        x = y;
        layers.push(st);
    }
    let mut aux = Tensor::zeros((), x.dtype(), x.device())?;
    for st in &layers {
        aux = (aux + &st.aux)?;
    }
    Ok((head(&x, w, cfg)?, ForwardStats::from_layers(&layers)?, aux))
}

fn flat_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(2)?;
    cross_entropy(
        &logits.reshape((logits.elem_count() / v, v))?,
        &targets.flatten_all()?,
    )
}

/// Cross-entropy of next-token prediction plus the weighted auxiliary loss, without a graph.
pub fn evaluate(
    params: &ParamStore,
    inputs: &Tensor,
    targets: &Tensor,
    cfg: &DynamicHybridConfig,
) -> Result<ForwardStats> {
    let w = Weights::detached(params, cfg.mixed_precision);
    let (logits, mut stats, _) = forward(inputs, &w, cfg)?;
    stats.loss = flat_loss(&logits, targets)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar()?;
    Ok(stats)
}

/// Gradients of every parameter, by name.
pub type Grads = HashMap<String, Tensor>;

fn collect(
    params: &ParamStore,
    store: &candle_core::backprop::GradStore,
    into: &mut Grads,
) -> Result<()> {
    for (name, var, _) in params.iter() {
        if let Some(g) = store.get(var.as_tensor()) {
            let sum = match into.remove(name) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            into.insert(name.to_string(), sum);
        }
    }
    Ok(())
}

/// Loss (`cross-entropy + aux`) metrics and the gradient of that total w.r.t. every
/// parameter; `checkpoint` recomputes layer activations during the backward. `phase` is
/// told when the forward and the backward begin (for the memory tracker).
pub fn loss_and_grads(
    params: &ParamStore,
    inputs: &Tensor,
    targets: &Tensor,
    cfg: &DynamicHybridConfig,
    checkpoint: bool,
    phase: &mut dyn FnMut(&str),
) -> Result<(ForwardStats, Grads)> {
    let bf16 = cfg.mixed_precision;
    let mut grads = Grads::new();
    phase("forward");
    if !checkpoint {
        let w = Weights::tracked(params, bf16);
        let (logits, mut stats, aux) = forward(inputs, &w, cfg)?;
        let ce = flat_loss(&logits, targets)?;
        stats.loss = ce.to_dtype(candle_core::DType::F64)?.to_scalar()?;
        let total = (ce + aux)?;
        phase("backward");
        collect(params, &total.backward()?, &mut grads)?;
        return Ok((stats, grads));
    }
    // Pass 1: no graph, keep each layer's input.
    let wd = Weights::detached(params, bf16);
    let mut xs = vec![embed(inputs, &wd, cfg)?];
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let (y, st) = layer_forward(&xs[l], &wd, l, cfg)?;
        xs.push(y);
        layers.push(st);
    }
    let mut stats = ForwardStats::from_layers(&layers)?;
    drop(layers);
    phase("backward");
    // Head, then the layers in reverse, each recomputed with its graph.
    let wt = Weights::tracked(params, bf16);
    let last = xs
        .pop()
        .ok_or_else(|| Error::request("num_layers", "no layers"))?;
    let leaf = Var::from_tensor(&last)?;
    let ce = flat_loss(&head(leaf.as_tensor(), &wt, cfg)?, targets)?;
    stats.loss = ce.to_dtype(candle_core::DType::F64)?.to_scalar()?;
    let g = ce.backward()?;
    collect(params, &g, &mut grads)?;
    let mut upstream = grad_of(&g, &leaf)?;
    for l in (0..cfg.num_layers).rev() {
        let input = xs
            .pop()
            .ok_or_else(|| Error::request("num_layers", "no layers"))?;
        let leaf = Var::from_tensor(&input)?;
        let (y, st) = layer_forward(leaf.as_tensor(), &wt, l, cfg)?;
        let s = ((y * &upstream)?.sum_all()? + st.aux)?;
        let g = s.backward()?;
        collect(params, &g, &mut grads)?;
        upstream = grad_of(&g, &leaf)?;
    }
    let e = embed(inputs, &wt, cfg)?;
    collect(params, &(e * upstream)?.sum_all()?.backward()?, &mut grads)?;
    Ok((stats, grads))
}

fn grad_of(g: &candle_core::backprop::GradStore, leaf: &Var) -> Result<Tensor> {
    Ok(g.get(leaf.as_tensor())
        .cloned()
        .ok_or_else(|| Error::request("backward", "no gradient reached a layer input"))?
        .detach())
}
