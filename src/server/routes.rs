//! The HTTP routes: request validation and translation into engine submissions (prompt tokens
//! and [`SamplingParams`]), and the non-streaming responses. Streaming responses are built in
//! [`super::sse`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde_json::{json, Value};

use super::generation::{finish_name, Generation};
use super::openai::*;
use super::sse;
use super::tool_calls::{parse_all, Piece};
use super::AppState;
use crate::engine::sampler::TokenLogprobs;
use crate::outputs::{FinishReason, StopReason};
use crate::sampling_params::SamplingParams;
use crate::tokenizer::chat_template::ChatInputs;
use crate::tokenizer::Tokenizer;

/// Largest request body accepted (long prompts as text or token ids fit easily).
const MAX_BODY_BYTES: usize = 32 << 20;

/// Most prompts in one completions request.
const MAX_PROMPTS: usize = 256;

/// The application: OpenAI routes behind the key check, plus health and metrics.
pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            super::auth::require_key,
        ));
    Router::new()
        .merge(protected)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            super::metrics::count_responses,
        ))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::route_not_found(uri.path())
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.stopping.load(Ordering::SeqCst) {
        ApiError::unavailable("the server is shutting down", "shutting_down").into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let body = st
        .metrics
        .render(&st.engine.status(), st.engine.in_flight());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn model_card(st: &AppState, id: &str) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": st.created,
        "owned_by": "nanovllm",
        "root": st.config.model_root,
        "parent": null,
        "max_model_len": st.engine.info().max_model_len,
    })
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = st
        .config
        .served_model_names
        .iter()
        .map(|n| model_card(&st, n))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if st.config.served_model_names.contains(&id) {
        Json(model_card(&st, &id)).into_response()
    } else {
        ApiError::model_not_found(&id).into_response()
    }
}

/// 404 unless `model` is absent or one of the served names.
fn check_model(st: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if !st.config.served_model_names.iter().any(|n| n == m) => {
            Err(ApiError::model_not_found(m))
        }
        _ => Ok(()),
    }
}

fn check_accepting(st: &AppState) -> Result<(), ApiError> {
    if st.stopping.load(Ordering::SeqCst) {
        Err(ApiError::unavailable(
            "the server is shutting down",
            "shutting_down",
        ))
    } else {
        Ok(())
    }
}

fn tokenizer(st: &AppState, field: &str) -> Result<Arc<Tokenizer>, ApiError> {
    st.tokenizer.clone().ok_or_else(|| {
        ApiError::invalid(
            field,
            "this model has no tokenizer.json; send token ids instead of text",
        )
    })
}

/// Rejects prompts the model cannot take: empty, too long, or with ids outside the vocabulary.
fn check_prompt(st: &AppState, field: &str, tokens: &[u32]) -> Result<(), ApiError> {
    let info = st.engine.info();
    if tokens.is_empty() {
        return Err(ApiError::invalid(field, format!("`{field}` is empty")));
    }
    if tokens.len() >= info.max_model_len {
        return Err(ApiError::invalid(
            field,
            format!(
                "this model's maximum context length is {} tokens, but the prompt has {} tokens \
                 (leaving no room to generate)",
                info.max_model_len,
                tokens.len()
            ),
        ));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= info.vocab_size) {
        return Err(ApiError::invalid(
            field,
            format!(
                "token id {bad} is outside the vocabulary (size {})",
                info.vocab_size
            ),
        ));
    }
    Ok(())
}

