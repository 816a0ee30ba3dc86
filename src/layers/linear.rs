//! A projection `y = x Wᵀ + b` with the weight in PyTorch's `[out, in]` layout, dense f32 or
//! quantized (ggml blocks run by candle's quantized matmul); see [`Matrix`].

use candle_core::Tensor;

use crate::error::Result;
use crate::loader::safetensors::WeightStore;
use crate::loader::Matrix;

/// A linear layer.
pub struct Linear {
    weight: Matrix,
    bias: Option<Tensor>,
}

impl Linear {
    /// Wraps an existing dense `[out, in]` weight (e.g. a tied embedding).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Matrix::dense(weight),
            bias,
        }
    }

    /// Wraps a dense or quantized matrix.
    pub fn from_matrix(weight: Matrix, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`), checking shapes.
    pub fn load(
        store: &WeightStore,
        prefix: &str,
        out_features: usize,
        in_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = store.matrix(&format!("{prefix}.weight"), [out_features, in_features])?;
        let bias = if bias {
            Some(store.f32(&format!("{prefix}.bias"), &[out_features])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Loads a GPT-2 style `Conv1D` (`{prefix}.weight` stored `[in, out]`, plus `{prefix}.bias`),
    /// transposed once here so the forward is the usual `x Wᵀ + b`.
    pub fn load_conv1d(
        store: &WeightStore,
        prefix: &str,
        in_features: usize,
        out_features: usize,
    ) -> Result<Self> {
        let weight = store
            .f32(&format!("{prefix}.weight"), &[in_features, out_features])?
            .t()?
            .contiguous()?;
        let bias = store.f32(&format!("{prefix}.bias"), &[out_features])?;
        Ok(Self {
            weight: Matrix::dense(weight),
            bias: Some(bias),
        })
    }

    /// A projection onto a subset of this one's outputs: rows `rows` of the weight and bias, in
    /// that order (used to split fused q/k/v projections at load time).
    pub fn select_outputs(&self, rows: &[usize]) -> Result<Self> {
        // Row indices of an existing tensor are below isize::MAX, so the i64 cast is exact.
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::from_vec(idx, rows.len(), &candle_core::Device::Cpu)?;
        Ok(Self {
            weight: self.weight.select_rows(rows)?,
            bias: match &self.bias {
                Some(b) => Some(b.index_select(&idx, 0)?),
                None => None,
            },
        })
    }

    /// Stacks two layers over the same input into one (`a`'s outputs first), e.g. a separate
    /// gate and up projection into a fused one. Biases are kept when both layers have one.
    pub fn concat_out(a: &Linear, b: &Linear) -> Result<Self> {
        let weight = Matrix::concat_rows(&a.weight, &b.weight)?;
        let bias = match (&a.bias, &b.bias) {
            (Some(x), Some(y)) => Some(Tensor::cat(&[x, y], 0)?),
            _ => None,
        };
        Ok(Self { weight, bias })
    }

    /// `[tokens, in] -> [tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.matmul_t(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// [`Self::forward`] as a flat row-major vector (no copy out of a tensor without bias).
    pub fn forward_vec(&self, x: &Tensor) -> Result<Vec<f32>> {
        match &self.bias {
            None => self.weight.matmul_t_vec(x),
            Some(_) => super::to_vec(&self.forward(x)?),
        }
    }

    /// The `[out, in]` weight as f32 (dequantized when stored quantized).
    pub fn weight(&self) -> Result<Tensor> {
        self.weight.to_dense()
    }

    /// The weight matrix as stored.
    pub fn matrix(&self) -> &Matrix {
        &self.weight
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.weight.elem_count() + self.bias.as_ref().map_or(0, |b| b.elem_count())
    }

    /// Bytes the weights occupy in memory.
    pub fn weight_bytes(&self) -> usize {
        self.weight.storage_bytes() + self.bias.as_ref().map_or(0, |b| b.elem_count() * 4)
    }
}
