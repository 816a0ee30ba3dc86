//! Causal grouped-query attention over a paged KV cache. New keys/values are written into the
//! cache first; every query then attends to its own sequence's cached positions `0..=pos`
//! through the block table, so prefill, chunked prefill and decode share one code path.

use candle_core::Tensor;
use rayon::prelude::*;

use super::linear::Linear;
use super::rope::Rope;
use super::{from_vec, to_vec};
use crate::cache::KvCache;
use crate::engine::batch::Batch;
use crate::error::{Error, Result};
use crate::loader::safetensors::WeightStore;

/// Geometry and scaling of an attention layer.
#[derive(Debug, Clone)]
pub struct AttentionConfig {
    /// Hidden size of the residual stream.
    pub hidden_size: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA: `n_heads` is a multiple of it).
    pub n_kv_heads: usize,
    /// Dimension of each head.
    pub head_dim: usize,
    /// Softmax scale applied to `q·k` (the whole scale, e.g. `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Whether q/k/v/o projections have biases.
    pub bias: bool,
    /// Rotary embedding, or `None` for NoPE.
    pub rope: Option<Rope>,
}

/// Attention with q/k/v/o projections (`self_attn.{q,k,v,o}_proj`).
pub struct Attention {
    cfg: AttentionConfig,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
}

impl Attention {
    /// Loads `{prefix}.{q,k,v,o}_proj`.
    pub fn load(store: &WeightStore, prefix: &str, cfg: AttentionConfig) -> Result<Self> {
        let (h, q, kv) = (
            cfg.hidden_size,
            cfg.n_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
        );
        Ok(Self {
            q_proj: Linear::load(store, &format!("{prefix}.q_proj"), q, h, cfg.bias)?,
            k_proj: Linear::load(store, &format!("{prefix}.k_proj"), kv, h, cfg.bias)?,
            v_proj: Linear::load(store, &format!("{prefix}.v_proj"), kv, h, cfg.bias)?,
            o_proj: Linear::load(store, &format!("{prefix}.o_proj"), h, q, cfg.bias)?,
            cfg,
        })
    }

    /// Builds attention from projections the caller has already loaded (e.g. split out of a
    /// fused QKV weight), checking their shapes against `cfg`.
    pub fn from_projections(
        cfg: AttentionConfig,
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
        o_proj: Linear,
    ) -> Result<Self> {
        let (h, q, kv) = (
            cfg.hidden_size,
            cfg.n_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
        );
        for (name, l, shape) in [
            ("q_proj", &q_proj, [q, h]),
            ("k_proj", &k_proj, [kv, h]),
            ("v_proj", &v_proj, [kv, h]),
            ("o_proj", &o_proj, [h, q]),
        ] {
            if l.weight().dims() != shape {
                return Err(Error::ShapeMismatch {
                    name: name.into(),
                    expected: shape.to_vec(),
                    got: l.weight().dims().to_vec(),
                });
            }
        }
        Ok(Self {
            cfg,
            q_proj,
            k_proj,
            v_proj,
            o_proj,
        })
    }

    /// `[tokens, hidden] -> [tokens, hidden]`, appending the batch's keys/values to `kv`.
    pub fn forward(&self, x: &Tensor, batch: &Batch, kv: &mut KvCache) -> Result<Tensor> {
        let tokens = x.dim(0)?;
        let (nh, hd) = (self.cfg.n_heads, self.cfg.head_dim);
        let (qd, kd) = (nh * hd, self.cfg.n_kv_heads * hd);
        let mut q = to_vec(&self.q_proj.forward(x)?)?;
        let mut k = to_vec(&self.k_proj.forward(x)?)?;
        let v = to_vec(&self.v_proj.forward(x)?)?;

        // Per token: its sequence's key offsets (all cached positions up to the token's own).
        let mut token_keys: Vec<(usize, usize)> = Vec::with_capacity(tokens); // (seq, pos)
        let mut seq_offsets = Vec::with_capacity(batch.seqs.len());
        for (si, s) in batch.seqs.iter().enumerate() {
            for i in 0..s.len {
                let (row, pos) = (s.start + i, s.past_len + i);
                if let Some(rope) = &self.cfg.rope {
                    rope.apply(&mut q[row * qd..(row + 1) * qd], pos);
                    rope.apply(&mut k[row * kd..(row + 1) * kd], pos);
                }
                kv.write(
                    &s.block_table,
                    pos,
                    &k[row * kd..(row + 1) * kd],
                    &v[row * kd..(row + 1) * kd],
                )?;
                token_keys.push((si, pos));
            }
            let offsets = (0..s.past_len + s.len)
                .map(|p| kv.offset(&s.block_table, p))
                .collect::<Result<Vec<_>>>()?;
            seq_offsets.push(offsets);
        }

        let (kstore, vstore) = kv.storage();
        let group = nh / self.cfg.n_kv_heads;
        let scale = self.cfg.scale;
        let mut out = vec![0f32; tokens * qd];
        out.par_chunks_mut(hd)
            .enumerate()
            .for_each_init(Vec::new, |scores, (idx, o)| {
                let (token, head) = (idx / nh, idx % nh);
                let (seq, pos) = token_keys[token];
                let kv_off = (head / group) * hd;
                let qrow = &q[token * qd + head * hd..token * qd + (head + 1) * hd];
                let offsets = &seq_offsets[seq][..=pos];
                scores.clear();
                scores.extend(offsets.iter().map(|&off| {
                    let krow = &kstore[off + kv_off..off + kv_off + hd];
                    dot(qrow, krow) * scale
                }));
                softmax_in_place(scores);
                for (&p, &off) in scores.iter().zip(offsets) {
                    let vrow = &vstore[off + kv_off..off + kv_off + hd];
                    for (acc, vv) in o.iter_mut().zip(vrow) {
                        *acc += p * vv;
                    }
                }
            });
        self.o_proj.forward(&from_vec(out, tokens, qd)?)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
            .iter()
            .map(|l| l.num_params())
            .sum()
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Numerically stable softmax.
pub fn softmax_in_place(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}
