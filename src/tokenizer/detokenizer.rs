//! Incremental detokenization for streaming: emits only text that can no longer change, so a
//! multi-byte character split across tokens is never printed half-way (no U+FFFD mid-stream).

use super::Tokenizer;
use crate::error::Result;

/// Turns a growing list of token ids into text deltas.
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the window decoded for context (so merges at the boundary render right).
    prefix_offset: usize,
    /// End of the text already emitted, as an index into `ids`.
    read_offset: usize,
    skip_special: bool,
}

impl Detokenizer {
    /// Starts after `prompt` (whose text is not emitted).
    pub fn new(prompt: &[u32], skip_special: bool) -> Self {
        // A few prompt tokens of context let the decoder render leading spaces correctly.
        let ctx = prompt.len().saturating_sub(5);
        Self {
            ids: prompt[ctx..].to_vec(),
            prefix_offset: 0,
            read_offset: prompt.len() - ctx,
            skip_special,
        }
    }

    /// Adds a token; returns the newly final text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Text still held back (e.g. an incomplete character at the end), for the final flush.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_string())
    }
}
