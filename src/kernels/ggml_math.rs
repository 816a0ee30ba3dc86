//! llama.cpp's CPU arithmetic for the non-matmul parts of a forward pass (attention dot
//! products, softmax, SiLU, GeLU), used for GGUF files so that greedy tokens follow llama.cpp's
//! on the same file. These are not more accurate than the plain versions (`layers::silu`,
//! `attention::softmax_in_place`, `mlp::gelu_tanh`), only different in the last bits, and a
//! quantized model amplifies last-bit differences: one activation on the other side of a Q8
//! rounding step moves a logit by ~0.1.
//!
//! The reference is ggml's AVX2 + FMA build (what `GGML_NATIVE` gives on an AVX2 machine and
//! what `scripts/build_llama_cpp.sh` built here); every function below was checked bit for bit
//! against that build's intermediate tensors (`scripts/llama_cpp_tensors.py`):
//! - `ggml_v_expf`: a polynomial exp on 8-lane vectors; leftover lanes use libm `expf`.
//! - SwiGLU: `x / (1 + exp(-x))` with that exp, times the up projection.
//! - GeGLU: the tanh GeLU read from a table indexed by the f16 rounding of x.
//! - softmax: vector exp over 8-lane groups of the (16-padded) key range, sum in f64 of the
//!   groups' sums, then a multiply by `(f32)(1/sum)`.
//! - `ggml_vec_dot_f32`: four 8-lane FMA accumulators over steps of 32, folded and reduced in a
//!   fixed order; leftovers added one by one.
//! - tinyBLAS (`llamafile_sgemm`, batches of 2+ tokens): one 8-lane FMA accumulator per output.

use half::f16;

const LANES: usize = 8;

/// One lane of ggml's AVX2 `ggml_v_expf` (max error ~1.5 ulp), op for op.
#[inline]
pub fn v_expf(x: f32) -> f32 {
    let c = |bits: u32| f32::from_bits(bits);
    let r = c(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let e = z.to_bits().wrapping_shl(23);
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6) * b);
    if n.abs() <= 126.0 {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    if n.abs() > 192.0 {
        return s1 * s1;
    }
    let s2 = f32::from_bits(e.wrapping_sub(g));
    s2.mul_add(j, s2) * s1
}

/// `x / (1 + exp(-x))` with the vector exp (`ggml_v_silu`).
#[inline]
fn v_silu(x: f32) -> f32 {
    x / (1.0 + v_expf(0.0 - x))
}

/// `x / (1 + expf(-x))` with libm's exp (`ggml_silu_f32`, the leftover lanes).
#[inline]
fn scalar_silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `out[i] = silu(gate[i]) · up[i]` as `ggml_vec_swiglu_f32`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA are present (checked).
        unsafe { avx2::swiglu(gate, up, out) };
        return;
    }
    swiglu_plain(gate, up, out);
}

/// [`swiglu`] one lane at a time (the twin of the vector version).
pub fn swiglu_plain(gate: &[f32], up: &[f32], out: &mut Vec<f32>) {
    let whole = gate.len() / LANES * LANES;
    for (i, (g, u)) in gate.iter().zip(up).enumerate() {
        let s = if i < whole {
            v_silu(*g)
        } else {
            scalar_silu(*g)
        };
        out.push(s * u);
    }
}

/// `ggml_vec_silu_f32` in place: the vector SiLU over whole 8-lane groups from the start of
/// `v`, libm's for the rest.
pub fn silu_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA are present (checked).
        unsafe { avx2::silu_in_place(v) };
        return;
    }
    silu_in_place_plain(v);
}

/// [`silu_in_place`] one lane at a time (the twin of the vector version).
pub fn silu_in_place_plain(v: &mut [f32]) {
    let whole = v.len() / LANES * LANES;
    for (i, x) in v.iter_mut().enumerate() {
        *x = if i < whole {
            v_silu(*x)
        } else {
            scalar_silu(*x)
        };
    }
}

/// `ggml_vec_swiglu_f32` written over `up`: `up[i] = silu(gate[i]) · up[i]`.
pub fn swiglu_in_place(gate: &[f32], up: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA are present (checked).
        unsafe { avx2::swiglu_in_place(gate, up) };
        return;
    }
    swiglu_in_place_plain(gate, up);
}

