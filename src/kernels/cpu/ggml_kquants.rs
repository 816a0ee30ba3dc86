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

use super::ggml_matmul::{f16_at, hsum8, quantize_q8k_block, task_columns, transpose, Q8kTie};
use crate::error::{Error, Result};

const QK: usize = 256;
const Q4K_BYTES: usize = 144;
const Q6K_BYTES: usize = 210;
const Q8K_BYTES: usize = 292;

/// Which of ggml's kernels (and so which float order) computes one output row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
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
    fn weight_bytes(self) -> usize {
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
    #[cfg(target_arch = "x86_64")]
    let fast = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
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
                // SAFETY: the CPU has AVX2 and FMA (checked above); sizes checked above.
                unsafe { columns_avx2(&rows, wc, chunk, m.max(1)) };
                return;
            }
            columns::<false>(&rows, wc, chunk, m.max(1));
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

/// The quantized activations and which kernel serves which of their rows.
struct Rows<'a> {
    xq: &'a [u8],
    kb: usize,
    split: usize,
    kernels: (Kernel, Kernel),
}

/// Output columns (weight rows of `w`, from its start) against every activation row, into
/// `out` (column-major, `m` per column).
#[inline(always)]
fn columns<const AVX: bool>(rows: &Rows, w: &[u8], out: &mut [f32], m: usize) {
    let wsize = rows.kernels.0.weight_bytes();
    let (kb, arow) = (rows.kb, rows.kb * Q8K_BYTES);
    for (j, col) in out.chunks_mut(m).enumerate() {
        let wr = &w[j * kb * wsize..(j + 1) * kb * wsize];
        for (i, o) in col.iter_mut().enumerate() {
            let kernel = if i < rows.split {
                rows.kernels.0
            } else {
                rows.kernels.1
            };
            *o = dot::<AVX>(kernel, wr, &rows.xq[i * arow..(i + 1) * arow]);
        }
    }
}

/// [`columns`] with the AVX2 integer sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn columns_avx2(rows: &Rows, w: &[u8], out: &mut [f32], m: usize) {
    columns::<true>(rows, w, out, m)
}

/// One output: weight row `w` against activation row `a` (Q8_K blocks) as `kernel` does it.
#[inline(always)]
fn dot<const AVX: bool>(kernel: Kernel, w: &[u8], a: &[u8]) -> f32 {
    match kernel {
        Kernel::Q4kGemv | Kernel::Q4kGemm | Kernel::Q4kTiled => dot_q4k::<AVX>(kernel, w, a),
        Kernel::Q6kVecDot | Kernel::Q6kTiled => dot_q6k::<AVX>(kernel, w, a),
    }
}

