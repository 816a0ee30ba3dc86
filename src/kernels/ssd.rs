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
use super::scan_layout::{RowLayout, SeqRows};
use super::ssm_step::step_head;

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
    // A sequence shorter than a chunk (a decode token in a mixed batch) gets a chunk of its
    // own length, so its scratch and C·Bᵀ block are no larger than it needs.
    let chunk_of = |s: &SeqRows| chunk.max(1).min(s.len.max(1));
    let (p, n) = (dims.head_dim, dims.d_state);
    let di = dims.n_heads * p;
    // C·Bᵀ of every (sequence, chunk), in parallel: a long prompt is one sequence.
    let mut first_chunk = Vec::with_capacity(seqs.len() + 1);
    let mut jobs = Vec::new();
    for (si, s) in seqs.iter().enumerate() {
        first_chunk.push(jobs.len());
        jobs.extend((0..s.len.div_ceil(chunk_of(s))).map(|ci| (si, ci)));
    }
    first_chunk.push(jobs.len());
    let cbs: Vec<Vec<f32>> = jobs
        .par_iter()
        .map(|&(si, ci)| chunk_cb(rows, layout, seqs[si], dims, chunk_of(&seqs[si]), ci))
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
            chunk: chunk_of(&seqs[si]),
            cb: &cbs[first_chunk[si]..first_chunk[si + 1]],
        };
        head.scan(st, yh);
    });
}

