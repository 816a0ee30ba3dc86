//! The engine loop: `schedule → run → postprocess`. It owns the scheduler (sequences and cache
//! bookkeeping), the model runner (model and cache tensors) and the tokenizer; callers add
//! requests, call [`LlmEngine::step`] and receive per-sequence deltas.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::model_runner::ModelRunner;
use crate::engine::sampler::{logprobs_of, process_logits, sample, RequestRng, TokenHistory};
use crate::engine::scheduler::{Plan, Scheduler};
use crate::engine::sequence::{SeqId, SeqStatus, Sequence};
use crate::engine::text_stream::TextStream;
use crate::error::{Error, Result};
use crate::layers::to_vec;
use crate::outputs::{FinishReason, RequestMetrics, SeqUpdate, StopReason};
use crate::sampling_params::SamplingParams;
use crate::tokenizer::Tokenizer;

/// Counters for monitoring.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// Prompt tokens run through the model (cache hits excluded).
    pub prompt_tokens_computed: u64,
    /// Generated tokens.
    pub generation_tokens: u64,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: u64,
    /// Forward passes.
    pub steps: u64,
}

/// A continuous-batching engine over one model.
pub struct LlmEngine {
    runner: ModelRunner,
    scheduler: Scheduler,
    tokenizer: Option<Arc<Tokenizer>>,
    eos_ids: Vec<u32>,
    max_model_len: usize,
    next_seq_id: SeqId,
    request_ids: HashSet<String>,
    stats: EngineStats,
}

/// What a sampled sequence got this step.
struct Sampled {
    seq_id: SeqId,
    token: u32,
    logprobs: Option<crate::engine::sampler::TokenLogprobs>,
}

impl LlmEngine {
    /// Builds an engine from its parts.
    pub fn new(
        runner: ModelRunner,
        scheduler: Scheduler,
        tokenizer: Option<Arc<Tokenizer>>,
        eos_ids: Vec<u32>,
        max_model_len: usize,
    ) -> Self {
        Self {
            runner,
            scheduler,
            tokenizer,
            eos_ids,
            max_model_len,
            next_seq_id: 0,
            request_ids: HashSet::new(),
            stats: EngineStats::default(),
        }
    }

    /// The tokenizer, if the model has one.
    pub fn tokenizer(&self) -> Option<&Arc<Tokenizer>> {
        self.tokenizer.as_ref()
    }

    /// The model runner.
    pub fn runner(&self) -> &ModelRunner {
        &self.runner
    }

