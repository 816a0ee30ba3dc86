//! The AVX-512 body of [`super::tinyblas_bf16`]'s GEMM, bit for bit its AVX2 kernel: one zmm
//! holds two outputs' 8-lane accumulators (weight row `j` in the low 256 bits, `j + 1` in the
//! high), so every lane sees the same FMAs in the same order as in a ymm, at half the
//! instructions. For that the task widens its panel with the two rows of each pair
//! interleaved per 8 columns (one 512-bit load feeds both), and each activation row's 8 values
//! are broadcast to both halves. A 4 pairs × 6 rows register tile holds 24 accumulators and
//! does 24 FMAs per 4 + 6 loads; cache blocking (see [`KC`], [`MB`]) keeps its weights in L1.

use std::arch::x86_64::*;

use super::packed_bf16::PANEL;
use crate::kernels::ggml_math::avx2::hsum_movehl8;

/// Weight row pairs per register tile (a column pass of them stays in L1).
const RP: usize = 4;
/// Activation rows per register tile (they stream from L2).
const RN: usize = 6;
/// Weight rows per register tile.
const RW: usize = 2 * RP;

/// Whether this CPU runs the kernel (AVX-512F/DQ for the zmm FMAs and 256-bit broadcasts).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// Where row `r`, columns `c..c + 8` (`c % 8 == 0`) land in a widened panel: pair `r / 2`
/// takes `2k` floats, and per 8 columns the even row's 8 values precede the odd row's.
#[inline(always)]
pub(super) fn paired_offset(r: usize, c: usize, k: usize) -> usize {
    (r / 2) * 2 * k + 2 * c + (r % 2) * 8
}

/// Columns per pass of a weight tile: its 8 rows × 768 columns (24 KiB) stay in L1 while
/// the activation rows stream past them.
const KC: usize = 768;
/// Activation rows per block: a block (96 rows, 768 KiB at k = 2048) stays in L2 while the
/// panel's four weight tiles pass over it, where all 512 rows of a prefill would not.
const MB: usize = 16 * RN;

/// One tile's accumulators between column passes.
pub(super) type Acc = [[__m512; RP]; RN];

/// One widened panel (`PANEL` rows in [`paired_offset`] order) against the `m` activation rows
/// of `x` (`k` each, bf16 values); output `(i, j)` for `j < live` goes to `store`. Each lane's
/// FMA chain still runs over `k` in order: between column passes it waits in `accs`.
///
/// # Safety
/// [`available`] holds; `rows` holds `PANEL * k` floats, `x` holds `m * k`; `k % 8 == 0`.
pub(super) unsafe fn panel(
    rows: &[f32],
    x: &[f32],
    m: usize,
    k: usize,
    live: usize,
    accs: &mut Vec<Acc>,
    mut store: impl FnMut(usize, usize, f32),
) {
    let mut vals = [[0f32; RW]; RN];
    // The task's scratch, zeroed once: every chain is written before it is read, and
    // zeroing 24 KiB per panel showed as 4 % of a prefill in memset.
    if accs.len() < MB / RN {
        accs.resize(MB / RN, [[_mm512_setzero_ps(); RP]; RN]);
    }
    for b0 in (0..m).step_by(MB) {
        let b1 = m.min(b0 + MB);
        for j0 in (0..live).step_by(RW) {
            for c0 in (0..k).step_by(KC) {
                let c1 = k.min(c0 + KC);
                for (acc, i0) in accs.iter_mut().zip((b0..b1).step_by(RN)) {
                    let rn = RN.min(b1 - i0);
                    // SAFETY: the caller's contract; `j0 + RW <= PANEL` so the tile's pairs
                    // lie in `rows`, rows `i0..i0 + rn` lie in `x`, `c1 <= k`.
                    unsafe {
                        let (w, xp) = (rows[j0 * k..].as_ptr(), x[i0 * k..].as_ptr());
                        tile(rn, w, xp, k, (c0, c1), acc, &mut vals)
                    };
                    if c1 < k {
                        continue;
                    }
                    for (i, row) in vals.iter().enumerate().take(rn) {
                        for (r, v) in row.iter().enumerate().take(RW.min(live - j0)) {
                            store(i0 + i, j0 + r, *v);
                        }
                    }
                }
            }
        }
    }
}

/// Columns `cols.0..cols.1` of `N` activation rows against the tile's pairs: the chains
/// start at zero on column 0 and continue from `acc` after it; at column `k` they are reduced
/// into `out`, before it saved to `acc`.
#[inline(always)]
unsafe fn tile_n<const N: usize>(
    w: *const f32,
    x: *const f32,
    k: usize,
    cols: (usize, usize),
    io: &mut Acc,
    out: &mut [[f32; RW]; RN],
) {
    let mut acc: [[__m512; RP]; N] = if cols.0 == 0 {
        [[_mm512_setzero_ps(); RP]; N]
    } else {
        std::array::from_fn(|i| io[i])
    };
    let mut c = cols.0;
    while c < cols.1 {
        let wv: [__m512; RP] = std::array::from_fn(|p| _mm512_loadu_ps(w.add(p * 2 * k + 2 * c)));
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x.add(i * k + c)));
            for p in 0..RP {
                a[p] = _mm512_fmadd_ps(wv[p], xv, a[p]);
            }
        }
        c += 8;
    }
    if cols.1 < k {
        io[..N].copy_from_slice(&acc);
        return;
    }
    for i in 0..N {
        for p in 0..RP {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[i][p])));
            out[i][2 * p] = hsum_movehl8(_mm512_castps512_ps256(acc[i][p]));
            out[i][2 * p + 1] = hsum_movehl8(hi);
        }
    }
}

/// `rn` activation rows (1..=RN) from `x` against `RP` interleaved weight pairs from `w`.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn tile(
    rn: usize,
    w: *const f32,
    x: *const f32,
    k: usize,
    cols: (usize, usize),
    io: &mut Acc,
    out: &mut [[f32; RW]; RN],
) {
    match rn {
        1 => tile_n::<1>(w, x, k, cols, io, out),
        2 => tile_n::<2>(w, x, k, cols, io, out),
        3 => tile_n::<3>(w, x, k, cols, io, out),
        4 => tile_n::<4>(w, x, k, cols, io, out),
        5 => tile_n::<5>(w, x, k, cols, io, out),
        _ => tile_n::<RN>(w, x, k, cols, io, out),
    }
}

const _: () = assert!(PANEL.is_multiple_of(RW) && KC.is_multiple_of(8));
