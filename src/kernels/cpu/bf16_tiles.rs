//! Register tiles of the bf16 matmul ([`super::bf16_matmul`]): `rows` activation rows against
//! one [`PANEL`]-row weight panel over a run of column pairs, written to a `[rows][PANEL]` f32
//! scratch tile. Two kinds:
//!
//! - **widen** (exact): activations stay f32; each bf16 weight is widened to f32 exactly (a
//!   shift or a mask of its packed pair) and multiplied with an f32 FMA: the arithmetic of f32
//!   upcast weights, only the summation order differs. AVX2+FMA (8 lanes) and AVX-512F
//!   (16 lanes) share one generic body; the plain version states the math.
//! - **dot**: activations already rounded to bf16 pairs, one `vdpbf16ps` per 16 outputs × 2
//!   columns (AVX512-BF16). Its plain version (same data, widened and multiplied in f32 with
//!   the odd column first, as the instruction does) lets tests check the data flow on any CPU.
//!
//! Inputs: `xp` holds the activations for the run as `[pairs][rows][2]` f32 (widen) or
//! `[pairs][rows]` packed bf16 pairs (dot); `wp` points at the panel's first pair of the run,
//! `[pairs][PANEL]` (see [`super::packed_bf16`]). Callers guarantee those extents.

use super::packed_bf16::PANEL;

/// The instruction set a tile is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Scalar code (any CPU; the tests' reference data flow).
    Plain,
    /// AVX2 + FMA, 8 f32 lanes.
    Avx2,
    /// AVX-512F/BW, 16 f32 lanes.
    Avx512,
    /// AVX-512 plus the AVX512-BF16 dot product.
    Avx512Bf16,
}

impl Isa {
    /// The best instruction set of this CPU (detected once).
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx512 = is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl");
                if avx512 && is_x86_feature_detected!("avx512bf16") {
                    return Isa::Avx512Bf16;
                }
                if avx512 {
                    return Isa::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Isa::Avx2;
                }
            }
            Isa::Plain
        })
    }

    /// Whether [`dot_tile`] runs natively (not emulated).
    pub fn has_bf16_dot(self) -> bool {
        self == Isa::Avx512Bf16
    }

    /// Most activation rows one [`widen_tile`] covers.
    pub fn widen_rows(self) -> usize {
        match self {
            Isa::Plain | Isa::Avx2 => 4,
            Isa::Avx512 | Isa::Avx512Bf16 => 8,
        }
    }
}

/// Most activation rows one [`dot_tile`] covers.
pub const DOT_ROWS: usize = 12;

/// Exact tile: `out[r][j] = Σ_q xp[q][r][0]·w[q][j].even + xp[q][r][1]·w[q][j].odd` for
/// `q < pairs`, `r < rows`, `j < PANEL`.
///
/// # Safety
/// `isa` must be supported by this CPU; `rows` is in `1..=isa.widen_rows()`; `xp` holds
/// `pairs * rows * 2` f32, `wp` `pairs * PANEL` u32, `out` `rows * PANEL` f32.
pub unsafe fn widen_tile(
    isa: Isa,
    rows: usize,
    xp: *const f32,
    wp: *const u32,
    pairs: usize,
    out: *mut f32,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::widen_avx2(rows, xp, wp, pairs, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => x86::widen_avx512(rows, xp, wp, pairs, out),
        _ => widen_plain(rows, xp, wp, pairs, out),
    }
}

/// bf16 dot tile: like [`widen_tile`] with both factors bf16 (`xp[q][r]` a packed pair);
/// `vdpbf16ps` when `isa` has it, else the plain emulation.
///
/// # Safety
/// As [`widen_tile`], with `rows` in `1..=DOT_ROWS` and `xp` holding `pairs * rows` u32.
pub unsafe fn dot_tile(
    isa: Isa,
    rows: usize,
    xp: *const u32,
    wp: *const u32,
    pairs: usize,
    out: *mut f32,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => x86::dot_avx512bf16(rows, xp, wp, pairs, out),
        _ => dot_plain(rows, xp, wp, pairs, out),
    }
}

