//! `nanovllm bench --mode serve --url URL`: load a running OpenAI-compatible server the way
//! vLLM's `bench serve` does — streaming completions with random prompts of given lengths,
//! sent at Poisson arrival times of a given rate — and report request and token throughput,
//! time to first token (TTFT), time per output token (TPOT), inter-token latency (ITL) and
//! end-to-end latency, each as mean / p50 / p90 / p99 in milliseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Options of the serve mode.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Serve: base URL of the server (e.g. http://127.0.0.1:8000).
    #[arg(long)]
    pub url: Option<String>,
    /// Serve: requests per second (Poisson arrivals); `inf` sends them all at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    pub request_rate: f64,
    /// Serve: most requests in flight at once (default: unlimited).
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Serve: the model name to send (default: the server's first model).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Serve: API key (also NANOVLLM_API_KEY).
    #[arg(long, env = "NANOVLLM_API_KEY")]
    pub api_key: Option<String>,
}

/// What one request measured.
struct Sample {
    ok: bool,
    error: Option<String>,
    prompt_tokens: usize,
    output_tokens: usize,
    ttft: f64,
    itl: Vec<f64>,
    e2e: f64,
}

/// One request to send.
struct Job {
    prompt: Vec<u32>,
    max_tokens: usize,
}

/// Runs the benchmark; `num_requests`, length ranges and seed come from the shared options.
pub fn run(
    args: &ServeArgs,
    num_requests: usize,
    input_len: &[usize],
    output_len: &[usize],
    seed: u64,
) -> anyhow::Result<Value> {
    let url = args
        .url
        .clone()
        .context("--mode serve needs --url (e.g. http://127.0.0.1:8000)")?;
    let url = url.trim_end_matches('/').to_string();
    if args.request_rate.is_nan() || args.request_rate <= 0.0 {
        anyhow::bail!("--request-rate must be positive (or inf)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(
        args.clone(),
        url,
        num_requests,
        input_len.to_vec(),
        output_len.to_vec(),
        seed,
    ))
}

fn range(v: &[usize], rng: &mut StdRng) -> usize {
    let (lo, hi) = (
        v.first().copied().unwrap_or(1),
        v.get(1).copied().unwrap_or(v.first().copied().unwrap_or(1)),
    );
    rng.gen_range(lo.min(hi)..=hi.max(lo)).max(1)
}

async fn run_async(
    args: ServeArgs,
    url: String,
    num_requests: usize,
    input_len: Vec<usize>,
    output_len: Vec<usize>,
    seed: u64,
) -> anyhow::Result<Value> {
    let client = reqwest::Client::new();
    let auth = |r: reqwest::RequestBuilder| match &args.api_key {
        Some(k) => r.bearer_auth(k),
        None => r,
    };
    let models: Value = auth(client.get(format!("{url}/v1/models")))
        .send()
        .await
        .with_context(|| format!("connecting to {url}"))?
        .error_for_status()?
        .json()
        .await?;
    let model = match &args.served_model_name {
        Some(m) => m.clone(),
        None => models["data"][0]["id"]
            .as_str()
            .context("the server lists no model")?
            .to_string(),
    };
    // Valid token ids for random prompts: the server's tokenization of some varied text.
    let mut rng = StdRng::seed_from_u64(seed);
    let words: Vec<String> = (0..2000)
        .map(|_| {
            let n = rng.gen_range(2..9);
            (0..n)
                .map(|_| char::from(b'a' + rng.gen_range(0..26u8)))
                .collect()
        })
        .collect();
    let tok: Value = auth(client.post(format!("{url}/tokenize")))
        .json(&json!({"model": model, "prompt": words.join(" "), "add_special_tokens": false}))
        .send()
        .await?
        .error_for_status()
        .context("POST /tokenize")?
        .json()
        .await?;
    let pool: Vec<u32> = tok["tokens"]
        .as_array()
        .context("/tokenize returned no tokens")?
        .iter()
        .filter_map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect();
    anyhow::ensure!(!pool.is_empty(), "/tokenize returned no tokens");
    let jobs: Vec<Job> = (0..num_requests)
        .map(|_| {
            let len = range(&input_len, &mut rng);
            let start = rng.gen_range(0..pool.len());
            Job {
                prompt: (0..len).map(|i| pool[(start + i) % pool.len()]).collect(),
                max_tokens: range(&output_len, &mut rng),
            }
        })
        .collect();
    let gate = args
        .max_concurrency
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
    eprintln!(
        "bench serve: {num_requests} requests at {} req/s to {url} (model {model})",
        args.request_rate
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut next_at = 0.0f64;
    for job in jobs {
        if args.request_rate.is_finite() {
            // Poisson process: exponential gaps with mean 1/rate.
            let u: f64 = rng.gen_range(f64::EPSILON..1.0);
            next_at += -u.ln() / args.request_rate;
            let wait = Duration::from_secs_f64(next_at).saturating_sub(start.elapsed());
            tokio::time::sleep(wait).await;
        }
        let permit = match &gate {
            Some(g) => Some(g.clone().acquire_owned().await?),
            None => None,
        };
        let req = auth(client.post(format!("{url}/v1/completions"))).json(&json!({
            "model": model, "prompt": job.prompt, "max_tokens": job.max_tokens,
            "ignore_eos": true, "stream": true, "temperature": 0,
            "stream_options": {"include_usage": true},
        }));
        let prompt_len = job.prompt.len();
        tasks.push(tokio::spawn(async move {
            let s = one_request(req, prompt_len).await;
            drop(permit);
            s
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.push(t.await?);
    }
    let duration = start.elapsed().as_secs_f64();
    Ok(report(&samples, duration))
}

async fn one_request(req: reqwest::RequestBuilder, prompt_len: usize) -> Sample {
    let sent = Instant::now();
    let mut s = Sample {
        ok: false,
        error: None,
        prompt_tokens: prompt_len,
        output_tokens: 0,
        ttft: 0.0,
        itl: Vec::new(),
        e2e: 0.0,
    };
    let resp = match req.send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            s.error = Some(format!("HTTP {}", r.status()));
            return s;
        }
        Err(e) => {
            s.error = Some(e.to_string());
            return s;
        }
    };
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut last: Option<Instant> = None;
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                s.error = Some(e.to_string());
                return s;
            }
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if v.get("error").is_some() {
                s.error = Some(v["error"]["message"].to_string());
                return s;
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                s.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
                s.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
            }
            if v["choices"].as_array().is_some_and(|c| !c.is_empty()) {
                let now = Instant::now();
                match last {
                    None => s.ttft = (now - sent).as_secs_f64(),
                    Some(t) => s.itl.push((now - t).as_secs_f64()),
                }
                last = Some(now);
            }
        }
    }
    s.e2e = sent.elapsed().as_secs_f64();
    s.ok = done && last.is_some();
    if !s.ok && s.error.is_none() {
        s.error = Some("stream ended without [DONE]".into());
    }
    s
}

