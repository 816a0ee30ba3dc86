//! A bounded loopback load test: 64 concurrent streaming clients send 256 requests (completions
//! and chat, some with n = 2, some disconnecting early); every request that is read to the end
//! completes without error, and afterwards no KV block or state slot is still in use.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::harness::*;

const CLIENTS: usize = 64;
const REQUESTS: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_streaming_clients_complete_and_leave_the_pools_empty() {
    let s = Server::start(&["--max-num-seqs", "16", "--max-queue", "512"]);
    let base = s.base.clone();
    let gate = Arc::new(Semaphore::new(CLIENTS));
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
        let max_tokens = rng.gen_range(2..24);
        let n = if i % 5 == 0 { 2 } else { 1 };
        let chat = i % 2 == 0;
        let hang_up = i % 16 == 7;
        let (url, body) = if chat {
            (
                format!("{base}/v1/chat/completions"),
                json!({"messages": [{"role": "user", "content": format!("Question {i}")}],
                       "max_tokens": max_tokens, "n": n, "stream": true, "ignore_eos": true,
                       "temperature": 0.8, "seed": i}),
            )
        } else {
            (
                format!("{base}/v1/completions"),
                json!({"prompt": format!("Prompt number {i} says"), "max_tokens": max_tokens,
                       "n": n, "stream": true, "ignore_eos": true,
                       "stream_options": {"include_usage": true}}),
            )
        };
        let gate = gate.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let resp = client.post(&url).json(&body).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200, "request {i}");
            let mut stream = resp.bytes_stream();
            if hang_up {
                let _ = stream.next().await;
                return None;
            }
            let mut text = Vec::new();
            while let Some(chunk) = stream.next().await {
                text.extend_from_slice(&chunk.unwrap());
            }
            let text = String::from_utf8(text).unwrap();
            let mut done = false;
            let mut finished = 0;
            let mut tokens_seen = 0;
            for event in text.split("\n\n").filter(|e| !e.is_empty()) {
                let data = event.strip_prefix("data: ").unwrap();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = serde_json::from_str(data).unwrap();
                assert!(v.get("error").is_none(), "request {i}: {v}");
                for c in v["choices"].as_array().unwrap() {
                    if let Some(f) = c["finish_reason"].as_str() {
                        assert_eq!(f, "length", "request {i}: {v}");
                        finished += 1;
                    }
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    tokens_seen = u["completion_tokens"].as_u64().unwrap();
                }
            }
            assert!(done, "request {i} did not end with [DONE]");
            assert_eq!(finished, n, "request {i}: every choice finishes");
            if !chat {
                assert_eq!(tokens_seen, (max_tokens * n) as u64, "request {i}");
            }
            Some(n)
        }));
    }
    let run = async {
        let mut choices = 0;
        for t in tasks {
            choices += t.await.unwrap().unwrap_or(0);
        }
        choices
    };
    let choices = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("load test took too long");
    let m = s.wait_idle(Duration::from_secs(10)).await;
    assert_eq!(m["nanovllm_kv_blocks_in_use"], 0.0);
    assert_eq!(m["nanovllm_state_slots_in_use"], 0.0);
    let ok = m["nanovllm_http_requests_total{route=\"/v1/completions\",status=\"200\"}"]
        + m["nanovllm_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"];
    assert_eq!(ok, REQUESTS as f64);
    assert_eq!(
        m["nanovllm_request_success_total{finished_reason=\"length\"}"],
        choices as f64
    );
    assert_eq!(
        m.iter()
            .filter(|(k, _)| k.starts_with("nanovllm_http_requests_total") && !k.contains("\"200\""))
            .count(),
        0,
        "{m:?}"
    );
}