    /// The scheduler (resource counts, prefix-cache stats).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Longest sequence (prompt + output) a request may reach.
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// Counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Whether any request is unfinished.
    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished()
    }

    /// Queues a request of `params.n` completions of `prompt`.
    pub fn add_request(
        &mut self,
        request_id: &str,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<()> {
        params.validate()?;
        let vocab = self.runner.model().info().vocab_size;
        params.validate_vocab(vocab)?;
        if self.request_ids.contains(request_id) {
            return Err(Error::request(
                "request_id",
                format!("`{request_id}` is already running"),
            ));
        }
        if prompt.is_empty() {
            return Err(Error::request("prompt", "is empty"));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::request(
                "prompt",
                format!("token id {bad} is outside the vocabulary (size {vocab})"),
            ));
        }
        if prompt.len() + params.max_tokens > self.max_model_len {
            return Err(Error::request(
                "max_tokens",
                format!(
                    "the context length is {} tokens, but {} were requested ({} in the prompt, {} to generate)",
                    self.max_model_len,
                    prompt.len() + params.max_tokens,
                    prompt.len(),
                    params.max_tokens
                ),
            ));
        }
        if !params.stop.is_empty() && self.tokenizer.is_none() {
            return Err(Error::request("stop", "stop strings need a tokenizer"));
        }
        let params = Arc::new(params);
        let arrival = Instant::now();
        for index in 0..params.n {
            let id = self.next_seq_id;
            self.next_seq_id += 1;
            let seed = params.seed.map(|s| s.wrapping_add(index as u64));
            let text = self.tokenizer.as_ref().map(|_| {
                TextStream::new(
                    &prompt,
                    params.stop.clone(),
                    params.include_stop_str_in_output,
                    params.skip_special_tokens,
                )
            });
            self.scheduler.add(Sequence {
                id,
                request_id: request_id.to_string(),
                index,
                tokens: prompt.clone(),
                prompt_len: prompt.len(),
                num_computed: 0,
                num_cached: 0,
                block_table: Vec::new(),
                block_hashes: Vec::new(),
                slot: None,
                pending_snapshot: None,
                params: params.clone(),
                rng: RequestRng::new(seed),
                status: SeqStatus::Waiting,
                stop_reason: None,
                text,
                logprobs: Vec::new(),
                prompt_logprobs: Vec::new(),
                arrival,
                first_token_at: None,
            });
        }
        self.request_ids.insert(request_id.to_string());
        Ok(())
    }

    /// Aborts every completion of a request, freeing its cache at once.
    pub fn abort(&mut self, request_id: &str) -> Vec<SeqUpdate> {
        let mut updates = Vec::new();
        for id in self.scheduler.seqs_of(request_id) {
            self.scheduler.finish(id, FinishReason::Abort);
            if let Some(seq) = self.scheduler.take_finished(id) {
                updates.push(self.final_update(&seq, Vec::new(), String::new(), Vec::new()));
            }
        }
        self.request_ids.remove(request_id);
        updates
    }

    /// Runs one step: schedule, forward, sample, postprocess. Returns what changed.
    pub fn step(&mut self) -> Result<Vec<SeqUpdate>> {
        let plan = self.scheduler.schedule();
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        self.runner
            .restore(&plan.restores, self.scheduler.prefix_cache())?;
        let batch = self.scheduler.batch(&plan);
        let logits = to_vec(&self.runner.run(&batch)?)?;
        self.stats.steps += 1;
        let sampled = self.sample(&plan, &logits);
        let jobs = self.scheduler.advance(&plan);
        self.runner
            .snapshot(&jobs, self.scheduler.prefix_cache_mut())?;
        self.postprocess(sampled)
    }

    /// Samples a token for every sequence that caught up, and gathers prompt logprobs.
    fn sample(&mut self, plan: &Plan, logits: &[f32]) -> Vec<Sampled> {
        let vocab = self.runner.model().info().vocab_size;
        let mut row = 0usize;
        let mut out = Vec::new();
        for s in &plan.seqs {
            let Some(seq) = self.scheduler.seq_mut(s.seq_id) else {
                continue;
            };
            let start = seq.num_computed;
            let end = start + s.num_tokens;
            let samples = end == seq.tokens.len();
            if seq.num_cached > 0 && start == seq.num_cached {
                self.stats.cached_prompt_tokens += seq.num_cached as u64;
            }
            if start < seq.prompt_len {
                self.stats.prompt_tokens_computed += (end.min(seq.prompt_len) - start) as u64;
            }
            let mut last_row = None;
            if let (Some(k), true) = (seq.params.prompt_logprobs, start < seq.prompt_len) {
                if seq.prompt_logprobs.is_empty() {
                    seq.prompt_logprobs.push(None);
                }
                for i in 0..s.num_tokens {
                    let pos = start + i;
                    let r = &logits[(row + i) * vocab..(row + i + 1) * vocab];
                    if pos + 1 < seq.prompt_len && seq.prompt_logprobs.len() == pos + 1 {
                        seq.prompt_logprobs
                            .push(Some(logprobs_of(r, seq.tokens[pos + 1], k)));
                    }
                }
                last_row = Some(row + s.num_tokens - 1);
                row += s.num_tokens;
            } else if samples {
                last_row = Some(row);
                row += 1;
            }
            if !samples {
                continue;
            }
            let Some(r) = last_row else { continue };
            let raw = &logits[r * vocab..(r + 1) * vocab];
            let mut processed = raw.to_vec();
            let history = TokenHistory {
                prompt: &seq.tokens[..seq.prompt_len],
                output: &seq.tokens[seq.prompt_len..],
            };
            let eos: &[u32] = if seq.params.ignore_eos {
                &[]
            } else {
                &self.eos_ids
            };
            process_logits(&mut processed, &seq.params, &history, eos);
            let params = seq.params.clone();
            let token = sample(&processed, &params, &mut seq.rng);
            let logprobs = params.logprobs.map(|k| logprobs_of(raw, token, k));
            out.push(Sampled {
                seq_id: s.seq_id,
                token,
                logprobs,
            });
        }
        out
    }

    /// Appends sampled tokens, applies stop conditions and builds the step's updates.
    fn postprocess(&mut self, sampled: Vec<Sampled>) -> Result<Vec<SeqUpdate>> {
        let now = Instant::now();
        let mut updates = Vec::new();
        for s in sampled {
            let tokenizer = self.tokenizer.clone();
            let max_model_len = self.max_model_len;
            let Some(seq) = self.scheduler.seq_mut(s.seq_id) else {
                continue;
            };
            seq.tokens.push(s.token);
            seq.first_token_at.get_or_insert(now);
            self.stats.generation_tokens += 1;
            let mut new_logprobs = Vec::new();
            if let Some(lp) = s.logprobs {
                seq.logprobs.push(lp.clone());
                new_logprobs.push(lp);
            }
            let n_out = seq.tokens.len() - seq.prompt_len;
            let p = &seq.params;
            let mut finish = None;
            let past_min = n_out >= p.min_tokens;
            let is_eos = !p.ignore_eos && self.eos_ids.contains(&s.token);
            if past_min && (is_eos || p.stop_token_ids.contains(&s.token)) {
                finish = Some((FinishReason::Stop, Some(StopReason::Token(s.token))));
            }
            if let (Some(text), Some(tok)) = (seq.text.as_mut(), tokenizer.as_deref()) {
                // An EOS token is not text; stop strings are checked on everything else.
                if finish.is_none() {
                    if let Some(stop) = text.push(tok, s.token)? {
                        if past_min {
                            finish = Some((FinishReason::Stop, Some(StopReason::Text(stop))));
                        }
                    }
                }
            }
            if finish.is_none() && (n_out >= p.max_tokens || seq.tokens.len() >= max_model_len) {
                finish = Some((FinishReason::Length, None));
            }
            let prompt_lp =
                (p.prompt_logprobs.is_some() && n_out == 1).then(|| seq.prompt_logprobs.clone());
            match finish {
                None => {
                    let new_text = seq.text.as_mut().map(|t| t.take(false)).unwrap_or_default();
                    updates.push(SeqUpdate {
                        request_id: seq.request_id.clone(),
                        index: seq.index,
                        new_token_ids: vec![s.token],
                        new_text,
                        new_logprobs,
                        prompt_logprobs: prompt_lp,
                        finish: None,
                        metrics: None,
                    });
                }
                Some((reason, stop)) => {
                    if let (Some(text), Some(tok)) = (seq.text.as_mut(), tokenizer.as_deref()) {
                        if let Some(stop_str) = text.finish(tok)? {
                            seq.stop_reason = Some(StopReason::Text(stop_str));
                        }
                    }
                    if seq.stop_reason.is_none() {
                        seq.stop_reason = stop;
                    }
                    let new_text = seq.text.as_mut().map(|t| t.take(true)).unwrap_or_default();
                    let id = seq.id;
                    let request_id = seq.request_id.clone();
                    self.scheduler.finish(id, reason);
                    if let Some(seq) = self.scheduler.take_finished(id) {
                        let mut u = self.final_update(&seq, vec![s.token], new_text, new_logprobs);
                        u.prompt_logprobs = prompt_lp;
                        updates.push(u);
                    }
                    if self.scheduler.seqs_of(&request_id).is_empty() {
                        self.request_ids.remove(&request_id);
                    }
                }
            }
        }
        Ok(updates)
    }

    fn final_update(
        &self,
        seq: &Sequence,
        new_token_ids: Vec<u32>,
        new_text: String,
        new_logprobs: Vec<crate::engine::sampler::TokenLogprobs>,
    ) -> SeqUpdate {
        let now = Instant::now();
        let reason = match seq.status {
            SeqStatus::Finished(r) => r,
            _ => FinishReason::Abort,
        };
        let n_out = seq.tokens.len() - seq.prompt_len;
        let metrics = RequestMetrics {
            time_to_first_token: seq.first_token_at.map(|t| t - seq.arrival),
            total_time: Some(now - seq.arrival),
            decode_tokens_per_s: seq.first_token_at.and_then(|t| {
                let secs = (now - t).as_secs_f64();
                (n_out > 1 && secs > 0.0).then(|| (n_out - 1) as f64 / secs)
            }),
            num_cached_tokens: seq.num_cached,
        };
        SeqUpdate {
            request_id: seq.request_id.clone(),
            index: seq.index,
            new_token_ids,
            new_text,
            new_logprobs,
            prompt_logprobs: None,
            finish: Some((reason, seq.stop_reason.clone())),
            metrics: Some(metrics),
        }
    }
}
