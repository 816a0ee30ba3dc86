//! Causal grouped-query attention over a paged KV cache. New keys/values are written into the
//! cache first; every query then attends to its own sequence's cached positions `0..=pos`
//! through the block table, so prefill, chunked prefill and decode share one code path.
//! [`AttentionOptions`] adds the per-architecture variations on that one path: a sliding window
//! over the keys, tanh soft-capping of the scores, and per-head q/k RMSNorm before RoPE.

use candle_core::Tensor;
use rayon::prelude::*;

use super::from_vec;
use super::linear::Linear;
use super::norm::RmsNorm;
use super::rope::Rope;
use crate::cache::KvCache;
use crate::engine::batch::Batch;
use crate::error::{Error, Result};
use crate::kernels::ggml_attention::{attend, Head, Scratch, ValueOrder};
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

/// Variations on plain causal attention; the default is none of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionOptions {
    /// Each query sees only the last `n` positions, its own included (transformers'
    /// `sliding_window_overlay`: `kv_idx > q_idx - n`).
    pub sliding_window: Option<usize>,
    /// Scores become `cap · tanh(score / cap)` after scaling, before the softmax.
    pub logit_softcap: Option<f32>,
    /// Per-head RMSNorm of q and k (`{prefix}.q_norm.weight`, `{prefix}.k_norm.weight`,
    /// `[head_dim]`), applied before RoPE.
    pub qk_norm: Option<QkNorm>,
}

/// How the per-head q/k RMSNorm is parameterised.
#[derive(Debug, Clone, Copy)]
pub struct QkNorm {
    /// Epsilon.
    pub eps: f64,
    /// Gemma's `(1 + w)` scaling instead of `w`.
    pub unit_offset: bool,
}

/// Attention with q/k/v/o projections (`self_attn.{q,k,v,o}_proj`).
pub struct Attention {
    cfg: AttentionConfig,
    opts: AttentionOptions,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    /// llama.cpp's attention arithmetic (GGUF files), see [`crate::kernels::ggml_math`].
    ggml: bool,
    /// llama.cpp holds q/k head dimensions in RoPE pair order (permuted GGUF rows).
    ggml_pair_order: bool,
}

impl Attention {
    /// Loads `{prefix}.{q,k,v,o}_proj`.
    pub fn load(store: &WeightStore, prefix: &str, cfg: AttentionConfig) -> Result<Self> {
        Self::load_with(store, prefix, cfg, AttentionOptions::default())
    }

