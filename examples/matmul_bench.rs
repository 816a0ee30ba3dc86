//! Kernel benchmark: `y = x · Wᵀ` on Granite-4.0-H-350m shapes with candle's f32 matmul,
//! nanovllm's f32 skinny kernel and its bf16 kernels (exact f32 activations, and activations
//! rounded to bf16), plus the machine's memory read bandwidth for scale. Prints GFLOP/s, and
//! for one row the weight bytes streamed per second (GB/s).
//!
//! Run: `cargo run --release --example matmul_bench [-- --quick]`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use nanovllm::kernels::cpu::bf16_matmul::{matmul_t, Activations};
use nanovllm::kernels::cpu::bf16_tiles::Isa;
use nanovllm::kernels::cpu::matmul::{matmul_xwt, WeightData, MAX_SKINNY_ROWS};
use nanovllm::kernels::cpu::packed_bf16::PackedBf16;
use rayon::prelude::*;

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// Read bandwidth in GB/s: every thread of the pool sums its share of a 512 MiB buffer.
fn read_bandwidth() -> f64 {
    let v: Vec<u64> = (0..64usize << 20).map(|i| i as u64).collect();
    let bytes = (v.len() * 8) as f64;
    let secs = best_of(5, || {
        let s: u64 = v
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
            .sum();
        std::hint::black_box(s);
    });
    bytes / secs / 1e9
}

fn main() -> candle_core::Result<()> {
    nanovllm::llm::init_threads(None);
    let quick = std::env::args().any(|a| a == "--quick");
    println!(
        "threads {}, tiles {:?}, read bandwidth {:.1} GB/s",
        rayon::current_num_threads(),
        Isa::detect(),
        read_bandwidth()
    );
    println!(
        "{:>5} {:>6} {:>6} | {:>8} {:>8} {:>9} {:>9}  GFLOP/s | bf16 m=1 GB/s",
        "m", "k", "n", "candle", "f32 ours", "bf16 exct", "bf16 fast"
    );
    let shapes: &[(usize, usize)] = if quick {
        &[(768, 3376), (2048, 768)]
    } else {
        &[
            (768, 3376),   // mamba in_proj
            (1536, 768),   // mamba out_proj
            (768, 4096),   // shared MLP gate+up
            (2048, 768),   // shared MLP down
            (768, 100352), // tied LM head
        ]
    };
    for &(k, n) in shapes {
        for &m in &[1usize, 4, 16, 64, 128, 512] {
            if n > 10_000 && m > 64 {
                continue; // the head only sees the last token of each sequence
            }
            let reps = if m * n * k > 1 << 28 { 2 } else { 5 };
            let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
            let packed = PackedBf16::from_f32(&w, n, k);
            let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu)?;
            let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu)?;
            let mut y = vec![0f32; m * n];
            let gflop = 2.0 * (m * n * k) as f64 / 1e9;
            let candle = best_of(reps, || {
                let _ = xt.matmul(&wt.t().unwrap()).unwrap();
            });
            let ours = if m <= MAX_SKINNY_ROWS {
                gflop
                    / best_of(reps, || {
                        matmul_xwt(&x, m, k, WeightData::F32(&w), n, &mut y)
                    })
            } else {
                f64::NAN
            };
            let exact = best_of(reps, || {
                matmul_t(&x, m, &packed, Activations::F32, &mut y);
            });
            let fast = best_of(reps, || {
                matmul_t(&x, m, &packed, Activations::Bf16, &mut y);
            });
            let stream = if m == 1 {
                format!("{:.1}", packed.storage_bytes() as f64 / exact / 1e9)
            } else {
                String::new()
            };
            println!(
                "{m:>5} {k:>6} {n:>6} | {:>8.1} {:>8.1} {:>9.1} {:>9.1}  | {stream}",
                gflop / candle,
                ours,
                gflop / exact,
                gflop / fast,
            );
        }
    }
    Ok(())
}
