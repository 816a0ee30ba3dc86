//! OpenAI wire types: the request bodies the official clients send (plus vLLM's extra sampling
//! fields), the responses and stream chunks they parse, and the error object. Requests are
//! parsed with the JSON path of any bad field kept, so a 400 can name it.

use std::collections::HashMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::Error;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An error returned to a client as `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// OpenAI error type (`invalid_request_error`, ...).
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<String>,
    /// A short machine-readable code.
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed (sets `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 about request field `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message.into(),
        );
        e.param = Some(param.into());
        e
    }

    /// 400 not tied to one field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message);
        e.code = Some("invalid_api_key");
        e
    }

    /// 404 for an unknown model.
    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("the model `{model}` does not exist"),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }

    /// 404 for an unknown route.
    pub fn route_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("no route for {path}"),
        )
    }

    /// 503 with `Retry-After`: the server is overloaded or stopping.
    pub fn unavailable(message: impl Into<String>, code: &'static str) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        e.code = Some(code);
        e.retry_after = Some(1);
        e
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidRequest { field, reason } if field == "engine" => {
                ApiError::unavailable(reason, "engine_stopped")
            }
            Error::InvalidRequest { field, reason } => {
                ApiError::invalid(field.clone(), format!("`{field}`: {reason}"))
            }
            Error::CacheExhausted(m) => ApiError::unavailable(m, "queue_full"),
            Error::Tokenizer(m) => ApiError::bad_request(format!("tokenizer: {m}")),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Parses a request body into a JSON object; syntax errors are 400s.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// Reads a typed request from a parsed body; errors name the JSON path of the field at fault.
pub fn from_json<T: DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            // e.g. a missing required field: serde's message names it in backticks.
            let msg = inner.to_string();
            let field = msg.split('`').nth(1).unwrap_or_default().to_string();
            let mut err = ApiError::bad_request(format!("invalid request body: {msg}"));
            err.param = (!field.is_empty()).then_some(field);
            err
        } else {
            ApiError::invalid(path.clone(), format!("`{path}`: {inner}"))
        }
    })
}

/// Parses a body and reads it as `T`.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    from_json(&parse_json(body)?)
}

// ---------------------------------------------------------------------------------------------
// Request pieces
// ---------------------------------------------------------------------------------------------

/// A completions prompt: text, token ids, or a batch of either.
#[derive(Debug, Clone)]
pub enum PromptInput {
    /// One or more text prompts.
    Texts(Vec<String>),
    /// One or more token-id prompts.
    Tokens(Vec<Vec<u32>>),
}

impl<'de> Deserialize<'de> for PromptInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let bad = || {
            D::Error::custom(
                "expected a string, an array of strings, an array of token ids or an array of \
                 arrays of token ids",
            )
        };
        let v = Value::deserialize(d)?;
        let token = |v: &Value| v.as_u64().and_then(|t| u32::try_from(t).ok());
        match v {
            Value::String(s) => Ok(PromptInput::Texts(vec![s])),
            Value::Array(items) if items.is_empty() => Err(D::Error::custom("must not be empty")),
            Value::Array(items) => {
                if items.iter().all(Value::is_string) {
                    Ok(PromptInput::Texts(
                        items
                            .into_iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect(),
                    ))
                } else if items.iter().all(Value::is_number) {
                    items
                        .iter()
                        .map(token)
                        .collect::<Option<Vec<u32>>>()
                        .map(|t| PromptInput::Tokens(vec![t]))
                        .ok_or_else(bad)
                } else if items.iter().all(Value::is_array) {
                    items
                        .iter()
                        .map(|p| {
                            p.as_array()
                                .and_then(|a| a.iter().map(token).collect::<Option<Vec<u32>>>())
                        })
                        .collect::<Option<Vec<_>>>()
                        .map(PromptInput::Tokens)
                        .ok_or_else(bad)
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Default)]
pub struct StopInput(pub Vec<String>);

impl<'de> Deserialize<'de> for StopInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(s)) => Ok(StopInput(vec![s])),
            Ok(OneOrMany::Many(v)) => Ok(StopInput(v)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a string or an array of strings",
            )),
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with token usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by completions and chat (OpenAI's plus vLLM's extras).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    /// Maximum new tokens.
    pub max_tokens: Option<usize>,
    /// Sampling temperature (0 = greedy).
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Completions per prompt.
    pub n: Option<usize>,
    /// Stop strings.
    pub stop: Option<StopInput>,
    /// Seed of the request's random stream.
    pub seed: Option<i64>,
    /// Penalty for tokens already generated (once).
    pub presence_penalty: Option<f32>,
    /// Penalty for tokens already generated (per occurrence).
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string) → bias added to its logit.
    pub logit_bias: Option<HashMap<String, f32>>,
    /// vLLM: keep the k most likely tokens (-1 or 0 = all).
    pub top_k: Option<i64>,
    /// vLLM: minimum probability relative to the most likely token.
    pub min_p: Option<f32>,
    /// vLLM: CTRL-style repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// vLLM: keep generating past end-of-sequence.
    pub ignore_eos: Option<bool>,
    /// vLLM: minimum new tokens before EOS/stop may end generation.
    pub min_tokens: Option<usize>,
    /// vLLM: token ids that end generation.
    pub stop_token_ids: Option<Vec<u32>>,
    /// vLLM: leave special tokens out of the text.
    pub skip_special_tokens: Option<bool>,
    /// vLLM: keep the matched stop string in the text.
    pub include_stop_str_in_output: Option<bool>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The model name.
    pub model: Option<String>,
    /// The prompt(s).
    pub prompt: PromptInput,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Top log-probabilities per token (0..=20).
    pub logprobs: Option<usize>,
    /// Prepend the prompt to the completion.
    #[serde(default)]
    pub echo: bool,
    /// Must equal `n` when given (no server-side best-of).
    pub best_of: Option<usize>,
    /// Not supported (insertion).
    pub suffix: Option<String>,
    /// vLLM: top log-probabilities per prompt token.
    pub prompt_logprobs: Option<usize>,
    /// vLLM: add the tokenizer's special tokens (BOS) to text prompts.
    pub add_special_tokens: Option<bool>,
    /// End-user id (ignored).
    pub user: Option<String>,
    /// Sampling fields (read from the same body by [`from_json`]).
    #[serde(skip)]
    pub sampling: SamplingFields,
}

