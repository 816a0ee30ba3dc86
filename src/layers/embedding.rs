//! Token embedding lookup, and learned absolute position embeddings (GPT-2 `wpe`). Tables are
//! dense or quantized (quantized rows are dequantized per looked-up token, never as a whole
//! table); the token table doubles as a tied output head ([`Embedding::project`]).

use candle_core::{Device, Tensor};

use crate::engine::batch::Batch;
use crate::error::{Error, Result};
use crate::loader::safetensors::WeightStore;
use crate::loader::Matrix;

/// A `[vocab, hidden]` embedding table.
pub struct Embedding {
    table: Matrix,
}

impl Embedding {
    /// Loads `name` of shape `[vocab, hidden]`.
    pub fn load(store: &WeightStore, name: &str, vocab: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            table: store.embedding(name, [vocab, hidden])?,
        })
    }

    /// Rows for `tokens` (ids already checked against the vocabulary), scaled by `multiplier`.
    pub fn forward(&self, tokens: &[u32], multiplier: f64) -> Result<Tensor> {
        let ids = Tensor::from_slice(tokens, tokens.len(), &Device::Cpu)?;
        let x = self.table.rows(&ids)?;
        Ok(if multiplier == 1.0 {
            x
        } else {
            x.affine(multiplier, 0.0)?
        })
    }

    /// Tied output head: `[tokens, hidden] -> [tokens, vocab]` logits `x · tableᵀ`.
    pub fn project(&self, x: &Tensor) -> Result<Tensor> {
        self.table.matmul_t(x)
    }

    /// The table as stored.
    pub fn matrix(&self) -> &Matrix {
        &self.table
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.table.elem_count()
    }

    /// Bytes the table occupies in memory.
    pub fn weight_bytes(&self) -> usize {
        self.table.storage_bytes()
    }
}

/// Learned absolute position embeddings: row `p` of a `[max_positions, hidden]` table is added
/// to the token at absolute position `p` (`past_len + i`), so chunked prefill and decode see the
/// same rows as one whole-prompt forward.
pub struct PositionEmbedding {
    table: Embedding,
    max_positions: usize,
}

impl PositionEmbedding {
    /// Loads `name` of shape `[max_positions, hidden]`.
    pub fn load(
        store: &WeightStore,
        name: &str,
        max_positions: usize,
        hidden: usize,
    ) -> Result<Self> {
        Ok(Self {
            table: Embedding::load(store, name, max_positions, hidden)?,
            max_positions,
        })
    }

    /// `[tokens, hidden]` rows for every token of `batch`, at its absolute position.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let positions = batch
            .positions()
            .into_iter()
            .map(|p| {
                u32::try_from(p)
                    .ok()
                    .filter(|_| p < self.max_positions)
                    .ok_or_else(|| {
                        Error::request(
                            "positions",
                            format!(
                                "position {p} is beyond the model's {} learned positions",
                                self.max_positions
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        self.table.forward(&positions, 1.0)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.table.num_params()
    }
}
