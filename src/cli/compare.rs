//! `nanovllm bench --compare A B`: the same random prompts through two models' forward —
//! parameters, forward time (mean ± std over repetitions), throughput, peak heap memory of
//! the forward, and a memory-scaling table over sequence lengths (weights + cache for one
//! sequence, from the models' cache costs), as JSON and a table.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use nanovllm::cache::{CacheCapacity, ModelCache};
use nanovllm::engine::batch::{Batch, LogitsRows};
use nanovllm::models::Model;
use nanovllm::train::memory::{self, MemoryTracker};
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Options of a comparison.
pub struct CompareArgs<'a> {
    /// The two model directories.
    pub models: &'a [PathBuf],
    /// Prompt length of the timed forward.
    pub prompt_len: usize,
    /// Timed repetitions.
    pub reps: usize,
    /// Sequence lengths of the memory-scaling table.
    pub lengths: &'a [usize],
    /// Longest length whose forward peak memory is also measured (longer ones are analytic).
    pub measure_up_to: usize,
    /// Seed of the prompts.
    pub seed: u64,
}

fn forward(model: &dyn Model, tokens: &[u32]) -> anyhow::Result<f64> {
    let block = 16;
    let blocks = tokens.len().div_ceil(block);
    let mut cache = ModelCache::new(
        model.cache_specs(),
        CacheCapacity {
            state_slots: 1,
            kv_blocks: blocks,
            block_size: block,
        },
    );
    let table: Vec<u32> = (0..blocks as u32).collect();
    let batch = Batch::new(
        vec![(tokens.to_vec(), 0, 0, table)],
        LogitsRows::LastPerSequence,
    );
    let t0 = Instant::now();
    model.forward(&batch, &mut cache)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Runs the comparison and returns its JSON report.
pub fn run(args: &CompareArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        args.models.len() == 2,
        "--compare takes exactly two model directories"
    );
    let mut results = Vec::new();
    for path in args.models {
        let model =
            nanovllm::models::load(path).with_context(|| format!("loading {}", path.display()))?;
        let info = model.info();
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
        let v = info.vocab_size as u32;
        let tokens: Vec<u32> = (0..args.prompt_len).map(|_| rng.gen_range(0..v)).collect();
        forward(model.as_ref(), &tokens)?; // warm-up
        let mut times = Vec::new();
        let mut tracker = MemoryTracker::default();
        for _ in 0..args.reps.max(1) {
            tracker.begin("forward");
            times.push(forward(model.as_ref(), &tokens)?);
            tracker.end();
        }
        let n = times.len() as f64;
        let mean = times.iter().sum::<f64>() / n;
        let std =
            (times.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let costs = model.cache_costs();
        let mut scaling = Vec::new();
        for &len in args.lengths {
            let cache = costs.state_bytes_per_seq + costs.kv_bytes_per_token * len;
            let measured = if len <= args.measure_up_to {
                let toks: Vec<u32> = (0..len).map(|_| rng.gen_range(0..v)).collect();
                let mut t = MemoryTracker::default();
                t.begin("forward");
                let secs = forward(model.as_ref(), &toks)?;
                t.end();
                Some((t.last.get("forward").map_or(0, |m| m.peak), secs))
            } else {
                None
            };
            scaling.push(json!({
                "seq_len": len,
                "cache_mib": cache as f64 / 1048576.0,
                "weights_plus_cache_mib": (info.weight_bytes + cache) as f64 / 1048576.0,
                "forward_peak_mib": measured.map(|m| m.0 as f64 / 1048576.0),
                "forward_s": measured.map(|m| m.1),
            }));
        }
        results.push(json!({
            "model": path.display().to_string(),
            "architecture": info.architecture,
            "params": info.num_params,
            "weight_mib": info.weight_bytes as f64 / 1048576.0,
            "state_bytes_per_seq": costs.state_bytes_per_seq,
            "kv_bytes_per_token": costs.kv_bytes_per_token,
            "prompt_len": args.prompt_len,
            "forward_s_mean": mean,
            "forward_s_std": std,
            "tokens_per_s": args.prompt_len as f64 / mean,
            "forward_peak_mib": tracker.max_peak.get("forward").map(|b| *b as f64 / 1048576.0),
            "memory_is_heap": memory::counting(),
            "memory_scaling": scaling,
        }));
    }
    print_table(&results);
    Ok(json!(results))
}

fn print_table(results: &[serde_json::Value]) {
    let f = |v: &serde_json::Value, k: &str| v.get(k).cloned().unwrap_or_default();
    let name = |v: &serde_json::Value| f(v, "architecture").as_str().unwrap_or("?").to_string();
    let (a, b) = (&results[0], &results[1]);
    eprintln!("| | {} | {} |\n|---|---|---|", name(a), name(b));
    for (label, key) in [
        ("params", "params"),
        ("weights MiB", "weight_mib"),
        ("state bytes / seq", "state_bytes_per_seq"),
        ("KV bytes / token", "kv_bytes_per_token"),
        ("tokens/s", "tokens_per_s"),
        ("forward peak MiB", "forward_peak_mib"),
    ] {
        eprintln!("| {label} | {} | {} |", f(a, key), f(b, key));
    }
    eprintln!(
        "| forward s (mean ± std) | {:.4} ± {:.4} | {:.4} ± {:.4} |",
        f(a, "forward_s_mean").as_f64().unwrap_or(0.0),
        f(a, "forward_s_std").as_f64().unwrap_or(0.0),
        f(b, "forward_s_mean").as_f64().unwrap_or(0.0),
        f(b, "forward_s_std").as_f64().unwrap_or(0.0)
    );
    eprintln!("\n| seq len | {} weights+cache MiB | {} weights+cache MiB | {} fwd peak MiB | {} fwd peak MiB |\n|---|---|---|---|---|", name(a), name(b), name(a), name(b));
    let rows = |v: &serde_json::Value| {
        f(v, "memory_scaling")
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    for (ra, rb) in rows(a).iter().zip(rows(b)) {
        let g = |r: &serde_json::Value, k: &str| {
            r.get(k)
                .and_then(|x| x.as_f64())
                .map_or("-".into(), |x| format!("{x:.1}"))
        };
        eprintln!(
            "| {} | {} | {} | {} | {} |",
            f(ra, "seq_len"),
            g(ra, "weights_plus_cache_mib"),
            g(&rb, "weights_plus_cache_mib"),
            g(ra, "forward_peak_mib"),
            g(&rb, "forward_peak_mib")
        );
    }
}
