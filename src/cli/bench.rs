//! `nanovllm bench`: prefill and decode throughput at batch 1, and peak memory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use nanovllm::engine::generator::Generator;
use nanovllm::sampling_params::SamplingParams;
use rand::{Rng, SeedableRng};

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Prompt lengths to measure prefill at.
    #[arg(long, value_delimiter = ',', default_values_t = [512usize, 2048])]
    prompt_lens: Vec<usize>,
    /// New tokens to measure decode over.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Repetitions of each measurement (the best is reported).
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Largest number of prompt tokens per forward pass.
    #[arg(long, default_value_t = 2048)]
    prefill_chunk: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let load_start = Instant::now();
    let model = nanovllm::models::load(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let load_s = load_start.elapsed().as_secs_f64();
    let vocab = model.info().vocab_size as u32;
    let max_prompt = args.prompt_lens.iter().copied().max().unwrap_or(0);
    let mut gen = Generator::new(model, max_prompt.max(1) + args.decode_tokens + 1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut random_tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.gen_range(0..vocab)).collect() };

    let mut results = Vec::new();
    for &len in &args.prompt_lens {
        let prompt = random_tokens(len);
        let mut best = f64::INFINITY;
        for _ in 0..args.reps.max(1) {
            gen.reset();
            let t = Instant::now();
            gen.extend(&prompt, args.prefill_chunk)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        results.push((format!("prefill {len}"), len as f64 / best, best));
        eprintln!("prefill {len}: {:.1} tok/s", len as f64 / best);
    }
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(args.decode_tokens)
    };
    let mut best = f64::INFINITY;
    for _ in 0..args.reps.max(1) {
        let prompt = random_tokens(1);
        let g = gen.generate(&prompt, &params, args.prefill_chunk, |_| Ok(()))?;
        let per_tok =
            g.decode_time.as_secs_f64() / (g.tokens.len().saturating_sub(1)).max(1) as f64;
        best = best.min(per_tok);
    }
    results.push((format!("decode {}", args.decode_tokens), 1.0 / best, best));
    eprintln!("decode: {:.1} tok/s", 1.0 / best);
    let peak = peak_rss_bytes();

    if args.json {
        let rows: Vec<_> = results
            .iter()
            .map(
                |(w, tps, s)| serde_json::json!({"workload": w, "tokens_per_s": tps, "seconds": s}),
            )
            .collect();
        println!(
            "{}",
            serde_json::json!({"model": args.model, "threads": rayon::current_num_threads(),
                "load_seconds": load_s, "peak_rss_bytes": peak, "results": rows})
        );
    } else {
        println!(
            "model {}  threads {}",
            args.model.display(),
            rayon::current_num_threads()
        );
        println!("{:<16} {:>12}", "workload", "tok/s");
        for (w, tps, _) in &results {
            println!("{w:<16} {tps:>12.1}");
        }
        println!(
            "peak RSS {:.0} MiB (load {:.1}s)",
            peak as f64 / 1048576.0,
            load_s
        );
    }
    Ok(())
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
