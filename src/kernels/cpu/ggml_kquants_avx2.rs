//! The AVX2 form of `ggml_kquants`: four weight rows at a time, so the float steps (one per
//! block, or per 64 values for the repacked GEMM) run as 4-lane vector operations, one lane per
//! output, exactly as the plain kernels do them one output at a time; the integer sums are
//! `maddubs`/`madd` as in ggml. Tested bitwise against the plain kernels.

use std::arch::x86_64::*;

use super::ggml_kquants::{q4k_scales_mins, q8k_d, Kernel, Rows, Q4K_BYTES, Q6K_BYTES, Q8K_BYTES};
use super::ggml_matmul::hsum8;

/// Output columns (weight rows of `w`, from its start) against every activation row, into
/// `out` (column-major, `m` per column).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` holds at least `out.len() / m` weight rows and `rows.xq` `m`
/// activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn columns(rows: &Rows, w: &[u8], out: &mut [f32], m: usize) {
    let (kb, wrow, arow) = (rows.kb, rows.weight_row_bytes(), rows.kb * Q8K_BYTES);
    let cols = out.len() / m;
    debug_assert!(w.len() >= cols * wrow && rows.xq.len() >= m * arow);
    for c0 in (0..cols).step_by(4) {
        let nc = (cols - c0).min(4);
        // A short last group repeats its last row (results dropped).
        let wp: [*const u8; 4] =
            std::array::from_fn(|c| w.as_ptr().add((c0 + c.min(nc - 1)) * wrow));
        for i in 0..m {
            let a = rows.xq.as_ptr().add(i * arow);
            let y = match rows.kernel(i) {
                Kernel::Q6kVecDot => std::array::from_fn(|c| q6k_vec_dot(wp[c], a, kb)),
                Kernel::Q6kTiled => q6k_tiled(wp, a, kb),
                k => q4k(k, wp, a, kb),
            };
            for (c, v) in y.iter().enumerate().take(nc) {
                out[(c0 + c) * m + i] = *v;
            }
        }
    }
}

/// Byte shuffles that broadcast 16-bit element `j` of each 128-bit half.
static WORD: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut j = 0;
    while j < 8 {
        let mut b = 0;
        while b < 32 {
            t[j][b] = (2 * j + b % 2) as u8;
            b += 1;
        }
        j += 1;
    }
    t
};

/// Byte shuffles that broadcast 16-bit element `2kk` to the low 128 bits and `2kk + 1` to the
/// high 128 bits.
static SPLIT: [[u8; 32]; 4] = {
    let mut t = [[0u8; 32]; 4];
    let mut kk = 0;
    while kk < 4 {
        let mut b = 0;
        while b < 32 {
            t[kk][b] = (4 * kk + 2 * (b / 16) + b % 2) as u8;
            b += 1;
        }
        kk += 1;
    }
    t
};

/// [Σv0, Σv1, Σv2, Σv3] of four 8-lane integer vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum4(v0: __m256i, v1: __m256i, v2: __m256i, v3: __m256i) -> __m128i {
    let t = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1))
}

/// The f16 pairs at byte `at` of four blocks as f32: ([first of each], [second of each]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x4x2(wb: &[*const u8; 4], at: usize) -> (__m128, __m128) {
    let u = |c: usize| (wb[c].add(at) as *const i32).read_unaligned();
    let both = _mm256_cvtph_ps(_mm_setr_epi32(u(0), u(1), u(2), u(3)));
    let split = _mm256_permutevar8x32_ps(both, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
    (
        _mm256_castps256_ps128(split),
        _mm256_extractf128_ps(split, 1),
    )
}

