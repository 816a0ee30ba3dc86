//! Kernel benchmark: `y = x · Wᵀ` on Granite-4.0-H-350m shapes with candle's f32 matmul,
//! nanovllm's f32 skinny kernel and its bf16 kernels (exact f32 activations, and activations
//! rounded to bf16), plus the machine's memory read bandwidth for scale. Prints GFLOP/s, and
//! for one row the weight bytes streamed per second (GB/s).
//!
//! Run: `cargo run --release --example matmul_bench [-- --quick] [-- --cpu-time] [-- --q8]
//! [-- --ggml-bf16] [-- --ggml-bf16-batch]`. `--q8` runs only the Q8_0 rows (more shapes);
//! `--ggml-bf16` only llama.cpp's BF16 order on prefill shapes (the GGUF BF16 path);
//! `--ggml-bf16-batch` that path on a whole decode step of 4 to 64 sequences.
//! `--cpu-time` times by the CPU time of the process's threads divided by the thread count
//! (what the wall time would be on otherwise idle cores): steadier on a shared machine.

use std::time::Instant;

use candle_core::{Device, Tensor};
use nanovllm::kernels::cpu::bf16_matmul::{matmul_t, Activations};
use nanovllm::kernels::cpu::bf16_tiles::Isa;
use nanovllm::kernels::cpu::matmul::{matmul_xwt, WeightData, MAX_SKINNY_ROWS};
use nanovllm::kernels::cpu::packed_bf16::PackedBf16;
use nanovllm::kernels::cpu::{ggml_bf16, tinyblas_bf16};
use rayon::prelude::*;

/// On-CPU seconds of all this process's threads (Linux schedstat), per pool thread.
fn cpu_seconds() -> f64 {
    let ns: u64 = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9 / rayon::current_num_threads() as f64
}

static CPU_TIME: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    let cpu = CPU_TIME.load(std::sync::atomic::Ordering::Relaxed);
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_seconds());
        f();
        let secs = if cpu {
            cpu_seconds() - c
        } else {
            t.elapsed().as_secs_f64()
        };
        best = best.min(secs);
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
    if std::env::args().any(|a| a == "--cpu-time") {
        CPU_TIME.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if std::env::args().any(|a| a == "--q8") {
        return quantized(true);
    }
    if std::env::args().any(|a| a == "--ggml-bf16-batch") {
        ggml_bf16_batch_sweep();
        return Ok(());
    }
    if std::env::args().any(|a| a == "--ggml-bf16") {
        ggml_bf16_prefill();
        return Ok(());
    }
    println!(
        "threads {}, tiles {:?}, read bandwidth {:.1} GB/s",
        rayon::current_num_threads(),
        Isa::detect(),
        read_bandwidth()
    );
    println!(
        "{:>5} {:>6} {:>6} | {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}  GFLOP/s | bf16 m=1 GB/s",
        "m", "k", "n", "candle", "f32 ours", "bf16 exct", "bf16 fast", "tinyblas", "ggml"
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
            let tiny = if m >= 2 && tinyblas_bf16::supported(k) {
                gflop
                    / best_of(reps, || {
                        tinyblas_bf16::matmul_t(&x, m, &packed, &mut y);
                    })
            } else {
                f64::NAN
            };
            let ggml = gflop
                / best_of(reps, || {
                    ggml_bf16::matmul_t(&x, m, &packed, &mut y);
                });
            let stream = if m == 1 {
                format!("{:.1}", packed.storage_bytes() as f64 / exact / 1e9)
            } else {
                String::new()
            };
            println!(
                "{m:>5} {k:>6} {n:>6} | {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}  | {stream}",
                gflop / candle,
                ours,
                gflop / exact,
                gflop / fast,
                tiny,
                ggml,
            );
        }
    }
    quantized(false)?;
    decode_sweep();
    q8_0_decode_sweep()?;
    Ok(())
}

/// The GGUF BF16 prefill path (`ggml_bf16::matmul_t`: activation rounding plus tinyBLAS order)
/// on the Granite-4.0-H-350m prefill shapes (512 and 2048 tokens), and two 16-row shapes small
/// enough to stay in L2 (the batched-decode kernel without memory stalls).
fn ggml_bf16_prefill() {
    println!("threads {}", rayon::current_num_threads());
    println!(
        "{:>5} {:>6} {:>6} | {:>9}  GFLOP/s",
        "m", "k", "n", "ggml bf16"
    );
    for &(m, k, n) in &[
        (512usize, 768usize, 3376usize),
        (512, 768, 1536),
        (512, 1536, 768),
        (512, 2048, 768),
        (512, 768, 4096),
        (128, 768, 3376),
        (2048, 768, 3376),
        (2048, 2048, 768),
        (16, 768, 1024),
        (16, 2048, 384),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
        let packed = PackedBf16::from_f32(&w, n, k);
        let mut y = vec![0f32; m * n];
        let secs = best_of(7, || ggml_bf16::matmul_t(&x, m, &packed, &mut y));
        let gflop = 2.0 * (m * n * k) as f64 / 1e9;
        println!("{m:>5} {k:>6} {n:>6} | {:>9.1}", gflop / secs);
    }
}