/// `C[l]·B[s]` for `s ≤ l` of chunk `ci` of a sequence, every group:
/// `[n_groups, chunk, chunk]`, zero above the diagonal.
fn chunk_cb(
    rows: &[f32],
    lay: RowLayout,
    seq: SeqRows,
    dims: ScanDims,
    q: usize,
    ci: usize,
) -> Vec<f32> {
    let (n, groups) = (dims.d_state, dims.n_groups);
    let mut cb = vec![0f32; groups * q * q];
    let t0 = seq.start + ci * q;
    let len = q.min(seq.start + seq.len - t0);
    for g in 0..groups {
        let out = &mut cb[g * q * q..][..q * q];
        for l in 0..len {
            let cl = &rows[(t0 + l) * lay.stride + lay.c + g * n..][..n];
            for s in 0..=l {
                let bs = &rows[(t0 + s) * lay.stride + lay.b + g * n..][..n];
                out[l * q + s] = dot(cl, bs);
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

/// f32 lanes per vector register.
const LANES: usize = 16;

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
    /// This sequence's per-chunk `C·Bᵀ` blocks (see [`chunk_cb`]).
    cb: &'a [Vec<f32>],
}

/// Per-task scratch of [`Head::scan`]; rows of x, y and the state are padded to whole vectors
/// (`pp` floats, zeros beyond P) so the products need no tail handling along P.
struct Scratch {
    pp: usize,
    /// Transposed state `[N, pp]`.
    st: Vec<f32>,
    /// The chunk's x rows `[chunk, pp]`.
    xs: Vec<f32>,
    /// `w[s]·x[s]`, the state-update weights applied to x.
    xw: Vec<f32>,
    /// Intra-chunk matrix `[chunk, chunk]`, zero above the diagonal.
    m: Vec<f32>,
    /// `exp(c[l])`.
    e: Vec<f32>,
    /// The chunk's outputs `[chunk, pp]`.
    yc: Vec<f32>,
}

// Register tiles read clearest as index loops over their rows.
#[allow(clippy::needless_range_loop)]
impl Head<'_> {
    fn group(&self) -> usize {
        self.h / (self.dims.n_heads / self.dims.n_groups)
    }

    /// Offset of token `t` (of this sequence) in `rows`.
    fn row(&self, t: usize) -> usize {
        (self.seq.start + t) * self.layout.stride
    }

    /// Runs all chunks, `state` `[P, N]` in place, `y` `[len, P]`.
    fn scan(&self, state: &mut [f32], y: &mut [f32]) {
        let (p, n, q) = (self.dims.head_dim, self.dims.d_state, self.chunk);
        if self.seq.len == 1 {
            // A decode token in a mixed batch: the recurrence itself, no chunk machinery.
            let r = self.row(0);
            let (b, c) = (
                self.layout.b + self.group() * n,
                self.layout.c + self.group() * n,
            );
            let x = self.layout.x + self.h * p;
            step_head(
                &self.rows[r + x..r + x + p],
                &self.rows[r + b..r + b + n],
                &self.rows[r + c..r + c + n],
                self.rows[r + self.layout.dt + self.h],
                self.a,
                self.d,
                state,
                y,
            );
            return;
        }
        let pp = p.div_ceil(LANES) * LANES;
        let g = self.group();
        let mut sc = Scratch {
            pp,
            st: vec![0f32; n * pp],
            xs: vec![0f32; q * pp],
            xw: vec![0f32; q * pp],
            m: vec![0f32; q * q],
            e: vec![0f32; q],
            yc: vec![0f32; q * pp],
        };
        for pi in 0..p {
            for ni in 0..n {
                sc.st[ni * pp + pi] = state[pi * n + ni];
            }
        }
        let (mut dts, mut av, mut cum, mut seg) =
            (vec![0f32; q], vec![0f32; q], vec![0f32; q], vec![0f32; q]);
        let x0 = self.layout.x + self.h * p;
        for ci in 0..self.seq.len.div_ceil(q) {
            let t0 = ci * q;
            let len = q.min(self.seq.len - t0);
            let mut run = 0f32;
            for l in 0..len {
                let r = self.row(t0 + l);
                dts[l] = self.rows[r + self.layout.dt + self.h];
                av[l] = dts[l] * self.a;
                run += av[l];
                cum[l] = run;
                sc.e[l] = exp(run);
                sc.xs[l * pp..l * pp + p].copy_from_slice(&self.rows[r + x0..r + x0 + p]);
            }
            // M row by row: seg[s] holds a[s+1] + … + a[l], summed directly.
            let cb = &self.cb[ci][g * q * q..(g + 1) * q * q];
            for l in 0..len {
                for sv in &mut seg[..l] {
                    *sv += av[l];
                }
                seg[l] = 0.0;
                let row = &mut sc.m[l * q..l * q + len];
                let (lower, upper) = row.split_at_mut(l + 1);
                for (((o, c), sg), dt) in lower
                    .iter_mut()
                    .zip(&cb[l * q..l * q + l + 1])
                    .zip(&seg[..=l])
                    .zip(&dts[..=l])
                {
                    *o = c * exp(*sg) * dt;
                }
                upper.fill(0.0);
            }
            // State-update weights, folded into x.
            let last = cum[len - 1];
            for s in 0..len {
                let w = exp(last - cum[s]) * dts[s];
                for (o, xv) in sc.xw[s * pp..(s + 1) * pp]
                    .iter_mut()
                    .zip(&sc.xs[s * pp..(s + 1) * pp])
                {
                    *o = w * xv;
                }
            }
            match (pp / LANES) % 4 {
                0 => self.chunk_products::<4, 2, 2>(&mut sc, t0, len, exp(last)),
                2 => self.chunk_products::<2, 4, 4>(&mut sc, t0, len, exp(last)),
                _ => self.chunk_products::<1, 8, 8>(&mut sc, t0, len, exp(last)),
            }
            for l in 0..len {
                y[(t0 + l) * p..(t0 + l + 1) * p].copy_from_slice(&sc.yc[l * pp..l * pp + p]);
            }
        }
        for pi in 0..p {
            for ni in 0..n {
                state[pi * n + ni] = sc.st[ni * pp + pi];
            }
        }
    }

    /// The chunk's outputs (into `sc.yc`, from the state carried in) and then the new state,
    /// in register blocks of V vectors along P: R token rows at a time for the outputs, SR
    /// state rows at a time for the update.
    fn chunk_products<const V: usize, const R: usize, const SR: usize>(
        &self,
        sc: &mut Scratch,
        t0: usize,
        len: usize,
        decay: f32,
    ) {
        let n = self.dims.d_state;
        for pb in (0..sc.pp).step_by(V * LANES) {
            let mut l0 = 0;
            while l0 + R <= len {
                self.out_rows::<V, R>(sc, t0, l0, pb);
                l0 += R;
            }
            for l in l0..len {
                self.out_rows::<V, 1>(sc, t0, l, pb);
            }
            let mut n0 = 0;
            while n0 + SR <= n {
                self.state_rows::<V, SR>(sc, t0, len, n0, pb, decay);
                n0 += SR;
            }
            for ni in n0..n {
                self.state_rows::<V, 1>(sc, t0, len, ni, pb, decay);
            }
        }
    }

    /// `y[l] = exp(c[l])·S·C[l] + Σ_{s ≤ l} M[l, s]·x[s] + D·x[l]` for rows `l0..l0+R`,
    /// columns `pb..pb + V·16` of the padded P.
    #[inline(always)]
    fn out_rows<const V: usize, const R: usize>(
        &self,
        sc: &mut Scratch,
        t0: usize,
        l0: usize,
        pb: usize,
    ) {
        let (n, pp, q) = (self.dims.d_state, sc.pp, self.chunk);
        let c_off = self.layout.c + self.group() * n;
        let c_rows: [usize; R] = std::array::from_fn(|i| self.row(t0 + l0 + i) + c_off);
        let mut acc = [[[0f32; LANES]; V]; R];
        for ni in 0..n {
            let sv = load::<V>(&sc.st[ni * pp + pb..]);
            for i in 0..R {
                let cv = self.rows[c_rows[i] + ni];
                fma_row(&mut acc[i], cv, &sv);
            }
        }
        for (i, a) in acc.iter_mut().enumerate() {
            scale_row(a, sc.e[l0 + i]);
        }
        for s in 0..l0 + R {
            let xv = load::<V>(&sc.xs[s * pp + pb..]);
            for i in 0..R {
                fma_row(&mut acc[i], sc.m[(l0 + i) * q + s], &xv);
            }
        }
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = load::<V>(&sc.xs[(l0 + i) * pp + pb..]);
            fma_row(a, self.d, &xv);
            store::<V>(&mut sc.yc[(l0 + i) * pp + pb..], a);
        }
    }

    /// `S[n] ← decay·S[n] + Σ_s B[s][n]·w[s]·x[s]` for state rows `n0..n0+R` (transposed
    /// state), columns `pb..pb + V·16`.
    #[inline(always)]
    fn state_rows<const V: usize, const R: usize>(
        &self,
        sc: &mut Scratch,
        t0: usize,
        len: usize,
        n0: usize,
        pb: usize,
        decay: f32,
    ) {
        let pp = sc.pp;
        let b_off = self.layout.b + self.group() * self.dims.d_state + n0;
        let mut acc: [[[f32; LANES]; V]; R] =
            std::array::from_fn(|j| load::<V>(&sc.st[(n0 + j) * pp + pb..]));
        for a in acc.iter_mut() {
            scale_row(a, decay);
        }
        for s in 0..len {
            let xv = load::<V>(&sc.xw[s * pp + pb..]);
            let b = &self.rows[self.row(t0 + s) + b_off..][..R];
            for j in 0..R {
                fma_row(&mut acc[j], b[j], &xv);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            store::<V>(&mut sc.st[(n0 + j) * pp + pb..], a);
        }
    }
}

/// The first V·16 floats of `src` as V vectors.
#[inline(always)]
fn load<const V: usize>(src: &[f32]) -> [[f32; LANES]; V] {
    let mut out = [[0f32; LANES]; V];
    for (v, o) in out.iter_mut().enumerate() {
        o.copy_from_slice(&src[v * LANES..(v + 1) * LANES]);
    }
    out
}

#[inline(always)]
fn store<const V: usize>(dst: &mut [f32], src: &[[f32; LANES]; V]) {
    for (v, s) in src.iter().enumerate() {
        dst[v * LANES..(v + 1) * LANES].copy_from_slice(s);
    }
}

/// `acc += k·x`.
#[inline(always)]
fn fma_row<const V: usize>(acc: &mut [[f32; LANES]; V], k: f32, x: &[[f32; LANES]; V]) {
    for v in 0..V {
        for l in 0..LANES {
            acc[v][l] = x[v][l].mul_add(k, acc[v][l]);
        }
    }
}

#[inline(always)]
fn scale_row<const V: usize>(acc: &mut [[f32; LANES]; V], k: f32) {
    for v in acc.iter_mut() {
        for x in v.iter_mut() {
            *x *= k;
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
