//! [`WeightStore`]: the one weight source model files read, whatever is on disk. Tensors are
//! asked for by their Hugging Face names; a safetensors checkpoint serves them as stored, a GGUF
//! file through the name map of [`super::gguf`]. Projection and embedding matrices come back as a
//! [`Matrix`], dense f32 or quantized (ggml blocks, run by candle's `QMatMul`), so quantized
//! files are never dequantized as a whole. [`LoadOptions::quantize`] quantizes dense matrices at
//! load time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::gguf::{self, GgufModel};
use super::safetensors::SafetensorsFiles;
use crate::error::{Error, Result};
use crate::kernels::cpu::ggml_matmul;

/// Load-time weight conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// ggml Q8_0 (8-bit, blocks of 32).
    Q8_0,
    /// ggml Q4_K (4-bit k-quant, super-blocks of 256; embeddings use Q6_K as llama.cpp's Q4_K_M).
    Q4K,
}

impl Quantization {
    fn matrix_type(self) -> GgmlDType {
        match self {
            Quantization::Q8_0 => GgmlDType::Q8_0,
            Quantization::Q4K => GgmlDType::Q4K,
        }
    }

    fn embedding_type(self) -> GgmlDType {
        match self {
            Quantization::Q8_0 => GgmlDType::Q8_0,
            Quantization::Q4K => GgmlDType::Q6K,
        }
    }
}

impl std::str::FromStr for Quantization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(Quantization::Q8_0),
            "q4_k" | "q4k" => Ok(Quantization::Q4K),
            other => Err(Error::request(
                "quantize",
                format!("unknown quantization `{other}` (supported: q8_0, q4_k)"),
            )),
        }
    }
}

/// Options for [`crate::models::load_with`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Quantize dense projection/embedding matrices at load time.
    pub quantize: Option<Quantization>,
}

/// A `[rows, cols]` weight matrix used as `x · Wᵀ` (projections, tied heads) or by row
/// (embeddings).
#[derive(Clone)]
pub enum Matrix {
    /// f32 values. `round_input` mirrors llama.cpp for F16/BF16 GGUF weights, whose kernels
    /// round the activations to the weight type before an f32-accumulated dot product.
    Dense {
        /// `[rows, cols]` f32.
        weight: Tensor,
        /// Round activations to this dtype first (F16/BF16 GGUF weights only).
        round_input: Option<DType>,
    },
    /// ggml blocks; activations are quantized to the type's dot-product partner (Q8_0/Q8_1/
    /// Q8_K) inside the kernel, as llama.cpp does.
    Quantized(Arc<QTensor>),
}

impl Matrix {
    /// A dense matrix.
    pub fn dense(weight: Tensor) -> Self {
        Matrix::Dense {
            weight,
            round_input: None,
        }
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Matrix::Dense { weight, .. } => weight.dims().to_vec(),
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
            Matrix::Quantized(q) if ggml_matmul::supports(q.dtype()) => {
                let (m, _) = x.dims2()?;
                let n = q.shape().dims2()?.0;
                let y = ggml_matmul::matmul_t(q, &x.flatten_all()?.to_vec1::<f32>()?, m)?;
                Ok(Tensor::from_vec(y, (m, n), &Device::Cpu)?)
            }
            Matrix::Quantized(q) => {
                let mm = QMatMul::QTensor(q.clone());
                Ok(mm.forward(&x.contiguous()?)?)
            }
        }
    }

    /// Rows `ids` as `[ids, cols]` f32 (quantized rows are dequantized one by one).
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Matrix::Dense { weight, .. } => Ok(weight.index_select(ids, 0)?),
            Matrix::Quantized(q) => Ok(q.embedding(ids)?),
        }
    }

    /// Rows `rows` (in that order) as a new matrix of the same kind; quantized rows are whole
    /// runs of blocks, copied exactly.
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

    /// `a`'s rows then `b`'s. Quantized matrices of one type are joined block-exactly; any
    /// other mix falls back to dense f32.
    pub fn concat_rows(a: &Matrix, b: &Matrix) -> Result<Matrix> {
        match (a, b) {
            (Matrix::Quantized(x), Matrix::Quantized(y))
                if x.dtype() == y.dtype() && x.shape().dims().get(1) == y.shape().dims().get(1) =>
            {
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

    /// The whole matrix as f32 (dequantizing a quantized one).
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Matrix::Dense { weight, .. } => Ok(weight.clone()),
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
            Matrix::Quantized(q) => q.storage_size_in_bytes(),
        }
    }

    /// The ggml type of a quantized matrix.
    pub fn quant_type(&self) -> Option<GgmlDType> {
        match self {
            Matrix::Dense { .. } => None,
            Matrix::Quantized(q) => Some(q.dtype()),
        }
    }
}

enum Backend {
    Safetensors(SafetensorsFiles),
    Gguf(Box<GgufModel>),
}

/// The tensors of a checkpoint (safetensors directory or GGUF file) by Hugging Face name.
pub struct WeightStore {
    backend: Backend,
    quantize: Option<Quantization>,
}

