//! DynamicHybridModel (`DynamicHybridForCausalLM`): a trainable research hybrid whose every
//! layer runs an SSM path and a Transformer path side by side, routes each token between them
//! under a causal capacity quota, lets the paths read each other through a gated bridge, and
//! compresses the SSM state by learned importance. Design and math: docs/dynamic_hybrid.md.
//! The training forward lives in the submodules; this file is the engine architecture.

pub mod config;
#[cfg(test)]
mod grad_tests;
pub mod layer;
pub mod network;
pub mod ops;
pub mod params;
pub mod routing;
pub mod transfer;

use candle_core::{Device, Tensor};

use self::config::{DynamicHybridConfig, ARCHITECTURE};
use self::routing::{kept_state_dims, RouterQuota};
use super::{eos_ids, LayerKind, Model, ModelInfo};
use crate::cache::{LayerCache, LayerCacheSpec, ModelCache, StateCache, StateShape};
use crate::engine::batch::Batch;
use crate::error::{Error, Result};
use crate::kernels::reference::{
    causal_conv1d_silu, softplus, ssm_scan_batch, ScanDims, ScanInputs,
};
use crate::layers::attention::{Attention, AttentionConfig};
use crate::layers::embedding::Embedding;
use crate::layers::linear::Linear;
use crate::layers::lm_head::{no_logits, project, select_logit_rows};
use crate::layers::mlp::GatedMlp;
use crate::layers::norm::{rms_normalize, RmsNorm};
use crate::layers::{from_vec, silu, to_vec};
use crate::loader::safetensors::WeightStore;

/// `σ(v)` exactly as the training forward computes it (`(1 + tanh(v/2)) / 2`).
fn sigmoid(v: f32) -> f32 {
    (v * 0.5).tanh() * 0.5 + 0.5
}

/// The SSM path with the compressor applied: only the kept state dimensions exist, and the
/// importance gate is folded into the conv weight and bias of the B channels (§4).
struct SsmPath {
    in_proj: Linear,
    conv_weight: Vec<f32>,
    conv_bias: Vec<f32>,
    dt_bias: Vec<f32>,
    a: Vec<f32>,
    d: Vec<f32>,
    norm: Vec<f32>,
    out_proj: Linear,
    shape: StateShape,
    groups: usize,
    eps: f32,
}