#[inline(always)]
fn dot_q4k<const AVX: bool>(kernel: Kernel, w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut accm) = (0f32, 0f32);
    for (wb, ab) in w.chunks_exact(Q4K_BYTES).zip(a.chunks_exact(Q8K_BYTES)) {
        let (sc, mn) = q4k_scales_mins(&wb[4..16]);
        let dots = q4k_dots::<AVX>(wb, &sc, ab);
        let mins = q4k_min_sums(&mn, ab);
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

#[inline(always)]
fn dot_q6k<const AVX: bool>(kernel: Kernel, w: &[u8], a: &[u8]) -> f32 {
    let mut lanes_acc = [0f32; 8];
    let mut acc = 0f32;
    for (wb, ab) in w.chunks_exact(Q6K_BYTES).zip(a.chunks_exact(Q8K_BYTES)) {
        let lanes = q6k_lanes::<AVX>(wb, ab);
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
fn q8k_d(a: &[u8]) -> f32 {
    f32::from_le_bytes([a[0], a[1], a[2], a[3]])
}

/// A Q8_K block's sum of quants `16·j .. 16·j + 16`.
#[inline(always)]
fn q8k_bsum(a: &[u8], j: usize) -> i32 {
    i16::from_le_bytes([a[260 + 2 * j], a[261 + 2 * j]]) as i32
}

/// ggml's `get_scale_min_k4` for the 8 sub-blocks of a Q4_K block: (scales, mins).
#[inline(always)]
fn q4k_scales_mins(s: &[u8]) -> ([i32; 8], [i32; 8]) {
    let (mut sc, mut mn) = ([0i32; 8], [0i32; 8]);
    for j in 0..4 {
        sc[j] = (s[j] & 63) as i32;
        mn[j] = (s[j + 4] & 63) as i32;
        sc[j + 4] = ((s[j + 8] & 0xF) | ((s[j] >> 6) << 4)) as i32;
        mn[j + 4] = ((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4)) as i32;
    }
    (sc, mn)
}

/// Per 64-value pair `p` of sub-blocks: `min[2p]·Σq8[2p] + min[2p+1]·Σq8[2p+1]`.
#[inline(always)]
fn q4k_min_sums(mn: &[i32; 8], a: &[u8]) -> [i32; 4] {
    std::array::from_fn(|p| {
        let s0 = q8k_bsum(a, 4 * p) + q8k_bsum(a, 4 * p + 1);
        let s1 = q8k_bsum(a, 4 * p + 2) + q8k_bsum(a, 4 * p + 3);
        mn[2 * p] * s0 + mn[2 * p + 1] * s1
    })
}

/// Per 64-value pair `p` of sub-blocks: `sc[2p]·Σ q4·q8 + sc[2p+1]·Σ q4·q8`.
#[inline(always)]
fn q4k_dots<const AVX: bool>(w: &[u8], sc: &[i32; 8], a: &[u8]) -> [i32; 4] {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is only true inside `columns_avx2` (AVX2 detected); `w` is a whole
        // Q4_K block and `a` a whole Q8_K block (`chunks_exact`).
        return unsafe { avx2::q4k_dots(w, sc, a) };
    }
    q4k_dots_plain(w, sc, a)
}

/// The plain twin of [`avx2::q4k_dots`].
fn q4k_dots_plain(w: &[u8], sc: &[i32; 8], a: &[u8]) -> [i32; 4] {
    let (qs, q8) = (&w[16..144], &a[4..260]);
    std::array::from_fn(|p| {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let q = qs[32 * p + l];
            lo += (q & 15) as i32 * q8[64 * p + l] as i8 as i32;
            hi += (q >> 4) as i32 * q8[64 * p + 32 + l] as i8 as i32;
        }
        sc[2 * p] * lo + sc[2 * p + 1] * hi
    })
}

/// `ggml_vec_dot_q6_K_q8_K`'s 8 integer lanes for one block: lane `l` sums `scale·q6·q8` over
/// values `128j + 32k + 4l .. +4`, minus `32·(Σq8[2l]·sc[2l] + Σq8[2l+1]·sc[2l+1])`.
#[inline(always)]
fn q6k_lanes<const AVX: bool>(w: &[u8], a: &[u8]) -> [i32; 8] {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: as in `q4k_dots`: AVX2 detected, whole Q6_K and Q8_K blocks.
        return unsafe { avx2::q6k_lanes(w, a) };
    }
    q6k_lanes_plain(w, a)
}

