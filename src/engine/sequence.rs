//! One sequence (one of a request's `n` completions): its tokens, how many of them the cache
//! already holds, the cache resources it owns, and its sampling state.

use std::sync::Arc;
use std::time::Instant;

use crate::cache::prefix_cache::SnapshotId;
use crate::engine::sampler::{RequestRng, TokenLogprobs};
use crate::engine::text_stream::TextStream;
use crate::outputs::{FinishReason, StopReason};
use crate::sampling_params::SamplingParams;

/// Engine-wide sequence id.
pub type SeqId = u64;

/// Where a sequence is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStatus {
    /// Queued (new or preempted), holding no cache.
    Waiting,
    /// Holding a state slot and KV blocks.
    Running,
    /// Done; resources returned.
    Finished(FinishReason),
}

/// A sequence and everything the engine tracks about it.
pub struct Sequence {
    /// Engine-wide id.
    pub id: SeqId,
    /// The caller's request id.
    pub request_id: String,
    /// Index among the request's completions.
    pub index: usize,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    /// Prompt length.
    pub prompt_len: usize,
    /// Tokens whose KV / recurrent state the cache holds.
    pub num_computed: usize,
    /// Prompt tokens served from the prefix cache at the last admission.
    pub num_cached: usize,
    /// KV blocks covering positions `0..num_computed` (and the next step's).
    pub block_table: Vec<u32>,
    /// Chain hashes of the full blocks registered so far.
    pub block_hashes: Vec<u64>,
    /// Recurrent-state slot while running.
    pub slot: Option<usize>,
    /// Rolling snapshot of the state at the newest block boundary reached while decoding,
    /// published to the prefix cache when the sequence finishes.
    pub pending_snapshot: Option<(SnapshotId, usize)>,
    /// Sampling parameters (shared by the request's completions).
    pub params: Arc<SamplingParams>,
    /// This sequence's random stream.
    pub rng: RequestRng,
    /// Lifecycle state.
    pub status: SeqStatus,
    /// Why it stopped, with the stop string/token.
    pub stop_reason: Option<StopReason>,
    /// Generated text.
    pub text: Option<TextStream>,
    /// Log-probabilities of generated tokens (when requested).
    pub logprobs: Vec<TokenLogprobs>,
    /// Prompt log-probabilities gathered during prefill (when requested).
    pub prompt_logprobs: Vec<Option<TokenLogprobs>>,
    /// When the request arrived.
    pub arrival: Instant,
    /// When the first token was generated.
    pub first_token_at: Option<Instant>,
}

impl Sequence {
    /// Generated tokens.
    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Tokens not yet in the cache.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Whether the sequence is still processing tokens that are not its last (prefill).
    pub fn in_prefill(&self) -> bool {
        self.num_uncomputed() > 1
    }

    /// Whether the sequence has finished.
    pub fn is_finished(&self) -> bool {
        matches!(self.status, SeqStatus::Finished(_))
    }
}
