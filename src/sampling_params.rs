//! How to pick each next token and when to stop; validated before a request is accepted.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Per-request sampling and stopping parameters (vLLM's names and meanings).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 = greedy; otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set with cumulative probability ≥ top_p (1 = all).
    pub top_p: f32,
    /// Drop tokens with probability < min_p · max probability (0 = off).
    pub min_p: f32,
    /// Seed of this request's own random stream (None = from entropy).
    pub seed: Option<u64>,
    /// Maximum new tokens.
    pub max_tokens: usize,
    /// Extra token ids that end generation.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            max_tokens: 16,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// Rejects values no sampler can honour, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::request(
                "temperature",
                format!("must be a finite number >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::request(
                "top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::request(
                "min_p",
                format!("must be in [0, 1], got {}", self.min_p),
            ));
        }
        if self.max_tokens == 0 {
            return Err(Error::request("max_tokens", "must be at least 1"));
        }
        Ok(())
    }
}
