//! Q8_0 prefill (five activation rows and more) with AVX-512 VNNI, bitwise the AVX2 kernel
//! (`q8_0_avx2`) and the plain `dot_rows` (tested).
//!
//! ggml's numerics per output: per block, 8 integer lanes each summing 4 consecutive products,
//! converted to f32 and `fma`'d with `dw·dx` into 8 float lanes, block after block;
//! `hsum_float_8` at the end. Blocks of one output must stay sequential, so a 16-lane vector
//! holds two outputs side by side: two weight rows interleaved by lane (even lanes the first
//! row's 8 lanes, odd lanes the second's), against one activation block with each 4-quant
//! group doubled. Per block and pair that is one `vpdpbusd`, one subtraction, one `fma`:
//!
//! - `vpdpbusd` multiplies unsigned by signed bytes, so the weights are stored `w + 128` and
//!   the activations keep their sign; the excess `128·Σx` comes off through the accumulator
//!   the instruction starts from, precomputed per activation block as `M − 128·Σ₄x`.
//! - `M` is `1.5·2²³` as integer bits (`0x4B40_0000`): a lane `v` (|v| ≤ 2¹⁶) ends as the
//!   bits of the float `1.5·2²³ + v`, exactly, so subtracting `1.5·2²³` gives `v` as an f32,
//!   exactly what the conversion gives; one operation on either port instead of a conversion
//!   on port 0 (which `vpdpbusd` already occupies).
//! - The scale products `dw·dx` of a tile are one vector pre-pass; the inner loop broadcasts
//!   the pair of them (64 bits) straight from memory.
//!
//! Decode shapes (one to four rows) stream the weights from memory and stay with the AVX2
//! kernel (memory-bound either way).

// Register tiles index accumulators by (row, weight-row pair): index loops read clearest.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::f16_table;
use super::q8_0_avx2::{for_each_columns, quantize_block, task_columns, BLOCK};
use crate::kernels::ggml_math::avx2::hsum_movehl8;

/// Activation rows per tile (and per group of the scale layout).
const GROUP: usize = 4;

/// Weight-row pairs per tile: 4 × 4 accumulators, 4 weight vectors and the temporaries fit
/// the 32 vector registers.
const PAIRS: usize = 4;

/// `1.5·2²³` as f32 bits: see the module comment.
const MAGIC: i32 = 0x4B40_0000;

/// How far ahead of the weights being repacked the first row group prefetches.
const PREFETCH_AHEAD: usize = 4096;

/// Whether this CPU runs [`matmul`].
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// `x · Wᵀ` for Q8_0 weights `w` (`n` rows of `k / 32` blocks) and `x: [m, k]`, `k` a
/// multiple of 32, `m` at least 5 (fewer work but waste most of each tile); returns `[m, n]`.
///
/// # Safety
/// [`available`]; `w.len() == n * k / 32 * 34` and `x.len() == m * k`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn matmul(w: &[u8], x: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    let acts = quantize(x, m, k);
    // Wider tasks than the AVX2 kernel's at many rows: each task re-reads every row group's
    // activations, and its repacked weights stay in L2 either way.
    let cols = if m >= 64 {
        (n / (4 * rayon::current_num_threads())).clamp(48, 192) / 48 * 48
    } else {
        task_columns(m, k, n)
    };
    for_each_columns(&mut out, n, cols, |first, cols, out| {
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

/// Activations quantized like ggml's x86 `quantize_row_q8_0`, laid out for the tiles by
/// groups of [`GROUP`] rows (zero-padded), so that a tile reads everything it needs of a block
/// through one pointer: `xq` (`[group][block][row][2]`) holds each block's quants with every
/// group of 4 doubled, then the accumulator start `M − 128·Σ₄x` alike; `dx`
/// (`[group][block][row][2]`) the scales (the f16 ggml stores, widened), each doubled.
struct Acts {
    xq: Vec<__m512i>,
    dx: Vec<f32>,
    kb: usize,
    m: usize,
}

/// Quantizes `m` rows of `k` activations, groups of rows in parallel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn quantize(x: &[f32], m: usize, k: usize) -> Acts {
    let kb = k / 32;
    let groups = m.div_ceil(GROUP);
    let mut xq = vec![_mm512_setzero_si512(); groups * kb * GROUP * 2];
    let mut dx = vec![0f32; groups * kb * GROUP * 2];
    let chunk = kb * GROUP * 2;
    x.par_chunks(GROUP * k)
        .zip(xq.par_chunks_mut(chunk))
        .zip(dx.par_chunks_mut(chunk))
        .for_each(|((x, xq), dx)| {
            // SAFETY: the caller checked the CPU features; the slices cover the same group.
            unsafe { quantize_group(x, kb, xq, dx) }
        });
    Acts { xq, dx, kb, m }
}

/// [`quantize`] for one group of up to [`GROUP`] rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn quantize_group(x: &[f32], kb: usize, xq: &mut [__m512i], dx: &mut [f32]) {
    let double = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    let c128 = _mm512_set1_epi8(-128);
    let magic = _mm512_set1_epi32(MAGIC);
    for (i, row) in x.chunks_exact(kb * 32).enumerate() {
        for (b, blk) in row.chunks_exact(32).enumerate() {
            let (q, d) = quantize_block(blk);
            let q = _mm512_permutexvar_epi32(double, _mm512_castsi256_si512(q));
            let at = (b * GROUP + i) * 2;
            xq[at] = q;
            // `c128` read unsigned is 128 in every byte.
            let excess = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, q);
            xq[at + 1] = _mm512_sub_epi32(magic, excess);
            dx[at] = d;
            dx[at + 1] = d;
        }
    }
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

