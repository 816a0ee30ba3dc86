//! A bf16 weight matrix `[rows, cols]` (PyTorch's `[out, in]`) in the one layout every bf16
//! matmul kernel reads, packed once at load: panels of [`PANEL`] consecutive rows; inside a
//! panel, for each pair of columns `(2p, 2p+1)`, the [`PANEL`] rows' two values side by side as
//! one `u32` (low half = even column). A vector load then brings 8 or 16 rows × 2 columns:
//! exactly what `vdpbf16ps` multiplies, and two shifts/masks away from two f32 vectors for the
//! exact (widening) kernels. Odd `cols` and a partial last panel are padded with zeros, so the
//! kernels never branch on edges along k or within a panel. Memory: 2 bytes per value plus that
//! padding; this is the only copy of the matrix (embedding rows are read back from it).

use rayon::prelude::*;

/// Rows per panel (output features one micro-kernel tile covers).
pub const PANEL: usize = 32;

/// 64 bytes, so every panel line starts on a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// A packed bf16 matrix; see the module docs for the layout.
#[derive(Clone)]
pub struct PackedBf16 {
    rows: usize,
    cols: usize,
    lines: Vec<Line>,
}

/// bf16 bits of an f32, rounded to nearest even (NaN stays NaN), as PyTorch and ggml round.
#[inline]
pub fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        // Adding 0x7FFF plus the lowest kept bit carries exactly when rounding up (ties to even).
        ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// The f32 value of bf16 bits (exact).
#[inline]
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

impl PackedBf16 {
    /// Packs row-major bf16 bits (`rows * cols` of them).
    pub fn from_bits(bits: &[u16], rows: usize, cols: usize) -> Self {
        assert_eq!(bits.len(), rows * cols, "packing {rows}x{cols} bf16 values");
        Self::pack(rows, cols, |i| bits[i])
    }

