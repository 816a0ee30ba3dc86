//! `x · Wᵀ` for Q4_K and Q6_K weights with the float arithmetic of llama.cpp's x86 AVX2 build.
//! The integer sums are exact in any order; what differs between ggml's kernels is where the
//! block scales are applied and in which order the floats are accumulated, and ggml picks the
//! kernel by weight type, weight rows `n` and token count `m`:
//!
//! * Q4_K with `n % 8 == 0` is repacked at load (ggml-cpu/repack.cpp, `block_q4_Kx8`). The
//!   first `m - m % 4` tokens (when `m >= 4`) go through `ggml_gemm_q4_K_8x8_q8_K`, their
//!   activations quantized by `ggml_quantize_mat_q8_K_4x8`; the other tokens (all of them
//!   when `m < 4`) through `ggml_gemv_q4_K_8x8_q8_K` with `quantize_row_q8_K`.
//!   GEMM: per 64 values `acc = fma(isum, d·dₐ, acc)`, `accm = fma(msum, dmin·dₐ, accm)`;
//!   GEMV: the same per 256 values; the output is `acc - accm`.
//! * Q6_K, and Q4_K that is not repacked, with `m >= 8` go through ggml-cpu/tiled: per 256
//!   values `r = d·isum` (rounded), for Q4_K `r = fma(-dmin, msum, r)`, then
//!   `acc = fma(r, dₐ, acc)`.
//! * Q6_K with `m < 8` is `ggml_vec_dot_q6_K_q8_K`: per block 8 integer lanes with the `-32`
//!   offset taken from the activation block sums, `acc_l = fma(dₐ·d, lane_l, acc_l)`, then
//!   `hsum_float_8`. (Q4_K not repacked with `m < 8` is `ggml_vec_dot_q4_K_q8_K`, which
//!   candle's `vec_dot` reproduces; see `ggml_matmul`.)
//!
//! Each integer sum has a plain twin here, and the AVX2 path is tested bit for bit against it.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::ggml_kquants_avx2;
use super::ggml_matmul::{f16_at, hsum8, quantize_q8k_block, task_columns, transpose, Q8kTie};
use crate::error::{Error, Result};

const QK: usize = 256;
/// Bytes of a Q4_K block.
pub(super) const Q4K_BYTES: usize = 144;
/// Bytes of a Q6_K block.
pub(super) const Q6K_BYTES: usize = 210;
/// Bytes of a Q8_K block.
pub(super) const Q8K_BYTES: usize = 292;

/// Which of ggml's kernels (and so which float order) computes one output row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    /// `ggml_gemv_q4_K_8x8_q8_K`.
    Q4kGemv,
    /// `ggml_gemm_q4_K_8x8_q8_K`.
    Q4kGemm,
    /// ggml-cpu/tiled for Q4_K.
    Q4kTiled,
    /// `ggml_vec_dot_q6_K_q8_K`.
    Q6kVecDot,
    /// ggml-cpu/tiled for Q6_K.
    Q6kTiled,
}

impl Kernel {
    /// Bytes per weight block.
    pub(super) fn weight_bytes(self) -> usize {
        match self {
            Kernel::Q4kGemv | Kernel::Q4kGemm | Kernel::Q4kTiled => Q4K_BYTES,
            Kernel::Q6kVecDot | Kernel::Q6kTiled => Q6K_BYTES,
        }
    }
}

/// Q4_K weights llama.cpp repacks (`n % 8 == 0`): GEMM for the first `m - m % 4` rows when
/// `m >= 4`, GEMV for the rest.
pub(super) fn q4k_repacked(w: &[u8], x: &[f32], m: usize, k: usize, n: usize) -> Result<Vec<f32>> {
    let gemm_rows = if m > 3 { m - m % 4 } else { 0 };
    run(w, x, m, k, n, gemm_rows, (Kernel::Q4kGemm, Kernel::Q4kGemv))
}

/// Q4_K weights llama.cpp does not repack, with at least 8 tokens (ggml-cpu/tiled).
pub(super) fn q4k_tiled(w: &[u8], x: &[f32], m: usize, k: usize, n: usize) -> Result<Vec<f32>> {
    run(w, x, m, k, n, 0, (Kernel::Q4kTiled, Kernel::Q4kTiled))
}

