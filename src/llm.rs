//! The offline entry point: `LLM::new(model, EngineConfig)` plans memory, loads the model and
//! tokenizer, and `generate` runs a list of prompts through the continuous-batching engine.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::cache::prefix_cache::PrefixCache;
use crate::cache::CacheCapacity;
use crate::engine::llm_engine::LlmEngine;
use crate::engine::model_runner::ModelRunner;
use crate::engine::scheduler::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use crate::loader::LoadOptions;
use crate::models::Model;
use crate::outputs::{CompletionOutput, RequestOutput, SeqUpdate};
use crate::sampling_params::SamplingParams;
use crate::tokenizer::Tokenizer;

/// Engine sizing and behaviour.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences running at once (recurrent-state slots).
    pub max_num_seqs: usize,
    /// Most tokens in one forward pass (long prompts are chunked to this).
    pub max_num_batched_tokens: usize,
    /// Longest prompt + output (default: the model's limit, capped at 16384).
    pub max_model_len: Option<usize>,
    /// Tokens per KV block; also the prefix-cache granularity.
    pub kv_block_size: usize,
    /// Bytes for the KV cache of attention layers.
    pub kv_cache_memory: usize,
    /// Bytes for prefix-cache snapshots of recurrent state.
    pub prefix_cache_memory: usize,
    /// Reuse cached prefixes across requests.
    pub enable_prefix_caching: bool,
    /// During prefill, snapshot recurrent state every this many tokens as well (0 = only at
    /// the end of the prompt).
    pub snapshot_interval: usize,
    /// Compute threads (default: all cores).
    pub threads: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 16,
            max_num_batched_tokens: 2048,
            max_model_len: None,
            kv_block_size: 16,
            kv_cache_memory: 2 << 30,
            prefix_cache_memory: 1 << 30,
            enable_prefix_caching: true,
            snapshot_interval: 512,
            threads: None,
        }
    }
}

/// A prompt as text or token ids.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Text, tokenized with the model's tokenizer.
    Text(String),
    /// Token ids used as they are.
    Tokens(Vec<u32>),
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_string())
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Text(s)
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(t: Vec<u32>) -> Self {
        Prompt::Tokens(t)
    }
}

/// The memory plan an engine was built with.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    /// Bytes of weights.
    pub weight_bytes: usize,
    /// KV bytes per token.
    pub kv_bytes_per_token: usize,
    /// Recurrent-state bytes per sequence.
    pub state_bytes_per_seq: usize,
    /// KV blocks (of `kv_block_size` tokens).
    pub kv_blocks: usize,
    /// Tokens the KV cache holds.
    pub kv_tokens: usize,
    /// State slots.
    pub state_slots: usize,
    /// Prefix-cache snapshots that fit the budget.
    pub snapshots: usize,
    /// Longest sequence.
    pub max_model_len: usize,
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "memory plan: weights {:.0} MiB; KV {:.1} KiB/token x {} tokens ({} blocks, {:.0} MiB); \
             recurrent state {:.1} MiB/seq x {} slots ({:.0} MiB); prefix snapshots {} ({:.0} MiB); max_model_len {}",
            mib(self.weight_bytes),
            self.kv_bytes_per_token as f64 / 1024.0,
            self.kv_tokens,
            self.kv_blocks,
            mib(self.kv_bytes_per_token * self.kv_tokens),
            mib(self.state_bytes_per_seq),
            self.state_slots,
            mib(self.state_bytes_per_seq * self.state_slots),
            self.snapshots,
            mib(self.state_bytes_per_seq * self.snapshots),
            self.max_model_len
        )
    }
}

