//! The flat, padding-free batch a model forward consumes: the new tokens of every scheduled
//! sequence concatenated, with per-sequence spans, cache positions, state slot and KV block table.

use crate::error::{Error, Result};

/// One sequence's share of a [`Batch`].
#[derive(Debug, Clone)]
pub struct SeqSpan {
    /// Offset of this sequence's first new token in [`Batch::tokens`].
    pub start: usize,
    /// Number of new tokens this step.
    pub len: usize,
    /// Tokens of this sequence already in the cache (its first new token's position).
    pub past_len: usize,
    /// Recurrent-state slot (Mamba layers) owned by the sequence.
    pub state_slot: usize,
    /// KV blocks (attention layers) holding positions `0..past_len + len`, in order.
    pub block_table: Vec<u32>,
}

/// Which rows of logits a forward returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogitsRows {
    /// One row per new token (validation, prompt logprobs).
    All,
    /// One row per sequence: its last new token (generation).
    LastPerSequence,
    /// The given token rows, ascending (the engine's mix of sampling and prompt logprobs).
    Selected(Vec<u32>),
}

/// A batch of new tokens from several sequences, processed in one forward.
#[derive(Debug, Clone)]
pub struct Batch {
    /// New token ids of all sequences, concatenated.
    pub tokens: Vec<u32>,
    /// Per-sequence spans into `tokens`.
    pub seqs: Vec<SeqSpan>,
    /// Which logits rows to compute.
    pub logits: LogitsRows,
}

impl Batch {
    /// Builds a batch from `(new tokens, past_len, slot, block table)` per sequence.
    pub fn new(parts: Vec<(Vec<u32>, usize, usize, Vec<u32>)>, logits: LogitsRows) -> Self {
        let mut tokens = Vec::new();
        let mut seqs = Vec::with_capacity(parts.len());
        for (toks, past_len, state_slot, block_table) in parts {
            seqs.push(SeqSpan {
                start: tokens.len(),
                len: toks.len(),
                past_len,
                state_slot,
                block_table,
            });
            tokens.extend(toks);
        }
        Self {
            tokens,
            seqs,
            logits,
        }
    }

    /// Absolute position of every token in the batch.
    pub fn positions(&self) -> Vec<usize> {
        let mut pos = Vec::with_capacity(self.tokens.len());
        for s in &self.seqs {
            pos.extend(s.past_len..s.past_len + s.len);
        }
        pos
    }

    /// Indices of the token rows whose logits are requested.
    pub fn logits_row_indices(&self) -> Vec<u32> {
        match &self.logits {
            LogitsRows::All => (0..self.tokens.len() as u32).collect(),
            LogitsRows::LastPerSequence => self
                .seqs
                .iter()
                .map(|s| (s.start + s.len - 1) as u32)
                .collect(),
            LogitsRows::Selected(rows) => rows.clone(),
        }
    }

    /// Checks the spans tile `tokens` exactly, every sequence has new tokens, and every id is in
    /// the vocabulary; a model may then index without further checks.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        let mut expected = 0;
        for (i, s) in self.seqs.iter().enumerate() {
            if s.start != expected || s.len == 0 {
                return Err(Error::request(
                    "batch",
                    format!(
                        "sequence {i} span {}..+{} does not tile the batch",
                        s.start, s.len
                    ),
                ));
            }
            expected += s.len;
        }
        if expected != self.tokens.len() {
            return Err(Error::request("batch", "spans do not cover all tokens"));
        }
        if let LogitsRows::Selected(rows) = &self.logits {
            if rows.iter().any(|&r| r as usize >= self.tokens.len()) {
                return Err(Error::request(
                    "batch",
                    "a selected logits row is out of range",
                ));
            }
        }
        if let Some(&bad) = self.tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(Error::request(
                "token_ids",
                format!("token id {bad} is outside the vocabulary (size {vocab_size})"),
            ));
        }
        Ok(())
    }
}