/// Q8_0 weights through the llama.cpp-exact kernel (activations quantized to Q8_0 per call).
/// With `all`, every Granite prefill shape.
fn quantized(all: bool) -> candle_core::Result<()> {
    use candle_core::quantized::{GgmlDType, QTensor};
    println!("{:>5} {:>6} {:>6} | {:>8}  GFLOP/s", "m", "k", "n", "q8_0");
    let shapes: &[(usize, usize)] = if all {
        &[
            (768, 3376),
            (2048, 768),
            (768, 1536),
            (1536, 768),
            (768, 4096),
        ]
    } else {
        &[(768, 3376), (2048, 768)]
    };
    for &(k, n) in shapes {
        let w: Vec<f32> = (0..n * k).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu)?;
        let q = QTensor::quantize(&wt, GgmlDType::Q8_0)?;
        for &m in &[1usize, 2, 4, 8, 16, 128, 512] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
            let gflop = 2.0 * (m * n * k) as f64 / 1e9;
            let secs = best_of(3, || {
                let _ = nanovllm::kernels::cpu::ggml_matmul::matmul_t(&q, &x, m).unwrap();
            });
            println!("{m:>5} {k:>6} {n:>6} | {:>8.1}", gflop / secs);
        }
    }
    Ok(())
}

/// The matrix shapes of one granite-4.0-h-350m decode token: 28 Mamba + 4 attention layers,
/// the shared MLP in all 32, the tied 100352-row head.
fn decode_shapes() -> Vec<(usize, usize)> {
    let mut shapes: Vec<(usize, usize)> = Vec::new();
    for layer in 0..32 {
        if [10, 13, 17, 27].contains(&layer) {
            shapes.extend([(768, 768), (768, 256), (768, 256), (768, 768)]);
        } else {
            shapes.extend([(768, 3376), (1536, 768)]);
        }
        shapes.extend([(768, 4096), (2048, 768)]);
    }
    shapes.push((768, 100352));
    shapes
}

/// [`decode_sweep`] with Q8_0 weights (380 MB) through the llama.cpp-exact kernel, for one to
/// four activation rows (decode of that many sequences).
fn q8_0_decode_sweep() -> candle_core::Result<()> {
    use candle_core::quantized::{GgmlDType, QTensor};
    use nanovllm::kernels::cpu::ggml_matmul::matmul_t as q_matmul;
    let shapes = decode_shapes();
    let mats = shapes
        .iter()
        .map(|&(k, n)| {
            let w: Vec<f32> = (0..n * k).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
            QTensor::quantize(&Tensor::from_vec(w, (n, k), &Device::Cpu)?, GgmlDType::Q8_0)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let bytes: usize = shapes.iter().map(|&(k, n)| n * k / 32 * 34).sum();
    for m in 1..=4 {
        let x = vec![0.5f32; m * 2048];
        let secs = best_of(5, || {
            for (w, &(k, _)) in mats.iter().zip(&shapes) {
                let _ = q_matmul(w, &x[..m * k], m).unwrap();
            }
        });
        println!(
            "Q8_0 decode sweep, {m} row(s): {:.1} ms/step, {:.1} GB/s of weights, {} MB",
            secs * 1e3,
            bytes as f64 / secs / 1e9,
            bytes / 1_000_000
        );
    }
    Ok(())
}

/// One decode step of 4 to 64 sequences through the GGUF BF16 path (llama.cpp's order):
/// every matrix of granite-4.0-h-350m (680 MB, streamed from memory) against `m` rows.
fn ggml_bf16_batch_sweep() {
    let shapes = decode_shapes();
    let mats: Vec<PackedBf16> = shapes
        .iter()
        .map(|&(k, n)| {
            let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
            PackedBf16::from_f32(&w, n, k)
        })
        .collect();
    let flop: usize = shapes.iter().map(|&(k, n)| 2 * k * n).sum();
    let mut y = vec![0f32; 64 * 100352];
    for m in [4usize, 8, 16, 24, 32, 64] {
        let x: Vec<f32> = (0..m * 2048).map(|i| (i % 13) as f32 * 0.01).collect();
        let secs = best_of(5, || {
            for (w, &(k, n)) in mats.iter().zip(&shapes) {
                ggml_bf16::matmul_t(&x[..m * k], m, w, &mut y[..m * n]);
            }
        });
        println!(
            "GGUF BF16 batch sweep, {m} rows: {:.1} ms/step, {:.1} GFLOP/s",
            secs * 1e3,
            (m * flop) as f64 / secs / 1e9
        );
    }
}

/// One decode token's matmuls of granite-4.0-h-350m (28 Mamba + 4 attention layers, shared
/// MLP in all 32, tied 100352-row head) with bf16 weights and one activation row: the weights
/// (680 MB) do not fit in any cache, so this is the decode GEMV at memory speed.
fn decode_sweep() {
    let shapes = decode_shapes();
    let mats: Vec<PackedBf16> = shapes
        .iter()
        .map(|&(k, n)| PackedBf16::from_f32(&vec![0.01f32; n * k], n, k))
        .collect();
    let bytes: usize = mats.iter().map(PackedBf16::storage_bytes).sum();
    let x = vec![0.5f32; 2048];
    let mut y = vec![0f32; 100352];
    let secs = best_of(5, || {
        for (w, &(k, n)) in mats.iter().zip(&shapes) {
            matmul_t(&x[..k], 1, w, Activations::F32, &mut y[..n]);
        }
    });
    let ggml = best_of(5, || {
        for (w, &(k, n)) in mats.iter().zip(&shapes) {
            ggml_bf16::matmul_t(&x[..k], 1, w, &mut y[..n]);
        }
    });
    println!(
        "decode sweep, llama.cpp order (ggml_bf16): {:.1} ms/token, {:.1} GB/s of weights",
        ggml * 1e3,
        bytes as f64 / ggml / 1e9,
    );
    println!(
        "decode sweep (granite-4.0-h-350m matmuls, 1 row, bf16): {:.1} ms/token, {:.1} GB/s of weights, {} MB",
        secs * 1e3,
        bytes as f64 / secs / 1e9,
        bytes / 1_000_000
    );
}
