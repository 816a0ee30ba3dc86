//! `exp` and SiLU over slices in a form the compiler vectorizes (libm's `expf` is a scalar
//! call per element, which made the conv's and the gated norm's SiLU a visible share of a
//! Mamba2 prefill). Cephes' single-precision `expf`: range reduction by `ln 2` in two parts and
//! a degree-6 polynomial, relative error below 2e-7 against the exact value (the tests check
//! it against f64). The reference twin is `f32::exp`.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding then subtracting 1.5·2²³ rounds to the nearest integer without a branch, and the
/// integer sits in the low mantissa bits of the sum.
const ROUND: f32 = 12_582_912.0;
/// Beyond these the result would leave the normal range: clamping keeps `2^n` a normal
/// number (results below e^-87.3 ≈ 1.2e-38 come out as that, above e^88.3 as that).
const X_MIN: f32 = -87.3;
const X_MAX: f32 = 88.3;

/// `e^x` (see the module note for accuracy and the clamped range).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(X_MIN, X_MAX);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let poly = p * r * r + r + 1.0;
    // t's low mantissa bits hold n + 2²² (the 1.5 of ROUND); the biased exponent is n + 127.
    let n_int = (t.to_bits() as i32) - 0x4B40_0000;
    f32::from_bits(((n_int + 127) << 23) as u32) * poly
}

/// `v · sigmoid(v)` with [`exp`].
#[inline(always)]
pub fn silu(v: f32) -> f32 {
    v / (1.0 + exp(-v))
}

/// Applies [`silu`] to every element.
pub fn silu_in_place(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = silu(*x);
    }
}

/// Replaces every element by [`exp`] of it.
pub fn exp_in_place(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = exp(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2e7_relative_of_the_exact_value() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.000_731;
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_saturates_instead_of_producing_garbage() {
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 2e-38);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
        assert!(exp(f32::NEG_INFINITY) < 2e-38);
    }

    #[test]
    fn silu_matches_the_libm_twin() {
        let mut v: Vec<f32> = (0..4000).map(|i| (i as f32 - 2000.0) * 0.0173).collect();
        let want: Vec<f32> = v.iter().map(|&x| crate::layers::silu(x)).collect();
        silu_in_place(&mut v);
        for (a, b) in v.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{a} vs {b}");
        }
    }
}