/// Q6_K weights: `ggml_vec_dot_q6_K_q8_K` below 8 tokens, ggml-cpu/tiled from 8.
pub(super) fn q6k(w: &[u8], x: &[f32], m: usize, k: usize, n: usize) -> Result<Vec<f32>> {
    let kernel = if m >= 8 {
        Kernel::Q6kTiled
    } else {
        Kernel::Q6kVecDot
    };
    run(w, x, m, k, n, 0, (kernel, kernel))
}

/// `kernels.0` for activation rows `< split`, `kernels.1` for the others; rows `< split` are
/// quantized as `ggml_quantize_mat_q8_K_4x8` does.
fn run(
    w: &[u8],
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    split: usize,
    kernels: (Kernel, Kernel),
) -> Result<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    let fast = use_avx2();
    #[cfg(not(target_arch = "x86_64"))]
    let fast = false;
    run_on(w, x, (m, k, n), split, kernels, fast)
}

/// [`run`] with the AVX2 kernels (`fast`) or the plain ones.
fn run_on(
    w: &[u8],
    x: &[f32],
    (m, k, n): (usize, usize, usize),
    split: usize,
    kernels: (Kernel, Kernel),
    fast: bool,
) -> Result<Vec<f32>> {
    let kb = k / QK;
    let wsize = kernels.0.weight_bytes();
    if !k.is_multiple_of(QK) || w.len() != n * kb * wsize || x.len() != m * k {
        return Err(Error::ShapeMismatch {
            name: "k-quant matrix".into(),
            expected: vec![n, k],
            got: vec![w.len() / (kb * wsize).max(1), k],
        });
    }
    let xq = quantize(x, k, split);
    let mut out_t = vec![0f32; n * m];
    let cols = task_columns(m, k, n);
    let rows = Rows {
        xq: &xq,
        kb,
        split,
        kernels,
    };
    out_t
        .par_chunks_mut(m.max(1) * cols)
        .enumerate()
        .for_each(|(c, chunk)| {
            let first = c * cols;
            let wc = &w[first * kb * wsize..];
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: the CPU has AVX2, FMA and F16C (checked above); `wc` holds the weight
                // rows of this chunk and `xq` all `m` activation rows (sizes checked above).
                unsafe { ggml_kquants_avx2::columns(&rows, wc, chunk, m.max(1)) };
                return;
            }
            let _ = fast;
            columns_plain(&rows, wc, chunk, m.max(1));
        });
    Ok(transpose(out_t, m, n))
}

/// Quantizes `x` rows to Q8_K blocks; rows `< positive_rows` with [`Q8kTie::Positive`].
fn quantize(x: &[f32], k: usize, positive_rows: usize) -> Vec<u8> {
    let kb = (k / QK).max(1);
    let mut out = vec![0u8; x.len() / QK * Q8K_BYTES];
    for (b, (xb, ob)) in x.chunks(QK).zip(out.chunks_mut(Q8K_BYTES)).enumerate() {
        let tie = if b / kb < positive_rows {
            Q8kTie::Positive
        } else {
            Q8kTie::First
        };
        quantize_q8k_block(xb, ob, tie);
    }
    out
}

/// Whether the AVX2 kernels run (the CPU has AVX2, FMA and F16C).
#[cfg(target_arch = "x86_64")]
fn use_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// The quantized activations and which kernel serves which of their rows.
pub(super) struct Rows<'a> {
    /// `m` rows of `kb` Q8_K blocks.
    pub xq: &'a [u8],
    /// Blocks per row.
    pub kb: usize,
    split: usize,
    kernels: (Kernel, Kernel),
}

impl Rows<'_> {
    /// The kernel of activation row `i`.
    pub(super) fn kernel(&self, i: usize) -> Kernel {
        if i < self.split {
            self.kernels.0
        } else {
            self.kernels.1
        }
    }

    /// Bytes per weight row.
    pub(super) fn weight_row_bytes(&self) -> usize {
        self.kb * self.kernels.0.weight_bytes()
    }
}

