//! Mamba2 prefill scan in the chunked state-space-duality form (spec §4.4), evaluated as small
//! matrix products instead of one rank-1 state update per token. For a chunk of Q tokens and
//! one head (state `S` is `[P, N]`, carried in from the cache or the previous chunk):
//!
//! ```text
//! a[l] = dt[l]·A,   c[l] = a[0] + … + a[l],   seg[l, s] = a[s+1] + … + a[l]   (s ≤ l)
//! M[l, s] = (C[l]·B[s]) · exp(seg[l, s]) · dt[s]                                (s ≤ l)
//! y[l]    = Σ_s M[l, s]·x[s]  +  exp(c[l]) · S·C[l]  +  D·x[l]
//! S      ← exp(c[Q-1])·S  +  Σ_s exp(c[Q-1] − c[s])·dt[s] · x[s] ⊗ B[s]
//! ```
//!
//! `C·Bᵀ` is shared by the heads of a group and computed once per chunk. Segment sums are
//! accumulated directly (as transformers does), never as differences of long cumulative sums.
//! The reference twin is the sequential scan [`super::reference::ssm_scan_head`]; results
//! agree to float rounding (tests below, and the transformers fixtures).

use rayon::prelude::*;

use super::fast_math::exp;
use super::reference::ScanDims;
use super::scan_layout::RowLayout;

/// One sequence of a batch: its first token row and its number of new tokens.
#[derive(Debug, Clone, Copy)]
pub struct SeqRows {
    /// First token row in the input buffer.
    pub start: usize,
    /// Tokens.
    pub len: usize,
}

/// Scans every head of several sequences, in parallel over (sequence, head), chunks of
/// `chunk` tokens. `rows` holds the inputs (see [`RowLayout`]); `a` (`A = -exp(A_log)`) and
/// `d` are per head; `states[i]` is sequence i's `[n_heads, P, N]` state, updated in place;
/// `y` receives, for sequence i, `[n_heads, len_i, P]` (head-major) at `start_i * d_inner`.
#[allow(clippy::too_many_arguments)]
pub fn ssd_scan_batch(
    rows: &[f32],
    layout: RowLayout,
    seqs: &[SeqRows],
    dims: ScanDims,
    a: &[f32],
    d: &[f32],
    chunk: usize,
    states: Vec<&mut [f32]>,
    y: &mut [f32],
) {
    let chunk = chunk.max(1);
    let (p, n) = (dims.head_dim, dims.d_state);
    let di = dims.n_heads * p;
    let cbs: Vec<Vec<f32>> = seqs
        .par_iter()
        .map(|s| chunk_cb(rows, layout, *s, dims, chunk))
        .collect();
    // Carve y and the states into one disjoint piece per (sequence, head).
    let mut tasks = Vec::with_capacity(seqs.len() * dims.n_heads);
    let mut rest = y;
    let mut offset = 0;
    for ((si, s), state) in seqs.iter().enumerate().zip(states) {
        let (_, tail) = rest.split_at_mut(s.start * di - offset);
        let (mine, tail) = tail.split_at_mut(s.len * di);
        rest = tail;
        offset = (s.start + s.len) * di;
        for (h, (st, yh)) in state
            .chunks_mut(p * n)
            .zip(mine.chunks_mut((s.len * p).max(1)))
            .enumerate()
        {
            tasks.push((si, h, st, yh));
        }
    }
    tasks.into_par_iter().for_each(|(si, h, st, yh)| {
        let head = Head {
            rows,
            layout,
            seq: seqs[si],
            dims,
            h,
            a: a[h],
            d: d[h],
            chunk,
            cb: &cbs[si],
        };
        head.scan(st, yh);
    });
}

/// `C[l]·B[s]` for `s ≤ l` of every chunk and group of one sequence:
/// `[n_chunks, n_groups, chunk, chunk]`, zero above the diagonal.
fn chunk_cb(rows: &[f32], lay: RowLayout, seq: SeqRows, dims: ScanDims, q: usize) -> Vec<f32> {
    let (n, groups) = (dims.d_state, dims.n_groups);
    let n_chunks = seq.len.div_ceil(q);
    let mut cb = vec![0f32; n_chunks * groups * q * q];
    for ci in 0..n_chunks {
        let t0 = seq.start + ci * q;
        let len = q.min(seq.start + seq.len - t0);
        for g in 0..groups {
            let out = &mut cb[(ci * groups + g) * q * q..][..q * q];
            for l in 0..len {
                let c_row = t0 + l;
                let cl = &rows[c_row * lay.stride + lay.c + g * n..][..n];
                for s in 0..=l {
                    let bs = &rows[(t0 + s) * lay.stride + lay.b + g * n..][..n];
                    out[l * q + s] = dot(cl, bs);
                }
            }
        }
    }
    cb
}