fn stats_ms(mut xs: Vec<f64>) -> Value {
    xs.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        xs.get(((xs.len() as f64 - 1.0).max(0.0) * q).round() as usize)
            .map_or(0.0, |v| v * 1000.0)
    };
    let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64 * 1000.0;
    json!({"mean": mean, "p50": at(0.5), "p90": at(0.9), "p99": at(0.99)})
}

fn report(samples: &[Sample], duration: f64) -> Value {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
    let failed = samples.len() - ok.len();
    if let Some(e) = samples.iter().find_map(|s| s.error.as_ref()) {
        eprintln!("{failed} request(s) failed; first error: {e}");
    }
    let out: usize = ok.iter().map(|s| s.output_tokens).sum();
    let input: usize = ok.iter().map(|s| s.prompt_tokens).sum();
    let tpot: Vec<f64> = ok
        .iter()
        .filter(|s| s.output_tokens > 1)
        .map(|s| (s.e2e - s.ttft) / (s.output_tokens - 1) as f64)
        .collect();
    let r = json!({
        "completed": ok.len(),
        "failed": failed,
        "duration_s": duration,
        "total_input_tokens": input,
        "total_output_tokens": out,
        "request_throughput": ok.len() as f64 / duration.max(1e-9),
        "output_token_throughput": out as f64 / duration.max(1e-9),
        "total_token_throughput": (input + out) as f64 / duration.max(1e-9),
        "ttft_ms": stats_ms(ok.iter().map(|s| s.ttft).collect()),
        "tpot_ms": stats_ms(tpot),
        "itl_ms": stats_ms(ok.iter().flat_map(|s| s.itl.iter().copied()).collect()),
        "e2el_ms": stats_ms(ok.iter().map(|s| s.e2e).collect()),
    });
    eprintln!(
        "completed {} (failed {failed}) in {duration:.2}s: {:.2} req/s, {:.1} output tok/s; \
         TTFT mean {:.1} ms p99 {:.1} ms; TPOT mean {:.1} ms; ITL mean {:.1} ms p99 {:.1} ms",
        ok.len(),
        r["request_throughput"].as_f64().unwrap_or(0.0),
        r["output_token_throughput"].as_f64().unwrap_or(0.0),
        r["ttft_ms"]["mean"].as_f64().unwrap_or(0.0),
        r["ttft_ms"]["p99"].as_f64().unwrap_or(0.0),
        r["tpot_ms"]["mean"].as_f64().unwrap_or(0.0),
        r["itl_ms"]["mean"].as_f64().unwrap_or(0.0),
        r["itl_ms"]["p99"].as_f64().unwrap_or(0.0),
    );
    r
}
