//! Memory-mapped safetensors checkpoints: one file or the shards named by
//! `model.safetensors.index.json`. Headers are validated when a file is opened (offsets,
//! sizes, truncation), so a later tensor read cannot run past the mapped bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// The format-independent store model files use (re-exported here, where they import it from).
pub use super::weights::WeightStore;

/// One mapped safetensors file with its parsed header.
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

/// The tensors of a safetensors checkpoint, read lazily from memory-mapped files.
pub struct SafetensorsFiles {
    files: Vec<MappedFile>,
    by_name: HashMap<String, usize>,
    origin: PathBuf,
}

impl SafetensorsFiles {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`, in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::MalformedWeights {
                    file: index.clone(),
                    reason: e.to_string(),
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::MalformedWeights {
                    file: index.clone(),
                    reason: "no `weight_map` object".into(),
                })?;
            let mut shards: Vec<String> = Vec::new();
            for value in map.values() {
                let shard = value.as_str().ok_or_else(|| Error::MalformedWeights {
                    file: index.clone(),
                    reason: "a `weight_map` value is not a file name".into(),
                })?;
                if !shards.iter().any(|s| s == shard) {
                    shards.push(shard.to_string());
                }
            }
            let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
            let mut store = Self::open_files(&paths)?;
            // The index promises where each tensor lives; a shard that lacks one is truncated or stale.
            for (name, shard) in map {
                if !store.by_name.contains_key(name) {
                    return Err(Error::MissingTensor {
                        name: name.clone(),
                        file: dir.join(shard.as_str().unwrap_or_default()),
                    });
                }
            }
            store.origin = dir.to_path_buf();
            Ok(store)
        } else if single.is_file() {
            Self::open_files(&[single])
        } else {
            Err(Error::MalformedWeights {
                file: dir.to_path_buf(),
                reason: "no model.safetensors or model.safetensors.index.json in this directory"
                    .into(),
            })
        }
    }

    /// Opens the given safetensors files as one store.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut by_name = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the map is read-only; a file truncated underneath us is the documented
            // hazard of memory-mapped checkpoints, shared by every mmap-based loader.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| Error::MalformedWeights {
                    file: path.clone(),
                    reason: describe_safetensors_error(&e),
                })?;
            for name in metadata.tensors().keys() {
                by_name.insert(name.clone(), i);
            }
            files.push(MappedFile {
                path: path.clone(),
                mmap,
                data_start: 8 + header_len,
                metadata,
            });
        }
        let origin = paths.first().cloned().unwrap_or_default();
        Ok(Self {
            files,
            by_name,
            origin,
        })
    }

    /// The directory or first file the store was opened from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Whether the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// All tensor names in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(|s| s.as_str())
    }

    /// The on-disk shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.info(name).map(|(_, info)| info.shape.as_slice())
    }

    /// The on-disk dtype of a tensor, if present.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.info(name).map(|(_, info)| info.dtype)
    }

    fn info(&self, name: &str) -> Option<(&MappedFile, &TensorInfo)> {
        let file = self.files.get(*self.by_name.get(name)?)?;
        Some((file, file.metadata.info(name)?))
    }

    /// Reads a floating-point weight as f32, checking its shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self.raw(name)?;
        if tensor.dims() != shape {
            return Err(Error::ShapeMismatch {
                name: name.into(),
                expected: shape.to_vec(),
                got: tensor.dims().to_vec(),
            });
        }
        match tensor.dtype() {
            DType::F32 => Ok(tensor),
            DType::BF16 | DType::F16 | DType::F64 => Ok(tensor.to_dtype(DType::F32)?),
            other => Err(Error::DTypeMismatch {
                name: name.into(),
                expected: "F32, BF16, F16 or F64".into(),
                got: format!("{other:?}"),
            }),
        }
    }

    /// Reads a tensor in its stored dtype (any dtype candle knows).
    pub fn raw(&self, name: &str) -> Result<Tensor> {
        let (bytes, dtype, shape) = self.bytes(name)?;
        let dtype = candle_dtype(dtype).ok_or_else(|| Error::DTypeMismatch {
            name: name.into(),
            expected: "a numeric dtype".into(),
            got: format!("{dtype:?}"),
        })?;
        let t = Tensor::from_raw_buffer(bytes, dtype, shape, &Device::Cpu)?;
        self.release(name);
        Ok(t)
    }

    /// Drops the mapped pages of a tensor that has been copied out from this process's
    /// resident memory (they stay in the page cache), so loading a checkpoint does not hold
    /// it twice: once mapped, once converted. Best effort; a later read maps them again.
    pub fn release(&self, name: &str) {
        let Some((file, info)) = self.info(name) else {
            return;
        };
        let page = 4096;
        let (start, end) = info.data_offsets;
        // Whole pages inside the tensor only, so neighbours are untouched.
        let first = (file.data_start + start).div_ceil(page) * page;
        let last = (file.data_start + end) / page * page;
        if last > first && last <= file.mmap.len() {
            // SAFETY: a read-only shared file mapping; after MADV_DONTNEED a read faults the
            // same file bytes back in, so no borrowed slice can observe a change.
            #[cfg(unix)]
            let _ = unsafe {
                file.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    first,
                    last - first,
                )
            };
        }
    }

    /// A tensor's stored bytes (little-endian, in the mapped file), dtype and shape.
    pub fn bytes(&self, name: &str) -> Result<(&[u8], Dtype, &[usize])> {
        let (file, info) = self.info(name).ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            file: self.origin.clone(),
        })?;
        let (start, end) = info.data_offsets;
        let bytes = file
            .mmap
            .get(file.data_start + start..file.data_start + end)
            .ok_or_else(|| Error::MalformedWeights {
                file: file.path.clone(),
                reason: format!("tensor `{name}` lies outside the file"),
            })?;
        Ok((bytes, info.dtype, &info.shape))
    }

    /// Total bytes of tensor data in the checkpoint.
    pub fn data_bytes(&self) -> usize {
        self.files.iter().map(|f| f.metadata.data_len()).sum()
    }
}

fn candle_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::U32 => DType::U32,
        Dtype::U8 => DType::U8,
        _ => return None,
    })
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            "file size does not match its header (truncated or padded file)".into()
        }
        E::HeaderTooSmall | E::InvalidHeaderLength => {
            "file is too short to hold a safetensors header (truncated?)".into()
        }
        other => format!("bad safetensors header: {other}"),
    }
}
