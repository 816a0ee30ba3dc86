//! Token embedding lookup.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::loader::safetensors::WeightStore;

/// A `[vocab, hidden]` embedding table.
pub struct Embedding {
    table: Tensor,
}

impl Embedding {
    /// Loads `name` of shape `[vocab, hidden]`.
    pub fn load(store: &WeightStore, name: &str, vocab: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            table: store.f32(name, &[vocab, hidden])?,
        })
    }

    /// Rows for `tokens` (ids already checked against the vocabulary), scaled by `multiplier`.
    pub fn forward(&self, tokens: &[u32], multiplier: f64) -> Result<Tensor> {
        let ids = Tensor::from_slice(tokens, tokens.len(), &Device::Cpu)?;
        let x = self.table.index_select(&ids, 0)?;
        Ok(if multiplier == 1.0 {
            x
        } else {
            x.affine(multiplier, 0.0)?
        })
    }

    /// The `[vocab, hidden]` table (for tied output heads).
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.table.elem_count()
    }
}