/// Four Q4_K rows against one Q8_K row, `kernel`'s float order per lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k(kernel: Kernel, w: [*const u8; 4], a: *const u8, kb: usize) -> [f32; 4] {
    let m4 = _mm256_set1_epi8(0x0F);
    let (mut acc, mut accm) = (_mm_setzero_ps(), _mm_setzero_ps());
    for b in 0..kb {
        let ab = a.add(b * Q8K_BYTES);
        let da = _mm_set1_ps(q8k_d(std::slice::from_raw_parts(ab, 4)));
        let bsums = _mm256_loadu_si256(ab.add(260) as *const __m256i);
        // Q8 sums per 32-value sub-block.
        let per_sub = _mm_hadd_epi16(
            _mm256_castsi256_si128(bsums),
            _mm256_extracti128_si256(bsums, 1),
        );
        let wb: [*const u8; 4] = std::array::from_fn(|c| w[c].add(b * Q4K_BYTES));
        let mut scales = [_mm256_setzero_si256(); 4];
        let mut mins = [_mm_setzero_si128(); 4];
        for c in 0..4 {
            let (sc, mn) = q4k_scales_mins(std::slice::from_raw_parts(wb[c].add(4), 12));
            scales[c] =
                _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
            // Lane p: min[2p]·Σq8[2p] + min[2p+1]·Σq8[2p+1].
            mins[c] = _mm_madd_epi16(per_sub, _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64)));
        }
        let (d, dmin) = f16x4x2(&wb, 0);
        // pair[p]: lane c = column c's scaled integer sum over values 64p .. 64p + 64 (GEMM);
        // the other kernels need only the whole block's, summed before the horizontal sum.
        let gemm = kernel == Kernel::Q4kGemm;
        let mut pair = [_mm_setzero_si128(); 4];
        let mut block = [_mm256_setzero_si256(); 4];
        for p in 0..4 {
            let al = _mm256_loadu_si256(ab.add(4 + 64 * p) as *const __m256i);
            let ah = _mm256_loadu_si256(ab.add(36 + 64 * p) as *const __m256i);
            let (s_lo, s_hi) = (
                _mm256_loadu_si256(WORD[2 * p].as_ptr() as *const __m256i),
                _mm256_loadu_si256(WORD[2 * p + 1].as_ptr() as *const __m256i),
            );
            let mut v = [_mm256_setzero_si256(); 4];
            for c in 0..4 {
                let bits = _mm256_loadu_si256(wb[c].add(16 + 32 * p) as *const __m256i);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                let pl = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, al),
                    _mm256_shuffle_epi8(scales[c], s_lo),
                );
                let ph = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, ah),
                    _mm256_shuffle_epi8(scales[c], s_hi),
                );
                v[c] = _mm256_add_epi32(pl, ph);
                block[c] = _mm256_add_epi32(block[c], v[c]);
            }
            if gemm {
                pair[p] = hsum4(v[0], v[1], v[2], v[3]);
            }
        }
        if kernel == Kernel::Q4kGemm {
            // Transpose the per-column min sums to per-pair vectors.
            let t0 = _mm_unpacklo_epi32(mins[0], mins[1]);
            let t1 = _mm_unpacklo_epi32(mins[2], mins[3]);
            let t2 = _mm_unpackhi_epi32(mins[0], mins[1]);
            let t3 = _mm_unpackhi_epi32(mins[2], mins[3]);
            let mp = [
                _mm_unpacklo_epi64(t0, t1),
                _mm_unpackhi_epi64(t0, t1),
                _mm_unpacklo_epi64(t2, t3),
                _mm_unpackhi_epi64(t2, t3),
            ];
            let (dd, dm) = (_mm_mul_ps(d, da), _mm_mul_ps(dmin, da));
            for p in 0..4 {
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(pair[p]), dd, acc);
                accm = _mm_fmadd_ps(_mm_cvtepi32_ps(mp[p]), dm, accm);
            }
            continue;
        }
        let isum = hsum4(block[0], block[1], block[2], block[3]);
        let msum = _mm_hadd_epi32(
            _mm_hadd_epi32(mins[0], mins[1]),
            _mm_hadd_epi32(mins[2], mins[3]),
        );
        if kernel == Kernel::Q4kGemv {
            acc = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), _mm_mul_ps(d, da), acc);
            accm = _mm_fmadd_ps(_mm_cvtepi32_ps(msum), _mm_mul_ps(dmin, da), accm);
        } else {
            let r = _mm_fnmadd_ps(
                dmin,
                _mm_cvtepi32_ps(msum),
                _mm_mul_ps(d, _mm_cvtepi32_ps(isum)),
            );
            acc = _mm_fmadd_ps(r, da, acc);
        }
    }
    let mut y = [0f32; 4];
    _mm_storeu_ps(y.as_mut_ptr(), _mm_sub_ps(acc, accm));
    y
}

