//! GGUF files (the llama.cpp format). This module owns the translation from llama.cpp's world to
//! Hugging Face's: metadata keys (`{arch}.block_count`, `ssm.*`, per-layer `head_count_kv`, …)
//! become the `config.json` values the model files read, and llama.cpp tensor names
//! (`blk.N.attn_q`, `ssm_a`, `ffn_gate_exps`, …) become checkpoint names, with the converter's
//! rewrites undone (Llama q/k row permutation, Gemma's `+1` on norms, Mamba2's `A = -exp(A_log)`
//! and reshaped conv/D/norm tensors, split gate/up projections). Model files never see GGUF.
//!
//! Quantized tensors stay quantized: [`GgufFile::qtensor`] hands out candle `QTensor`s built from
//! the file's blocks (row permutations and concatenations act on whole rows of blocks, which is
//! exact). Header and tensor ranges are validated at open, so a truncated file is an error that
//! names the tensor, not a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use crate::error::{Error, Result};

pub use super::gguf_map::{open, GgufModel};

/// A converter rewrite to undo when reading a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Use the tensor as stored (reshaped to the Hugging Face shape).
    None,
    /// Undo llama.cpp's q/k row permutation for interleaved RoPE with this many heads.
    Unpermute(usize),
    /// Add a constant (Gemma norms are stored as `1 + w`).
    Add(f32),
    /// Stored `A = -exp(A_log)`; recover `A_log = ln(-A)`.
    ALogFromA,
}

/// Where a Hugging Face tensor comes from in a GGUF file.
#[derive(Debug, Clone)]
pub struct Source {
    /// GGUF tensors whose rows are concatenated (one entry for a plain rename).
    pub parts: Vec<String>,
    /// Rewrite to undo.
    pub transform: Transform,
}

/// One tensor's place in the file.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// ggml block type.
    pub dtype: GgmlDType,
    /// Shape in row-major (PyTorch) order, e.g. `[out, in]` for a projection.
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub range: std::ops::Range<usize>,
}

/// An opened GGUF file: metadata, tensor directory and the mapped bytes.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorEntry>,
    arch: String,
}