/// [`swiglu_in_place`] one lane at a time (the twin of the vector version).
pub fn swiglu_in_place_plain(gate: &[f32], up: &mut [f32]) {
    let whole = gate.len() / LANES * LANES;
    for (i, (g, u)) in gate.iter().zip(up.iter_mut()).enumerate() {
        let s = if i < whole {
            v_silu(*g)
        } else {
            scalar_silu(*g)
        };
        *u *= s;
    }
}

/// ggml's tanh GeLU in f32 (`ggml_gelu_f32`), which fills the f16 table.
fn gelu_f32(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// `ggml_table_gelu_f16`: GeLU of every f16 value, rounded to f16.
fn gelu_table() -> &'static [f16] {
    static TABLE: std::sync::OnceLock<Vec<f16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_f32(f16::from_bits(bits).to_f32())))
            .collect()
    })
}

/// `out[i] = gelu(gate[i]) · up[i]` as `ggml_vec_geglu_f32` (GGML_GELU_FP16 table lookup).
pub fn geglu(gate: &[f32], up: &[f32], out: &mut Vec<f32>) {
    let table = gelu_table();
    for (g, u) in gate.iter().zip(up) {
        let v = if *g <= -10.0 {
            0.0
        } else if *g >= 10.0 {
            *g * u
        } else {
            table[f16::from_f32(*g).to_bits() as usize].to_f32() * u
        };
        out.push(v);
    }
}

/// `t = hi + lo`, then `(t0 + t2) + (t1 + t3)`: the movehl/movehdup reduction of an 8-lane
/// vector in ggml's AVX2 softmax and tinyBLAS's `hsum`.
#[inline]
pub fn hsum_movehl(v: &[f32; LANES]) -> f32 {
    let t: [f32; 4] = std::array::from_fn(|i| v[4 + i] + v[i]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// `t = hi + lo`, then `(t0 + t1) + (t2 + t3)`: the two-`hadd` reduction of
/// `ggml_vec_dot_f32`.
#[inline]
pub fn hsum_hadd(v: &[f32; LANES]) -> f32 {
    let t: [f32; 4] = std::array::from_fn(|i| v[4 + i] + v[i]);
    (t[0] + t[1]) + (t[2] + t[3])
}

/// `Σ x[i]·y[i]` over `i < n` as `ggml_vec_dot_f32` on AVX2 (attention scores, and the
/// attention output of a single decoded token); `xy(i)` is the pair at ggml's index i.
/// `padded_len` is the length ggml sees (the key range rounded up with zero-probability
/// slots); elements past `n` count as zeros.
pub fn vec_dot_f32(n: usize, xy: impl Fn(usize) -> (f32, f32), padded_len: usize) -> f32 {
    const STEP: usize = 4 * LANES;
    let whole = padded_len.max(n) / STEP * STEP;
    let mut acc = [[0f32; LANES]; 4];
    for i in 0..n.min(whole) {
        let (x, y) = xy(i);
        let a = &mut acc[(i / LANES) % 4][i % LANES];
        *a = x.mul_add(y, *a);
    }
    let s: [f32; LANES] = std::array::from_fn(|l| {
        let s0 = acc[0][l] + acc[2][l];
        let s1 = acc[1][l] + acc[3][l];
        s0 + s1
    });
    let mut sum = hsum_hadd(&s);
    for i in whole..n {
        let (x, y) = xy(i);
        sum += x * y;
    }
    sum
}

/// `Σ x[i]·y[i]` as tinyBLAS's F32 kernel (batches of two or more tokens): one 8-lane FMA
/// accumulator, zero-padded to whole vectors.
pub fn tiny_dot_f32(n: usize, xy: impl Fn(usize) -> (f32, f32)) -> f32 {
    let mut acc = [0f32; LANES];
    for i in 0..n {
        let (x, y) = xy(i);
        let a = &mut acc[i % LANES];
        *a = x.mul_add(y, *a);
    }
    hsum_movehl(&acc)
}

/// Softmax over one row of attention scores as `ggml_compute_forward_soft_max_f32` (AVX2).
/// llama.cpp pads the key range with masked (zero-probability) slots, so every real score
/// goes through the vector exp, in 8-lane groups counted from the row's first key.
pub fn softmax_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA are present (checked).
        unsafe { avx2::softmax_in_place(v) };
        return;
    }
    softmax_plain(v);
}

