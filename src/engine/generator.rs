//! Single-sequence generation: prefill a prompt in chunks through the cache, then decode one
//! token per step with the sampler. The batched engine builds on the same model calls.

use std::time::{Duration, Instant};

use crate::cache::block_pool::BlockPool;
use crate::cache::{CacheCapacity, ModelCache};
use crate::engine::batch::{Batch, LogitsRows};
use crate::engine::sampler::{sample, RequestRng};
use crate::error::{Error, Result};
use crate::layers::to_vec;
use crate::models::Model;
use crate::sampling_params::SamplingParams;

const BLOCK_SIZE: usize = 16;
const SLOT: usize = 0;

/// One sequence's cache and position over a model.
pub struct Generator {
    model: Box<dyn Model>,
    cache: ModelCache,
    block_table: Vec<u32>,
    max_len: usize,
    len: usize,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or stop token was produced.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// Tokens and timings of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New token ids.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Prompt processing time (time to first token).
    pub prefill_time: Duration,
    /// Time spent producing tokens after the first.
    pub decode_time: Duration,
}

impl Generator {
    /// Allocates cache for one sequence of up to `max_len` tokens.
    pub fn new(model: Box<dyn Model>, max_len: usize) -> Self {
        let blocks = max_len.div_ceil(BLOCK_SIZE).max(1);
        let mut pool = BlockPool::new(blocks);
        let block_table = pool.allocate_n(blocks).unwrap_or_default();
        let cache = ModelCache::new(
            model.cache_specs(),
            CacheCapacity {
                state_slots: 1,
                kv_blocks: blocks,
                block_size: BLOCK_SIZE,
            },
        );
        Self {
            model,
            cache,
            block_table,
            max_len,
            len: 0,
        }
    }

    /// The model.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the sequence (the next call starts from empty state).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Appends `tokens` in chunks of at most `chunk`; returns the last token's logits.
    pub fn extend(&mut self, tokens: &[u32], chunk: usize) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::request("prompt", "is empty"));
        }
        if self.len + tokens.len() > self.max_len {
            return Err(Error::request(
                "prompt",
                format!(
                    "{} tokens plus {} cached exceed the context of {}",
                    tokens.len(),
                    self.len,
                    self.max_len
                ),
            ));
        }
        let mut logits = Vec::new();
        for piece in tokens.chunks(chunk.max(1)) {
            let batch = Batch::new(
                vec![(piece.to_vec(), self.len, SLOT, self.block_table.clone())],
                LogitsRows::LastPerSequence,
            );
            logits = to_vec(&self.model.forward(&batch, &mut self.cache)?)?;
            self.len += piece.len();
        }
        Ok(logits)
    }

    /// Generates from a fresh prompt; `on_token` sees each new token as it is chosen.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        prefill_chunk: usize,
        mut on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<Generation> {
        params.validate()?;
        if prompt.len() + params.max_tokens > self.max_len {
            return Err(Error::request(
                "max_tokens",
                format!(
                    "prompt ({}) + max_tokens ({}) exceeds the context of {}",
                    prompt.len(),
                    params.max_tokens,
                    self.max_len
                ),
            ));
        }
        self.reset();
        let mut rng = RequestRng::new(params.seed);
        let eos = self.model.info().eos_token_ids.clone();
        let start = Instant::now();
        let mut logits = self.extend(prompt, prefill_chunk)?;
        let prefill_time = start.elapsed();
        let decode_start = Instant::now();
        let mut tokens = Vec::with_capacity(params.max_tokens);
        let mut finish_reason = FinishReason::Length;
        loop {
            let next = sample(&logits, params, &mut rng);
            tokens.push(next);
            on_token(next)?;
            let stop = (!params.ignore_eos && eos.contains(&next))
                || params.stop_token_ids.contains(&next);
            if stop {
                finish_reason = FinishReason::Stop;
                break;
            }
            if tokens.len() >= params.max_tokens {
                break;
            }
            logits = self.extend(&[next], 1)?;
        }
        Ok(Generation {
            tokens,
            finish_reason,
            prefill_time,
            decode_time: decode_start.elapsed(),
        })
    }
}
