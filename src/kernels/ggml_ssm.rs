//! llama.cpp's Mamba2 arithmetic (ggml-cpu, AVX2 + FMA build, as GCC compiled it) for GGUF
//! models, so that their recurrent layers are bit for bit llama.cpp's. The plain math is in
//! [`super::reference`]; these differ from it only in rounding (tested), op for op as
//! `ggml_compute_forward_ssm_conv_f32`, `ggml_compute_forward_ssm_scan_f32` and the graph of
//! `build_mamba2_layer`:
//!
//! - conv: `((w0·s0 + w1·s1) + w2·s2) + w3·s3` from 0, products rounded separately (no FMA),
//!   then `+ bias` (its own op), then ggml's vector SiLU over the row.
//! - dt: `dt + dt_bias`, then `softplus = dt > 20 ? dt : logf(1 + expf(dt))` (no clamp).
//! - scan (one token, one head): `dA = expf(dt·A)`; per channel `x_dt = x·dt`, then over the
//!   state, in four 8-lane accumulators per 32 values: `s = fma(s, dA, B·x_dt)`,
//!   `acc = fma(s, C, acc)`; reduced `((a0 + a2) + (a1 + a3))` then `hadd`, `hadd`; leftovers
//!   (state sizes that are not a multiple of 32) chained with scalar FMAs.
//! - `y + x·D` (two ops), then the gate `silu(z)·y` ([`ggml_math::swiglu_in_place`]) and the
//!   grouped RMSNorm ([`crate::layers::norm::rms_normalize`], already ggml's).

use super::ggml_math::{self, hsum_hadd};

/// `ggml_compute_softplus_f32`.
#[inline]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        (1.0 + x.exp()).ln()
    }
}

/// Conv + bias + SiLU over `len` token rows of `buf` (`stride` floats apart, channels at
/// `offset..offset + C`), continuing from `state` (`[K-1, C]`, oldest first): overwrites the
/// channels with the activations and leaves the last K-1 raw rows in `state`. `weight` is
/// tap-major `[K, C]` with tap K-1 on the current token.
pub fn conv_silu_rows(
    buf: &mut [f32],
    stride: usize,
    offset: usize,
    len: usize,
    state: &mut [f32],
    weight: &[f32],
    bias: &[f32],
) {
    let c = bias.len();
    let kernel = weight.len() / c.max(1);
    let hist = kernel.saturating_sub(1);
    // The window [state; raw rows], copied before the rows are overwritten.
    let mut window = Vec::with_capacity((hist + len) * c);
    window.extend_from_slice(&state[..hist * c]);
    for t in 0..len {
        window.extend_from_slice(&buf[t * stride + offset..t * stride + offset + c]);
    }
    for t in 0..len {
        let out = &mut buf[t * stride + offset..t * stride + offset + c];
        out.fill(0.0);
        for k in 0..kernel {
            let src = &window[(t + k) * c..(t + k + 1) * c];
            let w = &weight[k * c..(k + 1) * c];
            for ((o, s), w) in out.iter_mut().zip(src).zip(w) {
                *o += s * w;
            }
        }
        for (o, b) in out.iter_mut().zip(bias) {
            *o += b;
        }
        ggml_math::silu_in_place(out);
    }
    state[..hist * c].copy_from_slice(&window[len * c..(len + hist) * c]);
}

/// One token of the scan for one head: updates `state` (`[P, N]`) in place and writes
/// `y = S·C + x·D` (`[P]`). `dt` is already through [`softplus`]; `b`, `c` are the head's
/// group's `[N]` rows.
#[allow(clippy::too_many_arguments)]
pub fn scan_head_token(
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
    let da = (dt * a).exp();
    #[cfg(target_arch = "x86_64")]
    let body = x86::Body::detect(n);
    for ((srow, &xv), yv) in state.chunks_exact_mut(n).zip(x).zip(y.iter_mut()) {
        let x_dt = xv * dt;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `detect` checked the CPU features and that `n` is a multiple of 32;
        // `srow`, `b`, `c` hold `n` values.
        let sum = unsafe { body.scan_row(srow, b, c, da, x_dt) };
        #[cfg(not(target_arch = "x86_64"))]
        let sum = scan_row(srow, b, c, da, x_dt);
        *yv = sum + xv * d;
    }
}

