//! `y = x · Wᵀ` for BF16 GGUF weights with llama.cpp's CPU arithmetic (its AVX2 + FMA build),
//! so that a BF16 GGUF model's activations are bit for bit llama.cpp's. ggml rounds the
//! activations to bf16 (nearest even) and then, per output, sums exact bf16 × bf16 products in
//! one of two orders:
//!
//! - one activation row (decode, and any `k` that is not a multiple of 8):
//!   `ggml_vec_dot_bf16`: four 8-lane FMA accumulators over steps of 32 columns (column `i` in
//!   accumulator `(i / 8) % 4`, lane `i % 8`), folded `(c1 + c3) + (c2 + c4)`, reduced
//!   `(t0 + t2) + (t1 + t3)` with `t = hi + lo`; leftover columns added one by one in f64.
//! - two or more rows (prefill): llamafile's tinyBLAS: one 8-lane FMA accumulator per output
//!   (column `i` in lane `i % 8`), reduced the same way.
//!
//! The plain versions ([`vec_dot`], [`tiny_dot`]) state those orders on one row. The batched
//! order runs in [`super::tinyblas_bf16`]'s GEMM; the one-row order here, on eight weight rows
//! at once (one per vector lane) straight from the [`PackedBf16`] panels. Both equal the plain
//! versions bit for bit (tested).

use rayon::prelude::*;

use super::packed_bf16::{bf16_bits, bf16_value, PackedBf16, PANEL};
use super::tinyblas_bf16;
pub use super::tinyblas_bf16::tiny_dot;
use crate::kernels::ggml_math::hsum_movehl;

/// Weight rows per vector kernel call (one per f32 lane).
const GROUP: usize = 8;

/// The activations as ggml's `fp32_to_bf16` leaves them, as f32 values.
pub fn round_activations(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16_value(bf16_bits(v))).collect()
}

/// Whether ggml runs tinyBLAS (rather than `ggml_vec_dot_bf16`) for `m` rows of length `k`.
pub fn uses_tinyblas(m: usize, k: usize) -> bool {
    m >= 2 && k.is_multiple_of(GROUP)
}

/// `ggml_vec_dot_bf16` (AVX2) on one row: `x` and `w` hold bf16 values.
pub fn vec_dot(x: &[f32], w: &[f32]) -> f32 {
    let n = x.len().min(w.len());
    let whole = n / 32 * 32;
    let mut acc = [[0f32; 8]; 4];
    for i in 0..whole {
        let a = &mut acc[(i / 8) % 4][i % 8];
        *a = x[i].mul_add(w[i], *a);
    }
    let s: [f32; 8] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    let mut sum = hsum_movehl(&s) as f64;
    for i in whole..n {
        sum += (x[i] * w[i]) as f64;
    }
    sum as f32
}

struct OutPtr(*mut f32);
// SAFETY: each task writes the columns of its own panel only (see `matmul_t`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` (row-major `x`, `y`) as llama.cpp computes it.
pub fn matmul_t(x: &[f32], m: usize, w: &PackedBf16, y: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    assert!(
        x.len() >= m * k && y.len() >= m * n,
        "ggml bf16 matmul: x {} (want {m}x{k}), y {} (want {m}x{n})",
        x.len(),
        y.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let xr = round_activations(&x[..m * k]);
    let tiny = uses_tinyblas(m, k);
    if tiny && tinyblas_bf16::supported(k) {
        tinyblas_bf16::matmul_t(&xr, m, w, y);
        return;
    }
    let fast = has_avx2_fma() && !tiny;
    let out = OutPtr(y.as_mut_ptr());
    let out = &out;
    (0..w.panels()).into_par_iter().for_each(|p| {
        let panel = w.panel(p);
        let rows = PANEL.min(n - p * PANEL);
        let mut vals = [0f32; PANEL];
        let mut row = Vec::new();
        for i in 0..m {
            let xi = &xr[i * k..(i + 1) * k];
            if fast {
                // SAFETY: AVX2 and FMA are present (`fast`); the panel holds `pairs * PANEL`
                // words.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::vec_dot_panel(panel, rows.div_ceil(GROUP), k, xi, &mut vals)
                };
            } else {
                plain_panel(w, p * PANEL, rows, xi, tiny, &mut row, &mut vals);
            }
            for (r, v) in vals.iter().enumerate().take(rows) {
                // SAFETY: row `i < m`, column `p * PANEL + r < n`: inside `y` (asserted
                // above) and written by this panel's task only.
                unsafe { *out.0.add(i * n + p * PANEL + r) = *v };
            }
        }
    });
}

