//! Q8_0 weights against Q8_0 activations with ggml's AVX2 numerics
//! (`ggml_vec_dot_q8_0_q8_0`): per block, 8 integer lanes each summing 4 consecutive products
//! (ggml: `|w|` times `x·sign(w)` by `maddubs`, pairs of those by `madd`), converted and
//! `fma`'d with `dw·dx` in block order; `hsum_float_8` at the end. The integer lanes are exact
//! however they are computed, and every output sees the same float operations in the same
//! order as the plain `dot_rows`, so the result is bitwise its (tested).
//!
//! Speed comes from register tiles of activation rows × weight rows whose accumulators stay in
//! registers. Decode (one to four rows) streams the weights from memory once: the tiles
//! prefetch linearly ahead, read each weight scale through the f16 table and use ggml's
//! `sign`/`maddubs` lanes. Prefill (five rows and more) is compute-bound and works from cache:
//! each task widens its weights to `i16` once (scales to f32, quants to two `madd`-ready
//! halves), each tile of four rows × two weight rows multiplies the scales of all its (row,
//! weight row, block) triples in a vector pre-pass, and the inner loop is five vector
//! operations per block pair.

// Register tiles index accumulators by (row, weight row): index loops read clearest.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::f16_table;
use crate::kernels::ggml_math::avx2::hsum_movehl8;

/// Bytes per Q8_0 block: an f16 scale, then 32 quants.
pub(super) const BLOCK: usize = 34;

/// Activation rows per prefill tile.
const GROUP: usize = 4;

/// Weight rows per prefill tile of a full group (4 × 2 accumulators leave registers for the
/// operands; 4 × 3 spills).
const PANEL_COLS: usize = 2;

/// The widest prefill tile (the last group's one to three rows take wider tiles).
const PANEL_COLS_MAX: usize = 4;

/// Weight rows per decode tile.
const STREAM_COLS: usize = 4;

/// How far ahead of the weights being read decode prefetches (the hardware prefetcher does not
/// follow four interleaved 1-2 KiB rows on its own; measured best of 1-8 KiB).
const PREFETCH_AHEAD: usize = 4096;

/// Output columns per parallel task: a multiple of the tile widths, about 256 K multiply-adds
/// each, at least four tasks per thread when there are enough columns.
pub(super) fn task_columns(m: usize, k: usize, n: usize) -> usize {
    let by_work = 262_144 / (m * k).max(1);
    let by_threads = n / (4 * rayon::current_num_threads());
    by_work.min(by_threads).clamp(48, 512) / 48 * 48
}

/// The row-major `[m, n]` output, written by disjoint column ranges from parallel tasks.
#[derive(Clone, Copy)]
struct Out(*mut f32);

// SAFETY: every task writes only its own columns (see `for_each_columns`), so the writes never
// overlap.
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

impl Out {
    /// Where column `first` of row 0 is (a whole-value method, so closures capture all of
    /// `Out` and not its bare, non-`Sync` pointer).
    fn column(self, first: usize) -> *mut f32 {
        self.0.wrapping_add(first)
    }
}

/// Runs `task(first, cols, out)` in parallel over the output's column ranges of `cols` (the
/// last one shorter); `out` points at column `first` of row 0 of the row-major `[m, n]`
/// `output`, and the task must write only columns `first..first + cols` of each row.
pub(super) fn for_each_columns(
    output: &mut [f32],
    n: usize,
    cols: usize,
    task: impl Fn(usize, usize, *mut f32) + Sync,
) {
    let o = Out(output.as_mut_ptr());
    (0..n.div_ceil(cols)).into_par_iter().for_each(|t| {
        let first = t * cols;
        task(first, cols.min(n - first), o.column(first))
    });
}

/// `x · Wᵀ` for Q8_0 weights `w` (`n` rows of `k / 32` blocks) and `x: [m, k]`, `k` a
/// multiple of 32; returns `[m, n]`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w.len() == n * k / 32 * 34` and `x.len() == m * k`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul(w: &[u8], x: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    let acts = quantize(x, m, k);
    for_each_columns(&mut out, n, task_columns(m, k, n), |first, cols, out| {
        let task = Task {
            w: &w[first * acts.kb * BLOCK..],
            acts: &acts,
            cols,
            out,
            n,
        };
        // SAFETY: the caller checked the CPU features; `task.w` holds `cols` rows and the
        // task writes only columns `first..first + cols` of the output.
        unsafe { task.run() }
    });
    out
}

/// Activations quantized like ggml's x86 `quantize_row_q8_0`, laid out for the tiles: each
/// block's 32 quants in one aligned vector; each block's scale (the f16 ggml stores, widened)
/// for decode broadcast to a vector in `d8` (row-major), for prefill interleaved by groups of
/// [`GROUP`] rows in `d4` (`[group][block][row]`, zero-padded).
struct Acts {
    qs: Vec<__m256i>,
    wide: Vec<__m256i>,
    d8: Vec<__m256>,
    d4: Vec<f32>,
    m: usize,
    kb: usize,
}

