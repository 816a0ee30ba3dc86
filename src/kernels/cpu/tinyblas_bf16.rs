//! `y = x · Wᵀ` in the order of llamafile's tinyBLAS BF16 kernel (what llama.cpp's AVX2 build
//! runs for a BF16 weight and two or more activation rows), fast: each output is one 8-lane
//! FMA accumulator over `k` in steps of 8 (column `c` in lane `c % 8`), reduced
//! `(t0 + t2) + (t1 + t3)` with `t_i = v[i + 4] + v[i]`. Lanes along `k` need weight rows with
//! `k` contiguous, so each parallel task first widens its [`PackedBf16`] panel (32 rows) into
//! an f32 scratch in row order; a 2 weight rows × 6 activation rows register tile then does 12
//! FMAs per 8 vector loads, 6 of them from L1, with no broadcasts or widening in the inner loop.
//! The activations must already hold bf16 values (ggml rounds them first); `k % 8 == 0`.
//! With AVX-512, [`super::tinyblas_bf16_avx512`] runs the same lanes two outputs per zmm, and
//! for up to [`LANES_MAX_ROWS`] activation rows (batched decode) [`super::tinyblas_bf16_lanes`]
//! skips the widening: weight rows in the vector lanes, straight from the packed panel.
//! The plain twin is [`tiny_dot`] per output (tested bit for bit, every body).

use rayon::prelude::*;

use super::packed_bf16::{PackedBf16, PANEL};

/// Weight rows per register tile (they stream from L2: few per tile).
const RM: usize = 2;
/// Activation rows per register tile (they stay in L1 for a whole panel).
const RN: usize = 6;

/// tinyBLAS's BF16 order on one output (`k % 8 == 0`), the twin of the vector kernel.
pub fn tiny_dot(x: &[f32], w: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (i, (a, b)) in x.iter().zip(w).enumerate() {
        acc[i % 8] = a.mul_add(*b, acc[i % 8]);
    }
    let t: [f32; 4] = std::array::from_fn(|i| acc[i + 4] + acc[i]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// Whether [`matmul_t`] runs here with its vector kernel (AVX2 + FMA, `k % 8 == 0`).
pub fn supported(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        k.is_multiple_of(8) && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = k;
        false
    }
}

/// 64 bytes of a widened panel.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A task's scratch: the widened panel (row order, or pairs in cache lines) and the
/// accumulators of the lanes and AVX-512 bodies.
#[derive(Default)]
struct Scratch {
    rows: Vec<f32>,
    lines: Vec<Line>,
    #[cfg(target_arch = "x86_64")]
    res: Vec<std::arch::x86_64::__m512>,
    #[cfg(target_arch = "x86_64")]
    accs: Vec<super::tinyblas_bf16_avx512::Acc>,
}

struct OutPtr(*mut f32);
// SAFETY: each task writes the columns of its own panel only.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Which vector body runs the GEMM (same bits either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    /// ymm accumulators, panel widened in row order.
    Avx2,
    /// Two outputs per zmm, panel widened in row pairs ([`super::tinyblas_bf16_avx512`]).
    Avx512,
    /// Weight rows in zmm lanes, straight from the packed panel, for few activation rows
    /// ([`super::tinyblas_bf16_lanes`]).
    Lanes,
}

/// Up to this many activation rows, [`Body::Lanes`] beats widening the panel (measured with
/// `matmul_bench --ggml-bf16-batch`).
const LANES_MAX_ROWS: usize = 64;

impl Body {
    /// The fastest body this CPU runs for `m` activation rows.
    fn for_rows(m: usize) -> Body {
        #[cfg(target_arch = "x86_64")]
        if m <= LANES_MAX_ROWS && super::tinyblas_bf16_lanes::available() {
            return Body::Lanes;
        }
        let _ = m;
        Body::detect()
    }