/// Content of a chat message: text, or a list of parts.
#[derive(Debug, Clone)]
pub struct MessageContent(pub String);

impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match Value::deserialize(d)? {
            Value::String(s) => Ok(MessageContent(s)),
            Value::Array(parts) => {
                let mut text = Vec::new();
                for (i, p) in parts.iter().enumerate() {
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") => match p.get("text").and_then(Value::as_str) {
                            Some(t) => text.push(t.to_string()),
                            None => {
                                return Err(D::Error::custom(format!(
                                    "part {i} has type `text` but no string `text`"
                                )))
                            }
                        },
                        Some(other) => {
                            return Err(D::Error::custom(format!(
                                "part {i} has type `{other}`; only text parts are supported"
                            )))
                        }
                        None => return Err(D::Error::custom(format!("part {i} has no `type`"))),
                    }
                }
                Ok(MessageContent(text.join("\n")))
            }
            _ => Err(D::Error::custom(
                "expected a string or an array of content parts",
            )),
        }
    }
}

/// A function call made by the assistant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON string.
    pub arguments: String,
}

/// A tool call in an assistant message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolCall {
    /// Call id.
    #[serde(default)]
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The call.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// system, developer, user, assistant or tool.
    pub role: String,
    /// Text content (null for assistant messages with only tool calls).
    pub content: Option<MessageContent>,
    /// Optional participant name.
    pub name: Option<String>,
    /// Calls made by the assistant.
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For role `tool`: which call this answers.
    pub tool_call_id: Option<String>,
}

