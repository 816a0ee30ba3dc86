//! One HTTP request's engine work: the event receivers of its engine requests (one per prompt),
//! merged into a single stream of per-choice updates, with timing recorded for the metrics.
//! Dropping a [`Generation`] drops the receivers, which makes the engine abort the requests and
//! free their cache; a drop before every choice finished is counted as a client abort.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{select_all, SelectAll, Stream, StreamExt};
use tokio::sync::mpsc::UnboundedReceiver;

use super::openai::ApiError;
use super::AppState;
use crate::engine::engine_thread::StreamEvent;
use crate::outputs::{FinishReason, SeqUpdate};
use crate::sampling_params::SamplingParams;

type EventStream = Pin<Box<dyn Stream<Item = (usize, StreamEvent)> + Send>>;

/// A request's update for one choice.
pub struct ChoiceUpdate {
    /// Which prompt of the request.
    pub prompt: usize,
    /// Index among all choices (`prompt * n + index`).
    pub choice: usize,
    /// The engine's delta.
    pub update: SeqUpdate,
}

/// The merged event streams of one HTTP request.
pub struct Generation {
    events: SelectAll<EventStream>,
    state: Arc<AppState>,
    /// Completions per prompt.
    pub n: usize,
    /// Prompt token counts, per prompt.
    pub prompt_lens: Vec<usize>,
    start: Instant,
    last_token: Vec<Option<Instant>>,
    open: usize,
}

/// OpenAI's name of a finish reason.
pub fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}

impl Generation {
    /// Submits every prompt; on any refusal the ones already submitted are dropped (aborted).
    pub fn submit(
        state: &Arc<AppState>,
        id: &str,
        prompts: Vec<Vec<u32>>,
        params: &SamplingParams,
    ) -> Result<Self, ApiError> {
        let start = Instant::now();
        let n = params.n;
        let prompt_lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
        let mut streams: Vec<EventStream> = Vec::new();
        for (i, prompt) in prompts.into_iter().enumerate() {
            let rx = state
                .engine
                .submit(format!("{id}-{i}"), prompt, params.clone())?;
            streams.push(Box::pin(receiver_stream(rx).map(move |e| (i, e))));
        }
        let total: usize = prompt_lens.iter().sum();
        state
            .metrics
            .prompt_tokens
            .fetch_add(total as u64, Ordering::Relaxed);
        let choices = n * prompt_lens.len();
        Ok(Self {
            events: select_all(streams),
            state: state.clone(),
            n,
            prompt_lens,
            start,
            last_token: vec![None; choices],
            open: choices,
        })
    }

    /// Total number of choices.
    pub fn choices(&self) -> usize {
        self.n * self.prompt_lens.len()
    }

    /// The next update, None once every choice has finished.
    pub async fn next(&mut self) -> Option<Result<ChoiceUpdate, ApiError>> {
        if self.open == 0 {
            return None;
        }
        let Some((prompt, ev)) = self.events.next().await else {
            // Every engine request ended without finishing all its choices.
            self.open = 0;
            return Some(Err(ApiError::internal("the engine stopped the request")));
        };
        match ev {
            StreamEvent::Error(e) => {
                self.open = 0;
                Some(Err(ApiError::internal(format!("engine error: {e}"))))
            }
            StreamEvent::Update(update) => {
                let choice = prompt * self.n + update.index;
                let now = Instant::now();
                let m = &self.state.metrics;
                if !update.new_token_ids.is_empty() {
                    if let Some(slot) = self.last_token.get_mut(choice) {
                        match slot {
                            None => m.ttft.observe(now - self.start),
                            Some(t) => m.itl.observe(now - *t),
                        }
                        *slot = Some(now);
                    }
                    m.generation_tokens
                        .fetch_add(update.new_token_ids.len() as u64, Ordering::Relaxed);
                }
                if let Some((reason, _)) = &update.finish {
                    m.finished(finish_name(*reason));
                    m.e2e.observe(now - self.start);
                    self.open = self.open.saturating_sub(1);
                }
                Some(Ok(ChoiceUpdate {
                    prompt,
                    choice,
                    update,
                }))
            }
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if self.open > 0 {
            self.state
                .metrics
                .aborted_by_client
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn receiver_stream(rx: UnboundedReceiver<StreamEvent>) -> impl Stream<Item = StreamEvent> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
}
