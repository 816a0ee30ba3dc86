//! Runs an [`LlmEngine`] on its own thread and talks to it through channels, so servers and
//! interactive front-ends never share locks with the hot loop. Each request gets a stream of
//! [`StreamEvent`]s; dropping the receiver aborts the request and frees its cache at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::engine::llm_engine::LlmEngine;
use crate::error::{Error, Result};
use crate::outputs::SeqUpdate;
use crate::sampling_params::SamplingParams;
use crate::tokenizer::Tokenizer;

/// What a request's stream carries.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    /// New tokens/text for one completion (and its end, when `finish` is set).
    Update(SeqUpdate),
    /// The request failed inside the engine.
    Error(String),
}

/// A snapshot of engine state for monitoring.
#[derive(Debug, Clone, Default)]
pub struct EngineStatus {
    /// Running sequences.
    pub running: usize,
    /// Waiting sequences.
    pub waiting: usize,
    /// KV blocks in use and in total.
    pub kv_blocks: (usize, usize),
    /// State slots in use and in total.
    pub state_slots: (usize, usize),
    /// Fraction of admissions that reused cached blocks.
    pub prefix_cache_hit_rate: f64,
    /// Prompt tokens computed so far.
    pub prompt_tokens: u64,
    /// Prompt tokens served from the prefix cache so far.
    pub cached_prompt_tokens: u64,
    /// Tokens generated so far.
    pub generation_tokens: u64,
}

enum Command {
    Add {
        id: String,
        prompt: Vec<u32>,
        params: Box<SamplingParams>,
        out: UnboundedSender<StreamEvent>,
    },
    Abort(String),
    Shutdown,
}

/// Facts about the engine that callers check before submitting.
#[derive(Clone)]
pub struct EngineInfo {
    /// The tokenizer, when the model has one.
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// Longest prompt + output.
    pub max_model_len: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
}

/// A cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    info: EngineInfo,
    status: Arc<Mutex<EngineStatus>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
}

/// The engine thread; joins on drop of the last handle after `shutdown`.
pub struct EngineThread {
    handle: EngineHandle,
    join: Option<JoinHandle<()>>,
}

