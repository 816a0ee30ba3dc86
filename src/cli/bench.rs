//! `nanovllm bench`: latency (prefill / decode at batch 1), throughput (many concurrent
//! requests vs one at a time) and multi-turn chat (time to first token per turn, with and
//! without prefix caching). Prompts are random token ids; peak memory is the process's VmHWM.
//! `--mode serve` measures a running server instead (see `bench_serve.rs`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use nanovllm::llm::{EngineConfig, Prompt, LLM};
use nanovllm::sampling_params::SamplingParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::engine_args::EngineArgs;

/// What to measure.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Prefill and decode speed of one request at a time.
    Latency,
    /// Many concurrent requests with random lengths, against running them one by one.
    Throughput,
    /// Chats of growing length: time to first token per turn, prefix cache on and off.
    Multiturn,
    /// A running server (`--url`): Poisson arrivals, TTFT / TPOT / ITL (vLLM's bench serve).
    Serve,
}

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (not used by `--mode serve`).
    #[arg(long, required_unless_present_any = ["url", "compare"])]
    model: Option<PathBuf>,
    /// Compare two models on the same inputs (params, forward time, memory scaling).
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    compare: Vec<PathBuf>,
    /// Compare: sequence lengths of the memory-scaling table.
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 512, 1024, 2048, 4096, 8192])]
    scaling_lens: Vec<usize>,
    /// Compare: longest length whose forward is also run and measured.
    #[arg(long, default_value_t = 1024)]
    measure_up_to: usize,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Latency)]
    mode: Mode,
    /// Latency: prompt lengths for prefill.
    #[arg(long, value_delimiter = ',', default_values_t = [512usize, 2048])]
    prompt_lens: Vec<usize>,
    /// Latency: new tokens for decode.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Latency: repetitions (best reported).
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Throughput: number of requests.
    #[arg(long, default_value_t = 32)]
    num_requests: usize,
    /// Throughput: prompt length range `min,max`.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 512])]
    input_len: Vec<usize>,
    /// Throughput: output length range `min,max`.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 256])]
    output_len: Vec<usize>,
    /// Throughput: also run the requests one at a time and report the speed-up.
    #[arg(long)]
    compare_sequential: bool,
    /// Multiturn: turns per conversation.
    #[arg(long, default_value_t = 8)]
    turns: usize,
    /// Multiturn: new user tokens per turn.
    #[arg(long, default_value_t = 448)]
    turn_tokens: usize,
    /// Multiturn: generated tokens per turn.
    #[arg(long, default_value_t = 64)]
    answer_tokens: usize,
    /// Multiturn: conversations interleaved turn by turn on one engine.
    #[arg(long, default_value_t = 1)]
    conversations: usize,
    /// Random seed of the synthetic prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    serve: super::bench_serve::ServeArgs,
}

