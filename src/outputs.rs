//! What the engine hands back: per-request outputs (offline API) and per-step deltas
//! (streaming).

use std::time::Duration;

use serde::Serialize;

use crate::engine::sampler::TokenLogprobs;

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token, stop token or stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The request was aborted.
    Abort,
}

/// What ended a `Stop`: a stop string or token id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StopReason {
    /// A stop string matched.
    Text(String),
    /// A stop token (or EOS) was produced.
    Token(u32),
}

/// One completion of a request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionOutput {
    /// Which of the request's `n` completions this is.
    pub index: usize,
    /// Generated text (stop strings excluded unless requested).
    pub text: String,
    /// Generated token ids.
    pub token_ids: Vec<u32>,
    /// Why it finished (None while running).
    pub finish_reason: Option<FinishReason>,
    /// The stop string or token that finished it.
    pub stop_reason: Option<StopReason>,
    /// Per-token log-probabilities, when requested.
    pub logprobs: Option<Vec<TokenLogprobs>>,
}

/// Timing of a request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestMetrics {
    /// Arrival to first generated token.
    pub time_to_first_token: Option<Duration>,
    /// Arrival to finish.
    pub total_time: Option<Duration>,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: Option<f64>,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
}

/// The result of one request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestOutput {
    /// The caller's request id.
    pub request_id: String,
    /// Prompt token ids.
    pub prompt_token_ids: Vec<u32>,
    /// Per prompt token (None for the first), when requested.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
    /// One entry per completion (`n`).
    pub outputs: Vec<CompletionOutput>,
    /// Whether every completion has finished.
    pub finished: bool,
    /// Timing.
    pub metrics: RequestMetrics,
}

/// What changed for one sequence in one engine step.
#[derive(Debug, Clone, Serialize)]
pub struct SeqUpdate {
    /// The request.
    pub request_id: String,
    /// Which completion of it.
    pub index: usize,
    /// Tokens generated this step.
    pub new_token_ids: Vec<u32>,
    /// Text that became final this step.
    pub new_text: String,
    /// Log-probabilities of the new tokens, when requested.
    pub new_logprobs: Vec<TokenLogprobs>,
    /// Prompt log-probabilities, once, when requested and the prompt has been processed.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
    /// Set when the sequence finished this step.
    pub finish: Option<(FinishReason, Option<StopReason>)>,
    /// Metrics, filled when finished.
    pub metrics: Option<RequestMetrics>,
}
