//! Kernel benchmark: `y = x · Wᵀ` with candle's matmul (f32) against nanovllm's AVX-512 kernel
//! (f32 and bf16 weights) on Granite-4.0-H-350m shapes. Run: `cargo run --release --example matmul_bench`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use nanovllm::kernels::cpu::matmul::{matmul_xwt, WeightData};

fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() -> candle_core::Result<()> {
    nanovllm::llm::init_threads(None);
    println!(
        "{:>5} {:>6} {:>6} | {:>10} {:>10} {:>10}  (GFLOP/s)",
        "m", "k", "n", "candle", "ours f32", "ours bf16"
    );
    for &(k, n) in &[
        (768usize, 3376usize),
        (768, 4096),
        (2048, 768),
        (768, 100352),
    ] {
        for &m in &[1usize, 4, 16, 64, 256] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
            let wb: Vec<u16> = w.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
            let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu)?;
            let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu)?;
            let mut y = vec![0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64 / 1e9;
            let c = time(|| {
                let _ = xt.matmul(&wt.t().unwrap()).unwrap();
            });
            let f = time(|| matmul_xwt(&x, m, k, WeightData::F32(&w), n, &mut y));
            let b = time(|| matmul_xwt(&x, m, k, WeightData::Bf16(&wb), n, &mut y));
            println!(
                "{m:>5} {k:>6} {n:>6} | {:>10.1} {:>10.1} {:>10.1}",
                flops / c,
                flops / f,
                flops / b
            );
        }
    }
    Ok(())
}