impl GgufFile {
    /// Opens and validates a `.gguf` file (header, metadata, every tensor's byte range).
    pub fn open(path: &Path) -> Result<Self> {
        let malformed = |reason: String| Error::MalformedWeights {
            file: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = std::io::BufReader::new(&file);
        let content = Content::read(&mut reader)
            .map_err(|e| malformed(format!("bad GGUF header (truncated or not GGUF?): {e}")))?;
        // SAFETY: read-only map; a file truncated underneath us is the documented mmap hazard.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let base = content.tensor_data_offset as usize;
        let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
        for (name, info) in &content.tensor_infos {
            let shape = info.shape.dims().to_vec();
            let elems: usize = shape.iter().product();
            let block = info.ggml_dtype.block_size();
            if !elems.is_multiple_of(block) {
                return Err(malformed(format!(
                    "tensor `{name}`: {elems} elements is not a multiple of the {:?} block size {block}",
                    info.ggml_dtype
                )));
            }
            let bytes = elems / block * info.ggml_dtype.type_size();
            let start = base.saturating_add(info.offset as usize);
            let end = start.saturating_add(bytes);
            if end > mmap.len() {
                return Err(malformed(format!(
                    "tensor `{name}` needs bytes {start}..{end} but the file has {} (truncated?)",
                    mmap.len()
                )));
            }
            tensors.insert(
                name.clone(),
                TensorEntry {
                    dtype: info.ggml_dtype,
                    shape,
                    range: start..end,
                },
            );
        }
        let arch = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(Error::config(
                    "general.architecture",
                    format!("missing or not a string in {}", path.display()),
                ))
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            metadata: content.metadata,
            tensors,
            arch,
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// All metadata.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// The tensor directory (GGUF names).
    pub fn tensors(&self) -> &HashMap<String, TensorEntry> {
        &self.tensors
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required unsigned integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| Error::config(key, "missing from the GGUF metadata"))
    }

    /// An optional unsigned integer (an error if present with another type).
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => value_usize(v)
                .map(Some)
                .ok_or_else(|| Error::config(key, format!("expected an integer, got {v:?}"))),
        }
    }

    /// An optional float.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => value_f64(v)
                .map(Some)
                .ok_or_else(|| Error::config(key, format!("expected a number, got {v:?}"))),
        }
    }

    /// An optional bool.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Error::config(key, format!("expected a bool, got {v:?}"))),
        }
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(Error::config(key, format!("expected a string, got {v:?}"))),
        }
    }

    /// An optional array of strings.
    pub fn opt_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(Error::config(
                        key,
                        format!("expected strings, found {other:?}"),
                    )),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(Error::config(key, format!("expected an array, got {v:?}"))),
        }
    }

    /// An optional array of numbers.
    pub fn opt_f64_array(&self, key: &str) -> Result<Option<Vec<f64>>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    value_f64(v)
                        .ok_or_else(|| Error::config(key, format!("expected numbers, found {v:?}")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(Error::config(key, format!("expected an array, got {v:?}"))),
        }
    }

    /// A per-layer integer that may be stored as one number or as an array (e.g.
    /// `head_count_kv`, which is 0 for Mamba layers in `granitehybrid`).
    pub fn per_layer(&self, key: &str, n_layers: usize) -> Result<Vec<usize>> {
        match self.metadata.get(key) {
            None => Err(Error::config(key, "missing from the GGUF metadata")),
            Some(Value::Array(a)) => {
                if a.len() != n_layers {
                    return Err(Error::config(
                        key,
                        format!("has {} entries for {n_layers} layers", a.len()),
                    ));
                }
                a.iter()
                    .map(|v| {
                        value_usize(v).ok_or_else(|| {
                            Error::config(key, format!("expected integers, found {v:?}"))
                        })
                    })
                    .collect()
            }
            Some(v) => value_usize(v)
                .map(|n| vec![n; n_layers])
                .ok_or_else(|| Error::config(key, format!("expected an integer, got {v:?}"))),
        }
    }

    /// `{arch}.{suffix}`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    /// Drops the mapped pages of `source`'s tensors once they have been copied out, so a
    /// loaded model does not also keep the file resident (they stay in the page cache; a
    /// later read maps them again). Whole pages inside each tensor only.
    pub fn release(&self, source: &Source) {
        const PAGE: usize = 4096;
        for entry in source.parts.iter().filter_map(|p| self.tensors.get(p)) {
            let first = entry.range.start.div_ceil(PAGE) * PAGE;
            let last = entry.range.end / PAGE * PAGE;
            if last > first && last <= self.mmap.len() {
                // SAFETY: a read-only shared file mapping; after MADV_DONTNEED a read faults
                // the same file bytes back in, so no borrowed slice can observe a change.
                #[cfg(unix)]
                let _ = unsafe {
                    self.mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        first,
                        last - first,
                    )
                };
            }
        }
    }

    /// The raw stored bytes of one GGUF tensor.
    fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        // Ranges were checked against the map length at open.
        &self.mmap[entry.range.clone()]
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            file: self.path.clone(),
        })
    }

    /// The stored block type of `source` when it can be served as a quantized `[rows, cols]`
    /// matrix without touching values: every part shares one type and row length, and the
    /// only rewrite is a row permutation. `None` means "read it through [`Self::dequantize`]".
    pub fn quantized_type(&self, source: &Source, shape: &[usize]) -> Option<GgmlDType> {
        if !matches!(source.transform, Transform::None | Transform::Unpermute(_)) {
            return None;
        }
        let entries: Vec<&TensorEntry> = source
            .parts
            .iter()
            .map(|p| self.tensors.get(p))
            .collect::<Option<_>>()?;
        let first = entries.first()?;
        let row_len = *first.shape.last()?;
        let elems: usize = entries
            .iter()
            .map(|e| e.shape.iter().product::<usize>())
            .sum();
        let uniform = entries
            .iter()
            .all(|e| e.dtype == first.dtype && e.shape.last() == Some(&row_len));
        (uniform && shape.len() == 2 && shape[1] == row_len && elems == shape[0] * shape[1])
            .then_some(first.dtype)
    }

    /// Builds the quantized `[rows, cols]` tensor for `source` from the file's blocks; row
    /// permutation and concatenation move whole rows of blocks, so this is exact. Callers
    /// check [`Self::quantized_type`] first.
    pub fn qtensor(&self, hf_name: &str, source: &Source, shape: &[usize]) -> Result<QTensor> {
        let dtype = self
            .quantized_type(source, shape)
            .ok_or_else(|| Error::DTypeMismatch {
                name: hf_name.into(),
                expected: format!(
                    "GGUF tensors {:?} of one block type and shape {shape:?}",
                    source.parts
                ),
                got: "mixed types or shapes".into(),
            })?;
        let mut data: Vec<u8> = Vec::new();
        for p in &source.parts {
            data.extend_from_slice(self.bytes(self.entry(p)?));
        }
        if let Transform::Unpermute(n_head) = source.transform {
            let row_bytes = shape[1] / dtype.block_size() * dtype.type_size();
            data = unpermute_rows(&data, row_bytes, n_head).ok_or_else(|| {
                Error::config(
                    hf_name,
                    format!(
                        "cannot undo the q/k permutation of {} rows with {n_head} heads",
                        shape[0]
                    ),
                )
            })?;
        }
        Ok(ggml_file::qtensor_from_ggml(
            dtype,
            &data,
            shape.to_vec(),
            &Device::Cpu,
        )?)
    }

    /// The tensor for `source` dequantized to f32 with the Hugging Face `shape`.
    pub fn dequantize(&self, hf_name: &str, source: &Source, shape: &[usize]) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(source.parts.len());
        for p in &source.parts {
            let e = self.entry(p)?;
            let q = ggml_file::qtensor_from_ggml(
                e.dtype,
                self.bytes(e),
                e.shape.clone(),
                &Device::Cpu,
            )?;
            let t = q.dequantize(&Device::Cpu)?;
            let cols = *e.shape.last().unwrap_or(&1);
            let rows = e.shape.iter().product::<usize>() / cols.max(1);
            parts.push(t.reshape((rows, cols))?);
        }
        let t = if parts.len() == 1 {
            parts.remove(0)
        } else {
            Tensor::cat(&parts, 0)?
        };
        let want: usize = shape.iter().product();
        if t.elem_count() != want {
            let got = if source.parts.len() == 1 {
                self.entry(&source.parts[0])?.shape.clone()
            } else {
                t.dims().to_vec()
            };
            return Err(Error::ShapeMismatch {
                name: format!("{hf_name} (GGUF `{}`)", source.parts.join("` + `")),
                expected: shape.to_vec(),
                got,
            });
        }
        let t = match source.transform {
            Transform::None => t,
            Transform::Add(c) => t.affine(1.0, c as f64)?,
            Transform::ALogFromA => t.neg()?.log()?,
            Transform::Unpermute(n_head) => {
                let (rows, cols) = t.dims2()?;
                if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
                    return Err(Error::config(
                        hf_name,
                        format!(
                            "cannot undo the q/k permutation of {rows} rows with {n_head} heads"
                        ),
                    ));
                }
                // Stored rows per head are [pairs.., 2] interleaved; HF wants [2, pairs..].
                t.reshape((n_head, rows / n_head / 2, 2, cols))?
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((rows, cols))?
            }
        };
        Ok(t.reshape(shape)?.to_dtype(DType::F32)?)
    }

    /// Element type and stored bytes per ggml type, sorted by bytes (for `info`).
    pub fn type_summary(&self) -> Vec<(GgmlDType, usize, usize)> {
        let mut by: HashMap<GgmlDType, (usize, usize)> = HashMap::new();
        for e in self.tensors.values() {
            let s = by.entry(e.dtype).or_default();
            s.0 += 1;
            s.1 += e.range.len();
        }
        let mut v: Vec<_> = by.into_iter().map(|(d, (n, b))| (d, n, b)).collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.2));
        v
    }
}