impl SsmPath {
    fn load(store: &WeightStore, p: &str, cfg: &DynamicHybridConfig) -> Result<(Self, usize)> {
        let (h, di, cd, nh, k) = (
            cfg.hidden_dim,
            cfg.d_inner(),
            cfg.conv_dim(),
            cfg.ssm_heads(),
            cfg.ssm_kernel_size,
        );
        let (g, n) = (cfg.ssm_n_groups, cfg.ssm_d_state);
        let vec = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            to_vec(&store.f32(&format!("{p}.{name}"), shape)?)
        };
        let theta = vec("state_importance", &[n])?;
        let kept = kept_state_dims(&theta, cfg.min_kept_state(), cfg.compression_threshold);
        // Conv channels kept, in order: x, then B and C of each group restricted to `kept`.
        let mut channels: Vec<(usize, f32)> = (0..di).map(|c| (c, 1.0)).collect();
        for gi in 0..g {
            channels.extend(
                kept.iter()
                    .map(|&i| (di + gi * n + i, 2.0 * sigmoid(theta[i]))),
            );
        }
        for gi in 0..g {
            channels.extend(kept.iter().map(|&i| (di + g * n + gi * n + i, 1.0)));
        }
        let full_w = vec("conv1d.weight", &[cd, 1, k])?;
        let full_b = vec("conv1d.bias", &[cd])?;
        let mut conv_weight = Vec::with_capacity(channels.len() * k);
        let mut conv_bias = Vec::with_capacity(channels.len());
        for &(c, gate) in &channels {
            conv_weight.extend(full_w[c * k..(c + 1) * k].iter().map(|w| w * gate));
            conv_bias.push(full_b[c] * gate);
        }
        let rows: Vec<usize> = (0..di)
            .chain(channels.iter().map(|&(c, _)| di + c))
            .chain(di + cd..di + cd + nh)
            .collect();
        let in_proj = Linear::load(store, &format!("{p}.in_proj"), cfg.in_proj_dim(), h, false)?
            .select_outputs(&rows)?;
        let shape = StateShape {
            conv_dim: channels.len(),
            conv_kernel: k,
            n_heads: nh,
            head_dim: cfg.ssm_head_dim,
            d_state: kept.len(),
        };
        let ssm = Self {
            in_proj,
            conv_weight,
            conv_bias,
            dt_bias: vec("dt_bias", &[nh])?,
            a: vec("A_log", &[nh])?.iter().map(|v| -v.exp()).collect(),
            d: vec("D", &[nh])?,
            norm: vec("norm.weight", &[di])?,
            out_proj: Linear::load(store, &format!("{p}.out_proj"), h, di, false)?,
            shape,
            groups: g,
            eps: cfg.rms_norm_eps as f32,
        };
        Ok((ssm, kept.len()))
    }

    fn num_params(&self) -> usize {
        self.in_proj.num_params()
            + self.conv_weight.len()
            + self.conv_bias.len()
            + 3 * self.a.len()
            + self.norm.len()
            + self.out_proj.num_params()
    }

    /// `[tokens, H] -> [tokens, H]`, continuing each sequence from its state slot.
    fn forward(&self, h: &Tensor, batch: &Batch, cache: &mut StateCache) -> Result<Tensor> {
        let tokens = h.dim(0)?;
        let (di, cd, nh) = (
            self.shape.n_heads * self.shape.head_dim,
            self.shape.conv_dim,
            self.shape.n_heads,
        );
        let proj = to_vec(&self.in_proj.forward(h)?)?;
        let (mut z, mut xbc, mut dt) = (Vec::new(), Vec::new(), Vec::new());
        for row in proj.chunks(di + cd + nh) {
            z.extend_from_slice(&row[..di]);
            xbc.extend_from_slice(&row[di..di + cd]);
            dt.extend(
                row[di + cd..]
                    .iter()
                    .zip(&self.dt_bias)
                    .map(|(v, b)| softplus(v + b)),
            );
        }
        let mut conv_out = vec![0f32; tokens * cd];
        let slots: Vec<usize> = batch.seqs.iter().map(|s| s.state_slot).collect();
        let (conv_states, mut ssm_states): (Vec<_>, Vec<_>) =
            cache.slots_mut(&slots)?.into_iter().unzip();
        for ((s, conv_state), ssm_state) in batch
            .seqs
            .iter()
            .zip(conv_states)
            .zip(ssm_states.iter_mut())
        {
            if s.past_len == 0 {
                conv_state.fill(0.0);
                ssm_state.fill(0.0);
            }
            let rows = s.start * cd..(s.start + s.len) * cd;
            causal_conv1d_silu(
                &xbc[rows.clone()],
                conv_state,
                &self.conv_weight,
                &self.conv_bias,
                self.shape.conv_kernel,
                &mut conv_out[rows],
            );
        }
        let inputs: Vec<ScanInputs> = batch
            .seqs
            .iter()
            .map(|s| ScanInputs {
                xbc: &conv_out[s.start * cd..(s.start + s.len) * cd],
                dt: &dt[s.start * nh..(s.start + s.len) * nh],
                a: &self.a,
                d: &self.d,
            })
            .collect();
        let mut y = vec![0f32; tokens * di];
        let mut ys = Vec::with_capacity(batch.seqs.len());
        let mut rest = y.as_mut_slice();
        for s in &batch.seqs {
            let (head, tail) = rest.split_at_mut(s.len * di);
            ys.push(head);
            rest = tail;
        }
        let dims = ScanDims {
            n_heads: nh,
            head_dim: self.shape.head_dim,
            d_state: self.shape.d_state,
            n_groups: self.groups,
        };
        ssm_scan_batch(&inputs, dims, ssm_states, ys);
        let group = di / self.groups;
        for (row, zrow) in y.chunks_mut(di).zip(z.chunks(di)) {
            for (v, zv) in row.iter_mut().zip(zrow) {
                *v *= silu(*zv);
            }
            for (gr, w) in row.chunks_mut(group).zip(self.norm.chunks(group)) {
                rms_normalize(gr, w, self.eps);
            }
        }
        self.out_proj.forward(&from_vec(y, tokens, di)?)
    }
}

/// One direction of the bridge: `own + σ(gate [own; other] + b) ⊙ proj(other)`.
struct BridgeHalf {
    gate: Linear,
    proj: Linear,
}

