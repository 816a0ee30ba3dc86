//! Kernel benchmark of the Mamba2 scan on Granite-4.0-H shapes: the sequential reference scan
//! against the chunked SSD form (several chunk sizes) for one prefill sequence, and the fused
//! decode step for 1 and 16 sequences. Run: `cargo run --release --example scan_bench`
//! (`-- --heads 48 --head-dim 32` is h-350m, the default; `--head-dim 64` is h-1b).

use std::time::Instant;

use nanovllm::kernels::conv1d::{conv1d_silu_rows, tap_major};
use nanovllm::kernels::reference::{causal_conv1d_silu, ssm_scan_batch, ScanDims, ScanInputs};
use nanovllm::kernels::scan_layout::{RowLayout, SeqRows};
use nanovllm::kernels::ssd::ssd_scan_batch;
use nanovllm::kernels::ssm_step::{mamba2_step_batch, StepParams};

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

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn noise(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.7548 + seed as f32 * 3.17).sin() * 43758.547).fract())
        .collect()
}

fn main() {
    nanovllm::llm::init_threads(None);
    let dims = ScanDims {
        n_heads: arg("--heads", 48),
        head_dim: arg("--head-dim", 32),
        d_state: arg("--d-state", 128),
        n_groups: 1,
    };
    let (nh, p, n) = (dims.n_heads, dims.head_dim, dims.d_state);
    let di = nh * p;
    let lay = RowLayout::in_proj(di, n, nh);
    let cd = di + 2 * n;
    let a: Vec<f32> = (0..nh).map(|h| -1.0 - 0.1 * h as f32).collect();
    let d = noise(nh, 1);
    println!(
        "heads {nh}, head_dim {p}, d_state {n}, {} threads",
        rayon::current_num_threads()
    );
    for len in [512usize, 2048] {
        let mut rows = noise(len * lay.stride, 2);
        for t in 0..len {
            for h in 0..nh {
                rows[t * lay.stride + lay.dt + h] =
                    0.01 + 0.05 * rows[t * lay.stride + lay.dt + h].abs();
            }
        }
        let mut xbc = Vec::with_capacity(len * cd);
        let mut dt = Vec::with_capacity(len * nh);
        for t in 0..len {
            let r = &rows[t * lay.stride..(t + 1) * lay.stride];
            xbc.extend_from_slice(&r[lay.x..lay.x + cd]);
            dt.extend_from_slice(&r[lay.dt..lay.dt + nh]);
        }
        let mut state = vec![0f32; nh * p * n];
        let mut y = vec![0f32; len * di];
        let inp = [ScanInputs {
            xbc: &xbc,
            dt: &dt,
            a: &a,
            d: &d,
        }];
        let t_ref = time(|| ssm_scan_batch(&inp, dims, vec![&mut state[..]], vec![&mut y[..]]));
        print!("prefill {len}: sequential {:.2} ms", t_ref * 1e3);
        for chunk in [16usize, 32, 64, 128, 256] {
            let seqs = [SeqRows { start: 0, len }];
            let t = time(|| {
                ssd_scan_batch(
                    &rows,
                    lay,
                    &seqs,
                    dims,
                    &a,
                    &d,
                    chunk,
                    vec![&mut state[..]],
                    &mut y,
                )
            });
            print!(" | ssd/{chunk} {:.2} ms", t * 1e3);
        }
        let k = 4;
        let w = noise(cd * k, 3);
        let wt = tap_major(&w, k);
        let bias = noise(cd, 4);
        let mut cst = vec![0f32; (k - 1) * cd];
        let mut out = vec![0f32; len * cd];
        let t_cref = time(|| causal_conv1d_silu(&xbc, &mut cst, &w, &bias, k, &mut out));
        let mut buf = rows.clone();
        let t_conv = time(|| {
            buf.copy_from_slice(&rows);
            conv1d_silu_rows(&mut buf, lay.stride, lay.x, len, &mut cst, &wt, &bias)
        });
        println!(
            " | conv: reference {:.2} ms, in place {:.2} ms",
            t_cref * 1e3,
            t_conv * 1e3
        );
    }
    for seqs in [1usize, 16] {
        let k = 4;
        let wt = tap_major(&noise(cd * k, 3), k);
        let bias = noise(cd, 4);
        let dt_bias = noise(nh, 5);
        let params = StepParams {
            conv_weight: &wt,
            conv_bias: &bias,
            dt_bias: &dt_bias,
            dt_limit: (0.0, f32::INFINITY),
            a: &a,
            d: &d,
        };
        let raw = noise(seqs * lay.stride, 6);
        let mut conv = vec![0f32; seqs * (k - 1) * cd];
        let mut ssm = vec![0f32; seqs * nh * p * n];
        let mut y = vec![0f32; seqs * di];
        let mut rows = raw.clone();
        let t = time(|| {
            rows.copy_from_slice(&raw);
            let states = conv
                .chunks_mut((k - 1) * cd)
                .zip(ssm.chunks_mut(nh * p * n))
                .collect();
            mamba2_step_batch(&mut rows, lay, dims, params, states, &mut y);
        });
        let bytes = 2.0 * (seqs * nh * p * n * 4) as f64;
        println!(
            "decode step, {seqs} sequences: {:.1} us ({:.1} GB/s of state read + written)",
            t * 1e6,
            bytes / t / 1e9
        );
    }
}
