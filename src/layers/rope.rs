//! Rotary position embedding, half-split (GPT-NeoX) layout: the first and second halves of
//! each head form the rotated pairs. Angles are computed in f32 as transformers does.

/// Precomputed inverse frequencies for one head size.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
}

impl Rope {
    /// Default (unscaled) RoPE: `inv_freq[i] = theta^(-2i/head_dim)`.
    pub fn new(theta: f64, head_dim: usize) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        Self { inv_freq, head_dim }
    }

    /// Rotates every head of one token's `[n_heads * head_dim]` row for position `pos`.
    pub fn apply(&self, row: &mut [f32], pos: usize) {
        let half = self.head_dim / 2;
        let (cos, sin): (Vec<f32>, Vec<f32>) = self
            .inv_freq
            .iter()
            .map(|f| {
                let a = pos as f32 * f;
                (a.cos(), a.sin())
            })
            .unzip();
        for head in row.chunks_mut(self.head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = b * cos[i] + a * sin[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        let rope = Rope::new(10000.0, 8);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.5).collect();
        let mut row = orig.clone();
        rope.apply(&mut row, 0);
        assert_eq!(row, orig);
        rope.apply(&mut row, 37);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = row.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
        // Pair (0, 4) of head 0 rotates by 37 rad with inv_freq 1.
        let (c, s) = (37f32.cos(), 37f32.sin());
        assert!((row[0] - (orig[0] * c - orig[4] * s)).abs() < 1e-6);
    }
}
