//! One query head attending to its visible keys with llama.cpp's CPU arithmetic, vectorized.
//! Scores are `ggml_vec_dot_f32` of q and k, the softmax is ggml's, and the weighted sum of
//! values follows `ggml_vec_dot_f32` (one new token) or tinyBLAS (a batch of new tokens) order;
//! see [`ggml_math`] for those orders. The twin [`attend_plain`] computes each output with the
//! scalar functions of [`ggml_math`]; the vector form gives the same bits (tested) because it
//! only changes the loop order: each accumulator lane of ggml's value dot product becomes a
//! row of a scratch matrix, so one key's probability multiplies a whole value row in AVX2
//! registers while every output still sees ggml's sequence of FMAs and adds.

use super::ggml_math;

/// Accumulator rows of the `ggml_vec_dot_f32` order (4 accumulators of 8 lanes).
const VEC_DOT_SLOTS: usize = 32;
/// Accumulator rows of the tinyBLAS order (one accumulator of 8 lanes).
const TINY_SLOTS: usize = 8;

/// Which reduction order the weighted sum of values follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueOrder {
    /// `ggml_vec_dot_f32` over the key range padded to 32 (llama.cpp, one new token).
    VecDot,
    /// tinyBLAS's F32 kernel (llama.cpp, two or more new tokens of a sequence).
    Tiny,
}

/// One query head and the keys it sees.
pub struct Head<'a> {
    /// The query, `head_dim` values in the order the keys are stored.
    pub q: &'a [f32],
    /// The key cache.
    pub keys: &'a [f32],
    /// The value cache.
    pub values: &'a [f32],
    /// Row offsets of the visible positions in the caches, oldest first.
    pub rows: &'a [usize],
    /// Offset of this head's KV head within a row.
    pub kv_offset: usize,
    /// Softmax scale applied to `q·k`.
    pub scale: f32,
    /// `cap · tanh(score / cap)` after scaling.
    pub softcap: Option<f32>,
    /// Reduction order of the value sum.
    pub order: ValueOrder,
}

/// Reusable buffers of [`attend`].
#[derive(Default)]
pub struct Scratch {
    scores: Vec<f32>,
    acc: Vec<f32>,
}

/// Writes the head's attention output (`head_dim` values) to `out`.
pub fn attend(h: &Head, scratch: &mut Scratch, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if out.len().is_multiple_of(8) && ggml_math::avx2::available() {
        // SAFETY: AVX2 and FMA are present (checked); head_dim is a multiple of 8.
        unsafe { avx2::attend(h, scratch, out) };
        return;
    }
    attend_plain(h, scratch, out);
}

/// Scaled, optionally capped score.
#[inline(always)]
fn finish_score(dot: f32, h: &Head) -> f32 {
    let s = dot * h.scale;
    match h.softcap {
        Some(cap) => (s / cap).tanh() * cap,
        None => s,
    }
}

