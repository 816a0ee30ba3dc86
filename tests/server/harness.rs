//! Starts `nanovllm serve` on an ephemeral loopback port with a tiny fixture model, the small
//! BPE tokenizer (plus one added token that spells a whole Granite tool call, so a test can
//! force a tool call with `logit_bias`) and the Granite 4 chat template.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The text of the added token (id [`TOOL_TOKEN`]).
pub const TOOL_CALL_TEXT: &str =
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
/// Its id (the base tokenizer has 296 tokens; the model's vocabulary is 384).
pub const TOOL_TOKEN: u32 = 296;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A model directory: the bf16 sharded hybrid fixture + tokenizer with the added token.
pub fn model_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("granite_hybrid/bf16_sharded");
    for e in std::fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() != "reference.safetensors" {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let tok: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tokenizer/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let mut tok = tok;
    tok["added_tokens"].as_array_mut().unwrap().push(json!({
        "id": TOOL_TOKEN, "content": TOOL_CALL_TEXT, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": false
    }));
    std::fs::write(tmp.path().join("tokenizer.json"), tok.to_string()).unwrap();
    tmp
}

/// A running server; killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server with the chat template; `extra` are more CLI arguments.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with(true, extra)
    }

    pub fn start_with(template: bool, extra: &[&str]) -> Server {
        let dir = model_dir();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nanovllm"));
        cmd.args(["serve", "--port", "0", "--served-model-name", "tiny"])
            .args(["--prefix-cache-mib", "4", "--threads", "1"])
            .arg("--model")
            .arg(dir.path());
        for (flag, default) in [("--max-model-len", "2048"), ("--kv-cache-mib", "8")] {
            if !extra.contains(&flag) {
                cmd.args([flag, default]);
            }
        }
        if template {
            cmd.arg("--chat-template")
                .arg(fixtures().join("chat_templates/granite4.jinja"));
        }
        cmd.args(extra)
            .env_remove("NANOVLLM_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .split("http://")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                {
                    let _ = tx.send(addr.to_string());
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
        Server {
            child,
            base: format!("http://{addr}"),
            log,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Reads /metrics into name{labels} → value.
    pub async fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// Waits until no request runs and the pools are back to empty; returns the metrics.
    pub async fn wait_idle(&self, limit: Duration) -> std::collections::HashMap<String, f64> {
        let start = Instant::now();
        loop {
            let m = self.metrics().await;
            let busy = [
                "nanovllm_num_requests_in_flight",
                "nanovllm_num_requests_running",
                "nanovllm_num_requests_waiting",
                "nanovllm_kv_blocks_in_use",
                "nanovllm_state_slots_in_use",
            ]
            .iter()
            .map(|k| m.get(*k).copied().unwrap_or(-1.0))
            .sum::<f64>();
            if busy == 0.0 {
                return m;
            }
            assert!(
                start.elapsed() < limit,
                "server not idle after {limit:?}: {m:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // The shell's builtin `kill`: no procps needed.
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs JSON; returns status, headers and body as JSON (or the raw text as a JSON string).
pub async fn post(
    url: &str,
    body: &str,
    key: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

/// Reads a whole SSE response: the JSON of every `data:` line before `[DONE]`, and whether
/// `[DONE]` came last.
pub async fn sse(url: &str, body: &Value) -> (Vec<Value>, bool) {
    let resp = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = resp.text().await.unwrap();
    let mut chunks = Vec::new();
    let mut done = false;
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.strip_prefix("data: ").expect(event);
        assert!(!done, "data after [DONE]: {data}");
        if data == "[DONE]" {
            done = true;
        } else {
            chunks.push(serde_json::from_str(data).unwrap());
        }
    }
    (chunks, done)
}
