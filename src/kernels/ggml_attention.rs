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

    /// `ggml_vec_dot_f32` of two rows on AVX2: four accumulators over steps of 32, folded
    /// `(a0 + a2) + (a1 + a3)`, reduced by two `hadd`s; leftovers added one by one.
    #[inline(always)]
    unsafe fn dot(x: *const f32, y: *const f32, n: usize) -> f32 {
        let whole = n / 32 * 32;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < whole {
            for (j, a) in acc.iter_mut().enumerate() {
                let at = i + 8 * j;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(at)), _mm256_loadu_ps(y.add(at)), *a);
            }
            i += 32;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        let t = _mm_add_ps(_mm256_extractf128_ps(s, 1), _mm256_castps256_ps128(s));
        let t = _mm_hadd_ps(t, t);
        let mut sum = _mm_cvtss_f32(_mm_hadd_ps(t, t));
        for j in whole..n {
            sum += *x.add(j) * *y.add(j);
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend(h: &Head, scratch: &mut Scratch, out: &mut [f32]) {
        let hd = out.len();
        let q = h.q.as_ptr();
        let (keys, values) = (h.keys.as_ptr(), h.values.as_ptr());
        let scores = &mut scratch.scores;
        scores.clear();
        scores.extend(h.rows.iter().map(|&r| {
            // In bounds: every row offset addresses a whole cache row (the caller's invariant,
            // checked by the slices of `attend_plain` in the tests).
            finish_score(dot(q, keys.add(r + h.kv_offset), hd), h)
        }));
        softmax_in_place(scores);
        let slots = match h.order {
            ValueOrder::VecDot => VEC_DOT_SLOTS,
            ValueOrder::Tiny => TINY_SLOTS,
        };
        let acc = &mut scratch.acc;
        acc.clear();
        acc.resize(slots * hd, 0.0);
        for (j, (&p, &r)) in scores.iter().zip(h.rows).enumerate() {
            let p = _mm256_set1_ps(p);
            let v = values.add(r + h.kv_offset);
            let a = acc.as_mut_ptr().add((j % slots) * hd);
            for d in (0..hd).step_by(8) {
                let cur = _mm256_loadu_ps(a.add(d));
                _mm256_storeu_ps(a.add(d), _mm256_fmadd_ps(p, _mm256_loadu_ps(v.add(d)), cur));
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