/// [`softmax_in_place`] one lane at a time (the twin of the vector version).
pub fn softmax_plain(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for chunk in v.chunks_mut(LANES) {
        let mut lanes = [0f32; LANES];
        for (l, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *x = v_expf(*x - max);
            *l = *x;
        }
        sum += hsum_movehl(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for x in v.iter_mut() {
        *x *= inv;
    }
}

/// The vector forms of the functions above (same operations on 8 lanes at once).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{hsum_movehl, scalar_silu, v_expf, LANES};

    /// Whether this CPU runs the vector forms.
    #[inline]
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// [`hsum_movehl`] of a vector: ggml's `hsum_float_8` and tinyBLAS's `hsum`.
    #[inline(always)]
    pub unsafe fn hsum_movehl8(v: __m256) -> f32 {
        let t = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
        let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
    }

    /// ggml's AVX2 `ggml_v_expf` on 8 lanes; lanes outside ±126 of the exponent range take
    /// the scalar [`v_expf`], which spells out ggml's slow path op for op.
    #[inline(always)]
    pub unsafe fn v_expf8(x: __m256) -> __m256 {
        let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
        let r = c(0x4b40_0000);
        let z = _mm256_fmadd_ps(x, c(0x3fb8_aa3b), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(n, c(0x35bf_be8e), _mm256_fnmadd_ps(n, c(0x3f31_7200), x));
        let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
        let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(c(0x3f80_0000))));
        let big = _mm256_cmp_ps(
            _mm256_andnot_ps(_mm256_set1_ps(-0.0), n),
            _mm256_set1_ps(126.0),
            _CMP_GT_OQ,
        );
        if _mm256_movemask_ps(big) != 0 {
            let mut lanes = [0f32; LANES];
            _mm256_storeu_ps(lanes.as_mut_ptr(), x);
            for l in lanes.iter_mut() {
                *l = v_expf(*l);
            }
            return _mm256_loadu_ps(lanes.as_ptr());
        }
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)), u, {
                _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb))
            }),
            u,
            _mm256_mul_ps(c(0x3f7f_fff6), b),
        );
        _mm256_fmadd_ps(j, k, k)
    }

    /// [`super::swiglu_plain`] on 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu(gate: &[f32], up: &[f32], out: &mut Vec<f32>) {
        let n = gate.len().min(up.len());
        let whole = n / LANES * LANES;
        out.reserve(n);
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i < whole {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            let e = v_expf8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
            let mut lanes = [0f32; LANES];
            _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_mul_ps(s, u));
            out.extend_from_slice(&lanes);
            i += LANES;
        }
        for j in whole..n {
            out.push(scalar_silu(gate[j]) * up[j]);
        }
    }

    /// `x / (1 + exp(-x))` on 8 lanes (`ggml_v_silu`).
    #[inline(always)]
    unsafe fn v_silu8(x: __m256) -> __m256 {
        let e = v_expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
    }

    /// [`super::silu_in_place_plain`] on 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_in_place(v: &mut [f32]) {
        let mut chunks = v.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            _mm256_storeu_ps(p, v_silu8(_mm256_loadu_ps(p)));
        }
        for x in chunks.into_remainder() {
            *x = scalar_silu(*x);
        }
    }

    /// [`super::swiglu_in_place_plain`] on 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu_in_place(gate: &[f32], up: &mut [f32]) {
        let n = gate.len().min(up.len());
        let whole = n / LANES * LANES;
        for i in (0..whole).step_by(LANES) {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = up.as_mut_ptr().add(i);
            _mm256_storeu_ps(u, _mm256_mul_ps(v_silu8(g), _mm256_loadu_ps(u)));
        }
        for j in whole..n {
            up[j] *= scalar_silu(gate[j]);
        }
    }

    /// [`super::softmax_plain`] with the exponentials on 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_in_place(v: &mut [f32]) {
        let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let m = _mm256_set1_ps(max);
        let mut sum = 0f64;
        let mut chunks = v.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            let e = v_expf8(_mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), m));
            let mut lanes = [0f32; LANES];
            _mm256_storeu_ps(lanes.as_mut_ptr(), e);
            chunk.copy_from_slice(&lanes);
            sum += hsum_movehl(&lanes) as f64;
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut lanes = [0f32; LANES];
            for (l, x) in lanes.iter_mut().zip(rest.iter_mut()) {
                *x = v_expf(*x - max);
                *l = *x;
            }
            sum += hsum_movehl(&lanes) as f64;
        }
        let inv = _mm256_set1_ps((1.0 / sum) as f32);
        let mut chunks = v.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), inv));
        }
        let inv = (1.0 / sum) as f32;
        for x in chunks.into_remainder() {
            *x *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_forms_equal_their_plain_twins_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            // Covers the fast path, ggml's slow path beyond ±126 and leftover lanes.
            let gate: Vec<f32> = (0..203).map(|i| (i as f32 * 0.731).sin() * 9.0).collect();
            let up: Vec<f32> = (0..203).map(|i| (i as f32 * 0.37).cos()).collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            swiglu(&gate, &up, &mut a);
            swiglu_plain(&gate, &up, &mut b);
            assert_eq!(a, b);
            let (mut c, mut d) = (up.clone(), up.clone());
            swiglu_in_place(&gate, &mut c);
            swiglu_in_place_plain(&gate, &mut d);
            assert_eq!(c, d);
            assert_eq!(c, a);
            let (mut e, mut f) = (gate.clone(), gate.clone());
            silu_in_place(&mut e);
            silu_in_place_plain(&mut f);
            assert_eq!(e, f);
            for len in [1, 7, 8, 9, 31, 203] {
                let mut scores: Vec<f32> = gate[..len].iter().map(|v| v * 20.0).collect();
                let mut plain = scores.clone();
                softmax_in_place(&mut scores);
                softmax_plain(&mut plain);
                assert_eq!(scores, plain, "len {len}");
            }
            let mut wide = vec![-150.0f32, 0.5, 1.0, -200.0, 3.0, 100.0, -87.0, 7.0];
            let mut plain = wide.clone();
            // SAFETY: AVX2 checked above.
            unsafe {
                use std::arch::x86_64::*;
                let e = avx2::v_expf8(_mm256_loadu_ps(wide.as_ptr()));
                _mm256_storeu_ps(wide.as_mut_ptr(), e);
            }
            plain.iter_mut().for_each(|x| *x = v_expf(*x));
            assert_eq!(wide, plain);
        }
    }

    #[test]
    fn vector_exp_is_within_two_ulp_of_libm() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (v_expf(x), x.exp());
            worst = worst.max((a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32);
            x += 0.0137;
        }
        assert!(worst <= 2, "worst ulp distance {worst}");
        assert_eq!(v_expf(-200.0), 0.0);
        assert_eq!(v_expf(0.0), 1.0);
    }

    #[test]
    fn softmax_sums_to_one_and_matches_plain_softmax_closely() {
        let mut v: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let mut plain = v.clone();
        crate::layers::attention::softmax_in_place(&mut plain);
        softmax_in_place(&mut v);
        let s: f32 = v.iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
        for (a, b) in v.iter().zip(&plain) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{a} vs {b}");
        }
    }

    #[test]
    fn gated_activations_match_their_definitions() {
        let gate: Vec<f32> = (0..40).map(|i| i as f32 * 0.3 - 6.0).collect();
        let up: Vec<f32> = (0..40).map(|i| 1.0 + i as f32 * 0.01).collect();
        let (mut s, mut g) = (Vec::new(), Vec::new());
        assert!(tiny_dot_f32(gate.len(), |i| (gate[i], up[i])).is_finite());
        swiglu(&gate, &up, &mut s);
        geglu(&gate, &up, &mut g);
        for i in 0..40 {
            let want_s = crate::layers::silu(gate[i]) * up[i];
            assert!((s[i] - want_s).abs() <= 1e-6 * want_s.abs().max(1.0));
            // The f16 table keeps ~3 decimal digits.
            let want_g = crate::layers::mlp::gelu_tanh(gate[i]) * up[i];
            assert!(
                (g[i] - want_g).abs() <= 2e-3 * want_g.abs().max(1e-2),
                "{i}"
            );
        }
        assert_eq!(
            g[0],
            gelu_table()[f16::from_f32(-6.0).to_bits() as usize].to_f32()
        );
    }
}
