//! Streaming responses as server-sent events: `data: {chunk}\n\n` per update, an optional usage
//! chunk, then `data: [DONE]`. The body stream owns the request's [`Generation`], so when the
//! client disconnects and hyper drops the body, the engine requests are aborted.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Serialize;

use super::generation::{finish_name, ChoiceUpdate, Generation};
use super::openai::*;
use super::routes::{
    chat_finish, chat_logprobs, completion_logprobs, stop_reason_json, tool_call_id, ToolPlan,
};
use super::tool_calls::{Piece, ToolCallParser};
use crate::engine::sampler::TokenLogprobs;
use crate::tokenizer::Tokenizer;

/// Turns engine updates into SSE chunks for one endpoint.
pub trait ChunkFormat: Send + 'static {
    /// Chunks sent before any update.
    fn start(&mut self) -> Vec<String>;
    /// Chunks for one update.
    fn update(&mut self, ev: ChoiceUpdate) -> Vec<String>;
    /// Chunks after every choice finished (e.g. usage).
    fn finish(&mut self) -> Vec<String>;
}

fn data<T: Serialize>(v: &T) -> String {
    format!(
        "data: {}\n\n",
        serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
    )
}

enum Phase {
    Start,
    Running,
    Done,
}

/// An SSE response driven by `gen` and formatted by `fmt`.
pub fn sse_response<F: ChunkFormat>(gen: Generation, fmt: F) -> Response {
    let body = stream::unfold(
        (gen, fmt, Phase::Start),
        |(mut gen, mut fmt, phase)| async move {
            match phase {
                Phase::Start => {
                    let out = fmt.start().concat();
                    Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from(out)),
                        (gen, fmt, Phase::Running),
                    ))
                }
                Phase::Running => match gen.next().await {
                    Some(Ok(ev)) => {
                        let out = fmt.update(ev).concat();
                        Some((Ok(Bytes::from(out)), (gen, fmt, Phase::Running)))
                    }
                    Some(Err(e)) => {
                        let out = format!("{}data: [DONE]\n\n", data(&e.body()));
                        Some((Ok(Bytes::from(out)), (gen, fmt, Phase::Done)))
                    }
                    None => {
                        let out = format!("{}data: [DONE]\n\n", fmt.finish().concat());
                        Some((Ok(Bytes::from(out)), (gen, fmt, Phase::Done)))
                    }
                },
                Phase::Done => None,
            }
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Completions
// ---------------------------------------------------------------------------------------------

/// What a completions response needs besides the engine output.
pub struct CompletionContext {
    /// Response id.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Tokenizer (for echo and logprob token strings).
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// Prompt token ids.
    pub prompts: Vec<Vec<u32>>,
    /// Prepend the prompt.
    pub echo: bool,
    /// Top log-probabilities asked for.
    pub logprobs: Option<usize>,
    /// Send a usage chunk at the end.
    pub include_usage: bool,
}

impl CompletionContext {
    /// The text of prompt `p`.
    pub fn prompt_text(&self, p: usize) -> String {
        let ids = self.prompts.get(p).map(Vec::as_slice).unwrap_or_default();
        self.tokenizer
            .as_ref()
            .and_then(|t| t.decode(ids, false).ok())
            .unwrap_or_default()
    }
}

struct CompletionFormat {
    ctx: CompletionContext,
    /// Characters sent so far per choice (for text offsets); None until the first chunk.
    sent_chars: Vec<Option<usize>>,
    usage: Usage,
    cached: Vec<usize>,
}

/// A streaming completions response.
pub fn completion_stream(gen: Generation, ctx: CompletionContext) -> Response {
    let choices = gen.choices();
    let prompt_tokens = gen.prompt_lens.iter().sum();
    let cached = vec![0; gen.prompt_lens.len()];
    sse_response(
        gen,
        CompletionFormat {
            ctx,
            sent_chars: vec![None; choices],
            usage: Usage {
                prompt_tokens,
                ..Default::default()
            },
            cached,
        },
    )
}

