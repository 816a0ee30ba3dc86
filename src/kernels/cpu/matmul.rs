//! `y = x · Wᵀ` for the skinny shapes of decoding (few rows of x) with f32 or bf16 weights in
//! PyTorch's `[out, in]` layout. Each thread owns a range of output features; a 4×4 register
//! tile (4 weight rows × 4 activation rows) streams K, so every weight byte is read from memory
//! once per call whatever the number of rows. bf16 weights are widened to f32 exactly (a shift),
//! so the arithmetic is the f32 arithmetic of the upcast weights: only the summation order
//! differs from the reference.

use rayon::prelude::*;

/// Weights of a linear layer, `[n, k]` row-major.
#[derive(Clone, Copy)]
pub enum WeightData<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bf16 values as raw bits.
    Bf16(&'a [u16]),
}

impl WeightData<'_> {
    fn len(&self) -> usize {
        match self {
            WeightData::F32(w) => w.len(),
            WeightData::Bf16(w) => w.len(),
        }
    }
}

/// Plain reference: `y[i, j] = Σ_k x[i, k] · w[j, k]`.
pub fn matmul_xwt_reference(x: &[f32], m: usize, k: usize, w: WeightData, n: usize, y: &mut [f32]) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for kk in 0..k {
                let wv = match w {
                    WeightData::F32(w) => w[j * k + kk],
                    WeightData::Bf16(w) => f32::from_bits((w[j * k + kk] as u32) << 16),
                };
                acc += x[i * k + kk] * wv;
            }
            y[i * n + j] = acc;
        }
    }
}

/// Output features per parallel task.
const COLS_PER_TASK: usize = 64;

struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of `y` (see `matmul_xwt`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ`, using AVX-512 when the CPU has it.
pub fn matmul_xwt(x: &[f32], m: usize, k: usize, w: WeightData, n: usize, y: &mut [f32]) {
    assert!(x.len() >= m * k && w.len() >= n * k && y.len() >= m * n);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            let out = OutPtr(y.as_mut_ptr());
            let tasks = n.div_ceil(COLS_PER_TASK);
            (0..tasks).into_par_iter().for_each(|t| {
                let j0 = t * COLS_PER_TASK;
                let j1 = (j0 + COLS_PER_TASK).min(n);
                let out = &out;
                // SAFETY: avx512f was detected; bounds were asserted above; each task writes
                // only columns j0..j1 of y.
                unsafe { avx512::cols(x, m, k, w, n, j0, j1, out.0) };
            });
            return;
        }
    }
    matmul_xwt_reference(x, m, k, w, n, y);
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // fixed-size register tiles read clearest as index loops
mod avx512 {
    use std::arch::x86_64::*;

    use super::WeightData;

    #[inline(always)]
    unsafe fn load_w(w: WeightData, off: usize, mask: __mmask16) -> __m512 {
        match w {
            WeightData::F32(w) => _mm512_maskz_loadu_ps(mask, w.as_ptr().add(off)),
            WeightData::Bf16(w) => {
                let half = _mm256_maskz_loadu_epi16(mask, w.as_ptr().add(off) as *const i16);
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16))
            }
        }
    }

    /// One register tile: rows `i..i+NI` of x against weight rows `j..j+NJ`, all of K.
    #[inline(always)]
    unsafe fn tile<const NI: usize, const NJ: usize>(
        xp: *const f32,
        k: usize,
        w: WeightData,
        n: usize,
        i: usize,
        j: usize,
        y: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NJ]; NI];
        let mut kk = 0;
        while kk < k {
            let mask: __mmask16 = if k - kk >= 16 {
                0xffff
            } else {
                ((1u32 << (k - kk)) - 1) as u16
            };
            let mut wv = [_mm512_setzero_ps(); NJ];
            for r in 0..NJ {
                wv[r] = load_w(w, (j + r) * k + kk, mask);
            }
            for c in 0..NI {
                let xv = _mm512_maskz_loadu_ps(mask, xp.add((i + c) * k + kk));
                for r in 0..NJ {
                    acc[c][r] = _mm512_fmadd_ps(xv, wv[r], acc[c][r]);
                }
            }
            kk += 16;
        }
        for c in 0..NI {
            for r in 0..NJ {
                *y.add((i + c) * n + j + r) = _mm512_reduce_add_ps(acc[c][r]);
            }
        }
    }

    /// All rows of x against weight rows `j..j+NJ`.
    #[inline(always)]
    unsafe fn strip<const NJ: usize>(
        xp: *const f32,
        m: usize,
        k: usize,
        w: WeightData,
        n: usize,
        j: usize,
        y: *mut f32,
    ) {
        let mut i = 0;
        while i + 4 <= m {
            tile::<4, NJ>(xp, k, w, n, i, j, y);
            i += 4;
        }
        match m - i {
            3 => tile::<3, NJ>(xp, k, w, n, i, j, y),
            2 => tile::<2, NJ>(xp, k, w, n, i, j, y),
            1 => tile::<1, NJ>(xp, k, w, n, i, j, y),
            _ => {}
        }
    }

    /// Computes columns `j0..j1` of `y` for all `m` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn cols(
        x: &[f32],
        m: usize,
        k: usize,
        w: WeightData,
        n: usize,
        j0: usize,
        j1: usize,
        y: *mut f32,
    ) {
        let xp = x.as_ptr();
        let mut j = j0;
        while j + 4 <= j1 {
            strip::<4>(xp, m, k, w, n, j, y);
            j += 4;
        }
        match j1 - j {
            3 => strip::<3>(xp, m, k, w, n, j, y),
            2 => strip::<2>(xp, m, k, w, n, j, y),
            1 => strip::<1>(xp, m, k, w, n, j, y),
            _ => {}
        }
    }
}

/// Most activation rows for which [`matmul_xwt`] beats candle's packed GEMM (measured with
/// `examples/matmul_bench.rs`: 2–4x faster at 4–64 rows on Granite-H shapes).
pub const MAX_SKINNY_ROWS: usize = 64;

/// `x · wᵀ` for f32 tensors through [`matmul_xwt`] when `x` has at most [`MAX_SKINNY_ROWS`]
/// rows and `w` is contiguous f32 in CPU memory; `None` otherwise (use the general GEMM).
pub fn skinny_matmul_t(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    use candle_core::{DType, Device, Storage, Tensor};
    let (m, k) = x.dims2()?;
    let (n, kw) = w.dims2()?;
    if m > MAX_SKINNY_ROWS || k != kw || x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return Ok(None);
    }
    // Without AVX-512 the kernel is the scalar reference, 10-50x slower than candle's GEMM.
    #[cfg(target_arch = "x86_64")]
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return Ok(None);
    }
    #[cfg(not(target_arch = "x86_64"))]
    return Ok(None);
    let (storage, layout) = w.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    let weights = &cpu.as_slice::<f32>()?[start..end];
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let mut y = vec![0f32; m * n];
    matmul_xwt(&xs, m, k, WeightData::F32(weights), n, &mut y);
    Ok(Some(Tensor::from_vec(y, (m, n), &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(m: usize, k: usize, n: usize, bf16: bool) {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let wf: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
            .collect();
        let wb: Vec<u16> = wf.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        let w = if bf16 {
            WeightData::Bf16(&wb)
        } else {
            WeightData::F32(&wf)
        };
        let mut y = vec![0f32; m * n];
        let mut r = vec![0f32; m * n];
        matmul_xwt(&x, m, k, w, n, &mut y);
        matmul_xwt_reference(&x, m, k, w, n, &mut r);
        for (a, b) in y.iter().zip(&r) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{m}x{k}x{n} bf16={bf16}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn matches_reference_on_ragged_shapes() {
        for &(m, k, n) in &[
            (1, 768, 300),
            (3, 17, 5),
            (5, 64, 129),
            (16, 100, 67),
            (1, 1, 1),
            (7, 33, 4),
        ] {
            check(m, k, n, false);
            check(m, k, n, true);
        }
    }
}
