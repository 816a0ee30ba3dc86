//! Mixture of experts with top-k routing: top-k of the raw router logits first, then a softmax
//! over only those k (spec §4.5). Tokens are grouped per expert so each expert runs one matmul.

use candle_core::{Device, Tensor};

use super::linear::Linear;
use super::mlp::swiglu;
use super::{from_vec, to_vec};
use crate::error::{Error, Result};
use crate::loader::safetensors::WeightStore;
use crate::loader::Matrix;

/// Geometry of an MoE block.
#[derive(Debug, Clone, Copy)]
pub struct MoeConfig {
    /// Hidden size.
    pub hidden: usize,
    /// Width of each expert.
    pub intermediate: usize,
    /// Number of experts.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
}

/// Granite-style MoE (`block_sparse_moe.{router.layer, input_linear, output_linear}`).
pub struct Moe {
    cfg: MoeConfig,
    router: Linear,
    /// Per expert `[2I, H]`, gate rows first.
    gate_up: Vec<Matrix>,
    /// Per expert `[H, I]`.
    down: Vec<Matrix>,
}

impl Moe {
    /// Loads the router and stacked expert weights, accepting the legacy and transformers-5 names.
    pub fn load_granite(store: &WeightStore, prefix: &str, cfg: MoeConfig) -> Result<Self> {
        let pick = |a: String, b: String| {
            if store.contains(&a) {
                a
            } else if store.contains(&b) {
                b
            } else {
                a
            }
        };
        let router = pick(format!("{prefix}.router.layer"), format!("{prefix}.router"));
        let gate_up = pick(
            format!("{prefix}.input_linear.weight"),
            format!("{prefix}.experts.gate_up_proj"),
        );
        let down = pick(
            format!("{prefix}.output_linear.weight"),
            format!("{prefix}.experts.down_proj"),
        );
        let (e, i, h) = (cfg.num_experts, cfg.intermediate, cfg.hidden);
        Ok(Self {
            router: Linear::load(store, &router, e, h, false)?,
            gate_up: store.stacked_matrices(&gate_up, [e, 2 * i, h])?,
            down: store.stacked_matrices(&down, [e, h, i])?,
            cfg,
        })
    }

    /// `[tokens, hidden] -> [tokens, hidden]`: the weighted sum of each token's top-k experts.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let tokens = x.dim(0)?;
        let MoeConfig {
            hidden,
            intermediate,
            num_experts,
            top_k,
        } = self.cfg;
        let logits = self.router.forward_vec(x)?;
        let mut assigned: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); num_experts];
        for (t, row) in logits.chunks(num_experts).enumerate() {
            for (e, w) in top_k_softmax(row, top_k) {
                assigned[e].0.push(t as u32);
                assigned[e].1.push(w);
            }
        }
        let mut out = vec![0f32; tokens * hidden];
        for (e, (rows, weights)) in assigned.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let ids = Tensor::from_slice(rows, rows.len(), &Device::Cpu)?;
            let xe = x.index_select(&ids, 0)?;
            let gu = to_vec(&self.gate_up[e].matmul_t(&xe)?)?;
            let act = from_vec(swiglu(&gu, intermediate), rows.len(), intermediate)?;
            let y = to_vec(&self.down[e].matmul_t(&act)?)?;
            for ((&t, &w), yrow) in rows.iter().zip(weights).zip(y.chunks(hidden)) {
                let dst = &mut out[t as usize * hidden..(t as usize + 1) * hidden];
                for (d, v) in dst.iter_mut().zip(yrow) {
                    *d += w * v;
                }
            }
        }
        from_vec(out, tokens, hidden)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.router.num_params()
            + self.gate_up.iter().map(Matrix::elem_count).sum::<usize>()
            + self.down.iter().map(Matrix::elem_count).sum::<usize>()
    }

    /// Checks `top_k` against the expert count.
    pub fn check_config(cfg: &MoeConfig) -> Result<()> {
        if cfg.top_k == 0 || cfg.top_k > cfg.num_experts {
            return Err(Error::config(
                "num_experts_per_tok",
                format!(
                    "must be between 1 and num_local_experts ({}), got {}",
                    cfg.num_experts, cfg.top_k
                ),
            ));
        }
        Ok(())
    }
}

/// The `k` largest logits (ties: lower index first) with softmax weights over just those `k`.
pub fn top_k_softmax(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.truncate(k);
    let max = idx.first().map_or(0.0, |&i| logits[i]);
    let exps: Vec<f32> = idx.iter().map(|&i| (logits[i] - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    idx.into_iter()
        .zip(exps)
        .map(|(i, e)| (i, e / sum))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_then_softmax_over_k() {
        let w = top_k_softmax(&[0.1, 2.0, -1.0, 1.0], 2);
        assert_eq!(w[0].0, 1);
        assert_eq!(w[1].0, 3);
        let e = (-1.0f32).exp();
        assert!((w[0].1 - 1.0 / (1.0 + e)).abs() < 1e-6);
        assert!((w[0].1 + w[1].1 - 1.0).abs() < 1e-6);
    }
}