/// `Σ a[i]·b[i]` in 16 partial sums (one vector register).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// One head of one sequence.
struct Head<'a> {
    rows: &'a [f32],
    layout: RowLayout,
    seq: SeqRows,
    dims: ScanDims,
    h: usize,
    a: f32,
    d: f32,
    chunk: usize,
    cb: &'a [f32],
}

impl Head<'_> {
    fn x(&self, t: usize) -> &[f32] {
        let p = self.dims.head_dim;
        &self.rows[(self.seq.start + t) * self.layout.stride + self.layout.x + self.h * p..][..p]
    }

    fn group_row(&self, t: usize, field: usize) -> &[f32] {
        let n = self.dims.d_state;
        let g = self.h / (self.dims.n_heads / self.dims.n_groups);
        &self.rows[(self.seq.start + t) * self.layout.stride + field + g * n..][..n]
    }

    fn dt(&self, t: usize) -> f32 {
        self.rows[(self.seq.start + t) * self.layout.stride + self.layout.dt + self.h]
    }

    /// Runs all chunks, `state` `[P, N]` in place, `y` `[len, P]`.
    fn scan(&self, state: &mut [f32], y: &mut [f32]) {
        let (p, n, q) = (self.dims.head_dim, self.dims.d_state, self.chunk);
        let g = self.h / (self.dims.n_heads / self.dims.n_groups);
        let groups = self.dims.n_groups;
        // The state is kept transposed, `[N, P]`, so both of its products run along P.
        let mut st = vec![0f32; n * p];
        for pi in 0..p {
            for ni in 0..n {
                st[ni * p + pi] = state[pi * n + ni];
            }
        }
        let mut m = vec![0f32; q * q];
        let (mut dts, mut av, mut cum, mut seg, mut w) = (
            vec![0f32; q],
            vec![0f32; q],
            vec![0f32; q],
            vec![0f32; q],
            vec![0f32; q],
        );
        let mut acc = vec![0f32; p];
        for ci in 0..self.seq.len.div_ceil(q) {
            let t0 = ci * q;
            let len = q.min(self.seq.len - t0);
            let mut run = 0f32;
            for l in 0..len {
                dts[l] = self.dt(t0 + l);
                av[l] = dts[l] * self.a;
                run += av[l];
                cum[l] = run;
            }
            // M row by row: seg[s] holds a[s+1] + … + a[l].
            let cb = &self.cb[(ci * groups + g) * q * q..][..q * q];
            for l in 0..len {
                for sv in &mut seg[..l] {
                    *sv += av[l];
                }
                seg[l] = 0.0;
                let row = &mut m[l * q..l * q + len];
                for s in 0..=l {
                    row[s] = cb[l * q + s] * exp(seg[s]) * dts[s];
                }
            }
            for l in 0..len {
                let yl = &mut y[(t0 + l) * p..(t0 + l + 1) * p];
                // Intra-chunk: Σ_{s ≤ l} M[l, s]·x[s].
                yl.fill(0.0);
                for s in 0..=l {
                    let ms = m[l * q + s];
                    for (yv, xv) in yl.iter_mut().zip(self.x(t0 + s)) {
                        *yv += ms * xv;
                    }
                }
                // Carried-in state: exp(c[l])·S·C[l], contracted over N with S transposed.
                acc.fill(0.0);
                for (ni, cv) in self.group_row(t0 + l, self.layout.c).iter().enumerate() {
                    for (av, sv) in acc.iter_mut().zip(&st[ni * p..(ni + 1) * p]) {
                        *av += cv * sv;
                    }
                }
                let decay_in = exp(cum[l]);
                for ((yv, av), xv) in yl.iter_mut().zip(&acc).zip(self.x(t0 + l)) {
                    *yv += decay_in * av + self.d * xv;
                }
            }
            // State after the chunk.
            let last = cum[len - 1];
            for s in 0..len {
                w[s] = exp(last - cum[s]) * dts[s];
            }
            let decay = exp(last);
            for ni in 0..n {
                let srow = &mut st[ni * p..(ni + 1) * p];
                for v in srow.iter_mut() {
                    *v *= decay;
                }
                for s in 0..len {
                    let coef = w[s] * self.group_row(t0 + s, self.layout.b)[ni];
                    for (sv, xv) in srow.iter_mut().zip(self.x(t0 + s)) {
                        *sv += coef * xv;
                    }
                }
            }
        }
        for pi in 0..p {
            for ni in 0..n {
                state[pi * n + ni] = st[ni * p + pi];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::{ssm_scan_head, ScanInputs};

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.7548 + seed as f32 * 3.17).sin() * 43758.547).fract())
            .collect()
    }

    /// Random in_proj-like rows with post-activation values: x, B, C in [-1, 1], dt > 0.
    fn rows(len: usize, dims: ScanDims, lay: RowLayout, seed: u32) -> Vec<f32> {
        let mut r = noise(len * lay.stride, seed);
        for t in 0..len {
            for h in 0..dims.n_heads {
                let v = &mut r[t * lay.stride + lay.dt + h];
                *v = 0.02 + 0.4 * v.abs();
            }
        }
        r
    }

    /// The reference scan of sequence `s` from `state`: returns `[len, d_inner]` row-major.
    fn reference(
        r: &[f32],
        lay: RowLayout,
        s: SeqRows,
        dims: ScanDims,
        a: &[f32],
        d: &[f32],
        state: &mut [f32],
    ) -> Vec<f32> {
        let (p, n) = (dims.head_dim, dims.d_state);
        let di = dims.n_heads * p;
        let gn = dims.n_groups * n;
        let mut xbc = Vec::new();
        let mut dt = Vec::new();
        for t in s.start..s.start + s.len {
            let row = &r[t * lay.stride..(t + 1) * lay.stride];
            xbc.extend_from_slice(&row[lay.x..lay.x + di]);
            xbc.extend_from_slice(&row[lay.b..lay.b + gn]);
            xbc.extend_from_slice(&row[lay.c..lay.c + gn]);
            dt.extend_from_slice(&row[lay.dt..lay.dt + dims.n_heads]);
        }
        let inp = ScanInputs {
            xbc: &xbc,
            dt: &dt,
            a,
            d,
        };
        let mut y = vec![0f32; s.len * di];
        for (h, st) in state.chunks_mut(p * n).enumerate() {
            let yh = ssm_scan_head(&inp, dims, h, st);
            for t in 0..s.len {
                y[t * di + h * p..t * di + (h + 1) * p].copy_from_slice(&yh[t * p..(t + 1) * p]);
            }
        }
        y
    }

    fn check(dims: ScanDims, lens: &[usize], chunk: usize) {
        let (p, n) = (dims.head_dim, dims.d_state);
        let di = dims.n_heads * p;
        let lay = RowLayout::in_proj(di, dims.n_groups * n, dims.n_heads);
        let total: usize = lens.iter().sum();
        let r = rows(total, dims, lay, 11);
        let a: Vec<f32> = (0..dims.n_heads).map(|h| -0.3 - 0.9 * h as f32).collect();
        let d: Vec<f32> = noise(dims.n_heads, 5);
        let mut seqs = Vec::new();
        let mut start = 0;
        for &len in lens {
            seqs.push(SeqRows { start, len });
            start += len;
        }
        // Every sequence continues from a non-zero state.
        let init: Vec<Vec<f32>> = (0..lens.len())
            .map(|i| noise(dims.n_heads * p * n, 20 + i as u32))
            .collect();
        let mut states = init.clone();
        let mut y = vec![f32::NAN; total * di];
        ssd_scan_batch(
            &r,
            lay,
            &seqs,
            dims,
            &a,
            &d,
            chunk,
            states.iter_mut().map(|s| s.as_mut_slice()).collect(),
            &mut y,
        );
        for (i, s) in seqs.iter().enumerate() {
            let mut ref_state = init[i].clone();
            let want = reference(&r, lay, *s, dims, &a, &d, &mut ref_state);
            let mut worst = 0f32;
            for t in 0..s.len {
                for h in 0..dims.n_heads {
                    for pi in 0..p {
                        let got = y[s.start * di + h * s.len * p + t * p + pi];
                        let w = want[t * di + h * p + pi];
                        worst = worst.max((got - w).abs() / w.abs().max(1.0));
                    }
                }
            }
            assert!(
                worst < 2e-5,
                "y: {dims:?} lens {lens:?} chunk {chunk}: {worst}"
            );
            for (g, w) in states[i].iter().zip(&ref_state) {
                assert!(
                    (g - w).abs() <= 2e-5 * w.abs().max(1.0),
                    "state: {dims:?} lens {lens:?} chunk {chunk}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn matches_the_sequential_scan_on_granite_shapes() {
        let dims = ScanDims {
            n_heads: 4,
            head_dim: 32,
            d_state: 128,
            n_groups: 1,
        };
        // Lengths below, at and across chunk boundaries, several sequences in one call.
        check(dims, &[1, 64, 65, 150], 64);
        check(dims, &[37], 16);
    }

    #[test]
    fn matches_the_sequential_scan_on_odd_shapes() {
        for (dims, chunk) in [
            (
                ScanDims {
                    n_heads: 8,
                    head_dim: 8,
                    d_state: 8,
                    n_groups: 4,
                },
                5,
            ),
            (
                ScanDims {
                    n_heads: 6,
                    head_dim: 17,
                    d_state: 19,
                    n_groups: 2,
                },
                7,
            ),
            (
                ScanDims {
                    n_heads: 2,
                    head_dim: 16,
                    d_state: 16,
                    n_groups: 1,
                },
                1,
            ),
        ] {
            check(dims, &[3, 1, 22, 14], chunk);
        }
    }
}
