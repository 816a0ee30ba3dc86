//! Every error case answers in OpenAI's error shape with the right status and a message that
//! names the problem; none of them disturbs the server.

use serde_json::{json, Value};

use super::harness::*;

/// Asserts status, `error.type`, `error.param` and that the message contains every snippet.
fn check(
    got: &(u16, reqwest::header::HeaderMap, Value),
    status: u16,
    param: Option<&str>,
    snippets: &[&str],
) {
    let (st, _, body) = got;
    assert_eq!(*st, status, "{body}");
    let err = &body["error"];
    assert!(err["type"].is_string(), "{body}");
    assert_eq!(err["param"].as_str(), param, "{body}");
    let msg = err["message"].as_str().unwrap();
    for s in snippets {
        assert!(msg.contains(s), "`{msg}` lacks `{s}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_are_400s_naming_the_field() {
    let s = Server::start(&["--max-model-len", "64"]);
    let c = s.url("/v1/completions");
    let chat = s.url("/v1/chat/completions");
    let p = |b: Value| b.to_string();
    check(
        &post(&c, "{\"prompt\": \"x\",", None).await,
        400,
        None,
        &["malformed JSON"],
    );
    check(&post(&c, "[1, 2]", None).await, 400, None, &["JSON object"]);
    check(
        &post(&c, &p(json!({"max_tokens": 3})), None).await,
        400,
        Some("prompt"),
        &["missing field `prompt`"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "temperature": "hot"})), None).await,
        400,
        Some("temperature"),
        &["temperature", "invalid type"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "max_tokens": -1})), None).await,
        400,
        Some("max_tokens"),
        &["max_tokens"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "stream": "yes"})), None).await,
        400,
        Some("stream"),
        &["stream"],
    );
    check(
        &post(&c, &p(json!({"prompt": {"a": 1}})), None).await,
        400,
        Some("prompt"),
        &["prompt", "expected a string"],
    );
    check(
        &post(&c, &p(json!({"prompt": [1, -2]})), None).await,
        400,
        Some("prompt"),
        &["prompt"],
    );
    check(
        &post(&c, &p(json!({"prompt": []})), None).await,
        400,
        Some("prompt"),
        &["empty"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "stop": 5})), None).await,
        400,
        Some("stop"),
        &["stop"],
    );
    // Invalid sampling values.
    check(
        &post(&c, &p(json!({"prompt": "x", "top_p": 1.5})), None).await,
        400,
        Some("top_p"),
        &["top_p", "1.5"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "temperature": -1})), None).await,
        400,
        Some("temperature"),
        &["temperature"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "presence_penalty": 3})), None).await,
        400,
        Some("presence_penalty"),
        &["presence_penalty"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "n": 0})), None).await,
        400,
        Some("n"),
        &["n"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "n": 100000})), None).await,
        400,
        Some("n"),
        &["at most"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "max_tokens": 0})), None).await,
        400,
        Some("max_tokens"),
        &["max_tokens"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "logprobs": 50})), None).await,
        400,
        Some("logprobs"),
        &["at most 20"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "top_k": -3})), None).await,
        400,
        Some("top_k"),
        &["top_k"],
    );
    check(
        &post(
            &c,
            &p(json!({"prompt": "x", "logit_bias": {"abc": 1}})),
            None,
        )
        .await,
        400,
        Some("logit_bias"),
        &["abc"],
    );
    check(
        &post(
            &c,
            &p(json!({"prompt": "x", "logit_bias": {"999999": 1}})),
            None,
        )
        .await,
        400,
        Some("logit_bias"),
        &["999999", "vocabulary"],
    );
    check(
        &post(
            &c,
            &p(json!({"prompt": "x", "min_tokens": 9, "max_tokens": 2})),
            None,
        )
        .await,
        400,
        Some("min_tokens"),
        &["min_tokens"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "stop": [""]})), None).await,
        400,
        Some("stop"),
        &["empty"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "best_of": 3})), None).await,
        400,
        Some("best_of"),
        &["best_of"],
    );
    check(
        &post(&c, &p(json!({"prompt": "x", "suffix": "y"})), None).await,
        400,
        Some("suffix"),
        &["suffix"],
    );
    check(
        &post(&c, &p(json!({"prompt": [5000]})), None).await,
        400,
        Some("prompt"),
        &["5000", "vocabulary"],
    );
    check(
        &post(&c, &p(json!({"prompt": vec!["x"; 300]})), None).await,
        400,
        Some("prompt"),
        &["256", "300"],
    );
    // Too long: both numbers in the message.
    check(
        &post(&c, &p(json!({"prompt": vec![5; 80]})), None).await,
        400,
        Some("prompt"),
        &["64", "80"],
    );
    check(
        &post(
            &c,
            &p(json!({"prompt": vec![5; 40], "max_tokens": 30})),
            None,
        )
        .await,
        400,
        Some("max_tokens"),
        &["64", "70", "40", "30"],
    );
    // Chat specifics.
    check(
        &post(&chat, &p(json!({"messages": []})), None).await,
        400,
        Some("messages"),
        &["empty"],
    );
    check(
        &post(
            &chat,
            &p(json!({"messages": [{"role": "robot", "content": "x"}]})),
            None,
        )
        .await,
        400,
        Some("messages[0].role"),
        &["robot"],
    );
    check(
        &post(&chat, &p(json!({"messages": [{"role": "user"}]})), None).await,
        400,
        Some("messages[0].content"),
        &["required"],
    );
    check(
        &post(
            &chat,
            &p(json!({"messages": [{"role": "user", "content": 5}]})),
            None,
        )
        .await,
        400,
        Some("messages[0].content"),
        &["content"],
    );
    check(
        &post(
            &chat,
            &p(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
            None,
        )
        .await,
        400,
        Some("messages[0].content"),
        &["image_url"],
    );
    let msgs = json!([{"role": "user", "content": "hi"}]);
    check(
        &post(
            &chat,
            &p(json!({"messages": msgs, "response_format": {"type": "json_object"}})),
            None,
        )
        .await,
        400,
        Some("response_format"),
        &["json_object", "not supported"],
    );
    check(
        &post(
            &chat,
            &p(json!({"messages": msgs, "tool_choice": "required"})),
            None,
        )
        .await,
        400,
        Some("tool_choice"),
        &["no `tools`"],
    );
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    check(&post(&chat, &p(json!({"messages": msgs, "tools": tools, "tool_choice": {"type": "function", "function": {"name": "g"}}})), None).await, 400, Some("tool_choice"), &["`g`"]);
    check(
        &post(
            &chat,
            &p(json!({"messages": msgs, "tools": tools, "tool_choice": "sometimes"})),
            None,
        )
        .await,
        400,
        Some("tool_choice"),
        &["sometimes"],
    );
    check(&post(&chat, &p(json!({"messages": msgs, "tools": [{"type": "retrieval", "function": {"name": "f"}}]})), None).await, 400, Some("tools[0].type"), &["retrieval"]);
    check(
        &post(
            &chat,
            &p(json!({"messages": msgs, "top_logprobs": 2})),
            None,
        )
        .await,
        400,
        Some("top_logprobs"),
        &["logprobs"],
    );
    let long = "word ".repeat(100);
    check(
        &post(
            &chat,
            &p(json!({"messages": [{"role": "user", "content": long}]})),
            None,
        )
        .await,
        400,
        Some("messages"),
        &["64"],
    );
    // Unknown model → 404; unknown route → 404.
    check(
        &post(&c, &p(json!({"model": "gpt-4", "prompt": "x"})), None).await,
        404,
        Some("model"),
        &["gpt-4"],
    );
    check(
        &post(&chat, &p(json!({"model": "gpt-4", "messages": msgs})), None).await,
        404,
        Some("model"),
        &["gpt-4"],
    );
    let r = reqwest::get(s.url("/v1/models/gpt-4")).await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    check(
        &post(&s.url("/v1/embeddings"), "{}", None).await,
        404,
        None,
        &["/v1/embeddings"],
    );
    // Tokenize errors.
    check(
        &post(&s.url("/tokenize"), "{}", None).await,
        400,
        None,
        &["prompt", "messages"],
    );
    check(
        &post(
            &s.url("/detokenize"),
            &p(json!({"tokens": [1, 100000]})),
            None,
        )
        .await,
        400,
        Some("tokens"),
        &["100000"],
    );
    // Still serving.
    let (st, _, r) = post(&c, &p(json!({"prompt": "x", "max_tokens": 2})), None).await;
    assert_eq!(st, 200, "{r}");
    let m = s.wait_idle(std::time::Duration::from_secs(10)).await;
    assert!(m["nanovllm_http_requests_total{route=\"/v1/completions\",status=\"400\"}"] >= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set() {
    let s = Server::start(&["--api-key", "sekret"]);
    let c = s.url("/v1/completions");
    let body = json!({"prompt": "x", "max_tokens": 2}).to_string();
    check(
        &post(&c, &body, None).await,
        401,
        None,
        &["missing API key"],
    );
    check(
        &post(&c, &body, Some("wrong")).await,
        401,
        None,
        &["incorrect API key"],
    );
    let (st, _, r) = post(&c, &body, Some("sekret")).await;
    assert_eq!(st, 200, "{r}");
    let r = reqwest::get(s.url("/v1/models")).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Health and metrics stay open for probes.
    assert_eq!(
        reqwest::get(s.url("/health"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        reqwest::get(s.url("/metrics"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_a_503_with_retry_after() {
    let s = Server::start(&[
        "--max-queue",
        "1",
        "--max-model-len",
        "4096",
        "--kv-cache-mib",
        "16",
    ]);
    let c = s.url("/v1/completions");
    // Occupy the only place with a long streaming request.
    let resp = reqwest::Client::new()
        .post(&c)
        .json(&json!({"prompt": "x", "max_tokens": 4000, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let got = post(
        &c,
        &json!({"prompt": "y", "max_tokens": 2}).to_string(),
        None,
    )
    .await;
    check(&got, 503, None, &["queue is full"]);
    assert_eq!(got.1["retry-after"].to_str().unwrap(), "1");
    assert_eq!(got.2["error"]["code"], "queue_full");
    drop(resp);
    s.wait_idle(std::time::Duration::from_secs(20)).await;
    let (st, _, _) = post(
        &c,
        &json!({"prompt": "y", "max_tokens": 2}).to_string(),
        None,
    )
    .await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_without_a_template_is_a_clear_400() {
    let s = Server::start_with(false, &[]);
    let got = post(
        &s.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(),
        None,
    )
    .await;
    check(&got, 400, None, &["no chat template", "--chat-template"]);
}