/// The plain kernels: output columns (weight rows of `w`, from its start) against every
/// activation row, into `out` (column-major, `m` per column), one dot product at a time.
fn columns_plain(rows: &Rows, w: &[u8], out: &mut [f32], m: usize) {
    let (wrow, arow) = (rows.weight_row_bytes(), rows.kb * Q8K_BYTES);
    for (j, col) in out.chunks_mut(m).enumerate() {
        let wr = &w[j * wrow..(j + 1) * wrow];
        for (i, o) in col.iter_mut().enumerate() {
            let a = &rows.xq[i * arow..(i + 1) * arow];
            *o = match rows.kernel(i) {
                k @ (Kernel::Q6kVecDot | Kernel::Q6kTiled) => dot_q6k(k, wr, a),
                k => dot_q4k(k, wr, a),
            };
        }
    }
}

fn dot_q4k(kernel: Kernel, w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut accm) = (0f32, 0f32);
    for (wb, ab) in w.chunks_exact(Q4K_BYTES).zip(a.chunks_exact(Q8K_BYTES)) {
        let (sc, mn) = q4k_scales_mins(&wb[4..16]);
        let (dots, mins) = q4k_sums(wb, sc, mn, ab);
        let (d, dmin, da) = (f16_at(wb, 0), f16_at(wb, 2), q8k_d(ab));
        match kernel {
            Kernel::Q4kGemm => {
                for (s, ms) in dots.into_iter().zip(mins) {
                    acc = (s as f32).mul_add(d * da, acc);
                    accm = (ms as f32).mul_add(dmin * da, accm);
                }
            }
            Kernel::Q4kGemv => {
                let (s, ms) = (sum(&dots), sum(&mins));
                acc = (s as f32).mul_add(d * da, acc);
                accm = (ms as f32).mul_add(dmin * da, accm);
            }
            _ => {
                let r = (-dmin).mul_add(sum(&mins) as f32, d * sum(&dots) as f32);
                acc = r.mul_add(da, acc);
            }
        }
    }
    acc - accm
}

fn dot_q6k(kernel: Kernel, w: &[u8], a: &[u8]) -> f32 {
    let mut lanes_acc = [0f32; 8];
    let mut acc = 0f32;
    for (wb, ab) in w.chunks_exact(Q6K_BYTES).zip(a.chunks_exact(Q8K_BYTES)) {
        let lanes = q6k_lanes(wb, ab);
        let (d, da) = (f16_at(wb, 208), q8k_d(ab));
        if kernel == Kernel::Q6kVecDot {
            let dd = da * d;
            for (s, l) in lanes_acc.iter_mut().zip(lanes) {
                *s = dd.mul_add(l as f32, *s);
            }
        } else {
            acc = (d * sum(&lanes) as f32).mul_add(da, acc);
        }
    }
    if kernel == Kernel::Q6kVecDot {
        hsum8(&lanes_acc)
    } else {
        acc
    }
}

/// Integer sum (wrapping, as the int32 SIMD adds do; real sums never wrap).
#[inline(always)]
fn sum(v: &[i32]) -> i32 {
    v.iter().fold(0i32, |a, &b| a.wrapping_add(b))
}

/// A Q8_K block's scale.
#[inline(always)]
pub(super) fn q8k_d(a: &[u8]) -> f32 {
    f32::from_le_bytes([a[0], a[1], a[2], a[3]])
}

/// A Q8_K block's sum of quants `16·j .. 16·j + 16`.
#[inline(always)]
fn q8k_bsum(a: &[u8], j: usize) -> i32 {
    i16::from_le_bytes([a[260 + 2 * j], a[261 + 2 * j]]) as i32
}

/// ggml's `get_scale_min_k4` for the 8 sub-blocks of a Q4_K block, by its 32-bit mask trick:
/// (scales, mins), one byte per sub-block, little-endian.
#[inline(always)]
pub(super) fn q4k_scales_mins(s: &[u8]) -> (u64, u64) {
    const K1: u32 = 0x3f3f3f3f;
    const K2: u32 = 0x0f0f0f0f;
    const K3: u32 = 0x03030303;
    let u = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let sc_hi = (u2 & K2) | (((u0 >> 6) & K3) << 4);
    let mn_hi = ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4);
    (
        (u0 & K1) as u64 | (sc_hi as u64) << 32,
        (u1 & K1) as u64 | (mn_hi as u64) << 32,
    )
}