/// Whether the AVX2 + FMA kernels can run here.
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The plain kernels on `rows` weight rows from `first` (any CPU).
fn plain_panel(
    w: &PackedBf16,
    first: usize,
    rows: usize,
    x: &[f32],
    tiny: bool,
    row: &mut Vec<f32>,
    vals: &mut [f32; PANEL],
) {
    row.resize(w.cols(), 0.0);
    for (r, v) in vals.iter_mut().enumerate().take(rows) {
        w.row_f32(first + r, row);
        *v = if tiny {
            tiny_dot(x, row)
        } else {
            vec_dot(x, row)
        };
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // fixed-size register tiles read clearest as index loops
mod x86 {
    use std::arch::x86_64::*;

    use super::{GROUP, PANEL};

    /// Column pair `q` of the panel's rows `g * 8 .. g * 8 + 8`: (even, odd) columns as f32.
    #[inline(always)]
    unsafe fn widen(panel: &[u32], q: usize, g: usize) -> (__m256, __m256) {
        let v = _mm256_loadu_si256(panel.as_ptr().add(q * PANEL + g * GROUP) as *const __m256i);
        let hi = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        (
            _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)),
            _mm256_castsi256_ps(_mm256_and_si256(v, hi)),
        )
    }

    /// `(t0 + t2) + (t1 + t3)` with `t_i = v[i + 4] + v[i]`, lane by lane over eight rows.
    #[inline(always)]
    unsafe fn reduce(v: &[__m256; 8]) -> __m256 {
        let t: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(v[i + 4], v[i]));
        _mm256_add_ps(_mm256_add_ps(t[0], t[2]), _mm256_add_ps(t[1], t[3]))
    }

    /// 32-column blocks per k-chunk: a chunk of the panel (32 rows × 256 columns, 16 KiB)
    /// stays in L1 for the sixteen passes over it.
    const CHUNK_BLOCKS: usize = 8;

    /// [`super::vec_dot`] for the `groups` eight-row groups of a panel over `k` columns, into
    /// `out[g * 8 + l]`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn vec_dot_panel(
        panel: &[u32],
        groups: usize,
        k: usize,
        x: &[f32],
        out: &mut [f32; PANEL],
    ) {
        let blocks = k / 32;
        let xp = x.as_ptr();
        let wp = panel.as_ptr();
        // Accumulator `r` (column residue mod 32) of each group's eight rows; the chain of
        // each runs over the blocks in order, chunk after chunk, as ggml's does.
        let mut res = [[_mm256_setzero_ps(); 32]; PANEL / GROUP];
        for b0 in (0..blocks).step_by(CHUNK_BLOCKS) {
            let b1 = blocks.min(b0 + CHUNK_BLOCKS);
            // One residue pair per pass, for all four row groups: the pair's two activations
            // are broadcast once for the panel's 32 rows (a partial panel's missing rows are
            // zeros in the packing).
            for pair in 0..16 {
                let mut acc: [__m256; 8] = std::array::from_fn(|j| res[j / 2][2 * pair + j % 2]);
                for b in b0..b1 {
                    // Ask for the next chunk while this one is in L1, two of a block's 32
                    // lines per pass (a hint: past the panel's end it is ignored).
                    let next = wp.wrapping_add((b + CHUNK_BLOCKS) * 16 * PANEL + pair * PANEL);
                    _mm_prefetch(next as *const i8, _MM_HINT_T0);
                    _mm_prefetch(next.wrapping_add(16) as *const i8, _MM_HINT_T0);
                    let q = b * 16 + pair;
                    let xe = _mm256_broadcast_ss(&*xp.add(2 * q));
                    let xo = _mm256_broadcast_ss(&*xp.add(2 * q + 1));
                    for g in 0..PANEL / GROUP {
                        let (e, o) = widen(panel, q, g);
                        acc[2 * g] = _mm256_fmadd_ps(e, xe, acc[2 * g]);
                        acc[2 * g + 1] = _mm256_fmadd_ps(o, xo, acc[2 * g + 1]);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    res[j / 2][2 * pair + j % 2] = *a;
                }
            }
        }
        for (g, rg) in res.iter().enumerate().take(groups) {
            // c1..c4 are residues 0-7, 8-15, 16-23, 24-31: (c1 + c3) + (c2 + c4), lane by lane.
            let s: [__m256; 8] = std::array::from_fn(|l| {
                _mm256_add_ps(
                    _mm256_add_ps(rg[l], rg[16 + l]),
                    _mm256_add_ps(rg[8 + l], rg[24 + l]),
                )
            });
            let o = &mut out[g * GROUP..(g + 1) * GROUP];
            _mm256_storeu_ps(o.as_mut_ptr(), reduce(&s));
            if blocks * 32 < k {
                for (l, o) in o.iter_mut().enumerate() {
                    let mut sum = *o as f64;
                    for c in blocks * 32..k {
                        let v = panel[(c / 2) * PANEL + g * GROUP + l];
                        let wv = f32::from_bits(if c % 2 == 0 { v << 16 } else { v & 0xFFFF_0000 });
                        sum += (x[c] * wv) as f64;
                    }
                    *o = sum as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 517.0).sin())
            .collect()
    }

    /// The kernels equal the plain orders bit for bit, and the plain orders equal an f64 dot
    /// product of the rounded values within f32 summation error.
    #[test]
    fn matmul_is_the_plain_ggml_orders_bit_for_bit() {
        for &(m, k, n) in &[
            (1, 768, 70),
            (1, 1536, 33),
            (1, 45, 9),
            (1, 3, 2),
            (2, 768, 40),
            (7, 2048, 65),
            (3, 44, 17),
            (4, 20, 8),
        ] {
            let x = data(m * k, 1);
            let wv = data(n * k, 2);
            let w = PackedBf16::from_f32(&wv, n, k);
            let mut y = vec![f32::NAN; m * n];
            matmul_t(&x, m, &w, &mut y);
            let xr = round_activations(&x);
            let mut row = vec![0f32; k];
            for j in 0..n {
                w.row_f32(j, &mut row);
                for i in 0..m {
                    let xi = &xr[i * k..(i + 1) * k];
                    let want = if uses_tinyblas(m, k) {
                        tiny_dot(xi, &row)
                    } else {
                        vec_dot(xi, &row)
                    };
                    assert_eq!(
                        y[i * n + j].to_bits(),
                        want.to_bits(),
                        "{m}x{k}x{n} [{i},{j}]"
                    );
                    let exact: f64 = xi
                        .iter()
                        .zip(&row)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                    let scale: f64 = xi
                        .iter()
                        .zip(&row)
                        .map(|(a, b)| (*a as f64 * *b as f64).abs())
                        .sum();
                    assert!((want as f64 - exact).abs() <= 1e-6 * scale + 1e-30);
                }
            }
        }
    }
}
