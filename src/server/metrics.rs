//! Prometheus metrics: HTTP requests by route and status, finished requests by reason, prompt
//! and generated tokens, time-to-first-token / inter-token / end-to-end latency histograms
//! (measured where the client sees them: in the server), and engine gauges (running and
//! waiting requests, KV blocks and state slots in use, prefix-cache hit rate) read from the
//! engine thread's published status. Counters are atomics or short mutexes, off the engine
//! loop.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::engine::engine_thread::EngineStatus;

/// A fixed-bucket histogram of seconds.
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistInner>,
}

#[derive(Default)]
struct HistInner {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: Mutex::new(HistInner {
                counts: vec![0; bounds.len()],
                ..Default::default()
            }),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Ok(mut h) = self.inner.lock() {
            if let Some(i) = self.bounds.iter().position(|&b| s <= b) {
                h.counts[i] += 1;
            }
            h.sum += s;
            h.count += 1;
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let Ok(h) = self.inner.lock() else { return };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&h.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
    }
}

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 2.5,
];
const E2E_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0,
];

/// All server-side metrics.
pub struct Metrics {
    http: Mutex<BTreeMap<(String, u16), u64>>,
    finished: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests dropped by their client before finishing.
    pub aborted_by_client: AtomicU64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: AtomicU64,
    /// Tokens streamed to clients.
    pub generation_tokens: AtomicU64,
    /// Request arrival to first token.
    pub ttft: Histogram,
    /// Between consecutive tokens of a sequence.
    pub itl: Histogram,
    /// Request arrival to last token.
    pub e2e: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            http: Mutex::default(),
            finished: Mutex::default(),
            aborted_by_client: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
        }
    }
}

impl Metrics {
    /// Counts a finished sequence by reason (`stop`, `length`, `abort`, ...).
    pub fn finished(&self, reason: &'static str) {
        if let Ok(mut m) = self.finished.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    fn http_response(&self, route: String, status: u16) {
        if let Ok(mut m) = self.http.lock() {
            *m.entry((route, status)).or_default() += 1;
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self, engine: &EngineStatus, in_flight: usize) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(
            out,
            "# HELP nanovllm_http_requests_total HTTP responses by route and status.\n# TYPE nanovllm_http_requests_total counter"
        );
        if let Ok(m) = self.http.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "nanovllm_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP nanovllm_request_success_total Finished sequences by finish reason.\n# TYPE nanovllm_request_success_total counter"
        );
        if let Ok(m) = self.finished.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "nanovllm_request_success_total{{finished_reason=\"{reason}\"}} {n}"
                );
            }
        }
        counter(
            &mut out,
            "nanovllm_requests_aborted_by_client_total",
            "Requests whose client disconnected before they finished.",
            self.aborted_by_client.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "nanovllm_prompt_tokens_total",
            "Prompt tokens of admitted requests.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "nanovllm_generation_tokens_total",
            "Generated tokens sent to clients.",
            self.generation_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "nanovllm_engine_prompt_tokens_computed_total",
            "Prompt tokens run through the model.",
            engine.prompt_tokens,
        );
        counter(
            &mut out,
            "nanovllm_engine_prompt_tokens_cached_total",
            "Prompt tokens served from the prefix cache.",
            engine.cached_prompt_tokens,
        );
        counter(
            &mut out,
            "nanovllm_engine_generation_tokens_total",
            "Tokens generated by the engine.",
            engine.generation_tokens,
        );
        self.ttft.render(
            &mut out,
            "nanovllm_time_to_first_token_seconds",
            "Request arrival to first token.",
        );
        self.itl.render(
            &mut out,
            "nanovllm_inter_token_latency_seconds",
            "Time between consecutive tokens of a sequence.",
        );
        self.e2e.render(
            &mut out,
            "nanovllm_e2e_request_latency_seconds",
            "Request arrival to its last token.",
        );
        let gauges: [(&str, &str, f64); 9] = [
            (
                "nanovllm_num_requests_in_flight",
                "Requests accepted and not finished.",
                in_flight as f64,
            ),
            (
                "nanovllm_num_requests_running",
                "Sequences running in the engine.",
                engine.running as f64,
            ),
            (
                "nanovllm_num_requests_waiting",
                "Sequences waiting in the engine.",
                engine.waiting as f64,
            ),
            (
                "nanovllm_kv_blocks_in_use",
                "KV-cache blocks held by sequences.",
                engine.kv_blocks.0 as f64,
            ),
            (
                "nanovllm_kv_blocks_total",
                "KV-cache blocks in the pool.",
                engine.kv_blocks.1 as f64,
            ),
            (
                "nanovllm_state_slots_in_use",
                "Recurrent-state slots held by sequences.",
                engine.state_slots.0 as f64,
            ),
            (
                "nanovllm_state_slots_total",
                "Recurrent-state slots in the pool.",
                engine.state_slots.1 as f64,
            ),
            (
                "nanovllm_prefix_cache_hit_rate",
                "Fraction of admissions that reused cached blocks.",
                engine.prefix_cache_hit_rate,
            ),
            (
                "nanovllm_kv_cache_usage_perc",
                "Fraction of KV blocks in use.",
                engine.kv_blocks.0 as f64 / engine.kv_blocks.1.max(1) as f64,
            ),
        ];
        for (name, help, v) in gauges {
            gauge(&mut out, name, help, v);
        }
        out
    }
}

/// Middleware: counts every response by matched route and status.
pub async fn count_responses(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    state.metrics.http_response(route, resp.status().as_u16());
    resp
}
