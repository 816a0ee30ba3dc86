//! `y = x · Wᵀ` for a bf16 weight matrix packed at load ([`PackedBf16`]), any number of
//! activation rows: the decode GEMV (one row), small batches and the prefill GEMM share one
//! blocked loop. Per call only the activations are packed (a few hundred KiB per block, into
//! the tile layout of [`super::bf16_tiles`]); the weights are never repacked.
//!
//! Blocking: activation rows in blocks that fit in L2 (all K of them), then in parallel over
//! weight panels (32 output features each; the one rayon pool, so no oversubscription); inside a
//! panel, runs of [`K_PAIRS`] column pairs (16 KiB of weights, L1) against every row tile of
//! the block. Each weight byte is read from memory once per row block, so the one-row GEMV
//! streams the matrix at memory speed.
//!
//! [`Activations::F32`] is exact: weights widened to f32, f32 FMAs, the arithmetic of
//! upcast f32 weights up to summation order. [`Activations::Bf16`] rounds the activations to
//! bf16 first (round to nearest even), as PyTorch's bf16 matmul and llama.cpp's BF16 kernels do,
//! and uses `vdpbf16ps` where the CPU has AVX512-BF16 (elsewhere the widening tile on the
//! rounded values: same products, same result up to summation order).

use rayon::prelude::*;

use super::bf16_tiles::{dot_tile, widen_tile, Isa, DOT_ROWS};
use super::packed_bf16::{bf16_bits, bf16_value, PackedBf16, PANEL};

/// What the bf16 weights are multiplied with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// The f32 activations as they are (exact).
    F32,
    /// The activations rounded to bf16.
    Bf16,
}

/// Column pairs per inner block: 128 pairs × 32 rows × 4 bytes = 16 KiB of a panel.
pub const K_PAIRS: usize = 128;

/// Packed activation bytes per row block (about half of a 1 MiB L2).
const BLOCK_BYTES: usize = 512 * 1024;

/// Which tiles a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// f32 activation pairs, widened weights.
    Widen(Isa),
    /// bf16 activation pairs, bf16 dot products.
    Dot(Isa),
}

impl Path {
    fn choose(isa: Isa, act: Activations) -> Path {
        match act {
            Activations::Bf16 if isa.has_bf16_dot() => Path::Dot(isa),
            _ => Path::Widen(isa),
        }
    }

    /// Rows per tile.
    fn tile_rows(self) -> usize {
        match self {
            Path::Widen(isa) => isa.widen_rows(),
            Path::Dot(_) => DOT_ROWS,
        }
    }

    /// Packed u32/f32 words per activation per column pair.
    fn words_per_pair(self) -> usize {
        match self {
            Path::Widen(_) => 2,
            Path::Dot(_) => 1,
        }
    }
}

struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of `y` (one panel each; see `run`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` (row-major `x` and `y`) with the best tiles of this CPU.
pub fn matmul_t(x: &[f32], m: usize, w: &PackedBf16, act: Activations, y: &mut [f32]) {
    run(Path::choose(Isa::detect(), act), act, x, m, w, y);
}

/// Plain reference: `y[i, j] = Σ_k a(x[i, k]) · w[j, k]` summed in f64, where `a` rounds to
/// bf16 for [`Activations::Bf16`].
pub fn matmul_t_reference(x: &[f32], m: usize, w: &PackedBf16, act: Activations, y: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    let mut row = vec![0f32; k];
    for j in 0..n {
        w.row_f32(j, &mut row);
        for i in 0..m {
            let mut acc = 0f64;
            for (xv, wv) in x[i * k..(i + 1) * k].iter().zip(&row) {
                let xv = match act {
                    Activations::F32 => *xv,
                    Activations::Bf16 => bf16_value(bf16_bits(*xv)),
                };
                acc += xv as f64 * *wv as f64;
            }
            y[i * n + j] = acc as f32;
        }
    }
}

fn run(path: Path, act: Activations, x: &[f32], m: usize, w: &PackedBf16, y: &mut [f32]) {
    let (n, k, pairs) = (w.rows(), w.cols(), w.pairs());
    assert!(
        x.len() >= m * k && y.len() >= m * n,
        "bf16 matmul: x {} (want {m}x{k}), y {} (want {m}x{n})",
        x.len(),
        y.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if pairs == 0 {
        y[..m * n].fill(0.0);
        return;
    }
    let mr = path.tile_rows();
    let words = path.words_per_pair();
    let row_bytes = pairs * words * 4;
    let block_rows = (BLOCK_BYTES / row_bytes).max(mr) / mr * mr;
    let tile_words = mr * pairs * words;
    let mut packed = vec![0u32; block_rows.min(m).div_ceil(mr) * tile_words];
    let out = OutPtr(y.as_mut_ptr());
    for m0 in (0..m).step_by(block_rows) {
        let mb = block_rows.min(m - m0);
        let tiles = mb.div_ceil(mr);
        packed[..tiles * tile_words]
            .par_chunks_mut(tile_words)
            .enumerate()
            .for_each(|(t, dst)| {
                let r0 = m0 + t * mr;
                let rows = mr.min(m0 + mb - r0);
                pack_tile(&x[r0 * k..(r0 + rows) * k], rows, k, path, act, dst);
            });
        let packed = &packed;
        let out = &out;
        (0..w.panels()).into_par_iter().for_each(|p| {
            let panel = w.panel(p);
            let cols = PANEL.min(n - p * PANEL);
            let mut tile = [0f32; DOT_ROWS * PANEL];
            for q0 in (0..pairs).step_by(K_PAIRS) {
                let run_pairs = K_PAIRS.min(pairs - q0);
                for t in 0..tiles {
                    let r0 = m0 + t * mr;
                    let rows = mr.min(m0 + mb - r0);
                    let xp = &packed[t * tile_words..][q0 * rows * words..];
                    let wp = &panel[q0 * PANEL..];
                    // SAFETY: `path` comes from `Isa::detect` (or a test's Plain); `rows <= mr`;
                    // `xp` holds `run_pairs * rows * words` and `wp` `run_pairs * PANEL` words
                    // (tiles are packed with all `pairs`); `tile` holds `DOT_ROWS * PANEL`.
                    unsafe {
                        match path {
                            Path::Widen(isa) => widen_tile(
                                isa,
                                rows,
                                xp.as_ptr() as *const f32,
                                wp.as_ptr(),
                                run_pairs,
                                tile.as_mut_ptr(),
                            ),
                            Path::Dot(isa) => dot_tile(
                                isa,
                                rows,
                                xp.as_ptr(),
                                wp.as_ptr(),
                                run_pairs,
                                tile.as_mut_ptr(),
                            ),
                        }
                    }
                    for (r, vals) in tile.chunks(PANEL).take(rows).enumerate() {
                        // SAFETY: row `r0 + r < m`, columns `p*PANEL .. p*PANEL+cols <= n`:
                        // inside `y` (asserted above) and written by this panel's task only.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                out.0.add((r0 + r) * n + p * PANEL),
                                cols,
                            )
                        };
                        if q0 == 0 {
                            dst.copy_from_slice(&vals[..cols]);
                        } else {
                            dst.iter_mut().zip(vals).for_each(|(d, v)| *d += v);
                        }
                    }
                }
            }
        });
    }
}

/// Packs `rows` activation rows (row-major, `k` each) into one tile: `[pairs][rows][2]` f32
/// bits for the widening path, `[pairs][rows]` bf16 pairs for the dot path; odd `k` padded
/// with zero.
fn pack_tile(x: &[f32], rows: usize, k: usize, path: Path, act: Activations, dst: &mut [u32]) {
    let value = |v: f32| match act {
        Activations::F32 => v,
        Activations::Bf16 => bf16_value(bf16_bits(v)),
    };
    for r in 0..rows {
        let row = &x[r * k..(r + 1) * k];
        for (q, two) in row.chunks(2).enumerate() {
            let (a, b) = (two[0], two.get(1).copied().unwrap_or(0.0));
            match path {
                Path::Widen(_) => {
                    dst[(q * rows + r) * 2] = value(a).to_bits();
                    dst[(q * rows + r) * 2 + 1] = value(b).to_bits();
                }
                Path::Dot(_) => {
                    dst[q * rows + r] = bf16_bits(a) as u32 | ((bf16_bits(b) as u32) << 16);
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
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 517.0)
            .collect()
    }

    /// Compares `path` with the reference within f32 summation error: 2e-6 of Σ|x·w|.
    fn check(path: Path, act: Activations, m: usize, k: usize, n: usize) {
        let x = data(m * k, 1);
        let w = PackedBf16::from_f32(&data(n * k, 2), n, k);
        let mut got = vec![f32::NAN; m * n];
        let mut want = vec![0f32; m * n];
        run(path, act, &x, m, &w, &mut got);
        matmul_t_reference(&x, m, &w, act, &mut want);
        let wabs = PackedBf16::from_f32(
            &data(n * k, 2).iter().map(|v| v.abs()).collect::<Vec<_>>(),
            n,
            k,
        );
        let xabs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let mut scale = vec![0f32; m * n];
        matmul_t_reference(&xabs, m, &wabs, act, &mut scale);
        for i in 0..m * n {
            assert!(
                (got[i] - want[i]).abs() <= 2e-6 * scale[i] + 1e-30,
                "{path:?} {act:?} {m}x{k}x{n} at {i}: {} vs {}",
                got[i],
                want[i]
            );
        }
    }

    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 768, 300),
        (3, 17, 5),
        (5, 64, 129),
        (13, 255, 33),
        (16, 100, 67),
        (70, 301, 95),
        (1, 2 * K_PAIRS + 3, 40),
    ];

    #[test]
    fn every_path_of_this_cpu_matches_the_reference_on_ragged_shapes() {
        let isa = Isa::detect();
        for &(m, k, n) in SHAPES {
            for act in [Activations::F32, Activations::Bf16] {
                check(Path::Widen(Isa::Plain), act, m, k, n);
                check(Path::Dot(Isa::Plain), Activations::Bf16, m, k, n);
                check(Path::Widen(isa), act, m, k, n);
                check(Path::choose(isa, act), act, m, k, n);
            }
        }
    }

    #[test]
    fn row_blocks_and_many_tiles_match_the_reference() {
        // Enough rows for several L2 row blocks with K = 2048.
        let isa = Isa::detect();
        for act in [Activations::F32, Activations::Bf16] {
            check(Path::choose(isa, act), act, 300, 2048, 37);
        }
    }

    #[test]
    fn exact_path_equals_f32_weights_up_to_order() {
        // The widening path is the f32 product of the upcast weights: against a plain f32
        // dot product of the same values it differs only by summation order.
        let (m, k, n) = (2, 96, 9);
        let x = data(m * k, 3);
        let w = PackedBf16::from_f32(&data(n * k, 4), n, k);
        let mut y = vec![0f32; m * n];
        matmul_t(&x, m, &w, Activations::F32, &mut y);
        let mut row = vec![0f32; k];
        for j in 0..n {
            w.row_f32(j, &mut row);
            for i in 0..m {
                let d: f32 = x[i * k..(i + 1) * k]
                    .iter()
                    .zip(&row)
                    .map(|(a, b)| a * b)
                    .sum();
                assert!((y[i * n + j] - d).abs() <= 1e-4 * (1.0 + d.abs()));
            }
        }
    }
}
