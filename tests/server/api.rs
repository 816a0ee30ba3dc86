//! Response shapes of every endpoint, streaming and not.

use serde_json::{json, Value};

use super::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_shapes_logprobs_echo_and_batches() {
    let s = Server::start(&[]);
    let (st, _, r) = post(
        &s.url("/v1/completions"),
        &json!({"model": "tiny", "prompt": "Hello world", "max_tokens": 6, "temperature": 0,
                "n": 2, "logprobs": 2, "echo": true, "ignore_eos": true})
        .to_string(),
        None,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["model"], "tiny");
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finish_reason"], "length");
        assert!(
            c["text"].as_str().unwrap().starts_with("Hello world"),
            "{c}"
        );
        let lp = &c["logprobs"];
        // 4 prompt tokens (echo) + 6 generated.
        assert_eq!(lp["tokens"].as_array().unwrap().len(), 10, "{lp}");
        assert_eq!(lp["token_logprobs"][0], Value::Null);
        assert!(lp["token_logprobs"][9].as_f64().unwrap() <= 0.0);
        assert!(lp["top_logprobs"][9].as_object().unwrap().len() >= 2);
        assert_eq!(lp["text_offset"][0], 0);
    }
    // Greedy: both choices agree.
    assert_eq!(choices[0]["text"], choices[1]["text"]);
    assert_eq!(r["usage"]["prompt_tokens"], 4);
    assert_eq!(r["usage"]["completion_tokens"], 12);
    assert_eq!(r["usage"]["total_tokens"], 16);

    // Token-id prompts, a batch of two, and a stop string.
    let (st, _, r) = post(
        &s.url("/v1/completions"),
        &json!({"prompt": [[5, 6, 7], [8, 9]], "max_tokens": 3, "temperature": 0, "ignore_eos": true})
            .to_string(),
        None,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["choices"].as_array().unwrap().len(), 2);
    assert_eq!(r["usage"]["prompt_tokens"], 5);
    assert_eq!(r["usage"]["completion_tokens"], 6);
    let (_, _, r) = post(
        &s.url("/v1/completions"),
        &json!({"prompt": [5, 6, 7], "max_tokens": 3, "seed": -5, "top_k": -1,
                "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 1,
                "presence_penalty": 0.5, "frequency_penalty": 0.5, "logit_bias": {"10": -100},
                "stop": ["zz"], "best_of": 1, "user": "u"})
        .to_string(),
        None,
    )
    .await;
    assert_eq!(r["object"], "text_completion", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_matches_non_streaming_and_ends_with_done() {
    let s = Server::start(&[]);
    let req = json!({"prompt": "The capital of", "max_tokens": 12, "temperature": 0,
                     "ignore_eos": true});
    let (_, _, full) = post(&s.url("/v1/completions"), &req.to_string(), None).await;
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (chunks, done) = sse(&s.url("/v1/completions"), &sreq).await;
    assert!(done);
    let text: String = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().unwrap().iter())
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, full["choices"][0]["text"].as_str().unwrap());
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"]["completion_tokens"], 12);
    let finish: Vec<&Value> = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().unwrap().iter())
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("length")]);

    // Chat: role first, content deltas, finish, usage, [DONE].
    let creq = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                      "max_tokens": 8, "temperature": 0, "ignore_eos": true});
    let (_, _, full) = post(&s.url("/v1/chat/completions"), &creq.to_string(), None).await;
    assert_eq!(full["object"], "chat.completion");
    assert_eq!(full["choices"][0]["message"]["role"], "assistant");
    let mut sreq = creq.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (chunks, done) = sse(&s.url("/v1/chat/completions"), &sreq).await;
    assert!(done);
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().unwrap().iter())
        .filter_map(|c| c["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        text,
        full["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(
        chunks.last().unwrap()["usage"]["total_tokens"],
        full["usage"]["total_tokens"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_models_health_tokenize_detokenize() {
    let s = Server::start(&[]);
    let (st, _, r) = post(
        &s.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                "max_completion_tokens": 4, "logprobs": true, "top_logprobs": 3,
                "response_format": {"type": "text"}})
        .to_string(),
        None,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len(),
        r["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);

    let models: Value = reqwest::get(s.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["max_model_len"], 2048);
    let health = reqwest::get(s.url("/health")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let (st, _, t) = post(
        &s.url("/tokenize"),
        &json!({"prompt": "Hello world"}).to_string(),
        None,
    )
    .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["count"], 4);
    let (_, _, d) = post(
        &s.url("/detokenize"),
        &json!({"tokens": t["tokens"]}).to_string(),
        None,
    )
    .await;
    assert_eq!(d["prompt"], "Hello world");
    let (_, _, t) = post(
        &s.url("/tokenize"),
        &json!({"messages": [{"role": "user", "content": "Hi"}]}).to_string(),
        None,
    )
    .await;
    assert!(t["count"].as_u64().unwrap() > 20, "{t}");

    let text = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "nanovllm_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1",
        "nanovllm_time_to_first_token_seconds_bucket",
        "nanovllm_inter_token_latency_seconds_count",
        "nanovllm_prompt_tokens_total",
        "nanovllm_generation_tokens_total",
        "nanovllm_num_requests_running",
        "nanovllm_num_requests_waiting",
        "nanovllm_kv_blocks_in_use",
        "nanovllm_state_slots_in_use",
        "nanovllm_prefix_cache_hit_rate",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}},
           {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granite_tool_calls_come_back_as_openai_tool_calls() {
    let s = Server::start(&[]);
    // The bias makes the model emit the one token that spells a whole Granite tool call.
    let req = json!({"messages": [{"role": "user", "content": "Weather in Paris?"}],
                     "tools": weather_tools(), "max_tokens": 1,
                     "logit_bias": {TOOL_TOKEN.to_string(): 100}});
    let (st, _, r) = post(&s.url("/v1/chat/completions"), &req.to_string(), None).await;
    assert_eq!(st, 200, "{r}");
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    assert_eq!(choice["message"]["content"], Value::Null, "{r}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));

    // Streaming: the call arrives as a tool_calls delta.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let (chunks, done) = sse(&s.url("/v1/chat/completions"), &sreq).await;
    assert!(done);
    let calls: Vec<&Value> = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().unwrap().iter())
        .filter_map(|c| c["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls.len(), 1, "{chunks:?}");
    assert_eq!(calls[0][0]["function"]["name"], "get_weather");
    assert_eq!(calls[0][0]["index"], 0);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");

    // tool_choice none: the same text stays content.
    let mut none = req.clone();
    none["tool_choice"] = json!("none");
    let (_, _, r) = post(&s.url("/v1/chat/completions"), &none.to_string(), None).await;
    assert_eq!(r["choices"][0]["message"]["content"], TOOL_CALL_TEXT, "{r}");
    assert!(r["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(r["choices"][0]["finish_reason"], "length");

    // A named function always comes back as a call to that function.
    let named = json!({"messages": [{"role": "user", "content": "Time?"}],
                       "tools": weather_tools(), "max_tokens": 4,
                       "tool_choice": {"type": "function", "function": {"name": "get_time"}}});
    let (st, _, r) = post(&s.url("/v1/chat/completions"), &named.to_string(), None).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_time",
        "{r}"
    );

    // A conversation with a tool call and its result renders and runs.
    let follow = json!({"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21}"}],
        "tools": weather_tools(), "max_tokens": 2});
    let (st, _, r) = post(&s.url("/v1/chat/completions"), &follow.to_string(), None).await;
    assert_eq!(st, 200, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_cache_serves_the_earlier_turns_of_a_chat() {
    let s = Server::start(&[]);
    let mut messages =
        vec![json!({"role": "user", "content": "Tell me a long story about a cat."})];
    let mut last_prompt = 0u64;
    for turn in 0..3 {
        let (st, _, r) = post(
            &s.url("/v1/chat/completions"),
            &json!({"messages": messages, "max_tokens": 8, "temperature": 0}).to_string(),
            None,
        )
        .await;
        assert_eq!(st, 200, "{r}");
        let prompt = r["usage"]["prompt_tokens"].as_u64().unwrap();
        let cached = r["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        if turn > 0 {
            // Everything up to the previous prompt (to a 16-token block) came from the cache.
            assert!(
                cached + 16 >= last_prompt,
                "turn {turn}: cached {cached} of {last_prompt}"
            );
        }
        last_prompt = prompt;
        // A client sends back the text it got; fixed text keeps the token boundaries stable.
        messages.push(json!({"role": "assistant", "content": format!("Once upon a time {turn}.")}));
        messages.push(json!({"role": "user", "content": format!("And then? ({turn})")}));
    }
    let m = s.metrics().await;
    assert!(m["nanovllm_engine_prompt_tokens_cached_total"] > 0.0);
    assert!(m["nanovllm_prefix_cache_hit_rate"] > 0.0);
}