/// Undoes `permute(w, n_head)` of llama.cpp's converter on rows of `row_bytes` bytes:
/// per head, stored row `2j + i` holds Hugging Face row `i * (d/2) + j`.
fn unpermute_rows(data: &[u8], row_bytes: usize, n_head: usize) -> Option<Vec<u8>> {
    let rows = data.len().checked_div(row_bytes)?;
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return None;
    }
    let d = rows / n_head;
    let half = d / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for j in 0..half {
            for i in 0..2 {
                let src = h * d + 2 * j + i;
                let dst = h * d + i * half + j;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Some(out)
}

fn value_usize(v: &Value) -> Option<usize> {
    match v {
        Value::U8(x) => Some(*x as usize),
        Value::U16(x) => Some(*x as usize),
        Value::U32(x) => Some(*x as usize),
        Value::U64(x) => usize::try_from(*x).ok(),
        Value::I8(x) => usize::try_from(*x).ok(),
        Value::I16(x) => usize::try_from(*x).ok(),
        Value::I32(x) => usize::try_from(*x).ok(),
        Value::I64(x) => usize::try_from(*x).ok(),
        _ => None,
    }
}

fn value_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        other => value_usize(other).map(|x| x as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute` on row indices, to check that `unpermute_rows` inverts it.
    fn permute(rows: &[u8], n_head: usize) -> Vec<u8> {
        let d = rows.len() / n_head;
        let mut out = vec![0; rows.len()];
        // reshape(n_head, 2, d/2).swapaxes(1, 2): out[h, j, i] = in[h, i, j]
        for h in 0..n_head {
            for i in 0..2 {
                for j in 0..d / 2 {
                    out[h * d + j * 2 + i] = rows[h * d + i * (d / 2) + j];
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_the_converter() {
        let rows: Vec<u8> = (0..24).collect();
        for n_head in [1, 2, 3, 6] {
            let p = permute(&rows, n_head);
            assert_eq!(
                unpermute_rows(&p, 1, n_head).unwrap(),
                rows,
                "{n_head} heads"
            );
        }
        assert!(unpermute_rows(&rows, 1, 5).is_none());
    }

    /// Writes a tiny `llama` GGUF with the given metadata and one F32 embedding tensor.
    fn write_gguf(path: &Path, meta: &[(&str, Value)], with_embd: bool) {
        let embd = QTensor::quantize(
            &Tensor::zeros((8, 4), DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap();
        let mut f = std::fs::File::create(path).unwrap();
        let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        let tensors: Vec<(&str, &QTensor)> = if with_embd {
            vec![("token_embd.weight", &embd)]
        } else {
            vec![]
        };
        candle_core::quantized::gguf_file::write(&mut f, &meta, &tensors).unwrap();
    }

    #[test]
    fn missing_metadata_and_tensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let arch = ("general.architecture", Value::String("llama".into()));
        write_gguf(&p, std::slice::from_ref(&arch), true);
        let e = open(&p).err().unwrap().to_string();
        assert!(e.contains("llama.embedding_length"), "{e}");
        write_gguf(
            &p,
            &[
                arch.clone(),
                ("llama.embedding_length", Value::U32(4)),
                ("llama.block_count", Value::U32(1)),
            ],
            false,
        );
        let e = open(&p).err().unwrap().to_string();
        assert!(e.contains("token_embd.weight"), "{e}");
        write_gguf(
            &p,
            &[("general.architecture", Value::String("bert".into()))],
            true,
        );
        let e = open(&p).err().unwrap().to_string();
        assert!(e.contains("bert"), "{e}");
        // Truncating the tensor data is caught at open, naming the tensor.
        write_gguf(&p, &[arch], true);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 8]).unwrap();
        let e = GgufFile::open(&p).err().unwrap().to_string();
        assert!(
            e.contains("token_embd.weight") && e.contains("truncated"),
            "{e}"
        );
    }

    #[test]
    fn truncated_and_garbage_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, b"GGUF\x03\x00\x00\x00").unwrap();
        let e = GgufFile::open(&p).err().unwrap().to_string();
        assert!(e.contains("GGUF header"), "{e}");
        std::fs::write(&p, b"not a gguf file at all").unwrap();
        assert!(GgufFile::open(&p).is_err());
    }
}