impl CompletionFormat {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> String {
        data(&CompletionResponse {
            id: self.ctx.id.clone(),
            object: "text_completion",
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkFormat for CompletionFormat {
    fn start(&mut self) -> Vec<String> {
        Vec::new()
    }

    fn update(&mut self, ev: ChoiceUpdate) -> Vec<String> {
        let u = ev.update;
        let tok = self.ctx.tokenizer.clone();
        let tok = tok.as_deref();
        self.usage.completion_tokens += u.new_token_ids.len();
        if let Some(m) = &u.metrics {
            if let Some(c) = self.cached.get_mut(ev.prompt) {
                *c = (*c).max(m.num_cached_tokens);
            }
        }
        let Some(sent) = self.sent_chars.get_mut(ev.choice) else {
            return Vec::new();
        };
        let mut text = String::new();
        let mut logprobs = self.ctx.logprobs.map(|_| CompletionLogprobs::default());
        if sent.is_none() {
            *sent = Some(0);
            if self.ctx.echo {
                text = self.ctx.prompt_text(ev.prompt);
                if let Some(lp) = logprobs.as_mut() {
                    let prompt = self.ctx.prompts.get(ev.prompt).cloned().unwrap_or_default();
                    let plp = u.prompt_logprobs.clone().unwrap_or_default();
                    let entries: Vec<Option<&TokenLogprobs>> = (0..prompt.len())
                        .map(|j| plp.get(j).and_then(|e| e.as_ref()))
                        .collect();
                    *lp = completion_logprobs(tok, &entries, &prompt, 0);
                }
            }
        }
        let offset = sent.unwrap_or(0) + text.chars().count();
        if let Some(lp) = logprobs.as_mut() {
            let entries: Vec<Option<&TokenLogprobs>> = u.new_logprobs.iter().map(Some).collect();
            let g = completion_logprobs(tok, &entries, &u.new_token_ids, offset);
            lp.tokens.extend(g.tokens);
            lp.token_logprobs.extend(g.token_logprobs);
            lp.top_logprobs.extend(g.top_logprobs);
            lp.text_offset.extend(g.text_offset);
        }
        text.push_str(&u.new_text);
        *sent = Some(sent.unwrap_or(0) + text.chars().count());
        if text.is_empty() && u.finish.is_none() && u.new_token_ids.is_empty() {
            return Vec::new();
        }
        let choice = CompletionChoice {
            index: ev.choice,
            text,
            logprobs,
            finish_reason: u.finish.as_ref().map(|f| finish_name(f.0)),
            stop_reason: u.finish.as_ref().and_then(|f| stop_reason_json(&f.1)),
        };
        vec![self.chunk(vec![choice], None)]
    }

    fn finish(&mut self) -> Vec<String> {
        if !self.ctx.include_usage {
            return Vec::new();
        }
        let mut usage = self.usage.clone();
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
        usage.prompt_tokens_details.cached_tokens = self.cached.iter().sum();
        vec![self.chunk(Vec::new(), Some(usage))]
    }
}

// ---------------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------------

/// What a chat response needs besides the engine output.
pub struct ChatContext {
    /// Response id.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Tokenizer (for logprob token strings).
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// Tool-call handling.
    pub plan: ToolPlan,
    /// Return log-probabilities.
    pub logprobs: bool,
    /// Send a usage chunk at the end.
    pub include_usage: bool,
}

struct ChatChoiceState {
    parser: Option<ToolCallParser>,
    calls: usize,
    /// Raw text, for the named-tool fallback.
    text: String,
}

struct ChatFormat {
    ctx: ChatContext,
    choices: Vec<ChatChoiceState>,
    usage: Usage,
}

/// A streaming chat response.
pub fn chat_stream(gen: Generation, ctx: ChatContext) -> Response {
    let choices = (0..gen.choices())
        .map(|_| {
            let parser = ctx.plan.parse.then(|| {
                let mut p = ToolCallParser::new(ctx.plan.names.clone());
                // The forced prefix is already in the prompt; it only primes the parser.
                let _ = p.push(&ctx.plan.forced_prefix);
                p
            });
            ChatChoiceState {
                parser,
                calls: 0,
                text: String::new(),
            }
        })
        .collect();
    let prompt_tokens = gen.prompt_lens.iter().sum();
    sse_response(
        gen,
        ChatFormat {
            ctx,
            choices,
            usage: Usage {
                prompt_tokens,
                ..Default::default()
            },
        },
    )
}

impl ChatFormat {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> String {
        data(&ChatChunk {
            id: self.ctx.id.clone(),
            object: "chat.completion.chunk",
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            choices,
            usage,
        })
    }
}

fn delta_of(pieces: Vec<Piece>, first_call: &mut usize) -> ChatDelta {
    let mut delta = ChatDelta::default();
    for p in pieces {
        match p {
            Piece::Text(t) => delta.content.get_or_insert_with(String::new).push_str(&t),
            Piece::Call(c) => {
                delta.tool_calls.push(ToolCallDelta {
                    index: *first_call,
                    id: tool_call_id(),
                    kind: "function",
                    function: FunctionCall {
                        name: c.name,
                        arguments: c.arguments,
                    },
                });
                *first_call += 1;
            }
        }
    }
    delta
}

impl ChunkFormat for ChatFormat {
    fn start(&mut self) -> Vec<String> {
        (0..self.choices.len())
            .map(|i| {
                self.chunk(
                    vec![ChatChunkChoice {
                        index: i,
                        delta: ChatDelta {
                            role: Some("assistant"),
                            content: Some(String::new()),
                            ..Default::default()
                        },
                        logprobs: None,
                        finish_reason: None,
                        stop_reason: None,
                    }],
                    None,
                )
            })
            .collect()
    }

    fn update(&mut self, ev: ChoiceUpdate) -> Vec<String> {
        let u = ev.update;
        self.usage.completion_tokens += u.new_token_ids.len();
        if let Some(m) = &u.metrics {
            self.usage.prompt_tokens_details.cached_tokens = self
                .usage
                .prompt_tokens_details
                .cached_tokens
                .max(m.num_cached_tokens);
        }
        let logprobs = (self.ctx.logprobs && !u.new_logprobs.is_empty())
            .then(|| chat_logprobs(self.ctx.tokenizer.as_deref(), &u.new_logprobs));
        let named = self.ctx.plan.named.clone();
        let Some(st) = self.choices.get_mut(ev.choice) else {
            return Vec::new();
        };
        st.text.push_str(&u.new_text);
        let mut delta = match st.parser.as_mut() {
            Some(p) => {
                let mut pieces = p.push(&u.new_text);
                if u.finish.is_some() {
                    pieces.extend(p.finish());
                }
                delta_of(pieces, &mut st.calls)
            }
            None => ChatDelta {
                content: (!u.new_text.is_empty()).then(|| u.new_text.clone()),
                ..Default::default()
            },
        };
        if let (Some(name), true, 0) = (&named, u.finish.is_some(), st.calls) {
            // The forced call did not parse: send what the model wrote as its arguments.
            delta.content = None;
            delta.tool_calls.push(ToolCallDelta {
                index: 0,
                id: tool_call_id(),
                kind: "function",
                function: FunctionCall {
                    name: name.clone(),
                    arguments: st.text.trim().trim_end_matches("</tool_call>").to_string(),
                },
            });
            st.calls = 1;
        }
        let finish = u.finish.as_ref().map(|f| chat_finish(f.0, st.calls > 0));
        let empty = delta.content.as_deref().is_none_or(str::is_empty)
            && delta.tool_calls.is_empty()
            && finish.is_none()
            && logprobs.is_none();
        if empty {
            return Vec::new();
        }
        let choice = ChatChunkChoice {
            index: ev.choice,
            delta,
            logprobs,
            finish_reason: finish,
            stop_reason: u.finish.as_ref().and_then(|f| stop_reason_json(&f.1)),
        };
        vec![self.chunk(vec![choice], None)]
    }

    fn finish(&mut self) -> Vec<String> {
        if !self.ctx.include_usage {
            return Vec::new();
        }
        let mut usage = self.usage.clone();
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
        vec![self.chunk(Vec::new(), Some(usage))]
    }
}