/// Works out cache sizes for `model` under `cfg`.
pub fn plan_memory(model: &dyn Model, cfg: &EngineConfig) -> Result<MemoryPlan> {
    if cfg.max_num_seqs == 0 {
        return Err(Error::config("max_num_seqs", "must be at least 1"));
    }
    if cfg.kv_block_size == 0 {
        return Err(Error::config("kv_block_size", "must be at least 1"));
    }
    if cfg.max_num_batched_tokens == 0 {
        return Err(Error::config(
            "max_num_batched_tokens",
            "must be at least 1",
        ));
    }
    let info = model.info();
    let costs = model.cache_costs();
    let model_limit = info.max_position_embeddings.unwrap_or(16384);
    let max_model_len = match cfg.max_model_len {
        Some(m) if m > model_limit => {
            return Err(Error::config(
                "max_model_len",
                format!("{m} exceeds the model's max_position_embeddings ({model_limit})"),
            ))
        }
        Some(0) => return Err(Error::config("max_model_len", "must be at least 1")),
        Some(m) => m,
        None => model_limit.min(16384),
    };
    let bs = cfg.kv_block_size;
    let kv_blocks = if costs.kv_bytes_per_token > 0 {
        let blocks = cfg.kv_cache_memory / (costs.kv_bytes_per_token * bs);
        if blocks * bs < max_model_len {
            return Err(Error::config(
                "kv_cache_memory",
                format!(
                    "{} bytes hold {} tokens of KV, fewer than max_model_len {max_model_len}",
                    cfg.kv_cache_memory,
                    blocks * bs
                ),
            ));
        }
        blocks
    } else {
        // No KV storage: blocks are only prefix-cache bookkeeping.
        2 * cfg.max_num_seqs * max_model_len.div_ceil(bs)
    };
    let snapshots = if costs.state_bytes_per_seq > 0 && cfg.enable_prefix_caching {
        cfg.prefix_cache_memory / costs.state_bytes_per_seq
    } else {
        0
    };
    Ok(MemoryPlan {
        weight_bytes: info.weight_bytes,
        kv_bytes_per_token: costs.kv_bytes_per_token,
        state_bytes_per_seq: costs.state_bytes_per_seq,
        kv_blocks,
        kv_tokens: kv_blocks * bs,
        state_slots: cfg.max_num_seqs,
        snapshots,
        max_model_len,
    })
}

/// Builds an engine around an already loaded model.
pub fn build_engine(
    model: Box<dyn Model>,
    tokenizer: Option<Arc<Tokenizer>>,
    cfg: &EngineConfig,
) -> Result<(LlmEngine, MemoryPlan)> {
    let plan = plan_memory(model.as_ref(), cfg)?;
    let eos_ids = model.info().eos_token_ids.clone();
    let runner = ModelRunner::new(
        model,
        CacheCapacity {
            state_slots: plan.state_slots,
            kv_blocks: if plan.kv_bytes_per_token > 0 {
                plan.kv_blocks
            } else {
                0
            },
            block_size: cfg.kv_block_size,
        },
    );
    let state_len = runner.state_len();
    let prefix = PrefixCache::new(cfg.kv_block_size, state_len, plan.snapshots);
    let interval = cfg.snapshot_interval / cfg.kv_block_size * cfg.kv_block_size;
    let scheduler = Scheduler::new(
        SchedulerConfig {
            max_num_seqs: cfg.max_num_seqs,
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            block_size: cfg.kv_block_size,
            enable_prefix_caching: cfg.enable_prefix_caching,
            snapshot_interval: interval,
        },
        plan.kv_blocks,
        prefix,
    );
    tracing::info!("{plan}");
    Ok((
        LlmEngine::new(runner, scheduler, tokenizer, eos_ids, plan.max_model_len),
        plan,
    ))
}

