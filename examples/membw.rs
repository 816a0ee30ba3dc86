//! Memory bandwidth of this machine: a streaming read (sum) over a buffer much larger than the
//! caches, split over the compute threads. `bench/compare.sh` uses it to express decode speed as
//! a fraction of the bandwidth limit.
//!
//!     cargo run --release --example membw -- [--threads N] [--mib 1024] [--reps 10] [--json]

use std::time::Instant;

use rayon::prelude::*;

fn arg(args: &[String], name: &str) -> Option<usize> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// Sums `v` with eight independent u64 lanes so the loop is limited by loads, not by a
/// dependency chain (the compiler turns it into wide vector adds).
fn sum(v: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] = lanes[l].wrapping_add(c[l]);
        }
    }
    let tail: u64 = chunks.remainder().iter().fold(0, |a, &b| a.wrapping_add(b));
    lanes.iter().fold(tail, |a, &b| a.wrapping_add(b))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads");
    let mib = arg(&args, "--mib").unwrap_or(1024).max(1);
    let reps = arg(&args, "--reps").unwrap_or(10).max(1);
    nanovllm::llm::init_threads(threads);
    let n = mib << 17; // u64 words
    let buf: Vec<u64> = (0..n as u64).into_par_iter().map(|i| i ^ 0x9e37).collect();
    let per = n.div_ceil(rayon::current_num_threads() * 4);
    let mut best = f64::INFINITY;
    let mut check = 0u64;
    for _ in 0..reps {
        let t = Instant::now();
        check ^= buf
            .par_chunks(per)
            .map(sum)
            .reduce(|| 0, |a, b| a.wrapping_add(b));
        best = best.min(t.elapsed().as_secs_f64());
    }
    let gbs = (n * 8) as f64 / best / 1e9;
    if args.iter().any(|a| a == "--json") {
        println!(
            "{{\"read_gb_per_s\": {gbs:.2}, \"threads\": {}, \"mib\": {mib}, \"check\": {}}}",
            rayon::current_num_threads(),
            check & 1
        );
    } else {
        println!(
            "streaming read, {} threads, {mib} MiB: {gbs:.2} GB/s (best of {reps})",
            rayon::current_num_threads()
        );
    }
}
