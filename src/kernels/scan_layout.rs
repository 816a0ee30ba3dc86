//! Where the fast Mamba2 kernels find a token's inputs: rows of the mixer's `in_proj` output
//! (`z | xBC | dt`, spec §3.1), which the conv and the dt activation overwrite in place, so the
//! kernels read x, B, C and dt straight from that buffer instead of from copies.

/// Offsets of one token's fields inside a row of `stride` floats.
#[derive(Debug, Clone, Copy)]
pub struct RowLayout {
    /// Floats per token row.
    pub stride: usize,
    /// First x channel (`n_heads * head_dim` of them, head-major).
    pub x: usize,
    /// First B value (`n_groups * d_state`).
    pub b: usize,
    /// First C value (`n_groups * d_state`).
    pub c: usize,
    /// First dt value (`n_heads`), already through softplus and clamp.
    pub dt: usize,
}

impl RowLayout {
    /// The layout of Mamba2's `in_proj` rows: `z` (`d_inner`), then x, B, C (`conv_dim`), then
    /// dt (`n_heads`).
    pub fn in_proj(d_inner: usize, group_state: usize, n_heads: usize) -> Self {
        let conv_dim = d_inner + 2 * group_state;
        Self {
            stride: d_inner + conv_dim + n_heads,
            x: d_inner,
            b: 2 * d_inner,
            c: 2 * d_inner + group_state,
            dt: d_inner + conv_dim,
        }
    }
}