/// Byte `j` of a little-endian packed `u64`.
#[inline(always)]
fn byte(v: u64, j: usize) -> i32 {
    ((v >> (8 * j)) & 0xFF) as i32
}

/// Per 64-value pair `p` of sub-blocks: `sc[2p]·Σ q4·q8 + sc[2p+1]·Σ q4·q8`, and
/// `min[2p]·Σq8[2p] + min[2p+1]·Σq8[2p+1]` (the AVX2 kernels compute the same integers with
/// `maddubs`/`madd`).
fn q4k_sums(w: &[u8], sc: u64, mn: u64, a: &[u8]) -> ([i32; 4], [i32; 4]) {
    let (qs, q8) = (&w[16..144], &a[4..260]);
    let dots = std::array::from_fn(|p| {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let q = qs[32 * p + l];
            lo += (q & 15) as i32 * q8[64 * p + l] as i8 as i32;
            hi += (q >> 4) as i32 * q8[64 * p + 32 + l] as i8 as i32;
        }
        byte(sc, 2 * p) * lo + byte(sc, 2 * p + 1) * hi
    });
    let mins = std::array::from_fn(|p| {
        let s0 = q8k_bsum(a, 4 * p) + q8k_bsum(a, 4 * p + 1);
        let s1 = q8k_bsum(a, 4 * p + 2) + q8k_bsum(a, 4 * p + 3);
        byte(mn, 2 * p) * s0 + byte(mn, 2 * p + 1) * s1
    });
    (dots, mins)
}