/// Quantizes `m` rows of `k` activations, rows in parallel when there are many.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize(x: &[f32], m: usize, k: usize) -> Acts {
    let kb = k / 32;
    let mut qs = vec![_mm256_setzero_si256(); m * kb];
    let mut d = vec![0f32; m * kb];
    let rows = |(x, (qs, d)): (&[f32], (&mut [__m256i], &mut [f32]))| {
        // SAFETY: the caller checked the CPU features; the slices cover the same blocks.
        unsafe { quantize_blocks(x, qs, d) }
    };
    let chunk = GROUP * kb;
    if m >= 16 {
        x.par_chunks(GROUP * k)
            .zip(qs.par_chunks_mut(chunk).zip(d.par_chunks_mut(chunk)))
            .for_each(rows);
    } else {
        x.chunks(GROUP * k)
            .zip(qs.chunks_mut(chunk).zip(d.chunks_mut(chunk)))
            .for_each(rows);
    }
    if m <= GROUP {
        let d8 = d.iter().map(|&v| _mm256_set1_ps(v)).collect();
        return Acts {
            qs,
            wide: Vec::new(),
            d8,
            d4: Vec::new(),
            m,
            kb,
        };
    }
    let mut d4 = vec![0f32; m.div_ceil(GROUP) * kb * GROUP];
    for (i, row) in d.chunks_exact(kb).enumerate() {
        for (b, &v) in row.iter().enumerate() {
            d4[((i / GROUP) * kb + b) * GROUP + i % GROUP] = v;
        }
    }
    let mut wide = vec![_mm256_setzero_si256(); 2 * m * kb];
    wide.par_chunks_mut(2 * chunk)
        .zip(qs.par_chunks(chunk))
        // SAFETY: the caller checked the CPU features.
        .for_each(|(w, q)| unsafe { widen_blocks(q, w) });
    Acts {
        qs,
        wide,
        d8: Vec::new(),
        d4,
        m,
        kb,
    }
}

/// Quantizes consecutive 32-value blocks of `x` into `qs` and `d`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_blocks(x: &[f32], qs: &mut [__m256i], d: &mut [f32]) {
    for ((x, q), d) in x.chunks_exact(32).zip(qs).zip(d) {
        (*q, *d) = quantize_block(x);
    }
}

/// [`widen`] for consecutive blocks: `q[b]` into `w[2b]`, `w[2b + 1]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_blocks(q: &[__m256i], w: &mut [__m256i]) {
    for (&q, w) in q.iter().zip(w.chunks_exact_mut(2)) {
        (w[0], w[1]) = widen(q);
    }
}

/// A block's 32 quants as two vectors of 16 `i16`: quants `4l, 4l + 1` (l = 0..8) and quants
/// `4l + 2, 4l + 3`, so `madd` of each with a weight block widened alike gives, summed, ggml's
/// 8 lanes of 4 consecutive products (exact integers either way).
#[inline(always)]
unsafe fn widen(q: __m256i) -> (__m256i, __m256i) {
    let pairs = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7,
        10, 11, 14, 15,
    );
    // Per 128-bit lane: the even pairs, then the odd pairs; then the even halves together.
    let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(q, pairs));
    (
        _mm256_cvtepi8_epi16(_mm256_castsi256_si128(p)),
        _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(p)),
    )
}

/// ggml's AVX2 `quantize_row_q8_0` for one block, operation for operation: the quants and
/// the scale (rounded through f16 as ggml stores it).
#[inline(always)]
pub(super) unsafe fn quantize_block(x: &[f32]) -> (__m256i, f32) {
    let p = x.as_ptr();
    let v = [0, 8, 16, 24].map(|at| _mm256_loadu_ps(p.add(at)));
    let sign = _mm256_set1_ps(-0.0);
    let max = v[1..].iter().fold(_mm256_andnot_ps(sign, v[0]), |m, &vi| {
        _mm256_max_ps(m, _mm256_andnot_ps(sign, vi))
    });
    let mut max4 = _mm_max_ps(_mm256_extractf128_ps(max, 1), _mm256_castps256_ps128(max));
    max4 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
    max4 = _mm_max_ss(max4, _mm_movehdup_ps(max4));
    let max = _mm_cvtss_f32(max4);
    let d = _mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(
        max / 127.0,
    )));
    let id = _mm256_set1_ps(if max != 0.0 { 127.0 / max } else { 0.0 });
    let q = v.map(|vi| {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(vi, id),
        );
        _mm256_cvtps_epi32(r)
    });
    let q16 = [
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    ];
    let q8 = _mm256_packs_epi16(q16[0], q16[1]);
    let q8 = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    (q8, _mm_cvtss_f32(d))
}