/// One state row of the scan, in ggml's order (the plain twin of the AVX2 kernel).
pub fn scan_row(s: &mut [f32], b: &[f32], c: &[f32], da: f32, x_dt: f32) -> f32 {
    let n = s.len();
    let whole = n / 32 * 32;
    let mut acc = [[0f32; 8]; 4];
    for i in 0..whole {
        let v = s[i].mul_add(da, b[i] * x_dt);
        s[i] = v;
        let a = &mut acc[(i / 8) % 4][i % 8];
        *a = v.mul_add(c[i], *a);
    }
    let folded: [f32; 8] =
        std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    let mut sum = hsum_hadd(&folded);
    for i in whole..n {
        let v = s[i].mul_add(da, b[i] * x_dt);
        s[i] = v;
        sum = v.mul_add(c[i], sum);
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::hsum_hadd;

    /// Which [`super::scan_row`] runs (the same bits each way).
    #[derive(Clone, Copy)]
    pub(super) enum Body {
        Plain,
        Avx2,
        /// ggml's four 8-lane accumulators as two zmm: (0 | 1) and (2 | 3).
        Avx512,
    }

    impl Body {
        /// The widest body for rows of `n` (vector bodies need `n % 32 == 0`).
        pub(super) fn detect(n: usize) -> Body {
            static WIDEST: std::sync::OnceLock<Body> = std::sync::OnceLock::new();
            let widest = *WIDEST.get_or_init(|| {
                if is_x86_feature_detected!("avx512f") {
                    Body::Avx512
                } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    Body::Avx2
                } else {
                    Body::Plain
                }
            });
            if n.is_multiple_of(32) {
                widest
            } else {
                Body::Plain
            }
        }

        /// One state row with this body.
        ///
        /// # Safety
        /// The body came from [`Body::detect`] for `s.len()`; `b` and `c` are as long as `s`.
        #[inline]
        pub(super) unsafe fn scan_row(
            self,
            s: &mut [f32],
            b: &[f32],
            c: &[f32],
            da: f32,
            x_dt: f32,
        ) -> f32 {
            match self {
                Body::Plain => super::scan_row(s, b, c, da, x_dt),
                // SAFETY: the caller's contract.
                Body::Avx2 => unsafe { scan_row(s, b, c, da, x_dt) },
                // SAFETY: the caller's contract.
                Body::Avx512 => unsafe { scan_row_avx512(s, b, c, da, x_dt) },
            }
        }
    }

    /// [`scan_row`] with zmm registers: accumulators 0 and 1 share one, 2 and 3 the other, so
    /// `(c0 + c2) + (c1 + c3)` is one add and a fold of the halves, lane by lane as in ymm.
    #[target_feature(enable = "avx512f")]
    unsafe fn scan_row_avx512(s: &mut [f32], b: &[f32], c: &[f32], da: f32, x_dt: f32) -> f32 {
        let (sp, bp, cp) = (s.as_mut_ptr(), b.as_ptr(), c.as_ptr());
        let (vda, vxdt) = (_mm512_set1_ps(da), _mm512_set1_ps(x_dt));
        let mut acc = [_mm512_setzero_ps(); 2];
        for i in (0..s.len()).step_by(32) {
            for (j, a) in acc.iter_mut().enumerate() {
                let at = i + 16 * j;
                let v = _mm512_fmadd_ps(
                    _mm512_loadu_ps(sp.add(at)),
                    vda,
                    _mm512_mul_ps(_mm512_loadu_ps(bp.add(at)), vxdt),
                );
                _mm512_storeu_ps(sp.add(at), v);
                *a = _mm512_fmadd_ps(v, _mm512_loadu_ps(cp.add(at)), *a);
            }
        }
        let pairs = _mm512_add_ps(acc[0], acc[1]);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(pairs)));
        let folded = _mm256_add_ps(_mm512_castps512_ps256(pairs), hi);
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), folded);
        hsum_hadd(&lanes)
    }

    /// [`super::scan_row`] with AVX2 + FMA; `s.len()` is a multiple of 32.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scan_row(s: &mut [f32], b: &[f32], c: &[f32], da: f32, x_dt: f32) -> f32 {
        let (sp, bp, cp) = (s.as_mut_ptr(), b.as_ptr(), c.as_ptr());
        let (vda, vxdt) = (_mm256_set1_ps(da), _mm256_set1_ps(x_dt));
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..s.len()).step_by(32) {
            for (j, a) in acc.iter_mut().enumerate() {
                let at = i + 8 * j;
                let v = _mm256_fmadd_ps(
                    _mm256_loadu_ps(sp.add(at)),
                    vda,
                    _mm256_mul_ps(_mm256_loadu_ps(bp.add(at)), vxdt),
                );
                _mm256_storeu_ps(sp.add(at), v);
                *a = _mm256_fmadd_ps(v, _mm256_loadu_ps(cp.add(at)), *a);
            }
        }
        let folded = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), folded);
        hsum_hadd(&lanes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv1d::tap_major;
    use crate::kernels::reference::{self, causal_conv1d_silu, ScanDims, ScanInputs};

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.7548 + seed as f32 * 3.17).sin() * 43758.547).fract())
            .collect()
    }

    #[test]
    fn softplus_is_the_reference_within_rounding() {
        for i in -300..300 {
            let v = i as f32 * 0.1;
            // `logf(1 + expf(v))` loses what `1 + e^v` cannot hold: absolute error ~1e-7.
            let (a, b) = (softplus(v), reference::softplus(v));
            assert!((a - b).abs() <= 2e-7 * b.abs().max(1.0), "{v}: {a} vs {b}");
        }
    }

    #[test]
    fn conv_matches_the_reference_and_continues_across_calls() {
        let (c, k, len, stride, off) = (20, 4, 9, 27, 3);
        let raw = noise(len * stride, 1);
        let w = noise(c * k, 2);
        let bias = noise(c, 3);
        let mut st_ref = noise((k - 1) * c, 4);
        let mut st = st_ref.clone();
        let new: Vec<f32> = (0..len)
            .flat_map(|t| raw[t * stride + off..t * stride + off + c].to_vec())
            .collect();
        let mut want = vec![0f32; len * c];
        causal_conv1d_silu(&new, &mut st_ref, &w, &bias, k, &mut want);
        let wt = tap_major(&w, k);
        let mut buf = raw.clone();
        // In two pieces: the state carries over.
        conv_silu_rows(&mut buf, stride, off, 4, &mut st, &wt, &bias);
        conv_silu_rows(
            &mut buf[4 * stride..],
            stride,
            off,
            len - 4,
            &mut st,
            &wt,
            &bias,
        );
        assert_eq!(st, st_ref);
        for t in 0..len {
            for ch in 0..c {
                let (g, e) = (buf[t * stride + off + ch], want[t * c + ch]);
                assert!(
                    (g - e).abs() <= 1e-6 * e.abs().max(1.0),
                    "{t},{ch}: {g} vs {e}"
                );
            }
            assert_eq!(buf[t * stride], raw[t * stride], "outside the channels");
        }
    }

    #[test]
    fn scan_matches_the_reference_and_the_vector_row_is_bitwise_plain() {
        for (p, n) in [(4, 128), (3, 40), (2, 7)] {
            let dims = ScanDims {
                n_heads: 1,
                head_dim: p,
                d_state: n,
                n_groups: 1,
            };
            let steps = 5;
            let width = p + 2 * n;
            let xbc = noise(steps * width, 5);
            let dt: Vec<f32> = noise(steps, 6).iter().map(|v| softplus(v * 2.0)).collect();
            let (a, d) = (-0.7f32, 0.3f32);
            let mut st_ref = noise(p * n, 7);
            let mut st = st_ref.clone();
            let inp = ScanInputs {
                xbc: &xbc,
                dt: &dt,
                a: &[a],
                d: &[d],
            };
            let want = reference::ssm_scan_head(&inp, dims, 0, &mut st_ref);
            for t in 0..steps {
                let row = &xbc[t * width..(t + 1) * width];
                let mut y = vec![0f32; p];
                let mut plain = st.clone();
                scan_head_token(
                    &row[..p],
                    &row[p..p + n],
                    &row[p + n..],
                    dt[t],
                    a,
                    d,
                    &mut st,
                    &mut y,
                );
                // The plain rows give the same state bit for bit.
                let da = (dt[t] * a).exp();
                for (pi, srow) in plain.chunks_exact_mut(n).enumerate() {
                    let s = scan_row(srow, &row[p..p + n], &row[p + n..], da, row[pi] * dt[t]);
                    assert_eq!((s + row[pi] * d).to_bits(), y[pi].to_bits());
                }
                assert_eq!(plain, st);
                for (g, e) in y.iter().zip(&want[t * p..(t + 1) * p]) {
                    assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "{g} vs {e}");
                }
            }
            for (g, e) in st.iter().zip(&st_ref) {
                assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0));
            }
        }
    }

    /// Every vector body this CPU runs equals the plain row bit for bit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_vector_scan_row_is_the_plain_row() {
        let mut bodies = vec![];
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            bodies.push(x86::Body::Avx2);
        }
        if is_x86_feature_detected!("avx512f") {
            bodies.push(x86::Body::Avx512);
        }
        for n in [32, 64, 128, 160] {
            let (b, c) = (noise(n, 1), noise(n, 2));
            let mut want = noise(n, 3);
            let mut got = vec![want.clone(); bodies.len()];
            let sum = scan_row(&mut want, &b, &c, 0.9, 0.4);
            for (body, s) in bodies.iter().zip(&mut got) {
                // SAFETY: the features were checked above; `n % 32 == 0`.
                let v = unsafe { body.scan_row(s, &b, &c, 0.9, 0.4) };
                assert_eq!(v.to_bits(), sum.to_bits(), "n {n}");
                assert_eq!(*s, want);
            }
        }
    }
}