/// A function the model may call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionDef {
    /// Name.
    pub name: String,
    /// What it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// A tool: `{"type": "function", "function": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tool {
    /// Must be `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDef,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// Never call a tool.
    None,
    /// The model decides.
    Auto,
    /// Call some tool.
    Required,
    /// Call this function.
    Named(String),
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match Value::deserialize(d)? {
            Value::String(s) => match s.as_str() {
                "none" => Ok(ToolChoice::None),
                "auto" => Ok(ToolChoice::Auto),
                "required" => Ok(ToolChoice::Required),
                other => Err(D::Error::custom(format!(
                    "`{other}` is not one of none, auto, required"
                ))),
            },
            v @ Value::Object(_) => v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .map(|n| ToolChoice::Named(n.to_string()))
                .ok_or_else(|| {
                    D::Error::custom(
                        "expected {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                }),
            _ => Err(D::Error::custom(
                "expected none, auto, required or a named function",
            )),
        }
    }
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponseFormat {
    /// text, json_object or json_schema.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The model name.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Newer name of `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Return log-probabilities of the output tokens.
    #[serde(default)]
    pub logprobs: bool,
    /// How many alternatives per token (needs `logprobs`).
    pub top_logprobs: Option<usize>,
    /// Functions the model may call.
    pub tools: Option<Vec<Tool>>,
    /// Whether and which tool to call.
    pub tool_choice: Option<ToolChoice>,
    /// Accepted; calls are parsed one by one either way.
    pub parallel_tool_calls: Option<bool>,
    /// Output format.
    pub response_format: Option<ResponseFormat>,
    /// End-user id (ignored).
    pub user: Option<String>,
    /// vLLM: end the prompt with the assistant header (default true).
    pub add_generation_prompt: Option<bool>,
    /// vLLM: continue the last (assistant) message instead of starting a new one.
    #[serde(default)]
    pub continue_final_message: bool,
    /// vLLM: documents for retrieval-augmented templates.
    pub documents: Option<Vec<Value>>,
    /// vLLM: extra variables for the chat template.
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    /// vLLM: prepend the prompt to... (not supported for chat; must be false).
    #[serde(default)]
    pub echo: bool,
    /// Sampling fields (read from the same body by [`from_json`]).
    #[serde(skip)]
    pub sampling: SamplingFields,
}

/// `POST /tokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    /// The model name.
    pub model: Option<String>,
    /// Text to tokenize.
    pub prompt: Option<String>,
    /// Or a conversation, rendered with the chat template first.
    pub messages: Option<Vec<ChatMessage>>,
    /// Add BOS etc. (text prompts; default true).
    pub add_special_tokens: Option<bool>,
    /// For messages: end with the assistant header (default true).
    pub add_generation_prompt: Option<bool>,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    /// The model name.
    pub model: Option<String>,
    /// Token ids.
    pub tokens: Vec<u32>,
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Token counts of a request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// Prompt tokens (all prompts).
    pub prompt_tokens: usize,
    /// Generated tokens (all choices).
    pub completion_tokens: usize,
    /// Sum of both.
    pub total_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// Details of the prompt tokens.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PromptTokensDetails {
    /// Served from the prefix cache.
    pub cached_tokens: usize,
}

/// Legacy completions log-probabilities.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    /// Token strings.
    pub tokens: Vec<String>,
    /// Their log-probabilities (None for the first prompt token when echoing).
    pub token_logprobs: Vec<Option<f32>>,
    /// Top alternatives per position.
    pub top_logprobs: Vec<Option<HashMap<String, f32>>>,
    /// Character offset of each token in the returned text.
    pub text_offset: Vec<usize>,
}

/// A completion choice.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    /// Index among all choices.
    pub index: usize,
    /// The text.
    pub text: String,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// stop, length or abort (None while streaming).
    pub finish_reason: Option<&'static str>,
    /// vLLM: the stop string or token id that ended it.
    pub stop_reason: Option<Value>,
}

/// A completions response or stream chunk.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionResponse {
    /// Request id.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Choices.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (final response / last chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One alternative in chat log-probabilities.
#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    /// Token text.
    pub token: String,
    /// Log-probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token.
    pub bytes: Vec<u8>,
}

/// Chat log-probabilities of one token.
#[derive(Debug, Clone, Serialize)]
pub struct ChatTokenLogprob {
    /// Token text.
    pub token: String,
    /// Log-probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token.
    pub bytes: Vec<u8>,
    /// Top alternatives.
    pub top_logprobs: Vec<TopLogprob>,
}

/// Chat log-probabilities.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<ChatTokenLogprob>,
}

/// The assistant's message.
#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: &'static str,
    /// Text (None when the answer is only tool calls).
    pub content: Option<String>,
    /// Parsed tool calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

/// A chat choice.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    /// Index.
    pub index: usize,
    /// The message.
    pub message: AssistantMessage,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// stop, length, tool_calls or abort.
    pub finish_reason: Option<&'static str>,
    /// vLLM: the stop string or token id that ended it.
    pub stop_reason: Option<Value>,
}

/// A chat response.
#[derive(Debug, Clone, Serialize)]
pub struct ChatResponse {
    /// Request id.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Choices.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// A streamed tool-call fragment.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDelta {
    /// Which call of the choice.
    pub index: usize,
    /// Call id (first fragment).
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Name and arguments.
    pub function: FunctionCall,
}

/// What changed in a streamed chat choice.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatDelta {
    /// `assistant`, in the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New tool calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A streamed chat choice.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    /// Index.
    pub index: usize,
    /// The change.
    pub delta: ChatDelta,
    /// Log-probabilities of the new tokens.
    pub logprobs: Option<ChatLogprobs>,
    /// Set in the choice's last chunk.
    pub finish_reason: Option<&'static str>,
    /// vLLM: the stop string or token id that ended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Value>,
}

/// A chat stream chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    /// Request id.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Choices that changed.
    pub choices: Vec<ChatChunkChoice>,
    /// Token counts (only in the extra last chunk with `include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}
