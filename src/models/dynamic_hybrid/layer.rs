//! One hybrid layer of the training forward, as in docs/dynamic_hybrid.md §1:
//! input norm → router → SSM path ‖ Transformer path → bridge → routed aggregation →
//! residual. Each block is its own function so the gradient tests can check it alone.

use candle_core::{Device, Tensor, D};

use super::config::DynamicHybridConfig;
use super::ops::{
    causal_attention, causal_conv, linear, rms_norm, selective_scan, sigmoid, softplus, ScanArgs,
};
use super::params::Weights;
use super::routing::{kept_state_dims, RouterQuota};
use crate::error::Result;

/// Chunk length of the training scan (numerics only).
const SCAN_CHUNK: usize = 64;

/// What a layer reports besides its output.
#[derive(Debug, Clone)]
pub struct LayerStats {
    /// This layer's share of the auxiliary loss (already weighted, divided by the layer count).
    pub aux: Tensor,
    /// Fraction of tokens routed to the SSM path.
    pub ssm_fraction: f64,
    /// Mean router probability of the SSM path.
    pub mean_prob: f64,
    /// Achieved state compression `N / kept`.
    pub compression_rate: f64,
}

/// Router output: per-token SSM weights `w = (r + p) / 2` and the hard routes `r`.
pub struct Routing {
    /// `[B, T, 1]` weight of the SSM path in the aggregation.
    pub weight: Tensor,
    /// `[B, T, 1]` router probabilities `p`.
    pub prob: Tensor,
    /// Hard routes, row-major `[B, T]`.
    pub routes: Vec<bool>,
}

/// DynamicRouter (§2): `p = σ(w·h + b)`, hard routes by the causal quota, weight `(r + p)/2`.
pub fn router(h: &Tensor, w: &Weights, p: &str, cfg: &DynamicHybridConfig) -> Result<Routing> {
    let (b, t, _) = h.dims3()?;
    let logits = linear(h, &w.get(&format!("{p}.router.weight"))?, false)?
        .broadcast_add(&w.get(&format!("{p}.router.bias"))?)?; // [B,T,1]
    let z: Vec<f32> = logits
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    let quota = RouterQuota {
        capacity: cfg.router_capacity,
        slack: cfg.router_slack,
    };
    let routes: Vec<bool> = z.chunks(t).flat_map(|row| quota.route(0, 0, row)).collect();
    let r: Vec<f64> = routes.iter().map(|&r| f64::from(u8::from(r))).collect();
    let r = Tensor::from_vec(r, (b, t, 1), &Device::Cpu)?.to_dtype(h.dtype())?;
    let prob = sigmoid(&logits)?;
    let weight = (r + &prob)?.affine(0.5, 0.0)?;
    Ok(Routing {
        weight,
        prob,
        routes,
    })
}

/// AdaptiveCompressor gate (§4): `[N]` with `2σ(θ_n)` on kept dims and 0 elsewhere, plus
/// the number kept.
pub fn compressor_gate(
    w: &Weights,
    p: &str,
    cfg: &DynamicHybridConfig,
) -> Result<(Tensor, Tensor, usize)> {
    let theta = w.get(&format!("{p}.ssm.state_importance"))?;
    let values: Vec<f32> = theta.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    let kept = kept_state_dims(&values, cfg.min_kept_state(), cfg.compression_threshold);
    let mut mask = vec![0f64; values.len()];
    for &i in &kept {
        mask[i] = 1.0;
    }
    let mask = Tensor::from_vec(mask, values.len(), &Device::Cpu)?.to_dtype(theta.dtype())?;
    let prob = sigmoid(&theta)?;
    let gate = (prob.affine(2.0, 0.0)? * mask)?;
    Ok((gate, prob, kept.len()))
}

/// SSM path (§3): Mamba2 mixer whose B channels are scaled inside their SiLU by the
/// compressor gate. `h` `[B, T, H]` → `[B, T, H]`.
pub fn ssm_path(
    h: &Tensor,
    gate: &Tensor,
    w: &Weights,
    p: &str,
    cfg: &DynamicHybridConfig,
) -> Result<Tensor> {
    let m = format!("{p}.ssm");
    let get = |n: &str| w.get(&format!("{m}.{n}"));
    let (b, t, _) = h.dims3()?;
    let (di, cd, nh, pd) = (
        cfg.d_inner(),
        cfg.conv_dim(),
        cfg.ssm_heads(),
        cfg.ssm_head_dim,
    );
    let (g, n) = (cfg.ssm_n_groups, cfg.ssm_d_state);
    let proj = linear(h, &get("in_proj.weight")?, w.bf16)?;
    let z = proj.narrow(2, 0, di)?;
    let xbc = proj.narrow(2, di, cd)?;
    let dt_raw = proj.narrow(2, di + cd, nh)?;
    let conv_w = get("conv1d.weight")?.reshape((cd, cfg.ssm_kernel_size))?;
    let u = causal_conv(&xbc.contiguous()?, &conv_w, &get("conv1d.bias")?)?;
    let x = u.narrow(2, 0, di)?.silu()?.reshape((b, t, nh, pd))?;
    let bm = u
        .narrow(2, di, g * n)?
        .reshape((b, t, g, n))?
        .broadcast_mul(gate)?
        .silu()?;
    let cm = u
        .narrow(2, di + g * n, g * n)?
        .silu()?
        .reshape((b, t, g, n))?;
    let dt = softplus(&dt_raw.broadcast_add(&get("dt_bias")?)?)?;
    let a = get("A_log")?.exp()?.neg()?;
    let d = get("D")?;
    let y = selective_scan(
        &ScanArgs {
            x: &x,
            dt: &dt,
            a: &a,
            b: &bm,
            c: &cm,
            d: &d,
        },
        SCAN_CHUNK,
    )?
    .reshape((b, t, di))?;
    // Gated RMSNorm per group: norm(y ⊙ silu(z)) (spec §4.3 step 7).
    let gated = (y * z.silu()?)?.reshape((b, t, g, di / g))?;
    let normed = rms_norm(
        &gated,
        &get("norm.weight")?.reshape((g, di / g))?,
        cfg.rms_norm_eps,
    )?
    .reshape((b, t, di))?;
    linear(&normed, &get("out_proj.weight")?, w.bf16)
}