    /// Loads `{prefix}.{q,k,v,o}_proj` and whatever weights `opts` needs (q/k norms).
    pub fn load_with(
        store: &WeightStore,
        prefix: &str,
        cfg: AttentionConfig,
        opts: AttentionOptions,
    ) -> Result<Self> {
        let mut cfg = cfg;
        let ggml = store.gguf().is_some();
        if ggml {
            // A GGUF file's reference engine is llama.cpp: rotate with its angles.
            cfg.rope = cfg.rope.map(Rope::into_ggml_angles);
        }
        let (h, q, kv) = (
            cfg.hidden_size,
            cfg.n_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
        );
        let qk_norm = match opts.qk_norm {
            None => None,
            Some(n) => {
                let load = |name: &str| {
                    let name = format!("{prefix}.{name}.weight");
                    if n.unit_offset {
                        RmsNorm::load_unit_offset(store, &name, cfg.head_dim, n.eps)
                    } else {
                        RmsNorm::load(store, &name, cfg.head_dim, n.eps)
                    }
                };
                Some((load("q_norm")?, load("k_norm")?))
            }
        };
        Ok(Self {
            q_proj: Linear::load(store, &format!("{prefix}.q_proj"), q, h, cfg.bias)?,
            k_proj: Linear::load(store, &format!("{prefix}.k_proj"), kv, h, cfg.bias)?,
            v_proj: Linear::load(store, &format!("{prefix}.v_proj"), kv, h, cfg.bias)?,
            o_proj: Linear::load(store, &format!("{prefix}.o_proj"), h, q, cfg.bias)?,
            qk_norm,
            cfg,
            opts,
            ggml,
            ggml_pair_order: store.gguf_rows_permuted(&format!("{prefix}.q_proj.weight")),
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
            if l.matrix().dims() != shape {
                return Err(Error::ShapeMismatch {
                    name: name.into(),
                    expected: shape.to_vec(),
                    got: l.matrix().dims(),
                });
            }
        }
        Ok(Self {
            cfg,
            opts: AttentionOptions::default(),
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            qk_norm: None,
            ggml: false,
            ggml_pair_order: false,
        })
    }

    /// `[tokens, hidden] -> [tokens, hidden]`, appending the batch's keys/values to `kv`.
    pub fn forward(&self, x: &Tensor, batch: &Batch, kv: &mut KvCache) -> Result<Tensor> {
        let tokens = x.dim(0)?;
        let (nh, hd) = (self.cfg.n_heads, self.cfg.head_dim);
        let (qd, kd) = (nh * hd, self.cfg.n_kv_heads * hd);
        let mut q = self.q_proj.forward_vec(x)?;
        let mut k = self.k_proj.forward_vec(x)?;
        let v = self.v_proj.forward_vec(x)?;
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            q_norm.forward_chunks(&mut q);
            k_norm.forward_chunks(&mut k);
        }

        // Per token: its sequence's key offsets (all cached positions up to the token's own).
        // Per sequence, offsets start at the first position any of its new tokens can see.
        let window = self.opts.sliding_window;
        let visible_from = |pos: usize| window.map_or(0, |w| (pos + 1).saturating_sub(w.max(1)));
        let mut token_keys: Vec<(usize, usize)> = Vec::with_capacity(tokens); // (seq, pos)
        let mut pair_scratch = Vec::with_capacity(hd);
        let mut seq_offsets = Vec::with_capacity(batch.seqs.len());
        for (si, s) in batch.seqs.iter().enumerate() {
            for i in 0..s.len {
                let (row, pos) = (s.start + i, s.past_len + i);
                if let Some(rope) = &self.cfg.rope {
                    rope.apply(&mut q[row * qd..(row + 1) * qd], pos);
                    rope.apply(&mut k[row * kd..(row + 1) * kd], pos);
                }
                if self.ggml_pair_order {
                    // llama.cpp sums q·k over the head dimensions in RoPE pair order; keys are
                    // cached in that order too (only this layer reads them).
                    to_pair_order(&mut q[row * qd..(row + 1) * qd], hd, &mut pair_scratch);
                    to_pair_order(&mut k[row * kd..(row + 1) * kd], hd, &mut pair_scratch);
                }
                kv.write(
                    &s.block_table,
                    pos,
                    &k[row * kd..(row + 1) * kd],
                    &v[row * kd..(row + 1) * kd],
                )?;
                token_keys.push((si, pos));
            }
            let base = visible_from(s.past_len);
            let offsets = (base..s.past_len + s.len)
                .map(|p| kv.offset(&s.block_table, p))
                .collect::<Result<Vec<_>>>()?;
            seq_offsets.push((base, offsets));
        }

        let (keys, values) = kv.storage();
        let group = nh / self.cfg.n_kv_heads;
        let mut out = vec![0f32; tokens * qd];
        out.par_chunks_mut(hd)
            .enumerate()
            .for_each_init(Scratch::default, |scratch, (idx, o)| {
                let (token, head) = (idx / nh, idx % nh);
                let (seq, pos) = token_keys[token];
                let (base, offsets) = &seq_offsets[seq];
                // llama.cpp sums the values of a batch of new tokens in tinyBLAS order; other
                // models keep one order so results do not depend on how a batch is cut.
                let order = if self.ggml && batch.seqs[seq].len >= 2 {
                    ValueOrder::Tiny
                } else {
                    ValueOrder::VecDot
                };
                let h = Head {
                    q: &q[token * qd + head * hd..token * qd + (head + 1) * hd],
                    keys,
                    values,
                    rows: &offsets[visible_from(pos) - base..=pos - base],
                    kv_offset: (head / group) * hd,
                    scale: self.cfg.scale,
                    softcap: self.opts.logit_softcap,
                    order,
                };
                attend(&h, scratch, o);
            });
        self.o_proj.forward(&from_vec(out, tokens, qd)?)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
            .iter()
            .map(|l| l.num_params())
            .sum::<usize>()
            + self
                .qk_norm
                .as_ref()
                .map_or(0, |(q, k)| q.num_params() + k.num_params())
    }
}

/// Reorders every head of `row` from halves `(i, i + hd/2)` to adjacent pairs `(2i, 2i + 1)`.
fn to_pair_order(row: &mut [f32], hd: usize, scratch: &mut Vec<f32>) {
    let half = hd / 2;
    for head in row.chunks_mut(hd) {
        scratch.clear();
        scratch.extend_from_slice(head);
        for i in 0..half {
            head[2 * i] = scratch[i];
            head[2 * i + 1] = scratch[half + i];
        }
    }
}