    /// The widest GEMM body this CPU runs (detected once).
    fn detect() -> Body {
        static BODY: std::sync::OnceLock<Body> = std::sync::OnceLock::new();
        *BODY.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if super::tinyblas_bf16_avx512::available() {
                return Body::Avx512;
            }
            Body::Avx2
        })
    }
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` in tinyBLAS order; `x` holds bf16 values. Callers check
/// [`supported`] first.
pub fn matmul_t(x: &[f32], m: usize, w: &PackedBf16, y: &mut [f32]) {
    matmul_with(Body::for_rows(m), x, m, w, y);
}

fn matmul_with(body: Body, x: &[f32], m: usize, w: &PackedBf16, y: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    assert!(
        supported(k) && x.len() >= m * k && y.len() >= m * n,
        "tinyBLAS bf16 matmul: k {k}, x {} (want {m}x{k}), y {} (want {m}x{n})",
        x.len(),
        y.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let out = OutPtr(y.as_mut_ptr());
    let out = &out;
    (0..w.panels())
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, p| {
            let Scratch { rows, lines, .. } = scratch;
            let live = PANEL.min(n - p * PANEL);
            let store = |i: usize, j: usize, v: f32| {
                // SAFETY: row i < m, column p * PANEL + j < n (j < live): inside `y`
                // (asserted) and written by this panel's task only.
                unsafe { *out.0.add(i * n + p * PANEL + j) = v };
            };
            match body {
                #[cfg(target_arch = "x86_64")]
                Body::Lanes => {
                    // SAFETY: AVX-512F present (`Body::for_rows`, or a test that checked); the
                    // panel holds `pairs * PANEL` words, `x` m * k floats; the task writes
                    // columns `p * PANEL..p * PANEL + live` of each row of `y` only.
                    unsafe {
                        super::tinyblas_bf16_lanes::panel(
                            w.panel(p),
                            x,
                            m,
                            live,
                            out.0.add(p * PANEL),
                            n,
                            &mut scratch.res,
                        )
                    }
                }
                #[cfg(target_arch = "x86_64")]
                Body::Avx512 => {
                    // Whole cache lines: a zmm load of a pair never splits. The widening
                    // writes every value, so no zeroing per panel.
                    lines.resize(PANEL * k / 16, Line([0.0; 16]));
                    // SAFETY: `Line` is `repr(C)` over `[f32; 16]`.
                    let rows = unsafe {
                        std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut f32, PANEL * k)
                    };
                    // SAFETY: AVX-512F/DQ, AVX2 and FMA present (`Body::detect`, or a test
                    // that checked); `rows` holds PANEL * k floats, `x` m * k; k % 8 == 0.
                    unsafe {
                        x86::widen_panel::<true>(w.panel(p), k, rows);
                        super::tinyblas_bf16_avx512::panel(
                            rows,
                            x,
                            m,
                            k,
                            live,
                            &mut scratch.accs,
                            store,
                        );
                    }
                }
                _ => {
                    widen_panel(w.panel(p), w.pairs(), k, rows);
                    avx2_panel(rows, x, m, k, live, store);
                }
            }
        });
}

/// [`matmul_t`]'s AVX2 body on one panel widened in row order (see the Avx512 twin).
fn avx2_panel(
    rows: &[f32],
    x: &[f32],
    m: usize,
    k: usize,
    live: usize,
    mut store: impl FnMut(usize, usize, f32),
) {
    let mut vals = [[0f32; RM]; RN];
    // The activation rows stay in L1 while the widened panel streams from L2.
    for i0 in (0..m).step_by(RN) {
        let rn = RN.min(m - i0);
        for j0 in (0..live).step_by(RM) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 + FMA present (asserted via `supported`); `rows` holds
            // PANEL rows of k, `j0 + RM <= PANEL`; `x` holds rows `i0..i0 + rn`.
            unsafe {
                x86::tile(
                    rn,
                    rows[j0 * k..].as_ptr(),
                    x[i0 * k..].as_ptr(),
                    k,
                    &mut vals,
                )
            };
            for (i, row) in vals.iter().enumerate().take(rn) {
                for (r, v) in row.iter().enumerate().take(RM.min(live - j0)) {
                    store(i0 + i, j0 + r, *v);
                }
            }
        }
    }
}

/// The panel's 32 rows as f32, `k` each, row after row (rows past the matrix are zeros).
fn widen_panel(panel: &[u32], pairs: usize, k: usize, rows: &mut Vec<f32>) {
    // Both widenings write every value (the panel's padding rows hold zero words), so a
    // task's scratch is sized once and never cleared.
    rows.resize(PANEL * k, 0.0);
    #[cfg(target_arch = "x86_64")]
    if supported(k) {
        // SAFETY: AVX2 present; `panel` holds `pairs * PANEL` words, `rows` PANEL * k floats.
        unsafe { x86::widen_panel::<false>(panel, k, rows) };
        return;
    }
    for q in 0..pairs {
        let line = &panel[q * PANEL..(q + 1) * PANEL];
        for (r, &v) in line.iter().enumerate() {
            rows[r * k + 2 * q] = f32::from_bits(v << 16);
            if 2 * q + 1 < k {
                rows[r * k + 2 * q + 1] = f32::from_bits(v & 0xFFFF_0000);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::tinyblas_bf16_avx512::paired_offset;
    use super::{RM, RN};
    use crate::kernels::ggml_math::avx2::hsum_movehl8;

    #[inline(always)]
    unsafe fn tile_n<const N: usize>(
        w: *const f32,
        x: *const f32,
        k: usize,
        out: &mut [[f32; RM]; RN],
    ) {
        let mut acc = [[_mm256_setzero_ps(); RM]; N];
        for c in (0..k).step_by(8) {
            let wv: [__m256; RM] = std::array::from_fn(|r| _mm256_loadu_ps(w.add(r * k + c)));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(i * k + c));
                for r in 0..RM {
                    a[r] = _mm256_fmadd_ps(wv[r], xv, a[r]);
                }
            }
        }
        for i in 0..N {
            for r in 0..RM {
                out[i][r] = hsum_movehl8(acc[i][r]);
            }
        }
    }

    /// [`super::widen_panel`] for `k % 8 == 0`: per 8 rows and 4 column pairs, a 4 × 8
    /// transpose of the packed words gives each row its 8 bf16 values in column order,
    /// zero-extended and shifted into f32. `PAIRED` stores them in the AVX-512 body's order
    /// ([`paired_offset`]) instead of row after row.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn widen_panel<const PAIRED: bool>(
        panel: &[u32],
        k: usize,
        rows: &mut [f32],
    ) {
        let (src, dst) = (panel.as_ptr(), rows.as_mut_ptr());
        for c in (0..k).step_by(8) {
            let q = c / 2;
            for g in (0..super::PANEL).step_by(8) {
                let a: [__m256i; 4] = std::array::from_fn(|i| {
                    _mm256_loadu_si256(src.add((q + i) * super::PANEL + g) as *const __m256i)
                });
                let t0 = _mm256_unpacklo_epi32(a[0], a[1]);
                let t1 = _mm256_unpackhi_epi32(a[0], a[1]);
                let t2 = _mm256_unpacklo_epi32(a[2], a[3]);
                let t3 = _mm256_unpackhi_epi32(a[2], a[3]);
                // Row r's four words: low 128 bits of u[r % 4] for r < 4, high for r >= 4.
                let u = [
                    _mm256_unpacklo_epi64(t0, t2),
                    _mm256_unpackhi_epi64(t0, t2),
                    _mm256_unpacklo_epi64(t1, t3),
                    _mm256_unpackhi_epi64(t1, t3),
                ];
                for r in 0..8 {
                    let words = if r < 4 {
                        _mm256_castsi256_si128(u[r])
                    } else {
                        _mm256_extracti128_si256(u[r - 4], 1)
                    };
                    let f = _mm256_slli_epi32(_mm256_cvtepu16_epi32(words), 16);
                    let at = if PAIRED {
                        paired_offset(g + r, c, k)
                    } else {
                        (g + r) * k + c
                    };
                    _mm256_storeu_ps(dst.add(at), _mm256_castsi256_ps(f));
                }
            }
        }
    }

    /// `rn` activation rows (1..=RN) from `x` against RM weight rows from `w`, `k` apart.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        rn: usize,
        w: *const f32,
        x: *const f32,
        k: usize,
        out: &mut [[f32; RM]; RN],
    ) {
        match rn {
            1 => tile_n::<1>(w, x, k, out),
            2 => tile_n::<2>(w, x, k, out),
            3 => tile_n::<3>(w, x, k, out),
            4 => tile_n::<4>(w, x, k, out),
            5 => tile_n::<5>(w, x, k, out),
            _ => tile_n::<6>(w, x, k, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::packed_bf16::{bf16_bits, bf16_value};

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| {
                bf16_value(bf16_bits(
                    ((i * 7919 + seed * 104_729) % 2003) as f32 / 517.0 - 1.9,
                ))
            })
            .collect()
    }

    /// Both bodies this CPU runs equal [`tiny_dot`] bit for bit, over every row-tile
    /// remainder, partial weight tiles and panels, several `k`, and the AVX-512 body's blocks.
    #[test]
    fn vector_kernels_are_the_plain_order_bit_for_bit() {
        if !supported(8) {
            return;
        }
        let mut bodies = vec![Body::Avx2];
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::cpu::tinyblas_bf16_avx512::available() {
            bodies.push(Body::Avx512);
        }
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::cpu::tinyblas_bf16_lanes::available() {
            bodies.push(Body::Lanes);
        }
        for &(m, k, n) in &[
            (2, 8, 1),
            (3, 768, 40),
            (5, 64, 33),
            (6, 16, 9),
            (7, 2048, 65),
            (12, 40, 97),
            (13, 136, 70),
            (16, 40, 97),
            // The lanes body: a ragged last chunk (260 pairs) and a second row group of 9.
            (16, 520, 57),
            (64, 256, 43),
            // Past one activation block (96 rows) and one column pass (768) of the AVX-512
            // body, both ragged.
            (100, 1544, 37),
        ] {
            let x = data(m * k, 1);
            let wv = data(n * k, 2);
            let w = PackedBf16::from_f32(&wv, n, k);
            for &body in &bodies {
                let mut y = vec![f32::NAN; m * n];
                matmul_with(body, &x, m, &w, &mut y);
                for i in 0..m {
                    for j in 0..n {
                        let want = tiny_dot(&x[i * k..(i + 1) * k], &wv[j * k..(j + 1) * k]);
                        assert_eq!(
                            y[i * n + j].to_bits(),
                            want.to_bits(),
                            "{body:?} {m}x{k}x{n} ({i}, {j})"
                        );
                    }
                }
            }
        }
    }
}
