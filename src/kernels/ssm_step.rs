//! One fused Mamba2 decode step for every running sequence (one new token each), in place on
//! the `in_proj` rows and the sequences' state slots: conv-state shift + conv + SiLU, dt
//! softplus + clamp, `S ← exp(dt·A)·S + dt·x⊗B`, `y = S·C + D·x` (spec §4.3 steps 2–5, §5).
//! The conv runs per sequence, the state update in parallel over (sequence, head) on rayon's
//! global pool; nothing is allocated besides the task list. Reference twins:
//! [`super::reference::causal_conv1d_silu`] and [`super::reference::ssm_scan_head`].

use rayon::prelude::*;

use super::conv1d::conv1d_silu_step;
use super::reference::{softplus, ScanDims};
use super::scan_layout::RowLayout;

/// The per-layer constants of a Mamba2 step.
#[derive(Clone, Copy)]
pub struct StepParams<'a> {
    /// Tap-major conv weight `[K, conv_dim]` (see [`super::conv1d::tap_major`]).
    pub conv_weight: &'a [f32],
    /// Conv bias `[conv_dim]` (zeros when the layer has none).
    pub conv_bias: &'a [f32],
    /// `[n_heads]` added to dt before softplus.
    pub dt_bias: &'a [f32],
    /// Clamp applied to dt after softplus.
    pub dt_limit: (f32, f32),
    /// `[n_heads]`, `A = -exp(A_log)`.
    pub a: &'a [f32],
    /// `[n_heads]` skip.
    pub d: &'a [f32],
}

/// Applies softplus (+ bias) and the clamp to the dt fields of `rows` in place.
pub fn activate_dt(rows: &mut [f32], layout: RowLayout, dt_bias: &[f32], limit: (f32, f32)) {
    for row in rows.chunks_exact_mut(layout.stride) {
        for (v, b) in row[layout.dt..layout.dt + dt_bias.len()]
            .iter_mut()
            .zip(dt_bias)
        {
            *v = softplus(*v + b).clamp(limit.0, limit.1);
        }
    }
}

/// Runs the step for `states.len()` sequences whose token rows are consecutive in `rows`
/// (`[seqs, stride]`, raw `in_proj` output, overwritten with activations). `states[i]` is
/// sequence i's (conv `[K-1, conv_dim]`, SSM `[n_heads, P, N]`) slot; `y` receives
/// `[seqs, n_heads * P]`.
pub fn mamba2_step_batch(
    rows: &mut [f32],
    layout: RowLayout,
    dims: ScanDims,
    params: StepParams,
    states: Vec<(&mut [f32], &mut [f32])>,
    y: &mut [f32],
) {
    let (p, n) = (dims.head_dim, dims.d_state);
    let conv_dim = params.conv_bias.len();
    let (convs, ssms): (Vec<_>, Vec<_>) = states.into_iter().unzip();
    rows.par_chunks_mut(layout.stride)
        .zip(convs)
        .for_each(|(row, conv)| {
            conv1d_silu_step(
                &mut row[layout.x..layout.x + conv_dim],
                conv,
                params.conv_weight,
                params.conv_bias,
            );
            activate_dt(row, layout, params.dt_bias, params.dt_limit);
        });
    let rows = &*rows;
    let heads_per_group = dims.n_heads / dims.n_groups;
    let mut tasks = Vec::with_capacity(ssms.len() * dims.n_heads);
    for ((si, ssm), ys) in ssms
        .into_iter()
        .enumerate()
        .zip(y.chunks_mut(dims.n_heads * p))
    {
        for (h, (st, yh)) in ssm.chunks_mut(p * n).zip(ys.chunks_mut(p)).enumerate() {
            tasks.push((si, h, st, yh));
        }
    }
    tasks.into_par_iter().for_each(|(si, h, st, yh)| {
        let row = &rows[si * layout.stride..(si + 1) * layout.stride];
        let g = h / heads_per_group;
        step_head(
            &row[layout.x + h * p..layout.x + (h + 1) * p],
            &row[layout.b + g * n..layout.b + (g + 1) * n],
            &row[layout.c + g * n..layout.c + (g + 1) * n],
            row[layout.dt + h],
            params.a[h],
            params.d[h],
            st,
            yh,
        );
    });
}