/// The plain twin of [`avx2::q6k_lanes`].
fn q6k_lanes_plain(w: &[u8], a: &[u8]) -> [i32; 8] {
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// ggml's repacked Q4_K integer sums (`maddubs` of the nibbles with the Q8 quants, `madd`
    /// with the sub-block scale), one horizontal sum per 64 values.
    ///
    /// # Safety
    /// AVX2 is available; `w` holds at least 144 bytes (a Q4_K block), `a` 292 (a Q8_K block).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q4k_dots(w: &[u8], sc: &[i32; 8], a: &[u8]) -> [i32; 4] {
        debug_assert!(w.len() >= 144 && a.len() >= 292);
        let m4 = _mm256_set1_epi8(0x0F);
        let (qs, q8) = (w.as_ptr().add(16), a.as_ptr().add(4));
        let mut v = [_mm256_setzero_si256(); 4];
        for (p, vp) in v.iter_mut().enumerate() {
            let bits = _mm256_loadu_si256(qs.add(32 * p) as *const __m256i);
            let lo = _mm256_and_si256(bits, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            let al = _mm256_loadu_si256(q8.add(64 * p) as *const __m256i);
            let ah = _mm256_loadu_si256(q8.add(64 * p + 32) as *const __m256i);
            let pl = _mm256_madd_epi16(
                _mm256_maddubs_epi16(lo, al),
                _mm256_set1_epi16(sc[2 * p] as i16),
            );
            let ph = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, ah),
                _mm256_set1_epi16(sc[2 * p + 1] as i16),
            );
            *vp = _mm256_add_epi32(pl, ph);
        }
        // Four horizontal sums at once: [v0, v1, v2, v3] per 128-bit half, then the halves.
        let t = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        let mut out = [0i32; 4];
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, s);
        out
    }

    /// `ggml_vec_dot_q6_K_q8_K`'s AVX2 integer lanes for one block (ggml-cpu/arch/x86/quants.c).
    ///
    /// # Safety
    /// AVX2 is available; `w` holds at least 210 bytes (a Q6_K block), `a` 292 (a Q8_K block).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q6k_lanes(w: &[u8], a: &[u8]) -> [i32; 8] {
        debug_assert!(w.len() >= 210 && a.len() >= 292);
        let m3 = _mm256_set1_epi8(3);
        let m15 = _mm256_set1_epi8(15);
        let (ql, qh, scp) = (w.as_ptr(), w.as_ptr().add(128), w.as_ptr().add(192));
        let q8 = a.as_ptr().add(4);
        let q8sums = _mm256_loadu_si256(a.as_ptr().add(260) as *const __m256i);
        let scales = _mm_loadu_si128(scp as *const __m128i);
        let scales16 = _mm256_cvtepi8_epi16(scales);
        let q8sclsub = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, scales16), 5);
        let sc = |i: usize| *scp.add(i) as i8 as i16;
        // Lanes 0-3 of a 32-value chunk take its first sub-block's scale, lanes 4-7 the second's.
        let scale = |is: usize| {
            _mm256_set_m128i(_mm_set1_epi16(sc(2 * is + 1)), _mm_set1_epi16(sc(2 * is)))
        };
        let mut sumi = _mm256_setzero_si256();
        for j in 0..2 {
            let q4bits1 = _mm256_loadu_si256(ql.add(64 * j) as *const __m256i);
            let q4bits2 = _mm256_loadu_si256(ql.add(64 * j + 32) as *const __m256i);
            let q4bits_h = _mm256_loadu_si256(qh.add(32 * j) as *const __m256i);
            let q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m3), 4);
            let q4h_1 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(12)), 2);
            let q4h_2 = _mm256_and_si256(q4bits_h, _mm256_set1_epi8(48));
            let q4h_3 = _mm256_srli_epi16(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(-64)), 2);
            let q4 = [
                _mm256_or_si256(_mm256_and_si256(q4bits1, m15), q4h_0),
                _mm256_or_si256(_mm256_and_si256(q4bits2, m15), q4h_1),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m15), q4h_2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m15), q4h_3),
            ];
            let mut p = [_mm256_setzero_si256(); 4];
            for (kk, pk) in p.iter_mut().enumerate() {
                let a8 = _mm256_loadu_si256(q8.add(128 * j + 32 * kk) as *const __m256i);
                *pk = _mm256_madd_epi16(scale(4 * j + kk), _mm256_maddubs_epi16(q4[kk], a8));
            }
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[0], p[1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[2], p[3]));
        }
        let lanes = _mm256_sub_epi32(sumi, q8sclsub);
        let mut out = [0i32; 8];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, lanes);
        out
    }
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
                if (s >> 20) % 97 == 0 {
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
    fn avx2_integer_sums_are_the_plain_ones() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let k = 1024;
        let x = random(3, k, 11);
        let xq = quantize(&x, k, 0);
        for (dt, size) in [(GgmlDType::Q4K, Q4K_BYTES), (GgmlDType::Q6K, Q6K_BYTES)] {
            let w = quantized(5, k, dt);
            for wb in w.chunks_exact(size) {
                for ab in xq.chunks_exact(Q8K_BYTES) {
                    if dt == GgmlDType::Q4K {
                        let (sc, _) = q4k_scales_mins(&wb[4..16]);
                        // SAFETY: AVX2 detected above; whole blocks.
                        let got = unsafe { avx2::q4k_dots(wb, &sc, ab) };
                        assert_eq!(got, q4k_dots_plain(wb, &sc, ab));
                    } else {
                        // SAFETY: as above.
                        let got = unsafe { avx2::q6k_lanes(wb, ab) };
                        assert_eq!(got, q6k_lanes_plain(wb, ab));
                    }
                }
            }
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
