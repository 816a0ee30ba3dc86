//! [`WeightStore`]: the one weight source model files read, whatever is on disk. Tensors are
//! asked for by their Hugging Face names; a safetensors checkpoint serves them as stored, a GGUF
//! file through the name map of [`super::gguf`]. Projection and embedding matrices come back as a
//! [`Matrix`]: bf16 matrices stay bf16 (packed for the bf16 kernels), quantized ones stay ggml
//! blocks, everything else is f32. [`LoadOptions::quantize`] quantizes matrices at load time.
//! Small tensors (norms, biases, conv and SSM parameters) are always read as f32.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use safetensors::tensor::Dtype;

use super::gguf::{self, GgufModel};
pub use super::matrix::{Bf16Rounding, Matrix};
use super::safetensors::SafetensorsFiles;
use crate::error::{Error, Result};
use crate::kernels::cpu::packed_bf16::PackedBf16;

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

/// How bf16 weight matrices multiply ([`Bf16Rounding`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// Activations stay f32 in every matmul: the f32 result up to summation order.
    Exact,
    /// Prefill GEMMs (more than 64 rows) round activations to bf16 for the bf16 dot-product
    /// instructions, as PyTorch and llama.cpp do with bf16 weights; decode stays exact. BF16
    /// GGUF weights round in every matmul, as llama.cpp does.
    #[default]
    Fast,
}

impl std::str::FromStr for MatmulPrecision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "exact" => Ok(MatmulPrecision::Exact),
            "fast" => Ok(MatmulPrecision::Fast),
            other => Err(Error::request(
                "matmul_precision",
                format!("unknown matmul precision `{other}` (supported: exact, fast)"),
            )),
        }
    }
}

/// Options for [`crate::models::load_with`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Quantize dense projection/embedding matrices at load time.
    pub quantize: Option<Quantization>,
    /// How bf16 matrices multiply.
    pub matmul_precision: MatmulPrecision,
}

enum Backend {
    Safetensors(SafetensorsFiles),
    Gguf(Box<GgufModel>),
}

