//! Reading checkpoints from disk: safetensors and GGUF weights behind one [`WeightStore`], and
//! `config.json`.

pub mod config_json;
pub mod gguf;
pub mod gguf_map;
pub mod matrix;
pub mod safetensors;
pub mod weights;

pub use weights::{Bf16Rounding, LoadOptions, MatmulPrecision, Matrix, Quantization, WeightStore};