impl BridgeHalf {
    fn forward(&self, own: &Tensor, other: &Tensor) -> Result<Tensor> {
        let g = self.gate.forward(&Tensor::cat(&[own, other], 1)?)?;
        let g = g.affine(0.5, 0.0)?.tanh()?.affine(0.5, 0.5)?;
        Ok((own + (g * self.proj.forward(other)?)?)?)
    }
}

struct HybridLayer {
    input_norm: RmsNorm,
    router: Tensor,
    router_bias: f32,
    ssm: SsmPath,
    attn: Attention,
    ffn_norm: RmsNorm,
    ffn: GatedMlp,
    to_ssm: BridgeHalf,
    to_transformer: BridgeHalf,
}

/// A loaded DynamicHybridModel for the engine.
pub struct DynamicHybrid {
    cfg: DynamicHybridConfig,
    embed: Embedding,
    layers: Vec<HybridLayer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    specs: Vec<LayerCacheSpec>,
    info: ModelInfo,
    kept: Vec<usize>,
}

impl DynamicHybrid {
    /// State dimensions kept per layer (the achieved compression is `N / kept`).
    pub fn kept_state_dims(&self) -> &[usize] {
        &self.kept
    }
}

/// Builds a [`DynamicHybrid`] from its config and weights.
pub fn load(config: &serde_json::Value, store: &WeightStore) -> Result<Box<dyn Model>> {
    Ok(Box::new(load_typed(config, store)?))
}

/// [`load`] returning the concrete type.
pub fn load_typed(config: &serde_json::Value, store: &WeightStore) -> Result<DynamicHybrid> {
    let cfg = DynamicHybridConfig::from_value(config)?;
    let (h, v, eps) = (cfg.hidden_dim, cfg.vocab_size, cfg.rms_norm_eps);
    let attention = AttentionConfig {
        hidden_size: h,
        n_heads: cfg.num_heads,
        n_kv_heads: cfg.kv_heads(),
        head_dim: cfg.head_dim(),
        scale: cfg.attention_scale() as f32,
        bias: false,
        rope: None,
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    let mut specs = Vec::with_capacity(2 * cfg.num_layers + 1);
    let mut kept = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let p = format!("layers.{l}");
        let (ssm, k) = SsmPath::load(store, &format!("{p}.ssm"), &cfg)?;
        specs.push(LayerCacheSpec::Recurrent(ssm.shape));
        specs.push(LayerCacheSpec::Attention {
            n_kv_heads: attention.n_kv_heads,
            head_dim: attention.head_dim,
        });
        kept.push(k);
        let half = |gate: &str, proj: &str| -> Result<BridgeHalf> {
            Ok(BridgeHalf {
                gate: Linear::load(store, &format!("{p}.bridge.{gate}"), h, 2 * h, true)?,
                proj: Linear::load(store, &format!("{p}.bridge.{proj}"), h, h, false)?,
            })
        };
        let router_bias = to_vec(&store.f32(&format!("{p}.router.bias"), &[1])?)?;
        layers.push(HybridLayer {
            input_norm: RmsNorm::load(store, &format!("{p}.input_norm.weight"), h, eps)?,
            router: store
                .f32(&format!("{p}.router.weight"), &[1, h])?
                .t()?
                .contiguous()?,
            router_bias: router_bias.first().copied().unwrap_or(0.0),
            ssm,
            attn: Attention::load(store, &format!("{p}.attn"), attention.clone())?,
            ffn_norm: RmsNorm::load(store, &format!("{p}.ffn_norm.weight"), h, eps)?,
            ffn: GatedMlp::load_granite(store, &format!("{p}.ffn"), h, cfg.ffn_dim)?,
            to_ssm: half("gate_s", "proj_t2s")?,
            to_transformer: half("gate_t", "proj_s2t")?,
        });
    }
    // The routers' running SSM counts, one per layer, in a state slot of their own.
    specs.push(LayerCacheSpec::Recurrent(StateShape {
        conv_dim: cfg.num_layers,
        conv_kernel: 2,
        n_heads: 1,
        head_dim: 1,
        d_state: 1,
    }));
    let embed = Embedding::load(store, "embed_tokens.weight", v, h)?;
    let norm = RmsNorm::load(store, "norm.weight", h, eps)?;
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
                    + h
                    + 1
                    + l.ssm.num_params()
                    + l.attn.num_params()
                    + l.ffn_norm.num_params()
                    + l.ffn.num_params()
                    + [&l.to_ssm, &l.to_transformer]
                        .iter()
                        .map(|b| b.gate.num_params() + b.proj.num_params())
                        .sum::<usize>()
            })
            .sum::<usize>();
    let info = ModelInfo {
        architecture: ARCHITECTURE.into(),
        vocab_size: v,
        hidden_size: h,
        layer_kinds: vec![LayerKind::Hybrid; cfg.num_layers],
        num_params,
        weight_bytes: store.loaded_bytes(),
        max_position_embeddings: Some(cfg.max_seq_len),
        eos_token_ids: eos_ids(config),
    };
    Ok(DynamicHybrid {
        cfg,
        embed,
        layers,
        norm,
        lm_head,
        specs,
        info,
        kept,
    })
}