/// `S ← exp(dt·a)·S + dt·x⊗b`, `y = S·c + d·x` for one head (`S` is `[P, N]`).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn step_head(
    x: &[f32],
    b: &[f32],
    c: &[f32],
    dt: f32,
    a: f32,
    d: f32,
    state: &mut [f32],
    y: &mut [f32],
) {
    let n = b.len();
    let decay = (dt * a).exp();
    for ((srow, &xv), yv) in state.chunks_exact_mut(n).zip(x).zip(y.iter_mut()) {
        let dtx = dt * xv;
        // 16 partial sums so the contraction over N stays in one vector register.
        let mut lanes = [0f32; 16];
        let mut s16 = srow.chunks_exact_mut(16);
        let (mut b16, mut c16) = (b.chunks_exact(16), c.chunks_exact(16));
        for ((s, bb), cc) in (&mut s16).zip(&mut b16).zip(&mut c16) {
            for l in 0..16 {
                s[l] = decay * s[l] + dtx * bb[l];
                lanes[l] += s[l] * cc[l];
            }
        }
        let mut rest = 0f32;
        for ((s, bv), cv) in s16
            .into_remainder()
            .iter_mut()
            .zip(b16.remainder())
            .zip(c16.remainder())
        {
            *s = decay * *s + dtx * bv;
            rest += *s * cv;
        }
        *yv = lanes.iter().sum::<f32>() + rest + d * xv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv1d::tap_major;
    use crate::kernels::reference::{causal_conv1d_silu, ssm_scan_head, ScanInputs};

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.7548 + seed as f32 * 3.17).sin() * 43758.547).fract())
            .collect()
    }

    #[test]
    fn batch_of_steps_matches_the_reference_conv_and_scan() {
        for (dims, kernel) in [
            (
                ScanDims {
                    n_heads: 6,
                    head_dim: 32,
                    d_state: 128,
                    n_groups: 1,
                },
                4,
            ),
            (
                ScanDims {
                    n_heads: 8,
                    head_dim: 8,
                    d_state: 12,
                    n_groups: 4,
                },
                3,
            ),
        ] {
            let (nh, p, n) = (dims.n_heads, dims.head_dim, dims.d_state);
            let di = nh * p;
            let gn = dims.n_groups * n;
            let cd = di + 2 * gn;
            let lay = RowLayout::in_proj(di, gn, nh);
            let seqs = 3;
            let steps = 4;
            let w = noise(cd * kernel, 1);
            let wt = tap_major(&w, kernel);
            let bias = noise(cd, 2);
            let dt_bias = noise(nh, 3);
            let a: Vec<f32> = (0..nh).map(|h| -0.2 - 0.5 * h as f32).collect();
            let d = noise(nh, 4);
            let limit = (0.0, 0.35);
            let params = StepParams {
                conv_weight: &wt,
                conv_bias: &bias,
                dt_bias: &dt_bias,
                dt_limit: limit,
                a: &a,
                d: &d,
            };
            let mut conv: Vec<Vec<f32>> = (0..seqs)
                .map(|i| noise((kernel - 1) * cd, 10 + i as u32))
                .collect();
            let mut ssm: Vec<Vec<f32>> = (0..seqs)
                .map(|i| noise(nh * p * n, 20 + i as u32))
                .collect();
            let (mut conv_ref, mut ssm_ref) = (conv.clone(), ssm.clone());
            for step in 0..steps {
                let raw = noise(seqs * lay.stride, 30 + step);
                let mut rows = raw.clone();
                let mut y = vec![0f32; seqs * di];
                let states = conv
                    .iter_mut()
                    .zip(ssm.iter_mut())
                    .map(|(c, s)| (c.as_mut_slice(), s.as_mut_slice()))
                    .collect();
                mamba2_step_batch(&mut rows, lay, dims, params, states, &mut y);
                for si in 0..seqs {
                    let row = &raw[si * lay.stride..(si + 1) * lay.stride];
                    let mut xbc = vec![0f32; cd];
                    causal_conv1d_silu(
                        &row[lay.x..lay.x + cd],
                        &mut conv_ref[si],
                        &w,
                        &bias,
                        kernel,
                        &mut xbc,
                    );
                    let dt: Vec<f32> = (0..nh)
                        .map(|h| softplus(row[lay.dt + h] + dt_bias[h]).clamp(limit.0, limit.1))
                        .collect();
                    let inp = ScanInputs {
                        xbc: &xbc,
                        dt: &dt,
                        a: &a,
                        d: &d,
                    };
                    for (h, st) in ssm_ref[si].chunks_mut(p * n).enumerate() {
                        let want = ssm_scan_head(&inp, dims, h, st);
                        let got = &y[si * di + h * p..si * di + (h + 1) * p];
                        for (g, w) in got.iter().zip(&want) {
                            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
                        }
                    }
                    assert_eq!(conv[si], conv_ref[si]);
                    for (g, w) in ssm[si].iter().zip(&ssm_ref[si]) {
                        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
                    }
                }
            }
        }
    }
}
