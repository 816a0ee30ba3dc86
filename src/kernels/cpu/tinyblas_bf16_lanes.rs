//! The few-rows body of [`super::tinyblas_bf16`]'s GEMM (batched decode): tinyBLAS's BF16
//! order with weight rows in the vector lanes, read straight from the [`PackedBf16`] panel.
//! A zmm load of one column pair brings 16 rows × 2 columns; a shift and a mask make them two
//! f32 vectors. Each output's eight chains (column residue mod 8) live in eight accumulators
//! whose lanes are the 16 rows, and the final `(t0 + t2) + (t1 + t3)` reduction runs across
//! those vectors, lane by lane: every lane sees the FMAs of the ymm kernel in the same order,
//! with no widened copy of the panel (which, for 16 rows, cost as much as the products).
//! One pass handles one residue pair for 6 activation rows × the panel's 32 rows (24
//! accumulators); a chunk of the panel stays in L1 for all passes and activation rows.

use std::arch::x86_64::*;

use super::packed_bf16::PANEL;

/// Activation rows per pass (4 accumulators each: 2 row groups × even/odd residue).
const RN: usize = 6;
/// Weight rows per zmm.
const LANES: usize = 16;
/// Column pairs per chunk: 128 pairs × 32 rows × 4 bytes = 16 KiB of panel in L1.
const CHUNK: usize = 128;
/// Accumulators kept between chunks per activation row: 2 row groups × 8 residues.
const PER_ROW: usize = 2 * 8;

/// Whether this CPU runs the kernel (AVX-512F).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// One panel (`pairs` column pairs × [`PANEL`] rows as packed, `k = 2 * pairs`,
/// `k % 8 == 0`) against the `m` activation rows of `x` (bf16 values): output `(i, r)` for
/// `r < live` goes to `out[i * n + r]`. `res` is the task's scratch for the chains between chunks.
///
/// # Safety
/// [`available`] holds; `panel` holds `pairs * PANEL` words, `x` `m * 2 * pairs` floats;
/// `out` is valid for writes at `i * n + r` for `i < m`, `r < live <= PANEL`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn panel(
    panel: &[u32],
    x: &[f32],
    m: usize,
    live: usize,
    out: *mut f32,
    n: usize,
    res: &mut Vec<__m512>,
) {
    let pairs = panel.len() / PANEL;
    let k = 2 * pairs;
    res.resize(m * PER_ROW, _mm512_setzero_ps());
    for c0 in (0..pairs).step_by(CHUNK) {
        let c1 = pairs.min(c0 + CHUNK);
        for i0 in (0..m).step_by(RN) {
            let rn = RN.min(m - i0);
            for pr in 0..4 {
                let acc = &mut res[i0 * PER_ROW..];
                // SAFETY: the caller's contract; rows `i0..i0 + rn` lie in `x` and `res`.
                unsafe {
                    let xp = x.as_ptr().add(i0 * k);
                    let fetch = i0 == 0;
                    match rn {
                        1 => pass::<1>(panel, xp, k, (c0, c1), pr, fetch, acc),
                        2 => pass::<2>(panel, xp, k, (c0, c1), pr, fetch, acc),
                        3 => pass::<3>(panel, xp, k, (c0, c1), pr, fetch, acc),
                        4 => pass::<4>(panel, xp, k, (c0, c1), pr, fetch, acc),
                        5 => pass::<5>(panel, xp, k, (c0, c1), pr, fetch, acc),
                        _ => pass::<RN>(panel, xp, k, (c0, c1), pr, fetch, acc),
                    }
                }
            }
        }
    }
    for i in 0..m {
        for g in 0..PANEL / LANES {
            let first = g * LANES;
            if first >= live {
                break;
            }
            let v = &res[i * PER_ROW + g * 8..][..8];
            // tinyBLAS's reduction, `t_j = v[j + 4] + v[j]`, across the residue vectors.
            let t0 = _mm512_add_ps(v[4], v[0]);
            let t1 = _mm512_add_ps(v[5], v[1]);
            let t2 = _mm512_add_ps(v[6], v[2]);
            let t3 = _mm512_add_ps(v[7], v[3]);
            let sum = _mm512_add_ps(_mm512_add_ps(t0, t2), _mm512_add_ps(t1, t3));
            let mask: __mmask16 = if live - first >= LANES {
                0xFFFF
            } else {
                (1u16 << (live - first)) - 1
            };
            // SAFETY: the lanes written are columns `first..live` of row `i` (the contract).
            unsafe { _mm512_mask_storeu_ps(out.add(i * n + first), mask, sum) };
        }
    }
}

/// Pairs `q` in `cols` with `q % 4 == pr` (columns of residues `2 pr` and `2 pr + 1`) for `N`
/// activation rows: the chains start at zero on column 0, else continue from `acc`
/// (`acc[i * PER_ROW + g * 8 + residue]`). With `fetch`, the same pairs of the next chunk
/// are prefetched (the four passes of the first activation rows cover it).
#[inline(always)]
unsafe fn pass<const N: usize>(
    panel: &[u32],
    x: *const f32,
    k: usize,
    cols: (usize, usize),
    pr: usize,
    fetch: bool,
    acc: &mut [__m512],
) {
    let (e, o) = (2 * pr, 2 * pr + 1);
    // Plain loops, not `array::from_fn`: its closure is not compiled with AVX-512 and ends
    // up as a call per pass.
    let mut a = [[_mm512_setzero_ps(); 4]; N];
    if cols.0 > 0 {
        for (i, ai) in a.iter_mut().enumerate() {
            let r = &acc[i * PER_ROW..];
            *ai = [r[e], r[o], r[8 + e], r[8 + o]];
        }
    }
    let hi = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let wp = panel.as_ptr();
    let mut q = cols.0 + pr;
    while q < cols.1 {
        if fetch {
            // The next chunk while this one is worked on (a hint: past the end it is ignored).
            let next = wp.wrapping_add((q + CHUNK) * PANEL) as *const i8;
            _mm_prefetch::<_MM_HINT_T1>(next);
            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(64));
        }
        let w0 = _mm512_loadu_si512(wp.add(q * PANEL) as *const _);
        let w1 = _mm512_loadu_si512(wp.add(q * PANEL + LANES) as *const _);
        let e0 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w0));
        let o0 = _mm512_castsi512_ps(_mm512_and_si512(w0, hi));
        let e1 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w1));
        let o1 = _mm512_castsi512_ps(_mm512_and_si512(w1, hi));
        for (i, ai) in a.iter_mut().enumerate() {
            let xe = _mm512_set1_ps(*x.add(i * k + 2 * q));
            let xo = _mm512_set1_ps(*x.add(i * k + 2 * q + 1));
            ai[0] = _mm512_fmadd_ps(e0, xe, ai[0]);
            ai[1] = _mm512_fmadd_ps(o0, xo, ai[1]);
            ai[2] = _mm512_fmadd_ps(e1, xe, ai[2]);
            ai[3] = _mm512_fmadd_ps(o1, xo, ai[3]);
        }
        q += 4;
    }
    for (i, ai) in a.iter().enumerate() {
        let r = &mut acc[i * PER_ROW..];
        r[e] = ai[0];
        r[o] = ai[1];
        r[8 + e] = ai[2];
        r[8 + o] = ai[3];
    }
}

const _: () = assert!(PANEL == 2 * LANES && CHUNK.is_multiple_of(4));
