//! [`Matrix`]: a `[rows, cols]` weight matrix as the checkpoint gave it, with its matmul. Dense
//! f32, bf16 packed for the bf16 kernels (2 bytes per value; never upcast), or ggml blocks
//! (never dequantized as a whole). Used as `x · Wᵀ` (projections, tied heads) or by row
//! (embeddings).

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Storage, Tensor};

use crate::error::{Error, Result};
use crate::kernels::cpu::bf16_matmul::{self, Activations};
use crate::kernels::cpu::matmul::MAX_SKINNY_ROWS;
use crate::kernels::cpu::packed_bf16::{bf16_value, PackedBf16};
use crate::kernels::cpu::{ggml_bf16, ggml_matmul};

/// When a bf16 matrix multiplies with activations rounded to bf16 (the fast `vdpbf16ps`
/// path) instead of the exact f32 ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Rounding {
    /// Never: every call is exact (`--matmul-precision exact`).
    Never,
    /// Calls with more than [`MAX_SKINNY_ROWS`] rows (prefill GEMMs); decode stays exact.
    AboveSkinny,
    /// Every call, summed in llama.cpp's order ([`ggml_bf16`]): BF16 GGUF weights.
    Ggml,
}

impl Bf16Rounding {
    fn activations(self, rows: usize) -> Activations {
        match self {
            Bf16Rounding::Ggml => Activations::Bf16,
            Bf16Rounding::AboveSkinny if rows > MAX_SKINNY_ROWS => Activations::Bf16,
            _ => Activations::F32,
        }
    }
}

/// A `[rows, cols]` weight matrix used as `x · Wᵀ` or by row.
#[derive(Clone)]
pub enum Matrix {
    /// f32 values. `round_input` mirrors llama.cpp for F16 GGUF weights, whose kernels
    /// round the activations to the weight type before an f32-accumulated dot product.
    Dense {
        /// `[rows, cols]` f32.
        weight: Tensor,
        /// Round activations to this dtype first (F16 GGUF weights only).
        round_input: Option<DType>,
    },
    /// bf16 values in the bf16 kernels' panel layout.
    Bf16 {
        /// The packed values.
        weight: Arc<PackedBf16>,
        /// When the activations are rounded to bf16.
        rounding: Bf16Rounding,
    },
    /// ggml blocks; activations are quantized to the type's dot-product partner (Q8_0/Q8_1/
    /// Q8_K) inside the kernel, as llama.cpp does.
    Quantized(Arc<QTensor>),
}

/// Runs `f` on the values of a 2-D f32 tensor, borrowed when it is contiguous.
fn with_values<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    {
        let (storage, layout) = x.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            if x.dtype() == DType::F32 {
                return Ok(f(&cpu.as_slice::<f32>()?[start..end]));
            }
        }
    }
    let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&v))
}

impl Matrix {
    /// A dense matrix.
    pub fn dense(weight: Tensor) -> Self {
        Matrix::Dense {
            weight,
            round_input: None,
        }
    }