/// `ggml_vec_dot_q6_K_q8_K`'s AVX2 integer lanes for one block (ggml-cpu/arch/x86/quants.c).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_lanes(w: *const u8, a: *const u8) -> __m256i {
    let m3 = _mm256_set1_epi8(3);
    let m15 = _mm256_set1_epi8(15);
    let (ql, qh, q8) = (w, w.add(128), a.add(4));
    let q8sums = _mm256_loadu_si256(a.add(260) as *const __m256i);
    let scales = _mm_loadu_si128(w.add(192) as *const __m128i);
    let q8sclsub = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, _mm256_cvtepi8_epi16(scales)), 5);
    // Sub-block scales widened to 16 bits; `SPLIT[kk]` puts the scale of sub-block 2kk (of a
    // half) in the low 128 bits and 2kk + 1 in the high ones, as ggml's `get_scale_shuffle`.
    let scales16 = _mm256_cvtepi8_epi16(scales);
    let halves = [
        _mm256_permute2x128_si256(scales16, scales16, 0x00),
        _mm256_permute2x128_si256(scales16, scales16, 0x11),
    ];
    let mut sumi = _mm256_setzero_si256();
    for (j, half) in halves.iter().enumerate() {
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
        for (kk, q) in q4.iter().enumerate() {
            let a8 = _mm256_loadu_si256(q8.add(128 * j + 32 * kk) as *const __m256i);
            let split = _mm256_loadu_si256(SPLIT[kk].as_ptr() as *const __m256i);
            let sc = _mm256_shuffle_epi8(*half, split);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc, _mm256_maddubs_epi16(*q, a8)));
        }
    }
    _mm256_sub_epi32(sumi, q8sclsub)
}

/// One Q6_K row against one Q8_K row as `ggml_vec_dot_q6_K_q8_K`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_vec_dot(w: *const u8, a: *const u8, kb: usize) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for b in 0..kb {
        let (wb, ab) = (w.add(b * Q6K_BYTES), a.add(b * Q8K_BYTES));
        let h = (wb.add(208) as *const u16).read_unaligned();
        let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)));
        let d = q8k_d(std::slice::from_raw_parts(ab, 4)) * dw;
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(d),
            _mm256_cvtepi32_ps(q6k_lanes(wb, ab)),
            acc,
        );
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    hsum8(&lanes)
}

/// Four Q6_K rows against one Q8_K row as ggml-cpu/tiled.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_tiled(w: [*const u8; 4], a: *const u8, kb: usize) -> [f32; 4] {
    let mut acc = _mm_setzero_ps();
    for b in 0..kb {
        let ab = a.add(b * Q8K_BYTES);
        let wb: [*const u8; 4] = std::array::from_fn(|c| w[c].add(b * Q6K_BYTES));
        let s = hsum4(
            q6k_lanes(wb[0], ab),
            q6k_lanes(wb[1], ab),
            q6k_lanes(wb[2], ab),
            q6k_lanes(wb[3], ab),
        );
        // Q6_K's d is the last 2 bytes of a block: read it with the 2 before (scales).
        let r = _mm_mul_ps(f16x4x2(&wb, 206).1, _mm_cvtepi32_ps(s));
        acc = _mm_fmadd_ps(
            r,
            _mm_set1_ps(q8k_d(std::slice::from_raw_parts(ab, 4))),
            acc,
        );
    }
    let mut y = [0f32; 4];
    _mm_storeu_ps(y.as_mut_ptr(), acc);
    y
}