/// One task: weight rows `first..first + cols` (starting at `w`) against every activation
/// row, into columns `first..` of the output (`out` points at column `first` of row 0).
struct Task<'a> {
    w: &'a [u8],
    acts: &'a Acts,
    cols: usize,
    out: *mut f32,
    n: usize,
}

impl Task<'_> {
    /// Decode shapes stream the weights; prefill shapes tile them from cache.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run(&self) {
        match self.acts.m {
            1 => self.stream::<1, STREAM_COLS>(0),
            2 => self.stream::<2, STREAM_COLS>(0),
            3 => self.stream::<3, 3>(0),
            4 => self.stream::<4, 2>(0),
            _ => self.panels(),
        }
    }

    /// `RM` (one or two) rows against the weight rows, [`STREAM_COLS`] a tile.
    #[inline(always)]
    unsafe fn stream<const RM: usize, const RN: usize>(&self, r: usize) {
        let mut c = 0;
        while c + RN <= self.cols {
            self.stream_tile::<RM, RN>(r, c);
            c += RN;
        }
        while c < self.cols {
            self.stream_tile::<RM, 1>(r, c);
            c += 1;
        }
    }

    /// Rows `0..RM` against weight rows `c..c + RN`, prefetching [`PREFETCH_AHEAD`] bytes
    /// ahead of the tile's weights (its rows are contiguous). The weight scale comes from the
    /// f16 table (a scalar load and a broadcast, no conversion instructions).
    #[inline(always)]
    unsafe fn stream_tile<const RM: usize, const RN: usize>(&self, r: usize, c: usize) {
        let kb = self.acts.kb;
        let wstride = kb * BLOCK;
        let w = self.w.as_ptr().add(c * wstride);
        let xq = self.acts.qs.as_ptr().add(r * kb);
        let xd = self.acts.d8.as_ptr().add(r * kb);
        let table = f16_table().as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); RN]; RM];
        let step = RN * BLOCK;
        // At least a whole tile ahead, so the next tile's rows are all on their way.
        let ahead = w.wrapping_add(PREFETCH_AHEAD.max(RN * wstride));
        for b in 0..kb {
            let p = ahead.wrapping_add(b * step);
            for line in (0..step).step_by(64) {
                // Prefetching past the matrix is harmless (never faults), hence wrapping.
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line) as *const i8);
            }
            for j in 0..RN {
                let wb = w.add(j * wstride + b * BLOCK);
                let dw =
                    _mm256_broadcast_ss(&*table.add((wb as *const u16).read_unaligned() as usize));
                let qw = _mm256_loadu_si256(wb.add(2) as *const __m256i);
                let aw = _mm256_sign_epi8(qw, qw);
                for i in 0..RM {
                    let pairs = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(*xq.add(i * kb + b), qw));
                    let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    let d = _mm256_mul_ps(dw, *xd.add(i * kb + b));
                    acc[i][j] = _mm256_fmadd_ps(d, lanes, acc[i][j]);
                }
            }
        }
        self.store(r, c, &acc);
    }

    /// Every row, [`GROUP`] rows by [`PANEL_COLS`] weight rows a tile, the task's weight rows
    /// (a few dozen KiB) staying in L2 across the row groups.
    #[inline(always)]
    unsafe fn panels(&self) {
        let kb = self.acts.kb;
        // The task's weights widened once (see `widen_rows`), by the first group's tiles just
        // before they use them, so reading them from memory overlaps that group's arithmetic.
        let mut dw = vec![0f32; self.cols * kb * GROUP];
        let mut ww = vec![_mm256_setzero_si256(); 2 * self.cols * kb];
        let mut ds = vec![0f32; PANEL_COLS_MAX * kb * GROUP];
        let m = self.acts.m;
        self.panel_row::<GROUP, PANEL_COLS, true>(0, &mut dw, &mut ww, &mut ds);
        for r in (GROUP..m).step_by(GROUP) {
            match m - r {
                1 => self.panel_row::<1, PANEL_COLS_MAX, false>(r, &mut dw, &mut ww, &mut ds),
                2 => self.panel_row::<2, PANEL_COLS_MAX, false>(r, &mut dw, &mut ww, &mut ds),
                3 => self.panel_row::<3, 3, false>(r, &mut dw, &mut ww, &mut ds),
                _ => self.panel_row::<GROUP, PANEL_COLS, false>(r, &mut dw, &mut ww, &mut ds),
            }
        }
    }

    /// Rows `r..r + RM` against every weight row of the task; with `WIDEN`, each tile's weight
    /// rows are widened first.
    #[inline(always)]
    unsafe fn panel_row<const RM: usize, const RN: usize, const WIDEN: bool>(
        &self,
        r: usize,
        dw: &mut [f32],
        ww: &mut [__m256i],
        ds: &mut [f32],
    ) {
        let mut c = 0;
        while c < self.cols {
            let rn = if c + RN <= self.cols { RN } else { 1 };
            if WIDEN {
                self.widen_rows(c, rn, dw, ww);
            }
            if rn == RN {
                self.panel_tile::<RM, RN>(r, c, dw, ww, ds);
            } else {
                self.panel_tile::<RM, 1>(r, c, dw, ww, ds);
            }
            c += rn;
        }
    }

    /// Weight rows `c..c + rows` widened: scales to f32 into `dw`, each repeated for the four
    /// rows of a group so a tile's products of scales are one vector multiply per block, and
    /// quants to `i16` halves ([`widen`]) into `ww`. This is the first touch of the weights:
    /// it prefetches the next rows' (the tiles then find the widened copy, a few dozen to
    /// 200 KiB, in L2).
    #[inline(always)]
    unsafe fn widen_rows(&self, c: usize, rows: usize, dw: &mut [f32], ww: &mut [__m256i]) {
        let kb = self.acts.kb;
        let table = f16_table();
        let raw = &self.w[c * kb * BLOCK..(c + rows) * kb * BLOCK];
        let ahead = PREFETCH_AHEAD.max(rows * kb * BLOCK);
        for ((s, wb), ww) in dw[c * kb * GROUP..]
            .chunks_exact_mut(GROUP)
            .zip(raw.chunks_exact(BLOCK))
            .zip(ww[c * kb * 2..].chunks_exact_mut(2))
        {
            _mm_prefetch::<_MM_HINT_T0>(wb.as_ptr().wrapping_add(ahead) as *const i8);
            s.fill(table[u16::from_le_bytes([wb[0], wb[1]]) as usize]);
            (ww[0], ww[1]) = widen(_mm256_loadu_si256(wb.as_ptr().add(2) as *const __m256i));
        }
    }

    /// Rows `r..r + RM` (within one group) against weight rows `c..c + RN`: the products of
    /// scales into `ds` (`[weight row][block][row]`), then `RM·RN` accumulators over all
    /// blocks of the widened quants (`ww`, `acts.wide`: see [`widen`]), per block pair two
    /// `madd`, an add, the conversion and the `fma` (one operation fewer than the
    /// `sign`/`maddubs` form, whose `sign`, `maddubs` and `madd` also contend for the same two
    /// execution pipes on Zen 3).
    #[inline(always)]
    unsafe fn panel_tile<const RM: usize, const RN: usize>(
        &self,
        r: usize,
        c: usize,
        dw: &[f32],
        ww: &[__m256i],
        ds: &mut [f32],
    ) {
        let kb = self.acts.kb;
        let span = kb * GROUP;
        let dx = &self.acts.d4[r * kb..r * kb + span];
        for (dsj, dwj) in ds
            .chunks_exact_mut(span)
            .zip(dw[c * span..].chunks_exact(span))
            .take(RN)
        {
            for ((p, a), b) in dsj.iter_mut().zip(dx).zip(dwj) {
                *p = a * b;
            }
        }
        let w = ww.as_ptr().add(c * kb * 2);
        let x = self.acts.wide.as_ptr().add(r * kb * 2);
        let ds = ds.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); RN]; RM];
        for b in 0..kb {
            for j in 0..RN {
                let wl = *w.add((j * kb + b) * 2);
                let wh = *w.add((j * kb + b) * 2 + 1);
                for i in 0..RM {
                    // Volatile reads keep LLVM from holding all four rows' blocks in registers
                    // across the weight rows, which spills accumulators instead.
                    let xl = std::ptr::read_volatile(x.add((i * kb + b) * 2));
                    let xh = std::ptr::read_volatile(x.add((i * kb + b) * 2 + 1));
                    let sum =
                        _mm256_add_epi32(_mm256_madd_epi16(wl, xl), _mm256_madd_epi16(wh, xh));
                    let lanes = _mm256_cvtepi32_ps(sum);
                    let d = _mm256_broadcast_ss(&*ds.add((j * kb + b) * GROUP + i));
                    acc[i][j] = _mm256_fmadd_ps(d, lanes, acc[i][j]);
                }
            }
        }
        self.store(r, c, &acc);
    }

    /// `hsum_float_8` of each accumulator into output rows `r..`, columns `c..`.
    #[inline(always)]
    unsafe fn store<const RM: usize, const RN: usize>(
        &self,
        r: usize,
        c: usize,
        acc: &[[__m256; RN]; RM],
    ) {
        for (i, row) in acc.iter().enumerate() {
            for (j, &a) in row.iter().enumerate() {
                *self.out.add((r + i) * self.n + c + j) = hsum_movehl8(a);
            }
        }
    }
}