    /// A bf16 matrix.
    pub fn bf16(weight: PackedBf16, rounding: Bf16Rounding) -> Self {
        Matrix::Bf16 {
            weight: Arc::new(weight),
            rounding,
        }
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Matrix::Dense { weight, .. } => weight.dims().to_vec(),
            Matrix::Bf16 { weight, .. } => vec![weight.rows(), weight.cols()],
            Matrix::Quantized(q) => q.shape().dims().to_vec(),
        }
    }

    /// `x · Wᵀ` for `x: [tokens, cols]` → `[tokens, rows]`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Matrix::Dense {
                weight,
                round_input,
            } => {
                let x = match round_input {
                    Some(dt) => x.to_dtype(*dt)?.to_dtype(DType::F32)?,
                    None => x.clone(),
                };
                if let Some(y) = crate::kernels::cpu::matmul::skinny_matmul_t(&x, weight)? {
                    return Ok(y);
                }
                Ok(x.matmul(&weight.t()?)?)
            }
            Matrix::Quantized(q) if !ggml_matmul::supports(q.dtype()) => {
                let mm = QMatMul::QTensor(q.clone());
                Ok(mm.forward(&x.contiguous()?)?)
            }
            _ => {
                let m = x.dims2()?.0;
                let n = self.dims().first().copied().unwrap_or(0);
                Ok(Tensor::from_vec(
                    self.matmul_t_vec(x)?,
                    (m, n),
                    &Device::Cpu,
                )?)
            }
        }
    }

    /// [`Self::matmul_t`] as a flat row-major vector: the bf16 and ggml kernels write it
    /// directly, without the copy out of a tensor (a prefill's projections are MiBs each).
    pub fn matmul_t_vec(&self, x: &Tensor) -> Result<Vec<f32>> {
        match self {
            Matrix::Bf16 { weight, rounding } => {
                let (m, k) = x.dims2()?;
                if k != weight.cols() {
                    return Err(Error::ShapeMismatch {
                        name: "matmul input".into(),
                        expected: vec![m, weight.cols()],
                        got: vec![m, k],
                    });
                }
                let mut y = vec![0f32; m * weight.rows()];
                with_values(x, |xs| match rounding {
                    Bf16Rounding::Ggml => ggml_bf16::matmul_t(xs, m, weight, &mut y),
                    _ => bf16_matmul::matmul_t(xs, m, weight, rounding.activations(m), &mut y),
                })?;
                Ok(y)
            }
            Matrix::Quantized(q) if ggml_matmul::supports(q.dtype()) => {
                let m = x.dims2()?.0;
                with_values(x, |xs| ggml_matmul::matmul_t(q, xs, m))?
            }
            // The kinds `matmul_t` computes as a tensor itself (no recursion back here).
            _ => Ok(self.matmul_t(x)?.flatten_all()?.to_vec1::<f32>()?),
        }
    }

    /// Rows `ids` as `[ids, cols]` f32 (bf16 rows widened, quantized rows dequantized).
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Matrix::Dense { weight, .. } => Ok(weight.index_select(ids, 0)?),
            Matrix::Bf16 { weight, .. } => {
                let ids = ids.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let (n, k) = (weight.rows(), weight.cols());
                let mut out = vec![0f32; ids.len() * k];
                for (&id, row) in ids.iter().zip(out.chunks_mut(k.max(1))) {
                    let id = id as usize;
                    if id >= n {
                        return Err(Error::request(
                            "rows",
                            format!("row {id} is out of range for {n} rows"),
                        ));
                    }
                    weight.row_f32(id, row);
                }
                Ok(Tensor::from_vec(out, (ids.len(), k), &Device::Cpu)?)
            }
            Matrix::Quantized(q) => Ok(q.embedding(ids)?),
        }
    }

    /// Rows `rows` (in that order) as a new matrix of the same kind; bf16 and quantized rows
    /// are copied exactly.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        let n = self.dims().first().copied().unwrap_or(0);
        if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
            return Err(Error::request(
                "rows",
                format!("row {bad} is out of range for {n} rows"),
            ));
        }
        match self {
            Matrix::Dense {
                weight,
                round_input,
            } => {
                let idx: Vec<u32> = rows
                    .iter()
                    .map(|&r| u32::try_from(r).unwrap_or(u32::MAX))
                    .collect();
                let idx = Tensor::from_vec(idx, rows.len(), &Device::Cpu)?;
                Ok(Matrix::Dense {
                    weight: weight.index_select(&idx, 0)?,
                    round_input: *round_input,
                })
            }
            Matrix::Bf16 { weight, rounding } => {
                let k = weight.cols();
                let bits = weight.to_bits();
                let mut out = Vec::with_capacity(rows.len() * k);
                for &r in rows {
                    out.extend_from_slice(&bits[r * k..(r + 1) * k]);
                }
                Ok(Matrix::bf16(
                    PackedBf16::from_bits(&out, rows.len(), k),
                    *rounding,
                ))
            }
            Matrix::Quantized(q) => {
                let (n, k) = q.shape().dims2()?;
                let data = q.data()?;
                let row_bytes = data.len() / n.max(1);
                let mut out = Vec::with_capacity(rows.len() * row_bytes);
                for &r in rows {
                    out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
                }
                Ok(Matrix::Quantized(Arc::new(
                    candle_core::quantized::ggml_file::qtensor_from_ggml(
                        q.dtype(),
                        &out,
                        vec![rows.len(), k],
                        &Device::Cpu,
                    )?,
                )))
            }
        }
    }

    /// `a`'s rows then `b`'s. Matrices of one kind (and quantized type, and bf16 rounding)
    /// are joined exactly; any other mix falls back to dense f32.
    pub fn concat_rows(a: &Matrix, b: &Matrix) -> Result<Matrix> {
        if a.dims().get(1) != b.dims().get(1) {
            return Err(Error::ShapeMismatch {
                name: "concatenated matrix".into(),
                expected: a.dims(),
                got: b.dims(),
            });
        }
        match (a, b) {
            (Matrix::Quantized(x), Matrix::Quantized(y)) if x.dtype() == y.dtype() => {
                let (n1, k) = x.shape().dims2()?;
                let (n2, _) = y.shape().dims2()?;
                let mut data = x.data()?.into_owned();
                data.extend_from_slice(&y.data()?);
                Ok(Matrix::Quantized(Arc::new(
                    candle_core::quantized::ggml_file::qtensor_from_ggml(
                        x.dtype(),
                        &data,
                        vec![n1 + n2, k],
                        &Device::Cpu,
                    )?,
                )))
            }
            (
                Matrix::Bf16 {
                    weight: x,
                    rounding: rx,
                },
                Matrix::Bf16 {
                    weight: y,
                    rounding: ry,
                },
            ) if rx == ry => {
                let mut bits = x.to_bits();
                bits.extend_from_slice(&y.to_bits());
                Ok(Matrix::bf16(
                    PackedBf16::from_bits(&bits, x.rows() + y.rows(), x.cols()),
                    *rx,
                ))
            }
            (
                Matrix::Dense {
                    weight: x,
                    round_input: rx,
                },
                Matrix::Dense {
                    weight: y,
                    round_input: ry,
                },
            ) if rx == ry => Ok(Matrix::Dense {
                weight: Tensor::cat(&[x, y], 0)?,
                round_input: *rx,
            }),
            _ => Ok(Matrix::dense(Tensor::cat(
                &[a.to_dense()?, b.to_dense()?],
                0,
            )?)),
        }
    }

    /// The whole matrix as f32 (widening bf16, dequantizing a quantized one).
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Matrix::Dense { weight, .. } => Ok(weight.clone()),
            Matrix::Bf16 { weight, .. } => {
                let v: Vec<f32> = weight.to_bits().into_iter().map(bf16_value).collect();
                Ok(Tensor::from_vec(
                    v,
                    (weight.rows(), weight.cols()),
                    &Device::Cpu,
                )?)
            }
            Matrix::Quantized(q) => Ok(q.dequantize(&Device::Cpu)?),
        }
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.dims().iter().product()
    }

    /// Bytes held in memory.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Matrix::Dense { weight, .. } => weight.elem_count() * 4,
            Matrix::Bf16 { weight, .. } => weight.storage_bytes(),
            Matrix::Quantized(q) => q.storage_size_in_bytes(),
        }
    }

    /// The storage type: ggml's name for it (`F32`, `BF16`, `Q8_0`, ...).
    pub fn storage_type(&self) -> GgmlDType {
        match self {
            Matrix::Dense { .. } => GgmlDType::F32,
            Matrix::Bf16 { .. } => GgmlDType::BF16,
            Matrix::Quantized(q) => q.dtype(),
        }
    }

    /// The ggml type of a quantized matrix.
    pub fn quant_type(&self) -> Option<GgmlDType> {
        match self {
            Matrix::Dense { .. } | Matrix::Bf16 { .. } => None,
            Matrix::Quantized(q) => Some(q.dtype()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_matrix(rows: usize, cols: usize, rounding: Bf16Rounding) -> (Matrix, Tensor) {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let p = PackedBf16::from_f32(&v, rows, cols);
        let dense = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
        (Matrix::bf16(p, rounding), dense)
    }

    #[test]
    fn bf16_matrix_rows_select_concat_and_dense_agree() {
        let (m, dense) = bf16_matrix(40, 7, Bf16Rounding::Never);
        assert_eq!(m.dims(), vec![40, 7]);
        let ids = Tensor::from_vec(vec![39u32, 0, 5], 3, &Device::Cpu).unwrap();
        let got = m.rows(&ids).unwrap().to_vec2::<f32>().unwrap();
        let want = dense
            .index_select(&ids, 0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(got, want);
        let sel = m.select_rows(&[3, 1]).unwrap();
        assert!(matches!(sel, Matrix::Bf16 { .. }));
        let both = Matrix::concat_rows(&sel, &m).unwrap();
        assert_eq!(both.dims(), vec![42, 7]);
        let d = both.to_dense().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(d[0], want_row(&dense, 3));
        assert_eq!(d[41], want_row(&dense, 39));
        let bad = Tensor::from_vec(vec![40u32], 1, &Device::Cpu).unwrap();
        assert!(m.rows(&bad).is_err());
        assert!(m.select_rows(&[40]).is_err());
        assert!(m.storage_bytes() < dense.elem_count() * 4);
    }

    fn want_row(t: &Tensor, r: usize) -> Vec<f32> {
        t.get(r).unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn bf16_matmul_is_exact_at_decode_and_rounds_prefill_when_asked() {
        let (m, dense) = bf16_matrix(9, 33, Bf16Rounding::AboveSkinny);
        for rows in [3, MAX_SKINNY_ROWS + 5] {
            let x = Tensor::randn(0f32, 1.0, (rows, 33), &Device::Cpu).unwrap();
            let got = m.matmul_t(&x).unwrap();
            let exact = x.matmul(&dense.t().unwrap()).unwrap();
            let rounded = x
                .to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .matmul(&dense.t().unwrap())
                .unwrap();
            let want = if rows > MAX_SKINNY_ROWS {
                &rounded
            } else {
                &exact
            };
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "{rows} rows: {diff}");
        }
        let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(m.matmul_t(&x).is_err());
    }
}