/// Translates the sampling fields of a request.
fn sampling_params(
    f: &SamplingFields,
    max_tokens: usize,
    max_n: usize,
) -> Result<SamplingParams, ApiError> {
    let d = SamplingParams::default();
    let n = f.n.unwrap_or(1);
    if n > max_n {
        return Err(ApiError::invalid(
            "n",
            format!("`n` must be at most {max_n}, got {n}"),
        ));
    }
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) => usize::try_from(k).map_err(|_| {
            ApiError::invalid(
                "top_k",
                format!("`top_k` must be -1, 0 or positive, got {k}"),
            )
        })?,
    };
    let mut logit_bias = HashMap::new();
    for (k, v) in f.logit_bias.iter().flatten() {
        let id: u32 = k.trim().parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` keys must be token ids, got `{k}`"),
            )
        })?;
        logit_bias.insert(id, *v);
    }
    let params = SamplingParams {
        n,
        temperature: f.temperature.unwrap_or(d.temperature),
        top_k,
        top_p: f.top_p.unwrap_or(d.top_p),
        min_p: f.min_p.unwrap_or(d.min_p),
        repetition_penalty: f.repetition_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: f.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: f.frequency_penalty.unwrap_or(d.frequency_penalty),
        seed: f.seed.map(|s| u64::from_le_bytes(s.to_le_bytes())),
        max_tokens: f.max_tokens.unwrap_or(max_tokens),
        min_tokens: f.min_tokens.unwrap_or(0),
        stop: f.stop.clone().map(|s| s.0).unwrap_or_default(),
        stop_token_ids: f.stop_token_ids.clone().unwrap_or_default(),
        ignore_eos: f.ignore_eos.unwrap_or(false),
        logprobs: None,
        prompt_logprobs: None,
        skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
        include_stop_str_in_output: f.include_stop_str_in_output.unwrap_or(false),
        logit_bias,
    };
    params.validate()?;
    Ok(params)
}

/// Parses a body whose sampling fields sit at the top level next to the request's own.
fn parse_request<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<(T, SamplingFields), ApiError> {
    let v = parse_json(body)?;
    Ok((from_json(&v)?, from_json(&v)?))
}

// ---------------------------------------------------------------------------------------------
// Completions
// ---------------------------------------------------------------------------------------------

async fn completions(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let (mut req, sampling) = parse_request::<CompletionRequest>(&body)?;
    req.sampling = sampling;
    check_model(&st, req.model.as_deref())?;
    check_accepting(&st)?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported"));
    }
    let count = match &req.prompt {
        PromptInput::Texts(t) => t.len(),
        PromptInput::Tokens(t) => t.len(),
    };
    if count > MAX_PROMPTS {
        return Err(ApiError::invalid(
            "prompt",
            format!("at most {MAX_PROMPTS} prompts per request, got {count}"),
        ));
    }
    let add_special = req.add_special_tokens.unwrap_or(true);
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        PromptInput::Tokens(t) => t.clone(),
        PromptInput::Texts(texts) => {
            let tok = tokenizer(&st, "prompt")?;
            texts
                .iter()
                .map(|t| tok.encode(t, add_special))
                .collect::<crate::Result<_>>()?
        }
    };
    for p in &prompts {
        check_prompt(&st, "prompt", p)?;
    }
    let mut params = sampling_params(&req.sampling, 16, st.config.max_n)?;
    if let Some(b) = req.best_of {
        if b != params.n {
            return Err(ApiError::invalid(
                "best_of",
                format!("`best_of` ({b}) must equal `n` ({})", params.n),
            ));
        }
    }
    params.logprobs = req.logprobs;
    params.prompt_logprobs = req
        .prompt_logprobs
        .or(if req.echo { req.logprobs } else { None });
    params.validate()?;
    let id = st.request_id("cmpl");
    let gen = Generation::submit(&st, &id, prompts.clone(), &params)?;
    let ctx = sse::CompletionContext {
        id,
        created: super::unix_now(),
        model: st.model_name().to_string(),
        tokenizer: st.tokenizer.clone(),
        prompts,
        echo: req.echo,
        logprobs: req.logprobs,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
    };
    if req.stream {
        return Ok(sse::completion_stream(gen, ctx));
    }
    Ok(Json(collect_completion(gen, ctx).await?).into_response())
}

/// What one choice produced (non-streaming).
#[derive(Default)]
struct ChoiceOut {
    text: String,
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprobs>,
    finish: Option<(FinishReason, Option<StopReason>)>,
}

struct Collected {
    choices: Vec<ChoiceOut>,
    prompt_logprobs: Vec<Option<Vec<Option<TokenLogprobs>>>>,
    usage: Usage,
}

async fn collect(mut gen: Generation) -> Result<Collected, ApiError> {
    let mut choices: Vec<ChoiceOut> = (0..gen.choices()).map(|_| ChoiceOut::default()).collect();
    let mut prompt_logprobs = vec![None; gen.prompt_lens.len()];
    let mut cached = vec![0usize; gen.prompt_lens.len()];
    while let Some(ev) = gen.next().await {
        let ev = ev?;
        let u = ev.update;
        if let Some(lp) = u.prompt_logprobs {
            if let Some(slot) = prompt_logprobs.get_mut(ev.prompt) {
                *slot = Some(lp);
            }
        }
        if let Some(m) = &u.metrics {
            if let Some(c) = cached.get_mut(ev.prompt) {
                *c = (*c).max(m.num_cached_tokens);
            }
        }
        if let Some(c) = choices.get_mut(ev.choice) {
            c.text.push_str(&u.new_text);
            c.tokens.extend(&u.new_token_ids);
            c.logprobs.extend(u.new_logprobs);
            if u.finish.is_some() {
                c.finish = u.finish;
            }
        }
    }
    let prompt_tokens: usize = gen.prompt_lens.iter().sum();
    let completion_tokens: usize = choices.iter().map(|c| c.tokens.len()).sum();
    Ok(Collected {
        choices,
        prompt_logprobs,
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached.iter().sum(),
            },
        },
    })
}

/// vLLM's `stop_reason`: the stop string or token id.
pub fn stop_reason_json(s: &Option<StopReason>) -> Option<Value> {
    match s {
        Some(StopReason::Text(t)) => Some(json!(t)),
        Some(StopReason::Token(t)) => Some(json!(t)),
        None => None,
    }
}

/// The text of one token as clients see it in log-probabilities.
pub fn token_text(tok: Option<&Tokenizer>, id: u32) -> String {
    tok.and_then(|t| t.decode(&[id], false).ok())
        .unwrap_or_else(|| format!("token_id:{id}"))
}

/// Legacy completions log-probabilities for `entries`, offsets counted from `offset` chars.
pub fn completion_logprobs(
    tok: Option<&Tokenizer>,
    entries: &[Option<&TokenLogprobs>],
    ids: &[u32],
    mut offset: usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for (entry, &id) in entries.iter().zip(ids) {
        let text = token_text(tok, id);
        out.text_offset.push(offset);
        offset += text.chars().count();
        out.tokens.push(text);
        match entry {
            Some(lp) => {
                out.token_logprobs.push(Some(lp.logprob));
                let mut top: HashMap<String, f32> = lp
                    .top
                    .iter()
                    .map(|&(t, l)| (token_text(tok, t), l))
                    .collect();
                top.entry(token_text(tok, lp.token)).or_insert(lp.logprob);
                out.top_logprobs.push(Some(top));
            }
            None => {
                out.token_logprobs.push(None);
                out.top_logprobs.push(None);
            }
        }
    }
    out
}

async fn collect_completion(
    gen: Generation,
    ctx: sse::CompletionContext,
) -> Result<CompletionResponse, ApiError> {
    let n = gen.n;
    let c = collect(gen).await?;
    let tok = ctx.tokenizer.as_deref();
    let choices = c
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, ch)| {
            let p = i / n.max(1);
            let prompt = ctx.prompts.get(p).cloned().unwrap_or_default();
            let mut text = String::new();
            let mut logprobs = ctx.logprobs.map(|_| CompletionLogprobs::default());
            if ctx.echo {
                text = ctx.prompt_text(p);
                if let Some(lp) = logprobs.as_mut() {
                    let plp = c
                        .prompt_logprobs
                        .get(p)
                        .cloned()
                        .flatten()
                        .unwrap_or_default();
                    let entries: Vec<Option<&TokenLogprobs>> = (0..prompt.len())
                        .map(|j| plp.get(j).and_then(|e| e.as_ref()))
                        .collect();
                    *lp = completion_logprobs(tok, &entries, &prompt, 0);
                }
            }
            if let Some(lp) = logprobs.as_mut() {
                let entries: Vec<Option<&TokenLogprobs>> = ch.logprobs.iter().map(Some).collect();
                let gen_lp = completion_logprobs(tok, &entries, &ch.tokens, text.chars().count());
                lp.tokens.extend(gen_lp.tokens);
                lp.token_logprobs.extend(gen_lp.token_logprobs);
                lp.top_logprobs.extend(gen_lp.top_logprobs);
                lp.text_offset.extend(gen_lp.text_offset);
            }
            text.push_str(&ch.text);
            CompletionChoice {
                index: i,
                text,
                logprobs,
                finish_reason: ch.finish.as_ref().map(|f| finish_name(f.0)),
                stop_reason: ch.finish.as_ref().and_then(|f| stop_reason_json(&f.1)),
            }
        })
        .collect();
    Ok(CompletionResponse {
        id: ctx.id,
        object: "text_completion",
        created: ctx.created,
        model: ctx.model,
        choices,
        usage: Some(c.usage),
    })
}

// ---------------------------------------------------------------------------------------------
// Chat completions
// ---------------------------------------------------------------------------------------------

/// How tool calls are handled for one chat request.
#[derive(Debug, Clone, Default)]
pub struct ToolPlan {
    /// Parse the output for calls (tools offered and tool_choice is not `none`).
    pub parse: bool,
    /// Names of the offered tools.
    pub names: Vec<String>,
    /// Text appended to the prompt to force a call; also fed to the parser first.
    pub forced_prefix: String,
    /// The function `tool_choice` names.
    pub named: Option<String>,
}

/// The conversation as template input: content flattened to text, tool-call arguments parsed
/// back to objects (templates write them with `tojson`), `developer` treated as `system`.
fn template_messages(msgs: &[ChatMessage]) -> Result<Vec<Value>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "`messages[{i}].role` must be system, developer, user, assistant or tool, got `{other}`"
                    ),
                ))
            }
        };
        if m.content.is_none() && role != "assistant" {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!("`messages[{i}].content` is required for role `{role}`"),
            ));
        }
        let mut obj = serde_json::Map::new();
        obj.insert("role".into(), json!(role));
        obj.insert(
            "content".into(),
            json!(m.content.as_ref().map(|c| c.0.clone()).unwrap_or_default()),
        );
        if let Some(name) = &m.name {
            obj.insert("name".into(), json!(name));
        }
        if let Some(calls) = &m.tool_calls {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    let args = serde_json::from_str::<Value>(&c.function.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!(c.function.arguments));
                    json!({"id": c.id, "type": "function",
                           "function": {"name": c.function.name, "arguments": args}})
                })
                .collect();
            obj.insert("tool_calls".into(), Value::Array(calls));
        }
        if let Some(id) = &m.tool_call_id {
            obj.insert("tool_call_id".into(), json!(id));
        }
        out.push(Value::Object(obj));
    }
    Ok(out)
}

/// Validates `tools` / `tool_choice` and decides how calls are prompted and parsed.
fn tool_plan(st: &AppState, req: &ChatRequest) -> Result<(ToolPlan, Vec<Value>), ApiError> {
    let tools = req.tools.clone().unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::invalid(
                format!("tools[{i}].type"),
                format!("`tools[{i}].type` must be `function`, got `{}`", t.kind),
            ));
        }
    }
    let names: Vec<String> = tools.iter().map(|t| t.function.name.clone()).collect();
    let choice = req.tool_choice.clone().unwrap_or(if tools.is_empty() {
        ToolChoice::None
    } else {
        ToolChoice::Auto
    });
    let tool_json = |t: &Tool| serde_json::to_value(t).unwrap_or(Value::Null);
    let tagged = st
        .config
        .chat_template
        .as_ref()
        .is_some_and(|t| t.mentions("<tool_call>"));
    let open = if tagged { "<tool_call>\n" } else { "" };
    match choice {
        ToolChoice::None => Ok((ToolPlan::default(), Vec::new())),
        ToolChoice::Auto => Ok((
            ToolPlan {
                parse: !tools.is_empty(),
                names,
                ..Default::default()
            },
            tools.iter().map(tool_json).collect(),
        )),
        ToolChoice::Required => {
            if tools.is_empty() {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` is `required` but no `tools` were given",
                ));
            }
            Ok((
                ToolPlan {
                    parse: true,
                    names,
                    forced_prefix: format!("{open}{{\"name\": \""),
                    named: None,
                },
                tools.iter().map(tool_json).collect(),
            ))
        }
        ToolChoice::Named(name) => {
            let Some(tool) = tools.iter().find(|t| t.function.name == name) else {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` names function `{name}`, which is not in `tools`"),
                ));
            };
            let quoted = Value::String(name.clone()).to_string();
            Ok((
                ToolPlan {
                    parse: true,
                    names: vec![name.clone()],
                    forced_prefix: format!("{open}{{\"name\": {quoted}, \"arguments\": "),
                    named: Some(name),
                },
                vec![tool_json(tool)],
            ))
        }
    }
}

/// Renders the conversation to prompt tokens.
fn chat_prompt(
    st: &AppState,
    req: &ChatRequest,
    tools: &[Value],
    suffix: &str,
) -> Result<Vec<u32>, ApiError> {
    let template = st.config.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "this model has no chat template; start the server with --chat-template FILE, \
             or use /v1/completions",
        )
    })?;
    let messages = template_messages(&req.messages)?;
    let add_generation_prompt =
        req.add_generation_prompt.unwrap_or(true) && !req.continue_final_message;
    let mut text = template.render_chat(&ChatInputs {
        messages: &messages,
        tools: (!tools.is_empty()).then_some(tools),
        documents: req.documents.as_deref(),
        add_generation_prompt,
        extra: req.chat_template_kwargs.as_ref(),
    })?;
    if req.continue_final_message {
        // Cut everything the template wrote after the final message's content.
        let last = req
            .messages
            .last()
            .and_then(|m| m.content.as_ref())
            .map(|c| c.0.clone())
            .unwrap_or_default();
        match text.rfind(&last) {
            Some(pos) if !last.is_empty() => text.truncate(pos + last.len()),
            _ => {
                return Err(ApiError::invalid(
                    "continue_final_message",
                    "the final message's content was not found in the rendered prompt",
                ))
            }
        }
    }
    text.push_str(suffix);
    let tok = tokenizer(st, "messages")?;
    Ok(tok.encode(&text, false)?)
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (mut req, sampling) = parse_request::<ChatRequest>(&body)?;
    req.sampling = sampling;
    check_model(&st, req.model.as_deref())?;
    check_accepting(&st)?;
    if let Some(rf) = &req.response_format {
        match rf.kind.as_str() {
            "text" => {}
            "json_object" | "json_schema" => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!(
                        "`response_format` type `{}` is not supported: nanovllm does not \
                         constrain decoding; use `text` and ask for JSON in the prompt",
                        rf.kind
                    ),
                ))
            }
            other => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!("unknown `response_format` type `{other}`"),
                ))
            }
        }
    }
    if req.echo {
        return Err(ApiError::invalid(
            "echo",
            "`echo` is not supported for chat completions",
        ));
    }
    if req.top_logprobs.is_some() && !req.logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        ));
    }
    let (plan, tools) = tool_plan(&st, &req)?;
    let prompt = chat_prompt(&st, &req, &tools, &plan.forced_prefix)?;
    check_prompt(&st, "messages", &prompt)?;
    let max_len = st.engine.info().max_model_len;
    let mut sampling = req.sampling.clone();
    if req.max_completion_tokens.is_some() {
        sampling.max_tokens = req.max_completion_tokens;
    }
    let mut params = sampling_params(
        &sampling,
        max_len.saturating_sub(prompt.len()),
        st.config.max_n,
    )?;
    params.logprobs = req.logprobs.then(|| req.top_logprobs.unwrap_or(0));
    params.validate()?;
    let id = st.request_id("chatcmpl");
    let gen = Generation::submit(&st, &id, vec![prompt], &params)?;
    let ctx = sse::ChatContext {
        id,
        created: super::unix_now(),
        model: st.model_name().to_string(),
        tokenizer: st.tokenizer.clone(),
        plan,
        logprobs: req.logprobs,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
    };
    if req.stream {
        return Ok(sse::chat_stream(gen, ctx));
    }
    Ok(Json(collect_chat(gen, ctx).await?).into_response())
}

/// A tool call id in OpenAI's style.
pub fn tool_call_id() -> String {
    format!(
        "call_{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// Splits a finished choice's text into content and tool calls.
pub fn split_tool_calls(plan: &ToolPlan, text: &str) -> (Option<String>, Vec<ToolCall>) {
    if !plan.parse {
        return (Some(text.to_string()), Vec::new());
    }
    let full = format!("{}{text}", plan.forced_prefix);
    let mut content = String::new();
    let mut calls = Vec::new();
    for piece in parse_all(&full, plan.names.clone()) {
        match piece {
            Piece::Text(t) => content.push_str(&t),
            Piece::Call(c) => calls.push(ToolCall {
                id: tool_call_id(),
                kind: "function".into(),
                function: FunctionCall {
                    name: c.name,
                    arguments: c.arguments,
                },
            }),
        }
    }
    if calls.is_empty() {
        if let Some(name) = &plan.named {
            // The forced call did not parse: hand back what the model wrote as arguments.
            return (
                None,
                vec![ToolCall {
                    id: tool_call_id(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.clone(),
                        arguments: text.trim().trim_end_matches("</tool_call>").to_string(),
                    },
                }],
            );
        }
        return (Some(text.to_string()), calls);
    }
    let content = (!content.trim().is_empty()).then_some(content);
    (content, calls)
}

/// Chat log-probabilities of generated tokens.
pub fn chat_logprobs(tok: Option<&Tokenizer>, entries: &[TokenLogprobs]) -> ChatLogprobs {
    let item = |id: u32, logprob: f32| {
        let token = token_text(tok, id);
        TopLogprob {
            bytes: token.as_bytes().to_vec(),
            token,
            logprob,
        }
    };
    ChatLogprobs {
        content: entries
            .iter()
            .map(|e| {
                let TopLogprob {
                    token,
                    logprob,
                    bytes,
                } = item(e.token, e.logprob);
                ChatTokenLogprob {
                    token,
                    logprob,
                    bytes,
                    top_logprobs: e.top.iter().map(|&(t, l)| item(t, l)).collect(),
                }
            })
            .collect(),
    }
}

/// OpenAI's finish reason of a chat choice.
pub fn chat_finish(reason: FinishReason, has_calls: bool) -> &'static str {
    if has_calls && reason != FinishReason::Abort {
        "tool_calls"
    } else {
        finish_name(reason)
    }
}

async fn collect_chat(gen: Generation, ctx: sse::ChatContext) -> Result<ChatResponse, ApiError> {
    let c = collect(gen).await?;
    let tok = ctx.tokenizer.as_deref();
    let choices = c
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, ch)| {
            let (content, tool_calls) = split_tool_calls(&ctx.plan, &ch.text);
            let reason = ch
                .finish
                .as_ref()
                .map(|f| f.0)
                .unwrap_or(FinishReason::Abort);
            ChatChoice {
                index: i,
                finish_reason: Some(chat_finish(reason, !tool_calls.is_empty())),
                stop_reason: ch.finish.as_ref().and_then(|f| stop_reason_json(&f.1)),
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    tool_calls,
                },
                logprobs: ctx.logprobs.then(|| chat_logprobs(tok, &ch.logprobs)),
            }
        })
        .collect();
    Ok(ChatResponse {
        id: ctx.id,
        object: "chat.completion",
        created: ctx.created,
        model: ctx.model,
        choices,
        usage: c.usage,
    })
}

// ---------------------------------------------------------------------------------------------
// Tokenize / detokenize
// ---------------------------------------------------------------------------------------------

async fn tokenize(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: TokenizeRequest = parse_body(&body)?;
    check_model(&st, req.model.as_deref())?;
    let tok = tokenizer(&st, "prompt")?;
    let tokens = match (&req.prompt, &req.messages) {
        (Some(p), None) => tok.encode(p, req.add_special_tokens.unwrap_or(true))?,
        (None, Some(msgs)) => {
            let chat = ChatRequest {
                model: None,
                messages: msgs.clone(),
                max_completion_tokens: None,
                stream: false,
                stream_options: None,
                logprobs: false,
                top_logprobs: None,
                tools: None,
                tool_choice: None,
                parallel_tool_calls: None,
                response_format: None,
                user: None,
                add_generation_prompt: req.add_generation_prompt,
                continue_final_message: false,
                documents: None,
                chat_template_kwargs: None,
                echo: false,
                sampling: SamplingFields::default(),
            };
            chat_prompt(&st, &chat, &[], "")?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `prompt` or `messages`",
            ))
        }
    };
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": st.engine.info().max_model_len,
        "tokens": tokens,
    }))
    .into_response())
}

async fn detokenize(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: DetokenizeRequest = parse_body(&body)?;
    check_model(&st, req.model.as_deref())?;
    let tok = tokenizer(&st, "tokens")?;
    let vocab = tok.vocab_size();
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
        ));
    }
    let text = tok.decode(&req.tokens, false)?;
    Ok((StatusCode::OK, Json(json!({"prompt": text}))).into_response())
}