/// Transformer path (§5): `a = MHA(h)`, `τ = a + FFN(norm(h + a))`.
pub fn transformer_path(
    h: &Tensor,
    w: &Weights,
    p: &str,
    cfg: &DynamicHybridConfig,
) -> Result<Tensor> {
    let get = |n: &str| w.get(&format!("{p}.{n}"));
    let (b, t, _) = h.dims3()?;
    let (nh, nkv, hd) = (cfg.num_heads, cfg.kv_heads(), cfg.head_dim());
    let q = linear(h, &get("attn.q_proj.weight")?, w.bf16)?.reshape((b, t, nh, hd))?;
    let k = linear(h, &get("attn.k_proj.weight")?, w.bf16)?.reshape((b, t, nkv, hd))?;
    let v = linear(h, &get("attn.v_proj.weight")?, w.bf16)?.reshape((b, t, nkv, hd))?;
    let att = causal_attention(&q, &k, &v, cfg.attention_scale())?;
    let a = linear(&att, &get("attn.o_proj.weight")?, w.bf16)?;
    let u = rms_norm(&(h + &a)?, &get("ffn_norm.weight")?, cfg.rms_norm_eps)?;
    let gu = linear(&u, &get("ffn.input_linear.weight")?, w.bf16)?;
    let i = cfg.ffn_dim;
    let act = (gu.narrow(2, 0, i)?.silu()? * gu.narrow(2, i, i)?)?;
    let f = linear(&act, &get("ffn.output_linear.weight")?, w.bf16)?;
    Ok((a + f)?)
}

/// BidirectionalBridge (§6): each path adds a gated projection of the other,
/// `ŝ = s + σ(G_s[s; τ] + b_s) ⊙ P_ts τ`, `τ̂ = τ + σ(G_t[τ; s] + b_t) ⊙ P_st s`.
pub fn bridge(s: &Tensor, tau: &Tensor, w: &Weights, p: &str) -> Result<(Tensor, Tensor)> {
    let get = |n: &str| w.get(&format!("{p}.bridge.{n}"));
    let one = |own: &Tensor, other: &Tensor, gate: &str, proj: &str| -> Result<Tensor> {
        let cat = Tensor::cat(&[own, other], D::Minus1)?;
        let g = sigmoid(
            &linear(&cat, &get(&format!("{gate}.weight"))?, w.bf16)?
                .broadcast_add(&get(&format!("{gate}.bias"))?)?,
        )?;
        Ok((own + (g * linear(other, &get(&format!("{proj}.weight"))?, w.bf16)?)?)?)
    };
    Ok((
        one(s, tau, "gate_s", "proj_t2s")?,
        one(tau, s, "gate_t", "proj_s2t")?,
    ))
}

/// One hybrid layer: `x` `[B, T, H]` → next residual stream and the layer's stats.
pub fn layer_forward(
    x: &Tensor,
    w: &Weights,
    l: usize,
    cfg: &DynamicHybridConfig,
) -> Result<(Tensor, LayerStats)> {
    let p = format!("layers.{l}");
    let h = rms_norm(
        x,
        &w.get(&format!("{p}.input_norm.weight"))?,
        cfg.rms_norm_eps,
    )?;
    let routing = router(&h, w, &p, cfg)?;
    let (gate, importance, kept) = compressor_gate(w, &p, cfg)?;
    let s = ssm_path(&h, &gate, w, &p, cfg)?;
    let tau = transformer_path(&h, w, &p, cfg)?;
    let (s, tau) = bridge(&s, &tau, w, &p)?;
    // Gated aggregation (§7): o = w·ŝ + (1 - w)·τ̂.
    let ws = &routing.weight;
    let o = (s.broadcast_mul(ws)? + tau.broadcast_mul(&ws.affine(-1.0, 1.0)?)?)?;
    let out = (x + o.affine(cfg.residual_multiplier, 0.0)?)?;

    let mean_prob = routing.prob.mean_all()?;
    let balance = mean_prob.affine(1.0, -cfg.router_capacity)?.sqr()?;
    let sparsity = importance.mean_all()?;
    let aux = (balance.affine(cfg.aux_loss_weight, 0.0)?
        + sparsity.affine(cfg.compression_loss_weight, 0.0)?)?
    .affine(1.0 / cfg.num_layers as f64, 0.0)?;
    let n_ssm = routing.routes.iter().filter(|r| **r).count();
    let stats = LayerStats {
        aux,
        ssm_fraction: n_ssm as f64 / routing.routes.len().max(1) as f64,
        mean_prob: mean_prob.to_dtype(candle_core::DType::F64)?.to_scalar()?,
        compression_rate: cfg.ssm_d_state as f64 / kept.max(1) as f64,
    };
    Ok((out, stats))
}