impl DynamicHybrid {
    /// Routes every token of the batch for layer `l`; returns the SSM weights `(r + p)/2`
    /// as `[tokens, 1]` and advances each sequence's running count.
    fn route(
        &self,
        l: usize,
        logits: &[f32],
        batch: &Batch,
        counts: &mut StateCache,
    ) -> Result<Tensor> {
        let quota = RouterQuota {
            capacity: self.cfg.router_capacity,
            slack: self.cfg.router_slack,
        };
        let mut w = vec![0f32; logits.len()];
        for s in &batch.seqs {
            let (count, _) = counts.slot_mut(s.state_slot)?;
            // Counts are whole numbers far below 2^24, exact in f32.
            let before = if s.past_len == 0 {
                0
            } else {
                count[l] as usize
            };
            let span = &logits[s.start..s.start + s.len];
            let routes = quota.route(s.past_len, before, span);
            count[l] = (before + routes.iter().filter(|r| **r).count()) as f32;
            for ((out, &z), r) in w[s.start..].iter_mut().zip(span).zip(routes) {
                *out = (f32::from(u8::from(r)) + sigmoid(z)) * 0.5;
            }
        }
        Ok(Tensor::from_vec(w, (logits.len(), 1), &Device::Cpu)?)
    }
}

impl Model for DynamicHybrid {
    fn forward(&self, batch: &Batch, cache: &mut ModelCache) -> Result<Tensor> {
        batch.validate(self.cfg.vocab_size)?;
        if let Some(s) = batch
            .seqs
            .iter()
            .find(|s| s.past_len + s.len > self.cfg.max_seq_len)
        {
            return Err(Error::request(
                "positions",
                format!(
                    "sequence of {} tokens exceeds max_seq_len {}",
                    s.past_len + s.len,
                    self.cfg.max_seq_len
                ),
            ));
        }
        let layout_error = || Error::request("cache", "cache layout does not match the model");
        let (per_layer, counts) = cache.layers.split_at_mut(2 * self.layers.len());
        let Some(LayerCache::Recurrent(counts)) = counts.first_mut() else {
            return Err(layout_error());
        };
        let mut x = self
            .embed
            .forward(&batch.tokens, self.cfg.embedding_multiplier)?;
        for (l, (layer, caches)) in self.layers.iter().zip(per_layer.chunks_mut(2)).enumerate() {
            let [LayerCache::Recurrent(state), LayerCache::Attention(kv)] = caches else {
                return Err(layout_error());
            };
            let h = layer.input_norm.forward(&x)?;
            let z = to_vec(&h.matmul(&layer.router)?)?;
            let z: Vec<f32> = z.iter().map(|v| v + layer.router_bias).collect();
            let w = self.route(l, &z, batch, counts)?;
            let s = layer.ssm.forward(&h, batch, state)?;
            let a = layer.attn.forward(&h, batch, kv)?;
            let tau = (&a + layer.ffn.forward(&layer.ffn_norm.forward(&(&h + &a)?)?)?)?;
            let s2 = layer.to_ssm.forward(&s, &tau)?;
            let tau2 = layer.to_transformer.forward(&tau, &s)?;
            let o = (s2.broadcast_mul(&w)? + tau2.broadcast_mul(&w.affine(-1.0, 1.0)?)?)?;
            x = (x + o.affine(self.cfg.residual_multiplier, 0.0)?)?;
        }
        let Some(x) = select_logit_rows(&x, batch)? else {
            return no_logits(self.cfg.vocab_size);
        };
        let x = self.norm.forward(&x)?;
        let logits = project(self.lm_head.as_ref(), &self.embed, &x)?;
        Ok((logits / self.cfg.logits_scaling)?)
    }

    fn cache_specs(&self) -> &[LayerCacheSpec] {
        &self.specs
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}
