//! RMSNorm, plain, Gemma's `(1 + w)` form, and gated (Mamba2's `y · silu(z)` normalised per
//! group), and LayerNorm (GPT-2, Falcon).

use candle_core::Tensor;

use super::{from_vec, silu, to_vec};
use crate::error::Result;
use crate::loader::safetensors::WeightStore;

/// `w ⊙ v / sqrt(mean(v²) + eps)` over the last dimension.
pub struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    /// Loads `{name}` of shape `[dim]`.
    pub fn load(store: &WeightStore, name: &str, dim: usize, eps: f64) -> Result<Self> {
        let weight = to_vec(&store.f32(name, &[dim])?)?;
        Ok(Self {
            weight,
            eps: eps as f32,
        })
    }

    /// Loads Gemma's RMSNorm, which scales by `1 + w` (weights stored centred on 0). The sum is
    /// formed once in f32, as `Gemma3RMSNorm` does before multiplying.
    pub fn load_unit_offset(store: &WeightStore, name: &str, dim: usize, eps: f64) -> Result<Self> {
        let mut norm = Self::load(store, name, dim, eps)?;
        norm.weight.iter_mut().for_each(|w| *w += 1.0);
        Ok(norm)
    }

    /// Normalises each row of `[tokens, dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, cols) = x.dims2()?;
        let mut v = to_vec(x)?;
        for row in v.chunks_mut(cols) {
            rms_normalize(row, &self.weight, self.eps);
        }
        from_vec(v, rows, cols)
    }

    /// Normalises every `dim`-sized chunk of `v` in place (e.g. each head of a q/k row).
    pub fn forward_chunks(&self, v: &mut [f32]) {
        for chunk in v.chunks_mut(self.weight.len().max(1)) {
            rms_normalize(chunk, &self.weight, self.eps);
        }
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.weight.len()
    }
}

/// Normalises `row` in place and scales it by `weight`. The squares are summed in f64 and
/// the scale formed in f32 as ggml's `rms_norm` does, so a GGUF model sees bit-identical
/// normalised activations (which then feed quantized matmuls, where one flipped rounding
/// moves the logits visibly).
pub fn rms_normalize(row: &mut [f32], weight: &[f32], eps: f32) {
    let sum: f64 = row.iter().map(|v| (v * v) as f64).sum();
    let mean_sq = (sum / row.len() as f64) as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for (v, w) in row.iter_mut().zip(weight) {
        *v = *v * inv * w;
    }
}

/// Mamba2's gated RMSNorm: `g = y ⊙ silu(z)`, normalised within `groups` contiguous groups,
/// then scaled (spec §4.3 step 7: the gate comes before the norm).
pub struct GatedRmsNorm {
    weight: Vec<f32>,
    groups: usize,
    eps: f32,
}

impl GatedRmsNorm {
    /// Loads `{name}` of shape `[dim]`.
    pub fn load(
        store: &WeightStore,
        name: &str,
        dim: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        let weight = to_vec(&store.f32(name, &[dim])?)?;
        Ok(Self {
            weight,
            groups,
            eps: eps as f32,
        })
    }

    /// Gates `y` by `z` and normalises, in place; both are `[tokens, dim]` row-major.
    pub fn forward_in_place(&self, y: &mut [f32], z: &[f32]) {
        let dim = self.weight.len();
        let group = dim / self.groups;
        for (row, zrow) in y.chunks_mut(dim).zip(z.chunks(dim)) {
            for (v, zv) in row.iter_mut().zip(zrow) {
                *v *= silu(*zv);
            }
            for (g, w) in row.chunks_mut(group).zip(self.weight.chunks(group)) {
                rms_normalize(g, w, self.eps);
            }
        }
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.weight.len()
    }
}

/// `w ⊙ (v − mean(v)) / sqrt(var(v) + eps) + b` over the last dimension (biased variance, as
/// `torch.nn.LayerNorm`).
pub struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias`, both `[dim]`.
    pub fn load(store: &WeightStore, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: to_vec(&store.f32(&format!("{prefix}.weight"), &[dim])?)?,
            bias: to_vec(&store.f32(&format!("{prefix}.bias"), &[dim])?)?,
            eps: eps as f32,
        })
    }

    /// Normalises each row of `[tokens, dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, cols) = x.dims2()?;
        let mut v = to_vec(x)?;
        for row in v.chunks_mut(cols) {
            // Two passes in f64: mean first, then the variance about it, so large offsets in the
            // residual stream do not cancel catastrophically.
            let n = row.len() as f64;
            let mean = row.iter().map(|&a| a as f64).sum::<f64>() / n;
            let var = row.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (var + self.eps as f64).sqrt();
            for ((a, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *a = ((*a as f64 - mean) * inv) as f32 * w + b;
            }
        }
        from_vec(v, rows, cols)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.weight.len() + self.bias.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_matches_the_formula() {
        let ln = LayerNorm {
            weight: vec![1.0, 2.0, 0.5, 1.0],
            bias: vec![0.0, 0.1, -0.1, 1.0],
            eps: 1e-5,
        };
        let x = from_vec(vec![1.0, 2.0, 3.0, 6.0], 1, 4).unwrap();
        let y = to_vec(&ln.forward(&x).unwrap()).unwrap();
        // mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5
        let inv = 1.0 / (3.5f32 + 1e-5).sqrt();
        let expect = [-2.0 * inv, -inv * 2.0 + 0.1, -0.1, 3.0 * inv + 1.0];
        for (a, b) in y.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {expect:?}");
        }
    }
}