    /// Packs row-major little-endian bf16 bytes (`2 * rows * cols` of them), e.g. straight
    /// from a mapped checkpoint (no alignment needed).
    pub fn from_le_bytes(bytes: &[u8], rows: usize, cols: usize) -> Self {
        assert_eq!(
            bytes.len(),
            2 * rows * cols,
            "packing {rows}x{cols} bf16 bytes"
        );
        Self::pack(rows, cols, |i| {
            u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])
        })
    }

    fn pack(rows: usize, cols: usize, bits: impl Fn(usize) -> u16 + Sync) -> Self {
        let pairs = cols.div_ceil(2);
        let panels = rows.div_ceil(PANEL);
        let lines_per_panel = pairs * PANEL / 16;
        let mut lines = vec![Line([0; 16]); panels * lines_per_panel];
        lines
            .par_chunks_mut(lines_per_panel.max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                for r in 0..PANEL.min(rows.saturating_sub(p * PANEL)) {
                    let row = (p * PANEL + r) * cols;
                    for q in 0..pairs {
                        let lo = bits(row + 2 * q) as u32;
                        let hi = if 2 * q + 1 < cols {
                            bits(row + 2 * q + 1) as u32
                        } else {
                            0
                        };
                        let at = q * PANEL + r;
                        panel[at / 16].0[at % 16] = lo | (hi << 16);
                    }
                }
            });
        Self { rows, cols, lines }
    }

    /// Rounds row-major f32 values to bf16 and packs them.
    pub fn from_f32(values: &[f32], rows: usize, cols: usize) -> Self {
        let bits: Vec<u16> = values.iter().map(|&v| bf16_bits(v)).collect();
        Self::from_bits(&bits, rows, cols)
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Column pairs per panel row (`cols` rounded up to even, halved).
    pub fn pairs(&self) -> usize {
        self.cols.div_ceil(2)
    }

    /// Number of panels.
    pub fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }

    /// Panel `p` as `pairs() * PANEL` packed pairs.
    pub fn panel(&self, p: usize) -> &[u32] {
        let len = self.pairs() * PANEL / 16;
        let lines = &self.lines[p * len..(p + 1) * len];
        // SAFETY: `Line` is `repr(C)` over `[u32; 16]`, so `len` lines are `16 * len` u32s.
        unsafe { std::slice::from_raw_parts(lines.as_ptr() as *const u32, len * 16) }
    }

    /// Bits of element `(r, c)`.
    #[inline]
    fn bits_at(&self, r: usize, c: usize) -> u16 {
        let (p, lane) = (r / PANEL, r % PANEL);
        let at = (p * self.pairs() + c / 2) * PANEL + lane;
        let v = self.lines[at / 16].0[at % 16];
        if c.is_multiple_of(2) {
            v as u16
        } else {
            (v >> 16) as u16
        }
    }

    /// Row `r` widened to f32 (exact) into `out` (`cols` values).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let panel = self.panel(r / PANEL);
        let lane = r % PANEL;
        for (q, two) in out[..self.cols].chunks_mut(2).enumerate() {
            let v = panel[q * PANEL + lane];
            two[0] = f32::from_bits(v << 16);
            if let Some(o) = two.get_mut(1) {
                *o = f32::from_bits(v & 0xFFFF_0000);
            }
        }
    }

    /// Row-major bf16 bits of the whole matrix (for row selection and concatenation at load).
    pub fn to_bits(&self) -> Vec<u16> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            out.extend((0..self.cols).map(|c| self.bits_at(r, c)));
        }
        out
    }

    /// Bytes held in memory (padding included).
    pub fn storage_bytes(&self) -> usize {
        std::mem::size_of_val(self.lines.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_on_ragged_shapes() {
        for &(rows, cols) in &[(1, 1), (33, 7), (64, 16), (5, 2), (70, 33)] {
            let bits: Vec<u16> = (0..rows * cols)
                .map(|i| bf16_bits(i as f32 * 0.37 - 3.0))
                .collect();
            let p = PackedBf16::from_bits(&bits, rows, cols);
            assert_eq!(p.to_bits(), bits, "{rows}x{cols}");
            let le: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            assert_eq!(PackedBf16::from_le_bytes(&le, rows, cols).to_bits(), bits);
            let mut row = vec![0f32; cols];
            p.row_f32(rows - 1, &mut row);
            let want: Vec<f32> = bits[(rows - 1) * cols..]
                .iter()
                .map(|&b| bf16_value(b))
                .collect();
            assert_eq!(row, want);
            assert_eq!(
                p.storage_bytes(),
                rows.div_ceil(PANEL) * PANEL * cols.div_ceil(2) * 4
            );
        }
    }

    #[test]
    fn rounding_matches_half() {
        for v in [
            0.0f32,
            -0.0,
            1.0,
            f32::from_bits(0x3F80_8000), // 1 + 2^-8: a tie, rounds to even (down)
            f32::from_bits(0x3F81_8000), // 1 + 3·2^-8: a tie, rounds to even (up)
            3.4e38,
            -7.1e-39,
            f32::INFINITY,
        ] {
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
        for i in 0..100_000u32 {
            let v = f32::from_bits(i.wrapping_mul(2_654_435_761));
            if !v.is_nan() {
                assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
            }
        }
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
    }

    #[test]
    fn pairs_hold_even_column_in_the_low_half() {
        let bits: Vec<u16> = (1..=6).collect(); // 2 rows x 3 cols
        let p = PackedBf16::from_bits(&bits, 2, 3);
        let panel = p.panel(0);
        assert_eq!(panel[0], 1 | (2 << 16)); // row 0, cols 0-1
        assert_eq!(panel[1], 4 | (5 << 16)); // row 1, cols 0-1
        assert_eq!(panel[PANEL], 3); // row 0, col 2 + zero pad
        assert_eq!(panel[PANEL + 1], 6);
    }
}