/// The task's weights repacked once by tiles of [`PAIRS`] pairs of rows (an odd last row
/// pairs with zeros, a short last tile is zero-padded): `wq` (`[tile][block][pair]`) the
/// quants plus 128, the pair's interleaved by 4-byte group; `dw` (`[tile][block][pair][row]
/// [2]`) the pair's scales repeated for the rows of a group; `ds` a tile's products of scales
/// for one row group, laid out like `dw`.
struct Packed {
    wq: Vec<__m512i>,
    dw: Vec<__m512>,
    ds: Vec<__m512>,
}

/// `f32`s of `dw` or `ds` per block of a tile.
const TILE_SCALES: usize = PAIRS * GROUP * 2;

const _: () = assert!(
    GROUP == 4,
    "`repack` stores a pair's scales for a group as one 8-float vector"
);

impl Task<'_> {
    /// Every row group against every tile of weight-row pairs; the first group repacks each
    /// tile's weights just before using them, so reading them from memory overlaps its
    /// arithmetic, and the later groups find them in L2.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn run(&self) {
        let kb = self.acts.kb;
        let tiles = self.cols.div_ceil(2 * PAIRS);
        let mut p = Packed {
            wq: vec![_mm512_setzero_si512(); tiles * kb * PAIRS],
            dw: vec![_mm512_setzero_ps(); tiles * kb * TILE_SCALES / 16],
            ds: vec![_mm512_setzero_ps(); kb * TILE_SCALES / 16],
        };
        let m = self.acts.m;
        for r in (0..m).step_by(GROUP) {
            for t in 0..tiles {
                let rp = PAIRS.min(self.cols.div_ceil(2) - t * PAIRS);
                if r == 0 {
                    self.repack(t, rp, &mut p);
                }
                match m - r {
                    1 => self.tile_rows::<1>(r, t, rp, &mut p),
                    2 => self.tile_rows::<2>(r, t, rp, &mut p),
                    3 => self.tile_rows::<3>(r, t, rp, &mut p),
                    _ => self.tile_rows::<GROUP>(r, t, rp, &mut p),
                }
            }
        }
    }

    /// Tile `t`'s `rp` weight-row pairs into `p` (see [`Packed`]), prefetching the raw rows
    /// ahead.
    #[inline(always)]
    unsafe fn repack(&self, t: usize, rp: usize, p: &mut Packed) {
        let kb = self.acts.kb;
        let table = f16_table();
        let interleave = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let c128 = _mm512_set1_epi8(-128);
        let stride = kb * BLOCK;
        let ahead = PREFETCH_AHEAD.max(2 * rp * stride);
        let dw = p.dw.as_mut_ptr() as *mut f32;
        for j in 0..rp {
            let j0 = 2 * (t * PAIRS + j);
            let second = j0 + 1 < self.cols;
            let r0 = &self.w[j0 * stride..(j0 + 1) * stride];
            let r1 = if second {
                &self.w[(j0 + 1) * stride..(j0 + 2) * stride]
            } else {
                r0
            };
            for b in 0..kb {
                let (b0, b1) = (&r0[b * BLOCK..], &r1[b * BLOCK..]);
                for row in [b0, b1] {
                    _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(ahead) as *const i8);
                }
                let d0 = table[u16::from_le_bytes([b0[0], b0[1]]) as usize];
                let d1 = if second {
                    table[u16::from_le_bytes([b1[0], b1[1]]) as usize]
                } else {
                    0.0
                };
                let q0 = _mm256_loadu_si256(b0.as_ptr().add(2) as *const __m256i);
                let q1 = if second {
                    _mm256_loadu_si256(b1.as_ptr().add(2) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                let v = _mm512_permutex2var_epi32(
                    _mm512_castsi256_si512(q0),
                    interleave,
                    _mm512_castsi256_si512(q1),
                );
                p.wq[(t * kb + b) * PAIRS + j] = _mm512_xor_si512(v, c128);
                let pair = _mm_unpacklo_ps(_mm_set_ss(d0), _mm_set_ss(d1));
                let at = (t * kb + b) * TILE_SCALES + j * GROUP * 2;
                _mm256_storeu_ps(
                    dw.add(at),
                    _mm256_castpd_ps(_mm256_broadcastsd_pd(_mm_castps_pd(pair))),
                );
            }
        }
    }

    /// [`Task::tile`] with `RM` rows for `rp` (one to [`PAIRS`]) pairs.
    #[inline(always)]
    unsafe fn tile_rows<const RM: usize>(&self, r: usize, t: usize, rp: usize, p: &mut Packed) {
        match rp {
            1 => self.tile::<RM, 1>(r, t, p),
            2 => self.tile::<RM, 2>(r, t, p),
            3 => self.tile::<RM, 3>(r, t, p),
            _ => self.tile::<RM, PAIRS>(r, t, p),
        }
    }

    /// Rows `r..r + RM` (one group) against tile `t`'s first `RP` pairs: the products of
    /// scales into `p.ds`, then `RM·RP` accumulators over all blocks.
    #[inline(always)]
    unsafe fn tile<const RM: usize, const RP: usize>(&self, r: usize, t: usize, p: &mut Packed) {
        let kb = self.acts.kb;
        let g = r / GROUP;
        // Per block, the group's 8 doubled scales against each pair's: two 512-bit products.
        let dx = self.acts.dx.as_ptr().add(g * kb * GROUP * 2);
        let dw = p.dw.as_ptr().add(t * kb * TILE_SCALES / 16);
        let ds = p.ds.as_mut_ptr();
        for b in 0..kb {
            let x = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(
                dx.add(b * GROUP * 2) as *const f64,
            )));
            for h in 0..TILE_SCALES / 16 {
                *ds.add(b * TILE_SCALES / 16 + h) =
                    _mm512_mul_ps(x, *dw.add(b * TILE_SCALES / 16 + h));
            }
        }
        let w = p.wq.as_ptr().add(t * kb * PAIRS);
        let xq = self.acts.xq.as_ptr().add(g * kb * GROUP * 2);
        let ds = p.ds.as_ptr() as *const f32;
        let magic = _mm512_set1_ps(f32::from_bits(MAGIC as u32));
        let mut acc = [[_mm512_setzero_ps(); RP]; RM];
        for b in 0..kb {
            let wv: [__m512i; RP] = std::array::from_fn(|j| *w.add(b * PAIRS + j));
            for i in 0..RM {
                let x = *xq.add((b * GROUP + i) * 2);
                let s0 = *xq.add((b * GROUP + i) * 2 + 1);
                for j in 0..RP {
                    let v = _mm512_dpbusd_epi32(s0, wv[j], x);
                    let lanes = _mm512_sub_ps(_mm512_castsi512_ps(v), magic);
                    let at = b * TILE_SCALES + (j * GROUP + i) * 2;
                    let pair = (ds.add(at) as *const f64).read_unaligned();
                    let d = _mm512_castpd_ps(_mm512_set1_pd(pair));
                    acc[i][j] = _mm512_fmadd_ps(d, lanes, acc[i][j]);
                }
            }
        }
        self.store(r, 2 * t * PAIRS, &acc);
    }

    /// `hsum_float_8` of each accumulator's two outputs into rows `r..`, columns `c..` (the
    /// padding output of an odd last row dropped).
    #[inline(always)]
    unsafe fn store<const RM: usize, const RP: usize>(
        &self,
        r: usize,
        c: usize,
        acc: &[[__m512; RP]; RM],
    ) {
        let split = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        for (i, row) in acc.iter().enumerate() {
            for (j, &a) in row.iter().enumerate() {
                let v = _mm512_permutexvar_ps(split, a);
                let col = c + 2 * j;
                let o = self.out.add((r + i) * self.n + col);
                *o = hsum_movehl8(_mm512_castps512_ps256(v));
                if col + 1 < self.cols {
                    *o.add(1) = hsum_movehl8(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                        _mm512_castps_pd(v),
                    )));
                }
            }
        }
    }
}