/// The tensors of a checkpoint (safetensors directory or GGUF file) by Hugging Face name.
pub struct WeightStore {
    backend: Backend,
    quantize: Option<Quantization>,
    precision: MatmulPrecision,
    /// Bytes of every tensor and matrix handed out so far (what the model keeps in memory).
    loaded: AtomicUsize,
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
            precision: MatmulPrecision::default(),
            loaded: AtomicUsize::new(0),
        }
    }

    /// Quantize dense matrices as they are read.
    pub fn with_quantization(mut self, quantize: Option<Quantization>) -> Self {
        self.quantize = quantize;
        self
    }

    /// How bf16 matrices read from now on multiply.
    pub fn with_precision(mut self, precision: MatmulPrecision) -> Self {
        self.precision = precision;
        self
    }

    /// Bytes of all tensors and matrices read so far, as held in memory (f32 tensors at 4
    /// bytes per value, matrices at their storage size). Model loaders read each weight once,
    /// so after loading this is the model's weight memory.
    pub fn loaded_bytes(&self) -> usize {
        self.loaded.load(Ordering::Relaxed)
    }

    fn count(&self, bytes: usize) {
        self.loaded.fetch_add(bytes, Ordering::Relaxed);
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

    /// A GGUF tensor as llama.cpp holds it, without undoing the converter's rewrite (e.g.
    /// Mamba2's stored `A = -exp(A_log)` for `A_log`); `None` for other checkpoints.
    pub fn gguf_as_stored(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        let Backend::Gguf(g) = &self.backend else {
            return Ok(None);
        };
        let src = g.names.get(name).ok_or_else(|| self.missing(name))?;
        let stored = gguf::Source {
            parts: src.parts.clone(),
            transform: gguf::Transform::None,
        };
        Ok(Some(g.file.dequantize(name, &stored, shape)?))
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
        let t = match &self.backend {
            Backend::Safetensors(s) => s.f32(name, shape)?,
            Backend::Gguf(g) => {
                let src = g.names.get(name).ok_or_else(|| self.missing(name))?;
                g.file.dequantize(name, src, shape)?
            }
        };
        self.count(t.elem_count() * 4);
        self.release(name);
        Ok(t)
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

    /// `count` stacked `[rows, cols]` matrices stored as one `[count, rows, cols]` tensor (MoE
    /// experts), one [`Matrix`] each: bf16 stays bf16, anything else is read as f32.
    pub fn stacked_matrices(&self, name: &str, shape: [usize; 3]) -> Result<Vec<Matrix>> {
        let [count, rows, cols] = shape;
        if let Some(bytes) = self.bf16_bytes(name, &shape)? {
            let per = 2 * rows * cols;
            let rounding = self.bf16_rounding(false);
            let out: Vec<Matrix> = (0..count)
                .map(|e| {
                    Matrix::bf16(
                        PackedBf16::from_le_bytes(&bytes[e * per..(e + 1) * per], rows, cols),
                        rounding,
                    )
                })
                .collect();
            self.count(out.iter().map(Matrix::storage_bytes).sum());
            self.release(name);
            return Ok(out);
        }
        let all = self.f32(name, &shape)?;
        (0..count)
            .map(|e| Ok(Matrix::dense(all.get(e)?.contiguous()?)))
            .collect()
    }

    /// The stored bytes of a bf16 safetensors tensor of exactly `shape`, when the matrix is
    /// to stay bf16 (no load-time quantization asked for).
    fn bf16_bytes(&self, name: &str, shape: &[usize]) -> Result<Option<&[u8]>> {
        let Backend::Safetensors(s) = &self.backend else {
            return Ok(None);
        };
        if self.quantize.is_some() || s.dtype(name) != Some(Dtype::BF16) {
            return Ok(None);
        }
        let (bytes, _, stored) = s.bytes(name)?;
        if stored != shape {
            return Err(Error::ShapeMismatch {
                name: name.into(),
                expected: shape.to_vec(),
                got: stored.to_vec(),
            });
        }
        Ok(Some(bytes))
    }

    /// Drops the mapped pages of a tensor that has been copied out.
    fn release(&self, name: &str) {
        match &self.backend {
            Backend::Safetensors(s) => s.release(name),
            Backend::Gguf(g) => {
                if let Some(src) = g.names.get(name) {
                    g.file.release(src);
                }
            }
        }
    }

    /// The activation rounding of a bf16 matrix under this store's precision; GGUF BF16
    /// weights round in every call, as llama.cpp does.
    fn bf16_rounding(&self, gguf: bool) -> Bf16Rounding {
        match (self.precision, gguf) {
            (MatmulPrecision::Exact, _) => Bf16Rounding::Never,
            (MatmulPrecision::Fast, true) => Bf16Rounding::Ggml,
            (MatmulPrecision::Fast, false) => Bf16Rounding::AboveSkinny,
        }
    }

    fn read_matrix(&self, name: &str, shape: [usize; 2], to: Option<GgmlDType>) -> Result<Matrix> {
        let m = self.read_matrix_as_stored(name, shape, to)?;
        self.count(m.storage_bytes());
        self.release(name);
        Ok(m)
    }

    fn read_matrix_as_stored(
        &self,
        name: &str,
        shape: [usize; 2],
        to: Option<GgmlDType>,
    ) -> Result<Matrix> {
        if let Some(bytes) = self.bf16_bytes(name, &shape)? {
            let m = Matrix::bf16(
                PackedBf16::from_le_bytes(bytes, shape[0], shape[1]),
                self.bf16_rounding(false),
            );
            self.release(name);
            return Ok(m);
        }
        let dense = match &self.backend {
            Backend::Safetensors(s) => Matrix::dense(s.f32(name, &shape)?),
            Backend::Gguf(g) => {
                let src = g.names.get(name).ok_or_else(|| self.missing(name))?;
                match g.file.quantized_type(src, &shape) {
                    Some(GgmlDType::F32) | None => {
                        Matrix::dense(g.file.dequantize(name, src, &shape)?)
                    }
                    Some(GgmlDType::F16) => Matrix::Dense {
                        weight: g.file.dequantize(name, src, &shape)?,
                        round_input: Some(candle_core::DType::F16),
                    },
                    Some(GgmlDType::BF16) if to.is_none() => {
                        let q = g.file.qtensor(name, src, &shape)?;
                        return Ok(Matrix::bf16(
                            PackedBf16::from_le_bytes(&q.data()?, shape[0], shape[1]),
                            self.bf16_rounding(true),
                        ));
                    }
                    Some(GgmlDType::BF16) => Matrix::dense(g.file.dequantize(name, src, &shape)?),
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