#[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::batch::LogitsRows;
    use crate::layers::to_vec;
    use safetensors::tensor::{Dtype, TensorView};

    const H: usize = 8;
    const HD: usize = 4;
    const NH: usize = 2;

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// A store with q/k/v/o (2 query heads, 1 KV head) and q/k norm weights.
    fn store(dir: &std::path::Path) -> WeightStore {
        let shapes: [(&str, Vec<usize>); 6] = [
            ("a.q_proj.weight", vec![NH * HD, H]),
            ("a.k_proj.weight", vec![HD, H]),
            ("a.v_proj.weight", vec![HD, H]),
            ("a.o_proj.weight", vec![H, NH * HD]),
            ("a.q_norm.weight", vec![HD]),
            ("a.k_norm.weight", vec![HD]),
        ];
        let bytes: Vec<Vec<u8>> = shapes
            .iter()
            .enumerate()
            .map(|(i, (_, s))| {
                let v = values(s.iter().product(), i as u32 + 1);
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            })
            .collect();
        let views: Vec<(&str, TensorView)> = shapes
            .iter()
            .zip(&bytes)
            .map(|((n, s), b)| (*n, TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
            .collect();
        let path = dir.join("w.safetensors");
        safetensors::serialize_to_file(views, None, &path).unwrap();
        WeightStore::open_files(&[path]).unwrap()
    }

    /// The math written out: per head, scores over the visible keys, cap, softmax, sum of values.
    fn naive(x: &[f32], tokens: usize, opts: &AttentionOptions, w: &WeightStore) -> Vec<f32> {
        let get = |n: &str| to_vec(&w.raw(n).unwrap()).unwrap();
        let proj = |w: &[f32], out: usize, x: &[f32]| -> Vec<f32> {
            (0..out)
                .map(|o| dot(&w[o * x.len()..(o + 1) * x.len()], x))
                .collect()
        };
        let norm = |v: &mut [f32], w: &[f32]| {
            for head in v.chunks_mut(HD) {
                let ms = head.iter().map(|a| a * a).sum::<f32>() / HD as f32;
                let inv = 1.0 / (ms + 1e-6).sqrt();
                head.iter_mut()
                    .zip(w)
                    .for_each(|(a, w)| *a = *a * inv * (1.0 + w));
            }
        };
        let (wq, wk, wv, wo) = (
            get("a.q_proj.weight"),
            get("a.k_proj.weight"),
            get("a.v_proj.weight"),
            get("a.o_proj.weight"),
        );
        let rows: Vec<&[f32]> = x.chunks(H).collect();
        let mut q: Vec<Vec<f32>> = rows.iter().map(|r| proj(&wq, NH * HD, r)).collect();
        let mut k: Vec<Vec<f32>> = rows.iter().map(|r| proj(&wk, HD, r)).collect();
        let v: Vec<Vec<f32>> = rows.iter().map(|r| proj(&wv, HD, r)).collect();
        if opts.qk_norm.is_some() {
            q.iter_mut().for_each(|r| norm(r, &get("a.q_norm.weight")));
            k.iter_mut().for_each(|r| norm(r, &get("a.k_norm.weight")));
        }
        let mut out = Vec::new();
        for (t, qt) in q.iter().enumerate().take(tokens) {
            let lo = opts.sliding_window.map_or(0, |w| (t + 1).saturating_sub(w));
            let mut att = vec![0f32; NH * HD];
            for h in 0..NH {
                let qh = &qt[h * HD..(h + 1) * HD];
                let mut s: Vec<f32> = (lo..=t).map(|j| dot(qh, &k[j]) * 0.6).collect();
                if let Some(c) = opts.logit_softcap {
                    s.iter_mut().for_each(|v| *v = (*v / c).tanh() * c);
                }
                softmax_in_place(&mut s);
                for (p, j) in s.iter().zip(lo..=t) {
                    for d in 0..HD {
                        att[h * HD + d] += p * v[j][d];
                    }
                }
            }
            out.extend(proj(&wo, H, &att));
        }
        out
    }

    /// Sliding window, soft-capping and q/k norm: a whole prefill and token-by-token decode
    /// through the paged cache both equal the naive computation.
    #[test]
    fn options_match_naive_attention_in_prefill_and_decode() {
        let dir = tempfile::tempdir().unwrap();
        let w = store(dir.path());
        let cfg = AttentionConfig {
            hidden_size: H,
            n_heads: NH,
            n_kv_heads: 1,
            head_dim: HD,
            scale: 0.6,
            bias: false,
            rope: None,
        };
        let tokens = 9;
        let x = values(tokens * H, 99);
        for opts in [
            AttentionOptions::default(),
            AttentionOptions {
                sliding_window: Some(3),
                logit_softcap: Some(0.5),
                qk_norm: Some(QkNorm {
                    eps: 1e-6,
                    unit_offset: true,
                }),
            },
        ] {
            let attn = Attention::load_with(&w, "a", cfg.clone(), opts).unwrap();
            let expected = naive(&x, tokens, &opts, &w);
            let mut kv = KvCache::new(4, 4, 1, HD);
            let b = Batch::new(
                vec![(vec![0; tokens], 0, 0, vec![2, 0, 3])],
                LogitsRows::All,
            );
            let whole = to_vec(
                &attn
                    .forward(&from_vec(x.clone(), tokens, H).unwrap(), &b, &mut kv)
                    .unwrap(),
            )
            .unwrap();
            let mut kv = KvCache::new(4, 4, 1, HD);
            let mut stepped = Vec::new();
            for t in 0..tokens {
                let b = Batch::new(vec![(vec![0], t, 0, vec![1, 3, 0])], LogitsRows::All);
                let row = from_vec(x[t * H..(t + 1) * H].to_vec(), 1, H).unwrap();
                stepped.extend(to_vec(&attn.forward(&row, &b, &mut kv).unwrap()).unwrap());
            }
            for (i, ((a, b), c)) in whole.iter().zip(&stepped).zip(&expected).enumerate() {
                assert!((a - c).abs() < 1e-5, "prefill [{i}]: {a} vs {c}");
                assert!((b - c).abs() < 1e-5, "decode [{i}]: {b} vs {c}");
            }
        }
    }
}