impl Args {
    /// The requested compute threads.
    pub fn threads(&self) -> Option<usize> {
        self.engine.threads
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.compare.is_empty() {
        let report = super::compare::run(&super::compare::CompareArgs {
            models: &args.compare,
            prompt_len: args.prompt_lens.first().copied().unwrap_or(512),
            reps: args.reps.max(3),
            lengths: &args.scaling_lens,
            measure_up_to: args.measure_up_to,
            seed: args.seed,
        })?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let report = match args.mode {
        Mode::Latency => latency(&args)?,
        Mode::Throughput => throughput(&args)?,
        Mode::Multiturn => multiturn(&args)?,
        Mode::Serve => super::bench_serve::run(
            &args.serve,
            args.num_requests,
            &args.input_len,
            &args.output_len,
            args.seed,
        )?,
    };
    let report = json!({
        "model": args.model.as_ref().map(|m| m.display().to_string()).or(args.serve.url.clone()),
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "threads": rayon::current_num_threads(),
        "peak_rss_mib": peak_rss_bytes() as f64 / 1048576.0,
        "results": report,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn load(args: &Args, cfg: EngineConfig) -> anyhow::Result<LLM> {
    let model = args
        .model
        .as_ref()
        .context("--model is required for this mode")?;
    let llm = LLM::with_options(model, cfg, &args.engine.load_options())
        .with_context(|| format!("loading {}", model.display()))?;
    eprintln!("{}", llm.memory_plan());
    Ok(llm)
}

fn random_prompt(rng: &mut StdRng, vocab: u32, len: usize) -> Vec<u32> {
    (0..len).map(|_| rng.gen_range(0..vocab)).collect()
}

fn vocab(llm: &mut LLM) -> u32 {
    llm.engine_mut().runner().model().info().vocab_size as u32
}

fn latency(args: &Args) -> anyhow::Result<serde_json::Value> {
    let max_prompt = args.prompt_lens.iter().copied().max().unwrap_or(1);
    let cfg = EngineConfig {
        enable_prefix_caching: false,
        max_num_batched_tokens: args.engine.max_num_batched_tokens.max(max_prompt),
        ..args.engine.config()
    };
    let mut llm = load(args, cfg)?;
    let v = vocab(&mut llm);
    let mut rng = StdRng::seed_from_u64(args.seed);
    // One short untimed request first (as llama-bench warms up): it faults in the weights and
    // the allocator's pools so the first timed run is not a cold start.
    let warm = Prompt::Tokens(random_prompt(&mut rng, v, 32));
    let warm_params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(4)
    };
    llm.generate(&[warm], &[warm_params], false)?.remove(0)?;
    let mut rows = Vec::new();
    for &len in &args.prompt_lens {
        let mut best = Duration::MAX;
        for _ in 0..args.reps.max(1) {
            let p = Prompt::Tokens(random_prompt(&mut rng, v, len));
            let out = llm
                .generate(&[p], &[SamplingParams::greedy(1)], false)?
                .remove(0)?;
            best = best.min(out.metrics.time_to_first_token.unwrap_or_default());
        }
        let tps = len as f64 / best.as_secs_f64().max(1e-9);
        eprintln!("prefill {len}: {tps:.1} tok/s");
        rows.push(json!({"workload": format!("prefill {len}"), "tokens_per_s": tps}));
    }
    let mut best = 0f64;
    for _ in 0..args.reps.max(1) {
        let p = Prompt::Tokens(random_prompt(&mut rng, v, 1));
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(args.decode_tokens)
        };
        let out = llm.generate(&[p], &[params], false)?.remove(0)?;
        best = best.max(out.metrics.decode_tokens_per_s.unwrap_or(0.0));
    }
    eprintln!("decode {}: {best:.1} tok/s", args.decode_tokens);
    rows.push(json!({"workload": format!("decode {}", args.decode_tokens), "tokens_per_s": best}));
    Ok(json!(rows))
}

fn range(v: &[usize], rng: &mut StdRng) -> usize {
    let (lo, hi) = (
        v.first().copied().unwrap_or(1),
        v.get(1).copied().unwrap_or(1),
    );
    rng.gen_range(lo.min(hi)..=hi.max(lo)).max(1)
}

fn percentiles(mut xs: Vec<f64>) -> serde_json::Value {
    xs.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        xs.get(((xs.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    json!({"mean": mean, "p50": at(0.5), "p90": at(0.9), "p99": at(0.99)})
}

fn throughput(args: &Args) -> anyhow::Result<serde_json::Value> {
    let mut llm = load(args, args.engine.config())?;
    let v = vocab(&mut llm);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut prompts = Vec::new();
    let mut params = Vec::new();
    for _ in 0..args.num_requests {
        let len = range(&args.input_len, &mut rng);
        prompts.push(Prompt::Tokens(random_prompt(&mut rng, v, len)));
        params.push(SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(range(&args.output_len, &mut rng))
        });
    }
    let run_all = |llm: &mut LLM, one_at_a_time: bool| -> anyhow::Result<serde_json::Value> {
        let start = Instant::now();
        let mut outs = Vec::new();
        if one_at_a_time {
            for (p, sp) in prompts.iter().zip(&params) {
                outs.extend(llm.generate(
                    std::slice::from_ref(p),
                    std::slice::from_ref(sp),
                    false,
                )?);
            }
        } else {
            outs = llm.generate(&prompts, &params, true)?;
        }
        let secs = start.elapsed().as_secs_f64();
        let outs: Vec<_> = outs.into_iter().collect::<Result<_, _>>()?;
        let out_tokens: usize = outs.iter().map(|o| o.outputs[0].token_ids.len()).sum();
        let in_tokens: usize = outs.iter().map(|o| o.prompt_token_ids.len()).sum();
        let ttft: Vec<f64> = outs
            .iter()
            .filter_map(|o| o.metrics.time_to_first_token.map(|d| d.as_secs_f64()))
            .collect();
        let tpot: Vec<f64> = outs
            .iter()
            .filter_map(|o| o.metrics.decode_tokens_per_s.map(|t| 1.0 / t))
            .collect();
        // The decode phase as llama-batched-bench times it: from the moment every request has
        // its first token to the last finish, counting the tokens generated after the first.
        let last_first = ttft.iter().copied().fold(0f64, f64::max);
        let last_done = outs
            .iter()
            .filter_map(|o| o.metrics.total_time.map(|d| d.as_secs_f64()))
            .fold(0f64, f64::max);
        let decode_tokens = out_tokens.saturating_sub(outs.len());
        let decode_tps = decode_tokens as f64 / (last_done - last_first).max(1e-9);
        Ok(json!({
            "seconds": secs,
            "requests": outs.len(),
            "output_tokens_per_s": out_tokens as f64 / secs,
            "total_tokens_per_s": (in_tokens + out_tokens) as f64 / secs,
            "decode_tokens_per_s": decode_tps,
            "ttft_s": percentiles(ttft),
            "tpot_s": percentiles(tpot),
        }))
    };
    let concurrent = run_all(&mut llm, false)?;
    eprintln!("concurrent: {concurrent}");
    let mut report = json!({"concurrent": concurrent});
    if args.compare_sequential {
        // A fresh engine, so the second run cannot reuse the first one's prefix cache.
        drop(llm);
        let mut llm = load(args, args.engine.config())?;
        let sequential = run_all(&mut llm, true)?;
        eprintln!("one at a time: {sequential}");
        let ratio = concurrent["output_tokens_per_s"].as_f64().unwrap_or(0.0)
            / sequential["output_tokens_per_s"]
                .as_f64()
                .unwrap_or(1.0)
                .max(1e-9);
        report["sequential"] = sequential;
        report["speedup"] = json!(ratio);
    }
    Ok(report)
}

fn multiturn(args: &Args) -> anyhow::Result<serde_json::Value> {
    let mut report = serde_json::Map::new();
    for caching in [true, false] {
        let cfg = EngineConfig {
            enable_prefix_caching: caching,
            ..args.engine.config()
        };
        let mut llm = load(args, cfg)?;
        let v = vocab(&mut llm);
        let mut rng = StdRng::seed_from_u64(args.seed);
        let mut convs: Vec<Vec<u32>> = vec![Vec::new(); args.conversations.max(1)];
        let mut turns = Vec::new();
        let mut transcripts: Vec<Vec<u32>> = Vec::new();
        for turn in 0..args.turns {
            for (c, conv) in convs.iter_mut().enumerate() {
                conv.extend(random_prompt(&mut rng, v, args.turn_tokens));
                let params = SamplingParams {
                    ignore_eos: true,
                    ..SamplingParams::greedy(args.answer_tokens)
                };
                let out = llm
                    .generate(&[Prompt::Tokens(conv.clone())], &[params], false)?
                    .remove(0)?;
                let answer = out.outputs[0].token_ids.clone();
                let ttft = out
                    .metrics
                    .time_to_first_token
                    .unwrap_or_default()
                    .as_secs_f64();
                let computed = conv.len() - out.metrics.num_cached_tokens;
                eprintln!(
                    "caching={caching} conv {c} turn {turn}: prompt {} cached {} computed {computed} ttft {ttft:.3}s",
                    conv.len(),
                    out.metrics.num_cached_tokens
                );
                turns.push(
                    json!({"conversation": c, "turn": turn, "prompt_tokens": conv.len(),
                    "cached_tokens": out.metrics.num_cached_tokens, "computed_tokens": computed,
                    "ttft_s": ttft}),
                );
                transcripts.push(answer.clone());
                conv.extend(answer);
            }
        }
        report.insert(
            if caching {
                "prefix_caching"
            } else {
                "no_prefix_caching"
            }
            .into(),
            json!({"turns": turns, "answers": transcripts}),
        );
    }
    let same = report.get("prefix_caching").map(|r| &r["answers"])
        == report.get("no_prefix_caching").map(|r| &r["answers"]);
    eprintln!("answers identical with and without prefix caching: {same}");
    for r in report.values_mut() {
        if let Some(o) = r.as_object_mut() {
            o.remove("answers");
        }
    }
    report.insert("identical_outputs".into(), json!(same));
    Ok(serde_json::Value::Object(report))
}

/// Peak resident set size of this process (VmHWM), or 0 where /proc is unavailable.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
