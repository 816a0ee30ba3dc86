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

/// One sequence of a batch: its first token row and its number of new tokens.
#[derive(Debug, Clone, Copy)]
pub struct SeqRows {
    /// First token row in the input buffer.
    pub start: usize,
    /// Tokens.
    pub len: usize,
}

/// Splits `rows` (`stride` floats per token) into one mutable piece per sequence; the spans
/// must be in order and not overlap (a batch's are consecutive).
pub fn split_seqs<'a>(rows: &'a mut [f32], stride: usize, seqs: &[SeqRows]) -> Vec<&'a mut [f32]> {
    let mut pieces = Vec::with_capacity(seqs.len());
    let mut rest = rows;
    let mut at = 0;
    for s in seqs {
        let (_, tail) = rest.split_at_mut((s.start - at) * stride);
        let (mine, tail) = tail.split_at_mut(s.len * stride);
        pieces.push(mine);
        rest = tail;
        at = s.start + s.len;
    }
    pieces
}