#[inline(always)]
fn even(v: u32) -> f32 {
    f32::from_bits(v << 16)
}

#[inline(always)]
fn odd(v: u32) -> f32 {
    f32::from_bits(v & 0xFFFF_0000)
}

unsafe fn widen_plain(rows: usize, xp: *const f32, wp: *const u32, pairs: usize, out: *mut f32) {
    for r in 0..rows {
        for j in 0..PANEL {
            let mut acc = 0f32;
            for q in 0..pairs {
                let w = *wp.add(q * PANEL + j);
                acc = (*xp.add((q * rows + r) * 2)).mul_add(even(w), acc);
                acc = (*xp.add((q * rows + r) * 2 + 1)).mul_add(odd(w), acc);
            }
            *out.add(r * PANEL + j) = acc;
        }
    }
}

unsafe fn dot_plain(rows: usize, xp: *const u32, wp: *const u32, pairs: usize, out: *mut f32) {
    for r in 0..rows {
        for j in 0..PANEL {
            let mut acc = 0f32;
            for q in 0..pairs {
                let (w, x) = (*wp.add(q * PANEL + j), *xp.add(q * rows + r));
                // bf16 × bf16 is exact in f32; the instruction adds the odd product first.
                acc += odd(x) * odd(w);
                acc += even(x) * even(w);
            }
            *out.add(r * PANEL + j) = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // fixed-size register tiles read clearest as index loops
mod x86 {
    use std::arch::x86_64::*;

    use super::PANEL;

    /// The few vector operations the widening tile needs, for one register width.
    trait Lanes: Copy {
        /// f32 lanes per register.
        const N: usize;
        unsafe fn zero() -> Self;
        unsafe fn splat(p: *const f32) -> Self;
        /// `a · b + c`.
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
        /// `N` packed pairs → (even columns, odd columns) as f32.
        unsafe fn widen(p: *const u32) -> (Self, Self);
        unsafe fn store(p: *mut f32, v: Self);
    }

    #[derive(Clone, Copy)]
    struct Y(__m256);

    impl Lanes for Y {
        const N: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Y(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            Y(_mm256_broadcast_ss(&*p))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Y(_mm256_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn widen(p: *const u32) -> (Self, Self) {
            let v = _mm256_loadu_si256(p as *const __m256i);
            let hi = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
            (
                Y(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16))),
                Y(_mm256_castsi256_ps(_mm256_and_si256(v, hi))),
            )
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self) {
            _mm256_storeu_ps(p, v.0)
        }
    }

    #[derive(Clone, Copy)]
    struct Z(__m512);

    impl Lanes for Z {
        const N: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Z(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            Z(_mm512_set1_ps(*p))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Z(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn widen(p: *const u32) -> (Self, Self) {
            let v = _mm512_loadu_si512(p as *const __m512i);
            let hi = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
            (
                Z(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16))),
                Z(_mm512_castsi512_ps(_mm512_and_si512(v, hi))),
            )
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self) {
            _mm512_storeu_ps(p, v.0)
        }
    }

    /// Prefetches the panel line pair 8 column pairs after `w` (a hint: may point past the
    /// panel, which is why the address is computed with wrapping arithmetic).
    #[inline(always)]
    unsafe fn prefetch_ahead(w: *const u32) {
        _mm_prefetch(w.wrapping_add(8 * PANEL) as *const i8, _MM_HINT_T0);
        _mm_prefetch(w.wrapping_add(8 * PANEL + 16) as *const i8, _MM_HINT_T0);
    }

    /// `MR` rows against `CH · V::N` panel columns starting at `col`.
    #[inline(always)]
    unsafe fn widen<V: Lanes, const MR: usize, const CH: usize>(
        xp: *const f32,
        wp: *const u32,
        pairs: usize,
        out: *mut f32,
        col: usize,
    ) {
        let mut acc = [[V::zero(); CH]; MR];
        for q in 0..pairs {
            let w = wp.add(q * PANEL + col);
            if MR == 1 {
                // One row streams the weights from memory: ask for them 8 pairs (1 KiB) ahead
                // (decode sweep 28 -> 25 ms/token on the 350m's matrices).
                prefetch_ahead(w);
            }
            let mut e = [V::zero(); CH];
            let mut o = [V::zero(); CH];
            for c in 0..CH {
                (e[c], o[c]) = V::widen(w.add(c * V::N));
            }
            let x = xp.add(q * MR * 2);
            for r in 0..MR {
                let (xe, xo) = (V::splat(x.add(2 * r)), V::splat(x.add(2 * r + 1)));
                for c in 0..CH {
                    acc[r][c] = V::fma(xe, e[c], acc[r][c]);
                    acc[r][c] = V::fma(xo, o[c], acc[r][c]);
                }
            }
        }
        for r in 0..MR {
            for c in 0..CH {
                V::store(out.add(r * PANEL + col + c * V::N), acc[r][c]);
            }
        }
    }

    /// Both 16-column halves of the panel with `CH = 2` (AVX2 has 16 registers).
    #[inline(always)]
    unsafe fn halves<const MR: usize>(xp: *const f32, wp: *const u32, pairs: usize, out: *mut f32) {
        widen::<Y, MR, 2>(xp, wp, pairs, out, 0);
        widen::<Y, MR, 2>(xp, wp, pairs, out, 16);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn widen_avx2(
        rows: usize,
        xp: *const f32,
        wp: *const u32,
        pairs: usize,
        out: *mut f32,
    ) {
        match rows {
            // One row: the whole panel in one pass (8 accumulators), so weights stream once.
            1 => widen::<Y, 1, 4>(xp, wp, pairs, out, 0),
            2 => halves::<2>(xp, wp, pairs, out),
            3 => halves::<3>(xp, wp, pairs, out),
            _ => halves::<4>(xp, wp, pairs, out),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn widen_avx512(
        rows: usize,
        xp: *const f32,
        wp: *const u32,
        pairs: usize,
        out: *mut f32,
    ) {
        match rows {
            1 => widen::<Z, 1, 2>(xp, wp, pairs, out, 0),
            2 => widen::<Z, 2, 2>(xp, wp, pairs, out, 0),
            3 => widen::<Z, 3, 2>(xp, wp, pairs, out, 0),
            4 => widen::<Z, 4, 2>(xp, wp, pairs, out, 0),
            5 => widen::<Z, 5, 2>(xp, wp, pairs, out, 0),
            6 => widen::<Z, 6, 2>(xp, wp, pairs, out, 0),
            7 => widen::<Z, 7, 2>(xp, wp, pairs, out, 0),
            _ => widen::<Z, 8, 2>(xp, wp, pairs, out, 0),
        }
    }

    #[inline(always)]
    unsafe fn dot<const MR: usize>(xp: *const u32, wp: *const u32, pairs: usize, out: *mut f32) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for q in 0..pairs {
            let w = wp.add(q * PANEL);
            if MR == 1 {
                prefetch_ahead(w);
            }
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w as *const __m512i));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(16) as *const __m512i));
            let x = xp.add(q * MR);
            for r in 0..MR {
                let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x.add(r) as i32));
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xv, w0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xv, w1);
            }
        }
        for r in 0..MR {
            _mm512_storeu_ps(out.add(r * PANEL), acc[r][0]);
            _mm512_storeu_ps(out.add(r * PANEL + 16), acc[r][1]);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn dot_avx512bf16(
        rows: usize,
        xp: *const u32,
        wp: *const u32,
        pairs: usize,
        out: *mut f32,
    ) {
        match rows {
            1 => dot::<1>(xp, wp, pairs, out),
            2 => dot::<2>(xp, wp, pairs, out),
            3 => dot::<3>(xp, wp, pairs, out),
            4 => dot::<4>(xp, wp, pairs, out),
            5 => dot::<5>(xp, wp, pairs, out),
            6 => dot::<6>(xp, wp, pairs, out),
            7 => dot::<7>(xp, wp, pairs, out),
            8 => dot::<8>(xp, wp, pairs, out),
            9 => dot::<9>(xp, wp, pairs, out),
            10 => dot::<10>(xp, wp, pairs, out),
            11 => dot::<11>(xp, wp, pairs, out),
            _ => dot::<12>(xp, wp, pairs, out),
        }
    }
}