impl WeightStore {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`, in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        Ok(Self::from_backend(Backend::Safetensors(
            SafetensorsFiles::open_dir(dir)?,
        )))
    }

    /// Opens the given safetensors files as one store.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        Ok(Self::from_backend(Backend::Safetensors(
            SafetensorsFiles::open_files(paths)?,
        )))
    }

    /// Opens a `.gguf` file; its translated config is [`Self::gguf_config`].
    pub fn open_gguf(path: &Path) -> Result<Self> {
        Ok(Self::from_backend(Backend::Gguf(Box::new(gguf::open(
            path,
        )?))))
    }

    fn from_backend(backend: Backend) -> Self {
        Self {
            backend,
            quantize: None,
        }
    }

    /// Quantize dense matrices as they are read.
    pub fn with_quantization(mut self, quantize: Option<Quantization>) -> Self {
        self.quantize = quantize;
        self
    }

    /// The `config.json` equivalent of a GGUF file's metadata.
    pub fn gguf_config(&self) -> Option<&serde_json::Value> {
        match &self.backend {
            Backend::Gguf(g) => Some(&g.config),
            Backend::Safetensors(_) => None,
        }
    }

    /// The GGUF model behind this store, if any.
    pub fn gguf(&self) -> Option<&GgufModel> {
        match &self.backend {
            Backend::Gguf(g) => Some(g),
            Backend::Safetensors(_) => None,
        }
    }

    /// Whether a GGUF tensor's rows were stored permuted for interleaved RoPE (Llama-body q/k
    /// in llama.cpp's converter), i.e. whether llama.cpp sees its head dimensions in pair order.
    pub fn gguf_rows_permuted(&self, name: &str) -> bool {
        match &self.backend {
            Backend::Gguf(g) => g
                .names
                .get(name)
                .is_some_and(|src| matches!(src.transform, gguf::Transform::Unpermute(_))),
            Backend::Safetensors(_) => false,
        }
    }

    /// Whether the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        match &self.backend {
            Backend::Safetensors(s) => s.contains(name),
            Backend::Gguf(g) => g.names.contains_key(name),
        }
    }

    /// All tensor names in the checkpoint (Hugging Face names).
    pub fn names(&self) -> Vec<&str> {
        match &self.backend {
            Backend::Safetensors(s) => s.names().collect(),
            Backend::Gguf(g) => g.names.keys().map(|s| s.as_str()).collect(),
        }
    }

    fn missing(&self, name: &str) -> Error {
        let file = match &self.backend {
            Backend::Safetensors(s) => s.origin().to_path_buf(),
            Backend::Gguf(g) => g.file.path().to_path_buf(),
        };
        Error::MissingTensor {
            name: name.into(),
            file,
        }
    }

    /// Reads a floating-point weight as f32, checking its shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match &self.backend {
            Backend::Safetensors(s) => s.f32(name, shape),
            Backend::Gguf(g) => {
                let src = g.names.get(name).ok_or_else(|| self.missing(name))?;
                g.file.dequantize(name, src, shape)
            }
        }
    }

    /// Reads a tensor in its stored dtype (GGUF tensors come back as f32).
    pub fn raw(&self, name: &str) -> Result<Tensor> {
        match &self.backend {
            Backend::Safetensors(s) => s.raw(name),
            Backend::Gguf(g) => {
                let src = g.names.get(name).ok_or_else(|| self.missing(name))?;
                let elems: usize = src
                    .parts
                    .iter()
                    .filter_map(|p| g.file.tensors().get(p))
                    .map(|e| e.shape.iter().product::<usize>())
                    .sum();
                g.file.dequantize(name, src, &[elems])
            }
        }
    }

    /// A `[rows, cols]` projection matrix, quantized when the file is (or when asked to).
    pub fn matrix(&self, name: &str, shape: [usize; 2]) -> Result<Matrix> {
        self.read_matrix(name, shape, self.quantize.map(Quantization::matrix_type))
    }

    /// A `[vocab, hidden]` embedding table, quantized when the file is (or when asked to).
    pub fn embedding(&self, name: &str, shape: [usize; 2]) -> Result<Matrix> {
        self.read_matrix(name, shape, self.quantize.map(Quantization::embedding_type))
    }

    fn read_matrix(&self, name: &str, shape: [usize; 2], to: Option<GgmlDType>) -> Result<Matrix> {
        let dense = match &self.backend {
            Backend::Safetensors(s) => Matrix::dense(s.f32(name, &shape)?),
            Backend::Gguf(g) => {
                let src = g.names.get(name).ok_or_else(|| self.missing(name))?;
                match g.file.quantized_type(src, &shape) {
                    Some(GgmlDType::F32) | None => {
                        Matrix::dense(g.file.dequantize(name, src, &shape)?)
                    }
                    Some(dt @ (GgmlDType::F16 | GgmlDType::BF16)) => Matrix::Dense {
                        weight: g.file.dequantize(name, src, &shape)?,
                        round_input: Some(if dt == GgmlDType::F16 {
                            DType::F16
                        } else {
                            DType::BF16
                        }),
                    },
                    Some(_) => {
                        return Ok(Matrix::Quantized(Arc::new(
                            g.file.qtensor(name, src, &shape)?,
                        )))
                    }
                }
            }
        };
        match (to, &dense) {
            (Some(dt), Matrix::Dense { weight, .. })
                if shape[1].is_multiple_of(dt.block_size()) =>
            {
                Ok(Matrix::Quantized(Arc::new(QTensor::quantize(weight, dt)?)))
            }
            _ => Ok(dense),
        }
    }

    /// Total bytes of tensor data in the checkpoint.
    pub fn data_bytes(&self) -> usize {
        match &self.backend {
            Backend::Safetensors(s) => s.data_bytes(),
            Backend::Gguf(g) => g.file.tensors().values().map(|e| e.range.len()).sum(),
        }
    }
}
