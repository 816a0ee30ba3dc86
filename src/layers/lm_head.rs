//! The tail every causal LM shares: pick the rows whose logits a batch asks for, then project
//! them with the untied `lm_head` or the tied embedding.

use candle_core::{DType, Device, Tensor};

use super::embedding::Embedding;
use super::linear::Linear;
use crate::engine::batch::Batch;
use crate::error::Result;

/// Rows of `x` whose logits `batch` asks for; `None` when it asks for none.
pub fn select_logit_rows(x: &Tensor, batch: &Batch) -> Result<Option<Tensor>> {
    let rows = batch.logits_row_indices();
    let n = rows.len();
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(x.index_select(
        &Tensor::from_vec(rows, n, &Device::Cpu)?,
        0,
    )?))
}

/// The `[0, vocab]` logits of a batch that asks for no rows.
pub fn no_logits(vocab: usize) -> Result<Tensor> {
    Ok(Tensor::zeros((0, vocab), DType::F32, &Device::Cpu)?)
}

/// Logits of normalised hidden rows: `lm_head` when untied, else the embedding transposed.
pub fn project(lm_head: Option<&Linear>, embed: &Embedding, x: &Tensor) -> Result<Tensor> {
    match lm_head {
        Some(l) => l.forward(x),
        None => embed.project(x),
    }
}