/// [`attend`] with the scalar functions of [`ggml_math`], one output at a time.
pub fn attend_plain(h: &Head, scratch: &mut Scratch, out: &mut [f32]) {
    let hd = out.len();
    let scores = &mut scratch.scores;
    scores.clear();
    scores.extend(h.rows.iter().map(|&r| {
        let k = &h.keys[r + h.kv_offset..r + h.kv_offset + hd];
        finish_score(ggml_math::vec_dot_f32(hd, |i| (h.q[i], k[i]), hd), h)
    }));
    ggml_math::softmax_plain(scores);
    let n = scores.len();
    for (d, o) in out.iter_mut().enumerate() {
        let pv = |j: usize| (scores[j], h.values[h.rows[j] + h.kv_offset + d]);
        *o = match h.order {
            ValueOrder::Tiny => ggml_math::tiny_dot_f32(n, pv),
            ValueOrder::VecDot => ggml_math::vec_dot_f32(n, pv, n.next_multiple_of(32)),
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{finish_score, Head, Scratch, ValueOrder, TINY_SLOTS, VEC_DOT_SLOTS};
    use crate::kernels::ggml_math::avx2::softmax_in_place;

    /// The vector part of `ggml_vec_dot_f32` on AVX2: four accumulators over the whole steps
    /// of 32, folded `(a0 + a2) + (a1 + a3)`; [`hsum_hadd`] and the leftovers finish it.
    #[inline(always)]
    unsafe fn dot_lanes(x: *const f32, y: *const f32, whole: usize) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < whole {
            for (j, a) in acc.iter_mut().enumerate() {
                let at = i + 8 * j;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(at)), _mm256_loadu_ps(y.add(at)), *a);
            }
            i += 32;
        }
        _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]))
    }

    /// ggml's horizontal sum of the dot's vector: high half plus low half, then two `hadd`s.
    #[inline(always)]
    unsafe fn hsum_hadd(s: __m256) -> f32 {
        let t = _mm_add_ps(_mm256_extractf128_ps(s, 1), _mm256_castps256_ps128(s));
        let t = _mm_hadd_ps(t, t);
        _mm_cvtss_f32(_mm_hadd_ps(t, t))
    }

    /// The leftovers of a dot past its whole steps, added one by one.
    #[inline(always)]
    unsafe fn leftovers(mut sum: f32, x: *const f32, y: *const f32, whole: usize, n: usize) -> f32 {
        for j in whole..n {
            sum += *x.add(j) * *y.add(j);
        }
        sum
    }

    /// Lane of key `i` of eight in [`hsum_hadd8`]'s result.
    const HADD8_LANE: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

    /// [`hsum_hadd`] of eight vectors at once, each sum paired exactly as there: per two
    /// keys one add of high and low halves, then two rounds of `hadd` across keys. Key `i`'s
    /// sum lands in lane [`HADD8_LANE`]`[i]`.
    #[inline(always)]
    unsafe fn hsum_hadd8(s: &[__m256; 8]) -> __m256 {
        let (ab, cd) = (halves(s[0], s[1]), halves(s[2], s[3]));
        let (ef, gh) = (halves(s[4], s[5]), halves(s[6], s[7]));
        _mm256_hadd_ps(_mm256_hadd_ps(ab, cd), _mm256_hadd_ps(ef, gh))
    }

    /// `[a.hi + a.lo | b.hi + b.lo]`: the first add of [`hsum_hadd`] for two keys.
    #[inline(always)]
    unsafe fn halves(a: __m256, b: __m256) -> __m256 {
        let lo = _mm256_permute2f128_ps::<0x20>(a, b);
        let hi = _mm256_permute2f128_ps::<0x31>(a, b);
        _mm256_add_ps(hi, lo)
    }

    /// The scaled scores of the head's keys, eight keys per horizontal-sum network.
    #[inline(always)]
    unsafe fn score_keys(h: &Head, hd: usize, scores: &mut Vec<f32>) {
        let (q, keys) = (h.q.as_ptr(), h.keys.as_ptr());
        let whole = hd / 32 * 32;
        scores.clear();
        let mut groups = h.rows.chunks_exact(8);
        for group in &mut groups {
            let mut s = [_mm256_setzero_ps(); 8];
            for (v, &r) in s.iter_mut().zip(group) {
                // In bounds: every row offset addresses a whole cache row (the caller's
                // invariant, checked by the slices of `attend_plain` in the tests).
                *v = dot_lanes(q, keys.add(r + h.kv_offset), whole);
            }
            let mut sums = [0f32; 8];
            _mm256_storeu_ps(sums.as_mut_ptr(), hsum_hadd8(&s));
            for (&lane, &r) in HADD8_LANE.iter().zip(group) {
                let k = keys.add(r + h.kv_offset);
                scores.push(finish_score(leftovers(sums[lane], q, k, whole, hd), h));
            }
        }
        for &r in groups.remainder() {
            let k = keys.add(r + h.kv_offset);
            let sum = hsum_hadd(dot_lanes(q, k, whole));
            scores.push(finish_score(leftovers(sum, q, k, whole, hd), h));
        }
    }

    /// The tinyBLAS value sums into `acc` (key `j` in slot `j % 8`, `hd` floats per slot; the
    /// same FMAs per lane as the ymm loop) with the accumulators in registers: 8 slots × 32
    /// dimensions per pass over the keys, where the ymm loop loads and stores its slot per key.
    /// `values` points at the head's offset in the cache; `hd % 32 == 0`.
    #[target_feature(enable = "avx512f")]
    unsafe fn tiny_values_zmm(
        scores: &[f32],
        rows: &[usize],
        values: *const f32,
        hd: usize,
        acc: &mut [f32],
    ) {
        let full = scores.len() / TINY_SLOTS * TINY_SLOTS;
        for d0 in (0..hd).step_by(32) {
            let mut a = [[_mm512_setzero_ps(); 2]; TINY_SLOTS];
            for g in (0..full).step_by(TINY_SLOTS) {
                for (s, a) in a.iter_mut().enumerate() {
                    tiny_key(a, scores[g + s], values.add(rows[g + s] + d0));
                }
            }
            for j in full..scores.len() {
                tiny_key(&mut a[j - full], scores[j], values.add(rows[j] + d0));
            }
            for (s, a) in a.iter().enumerate() {
                let at = acc.as_mut_ptr().add(s * hd + d0);
                _mm512_storeu_ps(at, a[0]);
                _mm512_storeu_ps(at.add(16), a[1]);
            }
        }
    }

    /// One key's 32 dimensions into its slot's two accumulators.
    #[inline(always)]
    unsafe fn tiny_key(a: &mut [__m512; 2], p: f32, v: *const f32) {
        let p = _mm512_set1_ps(p);
        a[0] = _mm512_fmadd_ps(p, _mm512_loadu_ps(v), a[0]);
        a[1] = _mm512_fmadd_ps(p, _mm512_loadu_ps(v.add(16)), a[1]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend(h: &Head, scratch: &mut Scratch, out: &mut [f32]) {
        let hd = out.len();
        let values = h.values.as_ptr();
        let scores = &mut scratch.scores;
        score_keys(h, hd, scores);
        softmax_in_place(scores);
        let slots = match h.order {
            ValueOrder::VecDot => VEC_DOT_SLOTS,
            ValueOrder::Tiny => TINY_SLOTS,
        };
        let acc = &mut scratch.acc;
        acc.clear();
        acc.resize(slots * hd, 0.0);
        if h.order == ValueOrder::Tiny
            && hd.is_multiple_of(32)
            && is_x86_feature_detected!("avx512f")
        {
            tiny_values_zmm(scores, h.rows, values.add(h.kv_offset), hd, acc);
        } else {
            for (j, (&p, &r)) in scores.iter().zip(h.rows).enumerate() {
                let p = _mm256_set1_ps(p);
                let v = values.add(r + h.kv_offset);
                let a = acc.as_mut_ptr().add((j % slots) * hd);
                for d in (0..hd).step_by(8) {
                    let cur = _mm256_loadu_ps(a.add(d));
                    let sum = _mm256_fmadd_ps(p, _mm256_loadu_ps(v.add(d)), cur);
                    _mm256_storeu_ps(a.add(d), sum);
                }
            }
        }
        let a = acc.as_ptr();
        let row = |s: usize, d: usize| _mm256_loadu_ps(a.add(s * hd + d));
        for d in (0..hd).step_by(8) {
            // Lane l of output d is accumulator slot l (tinyBLAS) or the fold of slots
            // l, l + 8, l + 16, l + 24 (vec_dot); then the 8 lanes reduce as ggml does.
            let lane: [__m256; 8] = std::array::from_fn(|l| match h.order {
                ValueOrder::Tiny => row(l, d),
                ValueOrder::VecDot => _mm256_add_ps(
                    _mm256_add_ps(row(l, d), row(l + 16, d)),
                    _mm256_add_ps(row(l + 8, d), row(l + 24, d)),
                ),
            });
            let t: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(lane[4 + i], lane[i]));
            let sum = match h.order {
                // hsum_movehl: (t0 + t2) + (t1 + t3)
                ValueOrder::Tiny => {
                    _mm256_add_ps(_mm256_add_ps(t[0], t[2]), _mm256_add_ps(t[1], t[3]))
                }
                // two hadds: (t0 + t1) + (t2 + t3)
                ValueOrder::VecDot => {
                    _mm256_add_ps(_mm256_add_ps(t[0], t[1]), _mm256_add_ps(t[2], t[3]))
                }
            };
            _mm256_storeu_ps(out.as_mut_ptr().add(d), sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20_000) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn vector_attention_equals_the_scalar_twin_bit_for_bit() {
        for (hd, n_keys) in [(64, 1), (64, 37), (256, 70), (8, 5), (40, 33), (96, 129)] {
            let row = 2 * hd; // two KV heads per cache row
            let keys = values(n_keys * row + 16, 1);
            let vals = values(n_keys * row + 16, 2);
            let q = values(hd, 3);
            // Scrambled rows, as a paged cache hands them out.
            let rows: Vec<usize> = (0..n_keys).map(|i| ((i * 7) % n_keys) * row).collect();
            for order in [ValueOrder::VecDot, ValueOrder::Tiny] {
                for softcap in [None, Some(5.0)] {
                    let h = Head {
                        q: &q,
                        keys: &keys,
                        values: &vals,
                        rows: &rows,
                        kv_offset: hd,
                        scale: 0.3,
                        softcap,
                        order,
                    };
                    let (mut a, mut b) = (vec![0f32; hd], vec![0f32; hd]);
                    attend(&h, &mut Scratch::default(), &mut a);
                    attend_plain(&h, &mut Scratch::default(), &mut b);
                    assert_eq!(a, b, "hd {hd} keys {n_keys} {order:?} {softcap:?}");
                }
            }
        }
    }
}