/// `ggml_vec_dot_q6_K_q8_K`'s 8 integer lanes for one block: lane `l` sums `scale·q6·q8` over
/// values `128j + 32k + 4l .. +4`, minus `32·(Σq8[2l]·sc[2l] + Σq8[2l+1]·sc[2l+1])`.
fn q6k_lanes(w: &[u8], a: &[u8]) -> [i32; 8] {
    let (ql, qh, sc) = (&w[0..128], &w[128..192], &w[192..208]);
    let q8 = &a[4..260];
    let mut lanes = [0i32; 8];
    for e in 0..QK {
        let (j, kk, b) = (e / 128, e % 128 / 32, e % 32);
        let low = ql[64 * j + 32 * (kk & 1) + b];
        let low = if kk < 2 { low & 15 } else { low >> 4 };
        let q = (low | ((qh[32 * j + b] >> (2 * kk)) & 3) << 4) as i32;
        lanes[b / 4] += sc[e / 16] as i8 as i32 * q * q8[e] as i8 as i32;
    }
    for (l, lane) in lanes.iter_mut().enumerate() {
        let s0 = q8k_bsum(a, 2 * l) * sc[2 * l] as i8 as i32;
        let s1 = q8k_bsum(a, 2 * l + 1) * sc[2 * l + 1] as i8 as i32;
        *lane -= 32 * (s0 + s1);
    }
    lanes
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        // A fixed LCG: reproducible, with exact ties (repeated magnitudes) now and then.
        let mut s = seed;
        (0..rows * cols)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((s >> 33) % 2001) as f32 / 1000.0 - 1.0;
                if (s >> 20).is_multiple_of(97) {
                    -v
                } else {
                    v
                }
            })
            .collect()
    }

    fn quantized(n: usize, k: usize, dt: GgmlDType) -> Vec<u8> {
        let w = Tensor::from_vec(random(n, k, 7), (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, dt)
            .unwrap()
            .data()
            .unwrap()
            .into_owned()
    }

    #[test]
    fn avx2_kernels_are_bitwise_the_plain_ones() {
        #[cfg(target_arch = "x86_64")]
        if !use_avx2() {
            return;
        }
        let k = 768;
        let x = random(11, k, 11);
        for (dt, n) in [
            (GgmlDType::Q4K, 13),
            (GgmlDType::Q6K, 13),
            (GgmlDType::Q4K, 8),
        ] {
            let w = quantized(n, k, dt);
            for m in [1, 3, 5, 8, 11] {
                let xs = &x[..m * k];
                let kernels = match dt {
                    GgmlDType::Q4K => vec![
                        (m - m % 4, (Kernel::Q4kGemm, Kernel::Q4kGemv)),
                        (0, (Kernel::Q4kTiled, Kernel::Q4kTiled)),
                    ],
                    _ => vec![
                        (0, (Kernel::Q6kVecDot, Kernel::Q6kVecDot)),
                        (0, (Kernel::Q6kTiled, Kernel::Q6kTiled)),
                    ],
                };
                for (split, ks) in kernels {
                    let fast = run_on(&w, xs, (m, k, n), split, ks, true).unwrap();
                    let plain = run_on(&w, xs, (m, k, n), split, ks, false).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&fast), bits(&plain), "{ks:?} n={n} m={m}");
                }
            }
        }
    }

    #[test]
    fn scale_decoding_is_get_scale_min_k4() {
        let s: Vec<u8> = (0..12u8)
            .map(|i| i.wrapping_mul(97).wrapping_add(13))
            .collect();
        let (sc, mn) = q4k_scales_mins(&s);
        for j in 0..8 {
            let (want_sc, want_mn) = if j < 4 {
                (s[j] & 63, s[j + 4] & 63)
            } else {
                (
                    (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
                    (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                )
            };
            assert_eq!(
                (byte(sc, j), byte(mn, j)),
                (want_sc as i32, want_mn as i32),
                "{j}"
            );
        }
    }

    /// The kernels from the dequantized values: each must be its own float order over the
    /// exact integer sums, and near the f64 product of the dequantized operands.
    #[test]
    fn kernels_match_a_dequantized_reference() {
        let (n, k, m) = (16, 512, 9);
        let x = random(m, k, 3);
        for dt in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let w = quantized(n, k, dt);
            let results = match dt {
                GgmlDType::Q4K => vec![
                    (q4k_repacked(&w, &x, m, k, n).unwrap(), 8),
                    (q4k_repacked(&w, &x[..3 * k], 3, k, n).unwrap(), 0),
                    (q4k_tiled(&w, &x, m, k, n).unwrap(), 0),
                ],
                _ => vec![
                    (q6k(&w, &x, m, k, n).unwrap(), 0),
                    (q6k(&w, &x[..3 * k], 3, k, n).unwrap(), 0),
                ],
            };
            let wd = QTensor::quantize(
                &Tensor::from_vec(random(n, k, 7), (n, k), &Device::Cpu).unwrap(),
                dt,
            )
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            for (got, split) in results {
                let rows = got.len() / n;
                let xq = quantize(&x[..rows * k], k, split);
                for i in 0..rows {
                    let mut xd = vec![0f32; k];
                    for (b, ab) in xq[i * (k / QK) * Q8K_BYTES..(i + 1) * (k / QK) * Q8K_BYTES]
                        .chunks_exact(Q8K_BYTES)
                        .enumerate()
                    {
                        for e in 0..QK {
                            xd[b * QK + e] = q8k_d(ab) * ab[4 + e] as i8 as f32;
                        }
                    }
                    for r in 0..n {
                        let p = (0..k).map(|j| xd[j] as f64 * wd[r * k + j] as f64);
                        let want = p.clone().sum::<f64>();
                        let scale = p.map(f64::abs).sum::<f64>();
                        let g = got[i * n + r] as f64;
                        assert!(
                            (g - want).abs() <= 1e-5 * scale,
                            "{dt:?} row {i} col {r}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q4k_gemm_rows_use_the_positive_tie() {
        // +1 and -1 share the largest magnitude: ref takes the first (-1), 4x8 the positive.
        let mut x = vec![0.25f32; QK];
        x[0] = -1.0;
        x[1] = 1.0;
        let first = quantize(&x, QK, 0);
        let pos = quantize(&x, QK, 1);
        assert_eq!(q8k_d(&first), 1.0 / 127.0);
        assert_eq!(q8k_d(&pos), -1.0 / 127.0);
    }
}