/// Sizes the global compute thread pool (first call wins) and pins the thread count that
/// candle's matmul asks for on every call (otherwise it re-reads /proc/cpuinfo each time).
pub fn init_threads(threads: Option<usize>) {
    let n = threads
        .or_else(|| {
            std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    if std::env::var("RAYON_NUM_THREADS").ok().as_deref() != Some(&n.to_string()) {
        // Set before the pool and any worker thread start, as the first thing a process does.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
}

/// An offline LLM: load once, generate for many prompts.
pub struct LLM {
    engine: LlmEngine,
    plan: MemoryPlan,
}

impl LLM {
    /// Loads a model directory (config.json, safetensors, tokenizer.json when present) or a
    /// `.gguf` file.
    pub fn new(model: &Path, cfg: EngineConfig) -> Result<Self> {
        Self::with_options(model, cfg, &LoadOptions::default())
    }

    /// [`LLM::new`] for a model directory or `.gguf` file, with load-time options (e.g.
    /// `--quantize`). A GGUF file brings its own tokenizer.
    pub fn with_options(model: &Path, cfg: EngineConfig, options: &LoadOptions) -> Result<Self> {
        init_threads(cfg.threads);
        let tokenizer = if crate::models::is_gguf(model) || model.join("tokenizer.json").is_file() {
            Some(Arc::new(Tokenizer::from_path(model)?))
        } else {
            None
        };
        let loaded = crate::models::load_with(model, options)?;
        let (engine, plan) = build_engine(loaded, tokenizer, &cfg)?;
        Ok(Self { engine, plan })
    }

    /// Wraps an engine built elsewhere.
    pub fn from_engine(engine: LlmEngine, plan: MemoryPlan) -> Self {
        Self { engine, plan }
    }

    /// The memory plan.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// The engine, for streaming use (`add_request` / `step` / `abort`).
    pub fn engine_mut(&mut self) -> &mut LlmEngine {
        &mut self.engine
    }

    /// Tokenizes a prompt.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Tokens(t) => Ok(t.clone()),
            Prompt::Text(s) => {
                let tok = self.engine.tokenizer().ok_or_else(|| {
                    Error::request("prompt", "text prompts need a tokenizer.json")
                })?;
                tok.encode(s, true)
            }
        }
    }

    /// Generates for every prompt (`params` has one entry for all, or one per prompt). A
    /// request that cannot run (e.g. too long) fails alone; the others complete.
    pub fn generate(
        &mut self,
        prompts: &[Prompt],
        params: &[SamplingParams],
        progress: bool,
    ) -> Result<Vec<Result<RequestOutput>>> {
        if params.len() != 1 && params.len() != prompts.len() {
            return Err(Error::request(
                "sampling_params",
                format!(
                    "give 1 or {} parameter sets, got {}",
                    prompts.len(),
                    params.len()
                ),
            ));
        }
        let mut results: Vec<Option<Result<RequestOutput>>> = Vec::with_capacity(prompts.len());
        let mut index_of: HashMap<String, usize> = HashMap::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let p = params
                .get(i)
                .or_else(|| params.first())
                .cloned()
                .unwrap_or_default();
            let id = format!("offline-{i}");
            let added = self.tokenize(prompt).and_then(|toks| {
                self.engine.add_request(&id, toks.clone(), p.clone())?;
                Ok(toks)
            });
            match added {
                Ok(toks) => {
                    index_of.insert(id.clone(), i);
                    results.push(Some(Ok(RequestOutput {
                        request_id: id,
                        prompt_token_ids: toks,
                        outputs: (0..p.n)
                            .map(|index| CompletionOutput {
                                index,
                                logprobs: p.logprobs.map(|_| Vec::new()),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    })));
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let bar = (progress && index_of.len() > 1).then(|| {
            let bar = indicatif::ProgressBar::new(index_of.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let start = Instant::now();
        while self.engine.has_unfinished() {
            let updates = self.engine.step()?;
            for u in updates {
                let Some(&i) = index_of.get(&u.request_id) else {
                    continue;
                };
                if let Some(Some(Ok(out))) = results.get_mut(i) {
                    let done = u.finish.is_some();
                    apply_update(out, u);
                    if done && out.outputs.iter().all(|o| o.finish_reason.is_some()) {
                        out.finished = true;
                        if let Some(b) = &bar {
                            b.inc(1);
                        }
                    }
                }
            }
            if let Some(b) = &bar {
                let s = self.engine.stats();
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                b.set_message(format!(
                    "prefill {:.0} tok/s, decode {:.0} tok/s",
                    s.prompt_tokens_computed as f64 / secs,
                    s.generation_tokens as f64 / secs
                ));
            }
        }
        if let Some(b) = bar {
            b.finish();
        }
        Ok(results.into_iter().flatten().collect())
    }
}

/// Folds one sequence delta into its request's output.
pub fn apply_update(out: &mut RequestOutput, u: SeqUpdate) {
    if let Some(lp) = u.prompt_logprobs {
        out.prompt_logprobs = Some(lp);
    }
    let Some(c) = out.outputs.get_mut(u.index) else {
        return;
    };
    c.token_ids.extend(u.new_token_ids);
    c.text.push_str(&u.new_text);
    if let Some(lps) = c.logprobs.as_mut() {
        lps.extend(u.new_logprobs);
    }
    if let Some((reason, stop)) = u.finish {
        c.finish_reason = Some(reason);
        c.stop_reason = stop;
        if let Some(m) = u.metrics {
            out.metrics.num_cached_tokens = out.metrics.num_cached_tokens.max(m.num_cached_tokens);
            out.metrics.time_to_first_token = m.time_to_first_token;
            out.metrics.total_time = m.total_time;
            out.metrics.decode_tokens_per_s = m.decode_tokens_per_s;
        }
    }
}
