//! A sequence's generated text: incremental detokenization plus stop strings. Text is released
//! to the caller only once no stop string can still start inside it, so a stop string is
//! never streamed half-way.

use super::super::tokenizer::detokenizer::Detokenizer;
use super::super::tokenizer::Tokenizer;
use crate::error::Result;

/// Generated text of one sequence, with stop-string detection.
pub struct TextStream {
    detok: Detokenizer,
    text: String,
    released: usize,
    stop: Vec<String>,
    include_stop: bool,
    stopped: bool,
}

impl TextStream {
    /// Starts after `prompt`.
    pub fn new(prompt: &[u32], stop: Vec<String>, include_stop: bool, skip_special: bool) -> Self {
        Self {
            detok: Detokenizer::new(prompt, skip_special),
            text: String::new(),
            released: 0,
            stop,
            include_stop,
            stopped: false,
        }
    }

    /// Adds a token; returns the stop string if one now appears in the text.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        if self.stopped {
            return Ok(None);
        }
        let before = self.text.len();
        let delta = self.detok.push(tok, id)?;
        self.text.push_str(&delta);
        Ok(self.check_stop(before))
    }

    /// Flushes text held back by the detokenizer (end of generation).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<Option<String>> {
        if self.stopped {
            return Ok(None);
        }
        let before = self.text.len();
        let rest = self.detok.flush(tok)?;
        self.text.push_str(&rest);
        Ok(self.check_stop(before))
    }

    fn check_stop(&mut self, before: usize) -> Option<String> {
        let longest = self.stop.iter().map(|s| s.len()).max()?;
        let mut from = before.saturating_sub(longest - 1);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let (pos, s) = self
            .stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|p| (from + p, s)))
            .min_by_key(|(p, _)| *p)?;
        let s = s.clone();
        self.text.truncate(if self.include_stop {
            pos + s.len()
        } else {
            pos
        });
        self.stopped = true;
        Some(s)
    }

    /// Text that is now final and not yet released. Unless `all`, a tail that could be the
    /// start of a stop string is held back.
    pub fn take(&mut self, all: bool) -> String {
        let mut end = self.text.len();
        if !all && !self.stopped {
            let hold = self
                .stop
                .iter()
                .map(|s| longest_suffix_prefix(&self.text[self.released..], s))
                .max()
                .unwrap_or(0);
            end -= hold;
        }
        let out = self.text[self.released..end].to_string();
        self.released = end;
        out
    }

    /// All text so far (stop strings cut).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_prefix() {
        assert_eq!(longest_suffix_prefix("hello wor", "world"), 3);
        assert_eq!(longest_suffix_prefix("hello", "xyz"), 0);
        assert_eq!(longest_suffix_prefix("ab", "abc"), 2);
    }
}
