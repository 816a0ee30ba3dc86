//! Client disconnects abort their requests and free the cache at once; SIGTERM stops the
//! server within the grace period and exits 0.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use super::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_stream_aborts_and_frees_the_cache() {
    let s = Server::start(&["--max-model-len", "4096", "--kv-cache-mib", "16"]);
    for endpoint in ["/v1/completions", "/v1/chat/completions"] {
        let body = if endpoint == "/v1/completions" {
            json!({"prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": true, "stream": true})
        } else {
            json!({"messages": [{"role": "user", "content": "Go"}], "max_tokens": 3000,
                   "ignore_eos": true, "stream": true})
        };
        let before = s.metrics().await;
        let resp = reqwest::Client::new()
            .post(s.url(endpoint))
            .json(&body)
            .send()
            .await
            .unwrap();
        let mut stream = resp.bytes_stream();
        // Read a few chunks, then hang up.
        let mut got = 0;
        while got < 3 {
            let chunk = stream.next().await.unwrap().unwrap();
            got += chunk.iter().filter(|&&b| b == b'\n').count() / 2;
        }
        let m = s.metrics().await;
        assert!(m["nanovllm_state_slots_in_use"] >= 1.0, "{m:?}");
        drop(stream);
        let m = s.wait_idle(Duration::from_secs(5)).await;
        let generated = m["nanovllm_engine_generation_tokens_total"]
            - before["nanovllm_engine_generation_tokens_total"];
        assert!(
            generated < 3000.0,
            "the request ran to the end: {generated}"
        );
        assert_eq!(
            m["nanovllm_requests_aborted_by_client_total"]
                - before["nanovllm_requests_aborted_by_client_total"],
            1.0
        );
    }
    // A non-streaming request whose client times out is aborted too.
    let before = s.metrics().await;
    let r = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .timeout(Duration::from_millis(300))
        .json(&json!({"prompt": "x", "max_tokens": 3000, "ignore_eos": true}))
        .send()
        .await;
    assert!(r.is_err());
    let m = s.wait_idle(Duration::from_secs(5)).await;
    assert!(
        m["nanovllm_engine_generation_tokens_total"]
            - before["nanovllm_engine_generation_tokens_total"]
            < 3000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_or_aborts_in_flight_requests_and_exits_zero() {
    // The long request (4 x 4000 tokens) needs far longer than the 0.3 s grace period even on
    // a fast idle machine, the short one (20 tokens) far less even on a loaded one.
    let mut s = Server::start(&[
        "--max-model-len",
        "4096",
        "--kv-cache-mib",
        "16",
        "--shutdown-timeout",
        "0.3",
    ]);
    // One short request (finishes within the grace period), one too long for it.
    let url = s.url("/v1/completions");
    let u = url.clone();
    let short = tokio::spawn(async move {
        sse(
            &u,
            &json!({"prompt": "a", "max_tokens": 20, "ignore_eos": true, "stream": true}),
        )
        .await
    });
    let long = tokio::spawn(async move {
        sse(
            &url,
            &json!({"prompt": "b", "max_tokens": 4000, "n": 4, "ignore_eos": true, "stream": true}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let start = Instant::now();
    s.terminate();
    let (chunks, done) = short.await.unwrap();
    assert!(done);
    let reasons: Vec<_> = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(reasons, vec!["length"]);
    let (chunks, done) = long.await.unwrap();
    assert!(done, "the aborted stream still ends with [DONE]");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "abort", "{last}");
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "server still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?} {:?}", s.log.lock().unwrap());
    assert!(start.elapsed() < Duration::from_secs(8));
    // No longer accepting.
    assert!(reqwest::get(s.url("/health")).await.is_err());
}