impl EngineThread {
    /// Moves `engine` onto a new thread. At most `max_in_flight` requests are accepted at once.
    pub fn spawn(engine: LlmEngine, max_in_flight: usize) -> Self {
        let (tx, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(EngineStatus::default()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let info = EngineInfo {
            tokenizer: engine.tokenizer().cloned(),
            max_model_len: engine.max_model_len(),
            vocab_size: engine.runner().model().info().vocab_size,
        };
        let (st, inf) = (status.clone(), in_flight.clone());
        let join = std::thread::Builder::new()
            .name("nanovllm-engine".into())
            .spawn(move || engine_loop(engine, rx, st, inf))
            .ok();
        Self {
            handle: EngineHandle {
                tx,
                info,
                status,
                in_flight,
                max_in_flight,
            },
            join,
        }
    }

    /// A handle for submitting requests.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Aborts everything still running and waits for the thread to exit.
    pub fn shutdown(mut self) {
        let _ = self.handle.tx.send(Command::Shutdown);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl EngineHandle {
    /// Engine facts (tokenizer, limits).
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// The latest engine status.
    pub fn status(&self) -> EngineStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Requests accepted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Submits a request; validation errors return at once, later failures arrive as events.
    pub fn submit(
        &self,
        id: String,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<UnboundedReceiver<StreamEvent>> {
        params.validate()?;
        params.validate_vocab(self.info.vocab_size)?;
        if prompt.is_empty() {
            return Err(Error::request("prompt", "is empty"));
        }
        if prompt.len() + params.max_tokens > self.info.max_model_len {
            return Err(Error::request(
                "max_tokens",
                format!(
                    "this model's maximum context length is {} tokens, but {} were requested ({} in the prompt, {} to generate)",
                    self.info.max_model_len,
                    prompt.len() + params.max_tokens,
                    prompt.len(),
                    params.max_tokens
                ),
            ));
        }
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::CacheExhausted(format!(
                "the queue is full ({} requests in flight)",
                self.max_in_flight
            )));
        }
        let (out, rx) = unbounded_channel();
        if self
            .tx
            .send(Command::Add {
                id,
                prompt,
                params: Box::new(params),
                out,
            })
            .is_err()
        {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::request("engine", "the engine has stopped"));
        }
        Ok(rx)
    }

    /// Aborts a request (also done automatically when its receiver is dropped).
    pub fn abort(&self, id: &str) {
        let _ = self.tx.send(Command::Abort(id.to_string()));
    }
}

struct Live {
    out: UnboundedSender<StreamEvent>,
    unfinished: usize,
}

fn engine_loop(
    mut engine: LlmEngine,
    rx: mpsc::Receiver<Command>,
    status: Arc<Mutex<EngineStatus>>,
    in_flight: Arc<AtomicUsize>,
) {
    let mut live: HashMap<String, Live> = HashMap::new();
    let finish = |live: &mut HashMap<String, Live>, id: &str| {
        if live.remove(id).is_some() {
            in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    };
    loop {
        let cmd = if engine.has_unfinished() {
            rx.try_recv().ok()
        } else {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        };
        match cmd {
            Some(Command::Add {
                id,
                prompt,
                params,
                out,
            }) => {
                let n = params.n;
                match engine.add_request(&id, prompt, *params) {
                    Ok(()) => {
                        live.insert(id, Live { out, unfinished: n });
                    }
                    Err(e) => {
                        let _ = out.send(StreamEvent::Error(e.to_string()));
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                continue;
            }
            Some(Command::Abort(id)) => {
                for u in engine.abort(&id) {
                    if let Some(l) = live.get(&id) {
                        let _ = l.out.send(StreamEvent::Update(u));
                    }
                }
                finish(&mut live, &id);
                // The loop may block next (nothing left to run): publish the freed cache now.
                publish_status(&engine, &status);
                continue;
            }
            Some(Command::Shutdown) => {
                let ids: Vec<String> = live.keys().cloned().collect();
                for id in ids {
                    for u in engine.abort(&id) {
                        if let Some(l) = live.get(&id) {
                            let _ = l.out.send(StreamEvent::Update(u));
                        }
                    }
                    finish(&mut live, &id);
                }
                publish_status(&engine, &status);
                return;
            }
            None => {}
        }
        // Requests whose client went away are aborted before spending compute on them.
        let gone: Vec<String> = live
            .iter()
            .filter(|(_, l)| l.out.is_closed())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            engine.abort(&id);
            finish(&mut live, &id);
        }
        match engine.step() {
            Ok(updates) => {
                for u in updates {
                    let id = u.request_id.clone();
                    let done = u.finish.is_some();
                    let mut closed = false;
                    if let Some(l) = live.get_mut(&id) {
                        closed = l.out.send(StreamEvent::Update(u)).is_err();
                        if done {
                            l.unfinished = l.unfinished.saturating_sub(1);
                        }
                        if l.unfinished == 0 {
                            finish(&mut live, &id);
                            continue;
                        }
                    }
                    if closed {
                        engine.abort(&id);
                        finish(&mut live, &id);
                    }
                }
            }
            Err(e) => {
                // A failed step poisons every request in it; report and drop them all.
                tracing::error!("engine step failed: {e}");
                let ids: Vec<String> = live.keys().cloned().collect();
                for id in ids {
                    if let Some(l) = live.get(&id) {
                        let _ = l.out.send(StreamEvent::Error(e.to_string()));
                    }
                    engine.abort(&id);
                    finish(&mut live, &id);
                }
            }
        }
        publish_status(&engine, &status);
    }
}

fn publish_status(engine: &LlmEngine, status: &Mutex<EngineStatus>) {
    let sched = engine.scheduler();
    let (running, waiting) = sched.counts();
    let ((free_b, total_b), (free_s, total_s)) = sched.free_resources();
    let stats = engine.stats();
    if let Ok(mut s) = status.lock() {
        *s = EngineStatus {
            running,
            waiting,
            kv_blocks: (total_b - free_b, total_b),
            state_slots: (total_s - free_s, total_s),
            prefix_cache_hit_rate: sched.prefix_cache().hit_rate(),
            prompt_tokens: stats.prompt_tokens_computed,
            cached_prompt_tokens: stats.cached_prompt_tokens,
            generation_tokens: stats.generation_tokens,
        };
    }
}
