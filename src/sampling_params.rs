//! How to pick each next token and when to stop (vLLM's names and meanings); validated before
//! a request is accepted, with errors naming the field.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Per-request sampling and stopping parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SamplingParams {
    /// Completions to generate for the prompt.
    pub n: usize,
    /// 0 = greedy; otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set with cumulative probability ≥ top_p (1 = all).
    pub top_p: f32,
    /// Drop tokens with probability < min_p · max probability (0 = off).
    pub min_p: f32,
    /// > 1 discourages tokens already in the prompt or output (CTRL-style divide/multiply).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every token already generated.
    pub frequency_penalty: f32,
    /// Seed of this request's own random stream (None = from entropy).
    pub seed: Option<u64>,
    /// Maximum new tokens.
    pub max_tokens: usize,
    /// End-of-sequence and stop tokens are ignored until this many tokens exist.
    pub min_tokens: usize,
    /// Strings that end generation; the text stops before them.
    pub stop: Vec<String>,
    /// Extra token ids that end generation.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Return this many top log-probabilities per generated token (plus the chosen one).
    pub logprobs: Option<usize>,
    /// Return this many top log-probabilities per prompt token.
    pub prompt_logprobs: Option<usize>,
    /// Leave special tokens out of the text.
    pub skip_special_tokens: bool,
    /// Keep the matched stop string in the text.
    pub include_stop_str_in_output: bool,
    /// Added to the logits of the given token ids before sampling.
    pub logit_bias: HashMap<u32, f32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            n: 1,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: 16,
            min_tokens: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
            skip_special_tokens: true,
            include_stop_str_in_output: false,
            logit_bias: HashMap::new(),
        }
    }
}

/// Most top log-probabilities a request may ask for.
pub const MAX_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// Whether sampling reduces to argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Rejects values no sampler can honour, naming the field.
    pub fn validate(&self) -> Result<()> {
        let finite_in = |field: &str, v: f32, lo: f32, hi: f32| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::request(
                    field,
                    format!("must be in [{lo}, {hi}], got {v}"),
                ))
            }
        };
        if self.n == 0 {
            return Err(Error::request("n", "must be at least 1"));
        }
        finite_in("temperature", self.temperature, 0.0, f32::MAX)?;
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::request(
                "top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        finite_in("min_p", self.min_p, 0.0, 1.0)?;
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::request(
                "repetition_penalty",
                format!("must be > 0, got {}", self.repetition_penalty),
            ));
        }
        finite_in("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        finite_in("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        if self.max_tokens == 0 {
            return Err(Error::request("max_tokens", "must be at least 1"));
        }
        if self.min_tokens > self.max_tokens {
            return Err(Error::request(
                "min_tokens",
                format!(
                    "({}) must not exceed max_tokens ({})",
                    self.min_tokens, self.max_tokens
                ),
            ));
        }
        for (field, v) in [
            ("logprobs", self.logprobs),
            ("prompt_logprobs", self.prompt_logprobs),
        ] {
            if let Some(k) = v {
                if k > MAX_LOGPROBS {
                    return Err(Error::request(
                        field,
                        format!("must be at most {MAX_LOGPROBS}, got {k}"),
                    ));
                }
            }
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::request("stop", "stop strings must not be empty"));
        }
        if let Some((t, b)) = self.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
            return Err(Error::request(
                "logit_bias",
                format!("bias for token {t} is not finite ({b})"),
            ));
        }
        Ok(())
    }

    /// Checks token ids the request names against the vocabulary.
    pub fn validate_vocab(&self, vocab: usize) -> Result<()> {
        if let Some(t) = self.logit_bias.keys().find(|&&t| t as usize >= vocab) {
            return Err(Error::request(
                "logit_bias",
                format!("token id {t} is outside the vocabulary (size {vocab})"),
            ));
        }
        if let Some(t) = self.stop_token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::request(
                "stop_token_ids",
                format!("token id {t} is outside the vocabulary (size {vocab})"),
            ));
        }
        Ok(())
    }
}
