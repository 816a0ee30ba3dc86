//! Plain reference kernels for the Mamba2 mixer: the causal depthwise conv with its rolling
//! state, and the selective-state-space recurrence evaluated one token at a time.

use rayon::prelude::*;

use crate::layers::silu;

/// Causal depthwise conv over `new` rows `[L, C]`, continuing from `state` (`[K-1, C]`, oldest
/// first), followed by SiLU. Writes `[L, C]` to `out` and leaves the last K-1 raw rows in
/// `state`. `weight` is `[C, K]` with tap K-1 on the current token (spec §3.2).
pub fn causal_conv1d_silu(
    new: &[f32],
    state: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    kernel: usize,
    out: &mut [f32],
) {
    let c = bias.len();
    let hist = kernel - 1;
    let len = new.len() / c;
    // Row r of the window is the state for r < K-1, else new row r-(K-1).
    let row = |r: usize| -> &[f32] {
        if r < hist {
            &state[r * c..(r + 1) * c]
        } else {
            &new[(r - hist) * c..(r - hist + 1) * c]
        }
    };
    for t in 0..len {
        let o = &mut out[t * c..(t + 1) * c];
        o.copy_from_slice(bias);
        for k in 0..kernel {
            let src = row(t + k);
            for ch in 0..c {
                o[ch] += weight[ch * kernel + k] * src[ch];
            }
        }
        for v in o.iter_mut() {
            *v = silu(*v);
        }
    }
    // The new state is the last K-1 rows of [state; new].
    let mut next = vec![0f32; hist * c];
    for r in 0..hist {
        next[r * c..(r + 1) * c].copy_from_slice(row(len + r));
    }
    state.copy_from_slice(&next);
}

/// Shapes of one SSM scan.
#[derive(Debug, Clone, Copy)]
pub struct ScanDims {
    /// Heads.
    pub n_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// State size.
    pub d_state: usize,
    /// B/C groups; head h uses group `h / (n_heads / n_groups)`.
    pub n_groups: usize,
}

/// Inputs of one sequence's scan, row-major over its L tokens.
pub struct ScanInputs<'a> {
    /// `[L, conv_dim]` post-conv rows: x (`n_heads * head_dim`), then B and C
    /// (`n_groups * d_state` each).
    pub xbc: &'a [f32],
    /// `[L, n_heads]` dt after softplus (and clamp).
    pub dt: &'a [f32],
    /// `[n_heads]`, `A = -exp(A_log)`.
    pub a: &'a [f32],
    /// `[n_heads]` skip.
    pub d: &'a [f32],
}

/// Runs `S ← exp(dt·A)·S + dt·x⊗B; y = S·C + D·x` for one head of one sequence, updating
/// `state` (`[P, N]`) in place and returning `y` as `[L, P]`.
pub fn ssm_scan_head(inp: &ScanInputs, dims: ScanDims, head: usize, state: &mut [f32]) -> Vec<f32> {
    let ScanDims {
        n_heads,
        head_dim: p,
        d_state: n,
        n_groups,
    } = dims;
    let g = head / (n_heads / n_groups);
    let len = inp.dt.len() / n_heads;
    let (di, gn) = (n_heads * p, n_groups * n);
    let width = di + 2 * gn;
    let mut y = vec![0f32; len * p];
    for t in 0..len {
        let row = &inp.xbc[t * width..(t + 1) * width];
        let dt = inp.dt[t * n_heads + head];
        let decay = (dt * inp.a[head]).exp();
        let x = &row[head * p..(head + 1) * p];
        let b = &row[di + g * n..di + (g + 1) * n];
        let c = &row[di + gn + g * n..di + gn + (g + 1) * n];
        for (pi, srow) in state.chunks_mut(n).enumerate() {
            let dtx = dt * x[pi];
            // 16 partial sums so the contraction over N vectorizes (one SIMD register).
            let mut lanes = [0f32; 16];
            let mut rest = 0f32;
            let mut s_chunks = srow.chunks_exact_mut(16);
            let (mut b_chunks, mut c_chunks) = (b.chunks_exact(16), c.chunks_exact(16));
            for ((s16, b16), c16) in (&mut s_chunks).zip(&mut b_chunks).zip(&mut c_chunks) {
                for l in 0..16 {
                    s16[l] = decay * s16[l] + dtx * b16[l];
                    lanes[l] += s16[l] * c16[l];
                }
            }
            let tail = s_chunks.into_remainder();
            for ((s, bv), cv) in tail
                .iter_mut()
                .zip(b_chunks.remainder())
                .zip(c_chunks.remainder())
            {
                *s = decay * *s + dtx * bv;
                rest += *s * cv;
            }
            y[t * p + pi] = lanes.iter().sum::<f32>() + rest + inp.d[head] * x[pi];
        }
    }
    y
}

/// Scans every head of several sequences at once, in parallel over (sequence, head). `states[i]`
/// is sequence i's `[n_heads, P, N]` state; `ys[i]` receives its `[L_i, n_heads * P]` output.
pub fn ssm_scan_batch(
    inputs: &[ScanInputs],
    dims: ScanDims,
    states: Vec<&mut [f32]>,
    ys: Vec<&mut [f32]>,
) {
    let (p, n) = (dims.head_dim, dims.d_state);
    let tasks: Vec<(usize, usize, &mut [f32])> = states
        .into_iter()
        .enumerate()
        .flat_map(|(si, st)| {
            st.chunks_mut(p * n)
                .enumerate()
                .map(move |(h, s)| (si, h, s))
        })
        .collect();
    let outs: Vec<(usize, usize, Vec<f32>)> = tasks
        .into_par_iter()
        .map(|(si, h, s)| (si, h, ssm_scan_head(&inputs[si], dims, h, s)))
        .collect();
    let width = dims.n_heads * p;
    let mut ys = ys;
    for (si, h, yh) in outs {
        for (t, row) in yh.chunks(p).enumerate() {
            ys[si][t * width + h * p..t * width + (h + 1) * p].copy_from_slice(row);
        }
    }
}

/// `log(1 + e^v)`, returning `v` itself above 20 as torch does.
pub fn softplus(v: f32) -> f32 {
    if v > 20.0 {
        v
    } else {
        v.exp().ln_1p()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_in_pieces_equals_conv_whole() {
        let (c, k, len) = (3, 4, 7);
        let new: Vec<f32> = (0..len * c).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..c * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let b = vec![0.1, -0.2, 0.3];
        let mut whole = vec![0.0; len * c];
        let mut st = vec![0.0; (k - 1) * c];
        causal_conv1d_silu(&new, &mut st, &w, &b, k, &mut whole);
        let mut st2 = vec![0.0; (k - 1) * c];
        let mut pieces = vec![0.0; len * c];
        for (a, e) in [(0, 1), (1, 3), (3, 7)] {
            causal_conv1d_silu(
                &new[a * c..e * c],
                &mut st2,
                &w,
                &b,
                k,
                &mut pieces[a * c..e * c],
            );
        }
        assert_eq!(whole, pieces);
        assert_eq!(st, st2);
        // Tap K-1 multiplies the current token: first output uses only it.
        let expect = silu(b[0] + w[k - 1] * new[0]);
        assert!((whole[0] - expect).abs() < 1e-7);
    }
}
