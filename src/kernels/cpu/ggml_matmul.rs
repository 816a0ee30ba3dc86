//! `x · Wᵀ` for ggml-quantized weights with llama.cpp's CPU numerics. Like llama.cpp, each
//! activation row is quantized to the weight type's dot-product partner (Q8_0 for Q4_0/Q5_0/
//! Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the k-quants) and every output is an integer dot product
//! per block, scaled. The activation quantizers here follow ggml's x86 code exactly (scale
//! `127/max`, round half to even, Q8_1's `s = f16(d·Σq)`), because candle's differ in small
//! ways (its Q8_1 sum is rounded through f16 twice, its x86 Q8_0 kernel quantizes activations
//! to Q8_K) that move greedy tokens away from llama.cpp's on the same file. The per-block dot
//! products are candle's (`GgmlType::vec_dot`), which mirror ggml's.
//!
//! The reference twin is "dequantize the activation blocks and the weights, multiply in f64"
//! (see the tests): the kernel must match it to f32 rounding.

use candle_core::quantized::k_quants::{
    BlockQ4K, BlockQ5K, BlockQ8_0, BlockQ8_1, GgmlType, QK8_0, QK_K,
};
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

use super::ggml_kquants;
use crate::error::{Error, Result};

/// Whether [`matmul_t`] handles this weight type.
pub fn supports(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
    )
}

/// ggml's `nearest_int`: round half to even through the float-magic trick.
#[inline]
fn round_even(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// Views a slice of plain-old-data blocks as bytes.
pub(super) fn bytes_mut<T>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: the block types are `repr(C)` structs of integers and floats (no padding
    // invariants, every bit pattern valid); the view covers exactly the slice.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

/// Reinterprets a quantized tensor's storage as its blocks.
fn blocks<T: GgmlType>(data: &[u8]) -> Result<&[T]> {
    let size = std::mem::size_of::<T>();
    if !data.len().is_multiple_of(size)
        || !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return Err(Error::DTypeMismatch {
            name: "quantized matrix".into(),
            expected: format!("whole aligned {:?} blocks", T::DTYPE),
            got: format!("{} bytes", data.len()),
        });
    }
    // SAFETY: length and alignment checked; the bytes are the CPU storage of a `Vec<T>`.
    Ok(unsafe { std::slice::from_raw_parts(data.as_ptr() as *const T, data.len() / size) })
}

/// ggml x86 `quantize_row_q8_0` / `quantize_row_q8_1` for one 32-value block into `out`
/// (`d`, then `s` when `with_sum`, then 32 quants).
fn quantize_q8_block(x: &[f32], out: &mut [u8], with_sum: bool) {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max / 127.0;
    let id = if max != 0.0 { 127.0 / max } else { 0.0 };
    out[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let qs_at = if with_sum { 4 } else { 2 };
    let mut sum = 0i32;
    for (j, &v) in x.iter().enumerate() {
        let q = round_even(v * id);
        sum += q;
        out[qs_at + j] = q as i8 as u8;
    }
    if with_sum {
        out[2..4].copy_from_slice(&f16::from_f32(d * sum as f32).to_le_bytes());
    }
}

/// Which element's sign a Q8_K block's scale takes when `+a` and `-a` are both its largest
/// magnitude: ggml's `quantize_row_q8_K_ref` takes the first, the AVX2
/// `ggml_quantize_mat_q8_K_4x8` (rows that feed the repacked Q4_K GEMM) the positive one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Q8kTie {
    /// The first element of largest magnitude (`quantize_row_q8_K_ref`).
    First,
    /// `+a` when present (`ggml_quantize_mat_q8_K_4x8`).
    Positive,
}

/// ggml `quantize_row_q8_K_ref` (or, with [`Q8kTie::Positive`], the AVX2
/// `ggml_quantize_mat_q8_K_4x8`, which differs only in that tie) for one 256-value block into
/// `out` (d, quants, bsums).
pub(super) fn quantize_q8k_block(x: &[f32], out: &mut [u8], tie: Q8kTie) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if tie == Q8kTie::Positive && x.contains(&amax) {
        max = amax;
    }
    out.fill(0);
    if amax == 0.0 {
        return;
    }
    let iscale = -127.0 / max;
    let mut qs = [0i8; QK_K];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = round_even(iscale * v).min(127) as i8;
    }
    out[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    for (j, q) in qs.iter().enumerate() {
        out[4 + j] = *q as u8;
    }
    for j in 0..QK_K / 16 {
        let s: i32 = qs[j * 16..(j + 1) * 16].iter().map(|&q| q as i32).sum();
        let at = 4 + QK_K + 2 * j;
        out[at..at + 2].copy_from_slice(&(s as i16).to_le_bytes());
    }
}

/// Quantizes `m` rows of `k` activations into `T`'s dot-product partner blocks.
pub fn quantize_rows<D: GgmlType>(x: &[f32], k: usize) -> Vec<D> {
    let bs = D::BLCK_SIZE;
    let mut out: Vec<D> = (0..x.len() / bs).map(|_| D::zeros()).collect();
    let size = std::mem::size_of::<D>();
    let bytes = bytes_mut(&mut out);
    let _ = k;
    for (xb, ob) in x.chunks(bs).zip(bytes.chunks_mut(size)) {
        match D::DTYPE {
            GgmlDType::Q8_0 => quantize_q8_block(xb, ob, false),
            GgmlDType::Q8_1 => quantize_q8_block(xb, ob, true),
            _ => quantize_q8k_block(xb, ob, Q8kTie::First),
        }
    }
    out
}

/// ggml's `hsum_float_8`: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
#[inline]
pub(super) fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// f16 → f32 for every bit pattern (a table, as ggml keeps one, so the hot loop does no
/// feature detection or branching).
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()).collect())
}

#[inline(always)]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    // SAFETY-free: the table covers every u16.
    f16_table()[bits]
}

/// A 32-value legacy-quant weight block type: its size and its decoding to integers.
trait Legacy: Sync {
    /// Bytes per block.
    const SIZE: usize;
    /// Values as integers, and (scale, min for the `_1` types).
    fn decode(b: &[u8], e: &mut [i32; 32]) -> (f32, Option<f32>);
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Q8_0;

impl Legacy for Q4_0 {
    const SIZE: usize = 18;
    #[inline(always)]
    fn decode(b: &[u8], e: &mut [i32; 32]) -> (f32, Option<f32>) {
        for j in 0..16 {
            e[j] = (b[2 + j] & 0x0F) as i32 - 8;
            e[j + 16] = (b[2 + j] >> 4) as i32 - 8;
        }
        (f16_at(b, 0), None)
    }
}

impl Legacy for Q4_1 {
    const SIZE: usize = 20;
    #[inline(always)]
    fn decode(b: &[u8], e: &mut [i32; 32]) -> (f32, Option<f32>) {
        for j in 0..16 {
            e[j] = (b[4 + j] & 0x0F) as i32;
            e[j + 16] = (b[4 + j] >> 4) as i32;
        }
        (f16_at(b, 0), Some(f16_at(b, 2)))
    }
}

#[inline(always)]
fn decode_q5(b: &[u8], e: &mut [i32; 32], qh_at: usize, offset: i32) {
    let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
    let qs = &b[qh_at + 4..qh_at + 20];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as i32;
        let h1 = ((qh >> (j + 16)) & 1) as i32;
        e[j] = ((qs[j] & 0x0F) as i32 | (h0 << 4)) - offset;
        e[j + 16] = ((qs[j] >> 4) as i32 | (h1 << 4)) - offset;
    }
}

impl Legacy for Q5_0 {
    const SIZE: usize = 22;
    #[inline(always)]
    fn decode(b: &[u8], e: &mut [i32; 32]) -> (f32, Option<f32>) {
        decode_q5(b, e, 2, 16);
        (f16_at(b, 0), None)
    }
}

impl Legacy for Q5_1 {
    const SIZE: usize = 24;
    #[inline(always)]
    fn decode(b: &[u8], e: &mut [i32; 32]) -> (f32, Option<f32>) {
        decode_q5(b, e, 4, 0);
        (f16_at(b, 0), Some(f16_at(b, 2)))
    }
}

impl Legacy for Q8_0 {
    const SIZE: usize = 34;
    #[inline(always)]
    fn decode(b: &[u8], e: &mut [i32; 32]) -> (f32, Option<f32>) {
        for (j, v) in e.iter_mut().enumerate() {
            *v = b[2 + j] as i8 as i32;
        }
        (f16_at(b, 0), None)
    }
}

/// ggml's AVX2 `vec_dot_{q4_0,q4_1,q5_0,q5_1,q8_0}_q8_{0,1}`, operation for operation, for
/// output columns `first..` (weights `w`) against all `m` activation rows, into `out`
/// (column-major): per block, 8 lanes each sum 4 consecutive integer products,
/// `acc = fma(dw·dx, lane, acc)`; the `min · s` terms of the `_1` types add up separately;
/// the result is `hsum_float_8(acc) + summs`. A weight block is decoded once for all rows.
#[inline(always)]
fn dot_rows<W: Legacy>(
    w: &[u8],
    kb: usize,
    xb: &[u8],
    xsize: usize,
    first: usize,
    out: &mut [f32],
    m: usize,
) {
    let qs_at = if xsize == 36 { 4 } else { 2 };
    let mut accs = vec![[0f32; 8]; m];
    let mut summs = vec![0f32; m];
    let mut e = [0i32; 32];
    for (j, col) in out.chunks_mut(m).enumerate() {
        let r = first + j;
        let wr = &w[r * kb * W::SIZE..(r + 1) * kb * W::SIZE];
        accs.iter_mut().for_each(|a| *a = [0f32; 8]);
        summs.iter_mut().for_each(|s| *s = 0.0);
        for (bi, wb) in wr.chunks_exact(W::SIZE).enumerate() {
            let (dw, min) = W::decode(wb, &mut e);
            for i in 0..m {
                let at = (i * kb + bi) * xsize;
                let blk = &xb[at..at + xsize];
                let dx = f16_at(blk, 0);
                if let Some(mn) = min {
                    summs[i] += mn * f16_at(blk, 2);
                }
                let d = dw * dx;
                let xq = &blk[qs_at..qs_at + 32];
                let mut lanes = [0i32; 8];
                for (l, lane) in lanes.iter_mut().enumerate() {
                    for t in 0..4 {
                        *lane += e[4 * l + t] * xq[4 * l + t] as i8 as i32;
                    }
                }
                for (a, lane) in accs[i].iter_mut().zip(lanes) {
                    *a = d.mul_add(lane as f32, *a);
                }
            }
        }
        for (i, o) in col.iter_mut().enumerate() {
            *o = hsum8(&accs[i]) + summs[i];
        }
    }
}

/// [`dot_rows`] compiled for AVX2 + FMA (same operations, vector instructions).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2<W: Legacy>(
    w: &[u8],
    kb: usize,
    xb: &[u8],
    xsize: usize,
    first: usize,
    out: &mut [f32],
    m: usize,
) {
    dot_rows::<W>(w, kb, xb, xsize, first, out, m)
}

/// Q8_0 against Q8_0 activations with AVX2 register tiles (bitwise [`dot_rows`], tested).
#[cfg(target_arch = "x86_64")]
mod q8_0_avx2;

/// Q8_0 prefill with AVX-512 VNNI (bitwise [`dot_rows`], tested).
#[cfg(target_arch = "x86_64")]
mod q8_0_avx512;

/// Legacy-quant matmul with [`dot_legacy`]; `D` is the activation block type.
fn run_legacy<W: Legacy, D: GgmlType>(
    w: &[u8],
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> Result<Vec<f32>> {
    let kb = k / 32;
    if w.len() != n * kb * W::SIZE {
        return Err(Error::ShapeMismatch {
            name: "quantized matrix".into(),
            expected: vec![n, k],
            got: vec![w.len() / (kb * W::SIZE).max(1), k],
        });
    }
    #[cfg(target_arch = "x86_64")]
    let fast = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(target_arch = "x86_64")]
    if fast
        && W::SIZE == Q8_0::SIZE
        && D::DTYPE == GgmlDType::Q8_0
        && is_x86_feature_detected!("f16c")
    {
        if m > 4 && q8_0_avx512::available() {
            // SAFETY: the CPU has the features (checked); shapes as below.
            return Ok(unsafe { q8_0_avx512::matmul(w, x, m, k, n) });
        }
        // SAFETY: the CPU has AVX2, FMA and F16C (checked); Q8_0 weights of `n` rows of `kb`
        // blocks (checked above) and `m * k` activations (checked by `matmul_t`).
        return Ok(unsafe { q8_0_avx2::matmul(w, x, m, k, n) });
    }
    let mut xq: Vec<D> = quantize_rows::<D>(x, k);
    let xsize = std::mem::size_of::<D>();
    let xb: &[u8] = bytes_mut(&mut xq);
    let mut out_t = vec![0f32; n * m];
    let cols = task_columns(m, k, n);
    out_t
        .par_chunks_mut(m.max(1) * cols)
        .enumerate()
        .for_each(|(c, chunk)| {
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { dot_rows_avx2::<W>(w, kb, xb, xsize, c * cols, chunk, m.max(1)) };
                return;
            }
            dot_rows::<W>(w, kb, xb, xsize, c * cols, chunk, m.max(1));
        });
    Ok(transpose(out_t, m, n))
}

/// Output columns per parallel task: about 256 K multiply-adds each (a decode row against 16
/// columns is too little work to pay for a task), at least 16, and at least 4 tasks per thread.
pub(super) fn task_columns(m: usize, k: usize, n: usize) -> usize {
    let by_work = (262_144 / (m * k).max(1)).clamp(16, 512);
    let by_threads = (n / (4 * rayon::current_num_threads())).max(16);
    by_work.min(by_threads) / 16 * 16
}

/// `[n, m]` → `[m, n]`, in 16 × 16 tiles so both sides stay in cache at large `m`.
pub(super) fn transpose(out_t: Vec<f32>, m: usize, n: usize) -> Vec<f32> {
    if m == 1 {
        return out_t;
    }
    const T: usize = 16;
    let mut out = vec![0f32; m * n];
    for r0 in (0..n).step_by(T) {
        for i0 in (0..m).step_by(T) {
            for r in r0..(r0 + T).min(n) {
                for i in i0..(i0 + T).min(m) {
                    out[i * n + r] = out_t[r * m + i];
                }
            }
        }
    }
    out
}

fn run<T: GgmlType>(w: &[u8], x: &[f32], m: usize, k: usize, n: usize) -> Result<Vec<f32>> {
    let w: &[T] = blocks(w)?;
    let kb = k / T::BLCK_SIZE;
    if w.len() != n * kb {
        return Err(Error::ShapeMismatch {
            name: "quantized matrix".into(),
            expected: vec![n, k],
            got: vec![w.len() / kb.max(1), k],
        });
    }
    let xq: Vec<T::VecDotType> = quantize_rows::<T::VecDotType>(x, k);
    // Columns of the output in parallel (each weight row is read once for all m rows).
    let mut out_t = vec![0f32; n * m];
    let cols = task_columns(m, k, n);
    out_t
        .par_chunks_mut(m.max(1) * cols)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (j, col) in chunk.chunks_mut(m.max(1)).enumerate() {
                let r = c * cols + j;
                let wr = &w[r * kb..(r + 1) * kb];
                for (i, o) in col.iter_mut().enumerate() {
                    *o = T::vec_dot(k, wr, &xq[i * kb..(i + 1) * kb]);
                }
            }
        });
    Ok(transpose(out_t, m, n))
}

/// `x · Wᵀ` for `x: [m, k]` (row-major) and a quantized `W: [n, k]`; returns `[m, n]`.
pub fn matmul_t(w: &QTensor, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let (n, k) = w.shape().dims2()?;
    if x.len() != m * k {
        return Err(Error::ShapeMismatch {
            name: "matmul input".into(),
            expected: vec![m, k],
            got: vec![x.len() / k.max(1), k],
        });
    }
    let data = w.data()?;
    let block = w.dtype().block_size();
    if !k.is_multiple_of(block) || (block == QK_K && !k.is_multiple_of(QK_K)) {
        return Err(Error::ShapeMismatch {
            name: "quantized matrix".into(),
            expected: vec![n, k.div_ceil(block) * block],
            got: vec![n, k],
        });
    }
    let _ = QK8_0;
    match w.dtype() {
        GgmlDType::Q4_0 => run_legacy::<Q4_0, BlockQ8_0>(&data, x, m, k, n),
        GgmlDType::Q4_1 => run_legacy::<Q4_1, BlockQ8_1>(&data, x, m, k, n),
        GgmlDType::Q5_0 => run_legacy::<Q5_0, BlockQ8_0>(&data, x, m, k, n),
        GgmlDType::Q5_1 => run_legacy::<Q5_1, BlockQ8_1>(&data, x, m, k, n),
        GgmlDType::Q8_0 => run_legacy::<Q8_0, BlockQ8_0>(&data, x, m, k, n),
        // llama.cpp repacks Q4_K weights with a multiple of 8 rows; others go through
        // ggml-cpu/tiled from 8 tokens and `vec_dot` below (ggml_kquants has the details).
        GgmlDType::Q4K if n.is_multiple_of(8) => ggml_kquants::q4k_repacked(&data, x, m, k, n),
        GgmlDType::Q4K if m >= 8 => ggml_kquants::q4k_tiled(&data, x, m, k, n),
        GgmlDType::Q4K => run::<BlockQ4K>(&data, x, m, k, n),
        GgmlDType::Q5K => run::<BlockQ5K>(&data, x, m, k, n),
        GgmlDType::Q6K => ggml_kquants::q6k(&data, x, m, k, n),
        other => Err(Error::DTypeMismatch {
            name: "quantized matrix".into(),
            expected: "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K".into(),
            got: format!("{other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::BlockQ8K;
    use candle_core::{Device, Tensor};

    /// Reference twin: quantize x the same way, dequantize both sides, multiply in f64.
    /// Returns the products and, per output, the sum of absolute products (error scale).
    fn reference(w: &QTensor, x: &[f32], m: usize) -> (Vec<f32>, Vec<f32>) {
        let (n, k) = w.shape().dims2().unwrap();
        let wd = w
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let partner = match w.dtype() {
            GgmlDType::Q4_1 | GgmlDType::Q5_1 => GgmlDType::Q8_1,
            GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => GgmlDType::Q8K,
            _ => GgmlDType::Q8_0,
        };
        let xd: Vec<f32> = match partner {
            GgmlDType::Q8_1 => {
                let q = quantize_rows::<BlockQ8_1>(x, k);
                let mut o = vec![0f32; x.len()];
                BlockQ8_1::to_float(&q, &mut o);
                o
            }
            GgmlDType::Q8K => {
                let q = quantize_rows::<BlockQ8K>(x, k);
                let mut o = vec![0f32; x.len()];
                BlockQ8K::to_float(&q, &mut o);
                o
            }
            _ => {
                let q = quantize_rows::<BlockQ8_0>(x, k);
                let mut o = vec![0f32; x.len()];
                BlockQ8_0::to_float(&q, &mut o);
                o
            }
        };
        let mut y = vec![0f32; m * n];
        let mut scale = vec![0f32; m * n];
        for i in 0..m {
            for r in 0..n {
                let p = (0..k).map(|j| xd[i * k + j] as f64 * wd[r * k + j] as f64);
                y[i * n + r] = p.clone().sum::<f64>() as f32;
                scale[i * n + r] = p.map(f64::abs).sum::<f64>() as f32;
            }
        }
        (y, scale)
    }

    #[test]
    fn every_type_matches_its_reference() {
        let (n, k, m) = (40, 512, 3);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let x: Vec<f32> = random_activations(m * k);
        for dt in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, dt).unwrap();
            let got = matmul_t(&q, &x, m).unwrap();
            let (want, scale) = reference(&q, &x, m);
            // Q8_1 keeps its block sum as f16 (ggml does too), so Q4_1/Q5_1 carry that
            // rounding; everything else differs from f64 only by f32 summation order.
            let rel = match dt {
                GgmlDType::Q4_1 | GgmlDType::Q5_1 => 1e-3,
                _ => 1e-5,
            };
            for ((g, r), s) in got.iter().zip(&want).zip(&scale) {
                assert!((g - r).abs() <= rel * s, "{dt:?}: {g} vs {r} (scale {s})");
            }
        }
    }

    /// The plain per-output form of ggml's legacy dot (one block after another).
    fn dot_plain<W: Legacy>(w: &[u8], x: &[u8], xsize: usize) -> f32 {
        let mut acc = [0f32; 8];
        let mut summs = 0f32;
        let mut e = [0i32; 32];
        let qs_at = if xsize == 36 { 4 } else { 2 };
        for (wb, xb) in w.chunks_exact(W::SIZE).zip(x.chunks_exact(xsize)) {
            let (dw, min) = W::decode(wb, &mut e);
            if let Some(m) = min {
                summs += m * f16_at(xb, 2);
            }
            let d = dw * f16_at(xb, 0);
            for (l, a) in acc.iter_mut().enumerate() {
                let lane: i32 = (0..4)
                    .map(|t| e[4 * l + t] * xb[qs_at + 4 * l + t] as i8 as i32)
                    .sum();
                *a = d.mul_add(lane as f32, *a);
            }
        }
        hsum8(&acc) + summs
    }

    #[test]
    fn blocked_kernel_is_bitwise_the_plain_dot() {
        let (n, k, m) = (37, 256, 5);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let x: Vec<f32> = random_activations(m * k);
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let got = matmul_t(&q, &x, m).unwrap();
        let data = q.data().unwrap();
        let mut xq = quantize_rows::<BlockQ8_1>(&x, k);
        let xb = bytes_mut(&mut xq).to_vec();
        let (kb, xs) = (k / 32, 36);
        for i in 0..m {
            for r in 0..n {
                let want = dot_plain::<Q4_1>(
                    &data[r * kb * 20..(r + 1) * kb * 20],
                    &xb[i * kb * xs..(i + 1) * kb * xs],
                    xs,
                );
                assert_eq!(got[i * n + r].to_bits(), want.to_bits(), "row {i} col {r}");
            }
        }
    }

    /// Every path of the Q8_0 kernel (decode streams for 1-4 rows, prefill tiles from 5 rows
    /// with leftover rows and columns, several parallel tasks) is bitwise the plain dot.
    #[test]
    fn q8_0_kernel_is_bitwise_the_plain_dot() {
        let k = 256;
        let kb = k / 32;
        for n in [1, 7, 35, 131] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let data = q.data().unwrap();
            for m in [1, 2, 3, 4, 5, 7, 16, 33] {
                let mut x: Vec<f32> = random_activations(m * k);
                x[32..64].fill(0.0); // an all-zero block (scale 0)
                let got = matmul_t(&q, &x, m).unwrap();
                let mut xq = quantize_rows::<BlockQ8_0>(&x, k);
                let xb = bytes_mut(&mut xq).to_vec();
                for i in 0..m {
                    for r in 0..n {
                        let want = dot_plain::<Q8_0>(
                            &data[r * kb * 34..(r + 1) * kb * 34],
                            &xb[i * kb * 34..(i + 1) * kb * 34],
                            34,
                        );
                        let g = got[i * n + r];
                        assert_eq!(g.to_bits(), want.to_bits(), "n {n} m {m} row {i} col {r}");
                    }
                }
            }
        }
    }

    /// `len` N(0, 1) activations.
    fn random_activations(len: usize) -> Vec<f32> {
        Tensor::randn(0f32, 1.0, len, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// The bytes of a random `[n, k]` Q8_0 matrix (N(0, 1) weights, quantized by candle).
    fn random_q8_0(n: usize, k: usize) -> Vec<u8> {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        q.data().unwrap().to_vec()
    }

    /// ggml's quantizers never write -128, but a file may hold it: the kernel's `|w|`,
    /// `x·sign(w)` form is exact for it too (like ggml's).
    #[test]
    fn q8_0_kernel_is_exact_for_minus_128() {
        let (n, k) = (9, 64);
        let mut data = random_q8_0(n, k);
        for at in [2, 3, 34 + 7, 5 * 68 + 40] {
            data[at] = 0x80;
        }
        for m in [1, 2, 3, 4, 6] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.1)
                .collect();
            let got = run_legacy::<Q8_0, BlockQ8_0>(&data, &x, m, k, n).unwrap();
            let mut xq = quantize_rows::<BlockQ8_0>(&x, k);
            let xb = bytes_mut(&mut xq).to_vec();
            for i in 0..m {
                for r in 0..n {
                    let want = dot_plain::<Q8_0>(
                        &data[r * 68..(r + 1) * 68],
                        &xb[i * 68..(i + 1) * 68],
                        34,
                    );
                    assert_eq!(got[i * n + r].to_bits(), want.to_bits(), "m {m} {i} {r}");
                }
            }
        }
    }

    /// The AVX-512 prefill kernel is bitwise the AVX2 kernel and the plain dot for every row
    /// tail (5-8 rows, 16, 33, 128), odd and even weight-row counts (an odd last row, pair
    /// tiles of one to four), `k` from one block, -128 weights and an all-zero block.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn q8_0_avx512_is_bitwise_the_avx2_kernel() {
        if !q8_0_avx512::available() {
            eprintln!("no AVX-512 VNNI: skipped");
            return;
        }
        for k in [32, 96, 256] {
            let kb = k / 32;
            for n in [1, 2, 3, 9, 17, 49, 131] {
                let mut data = random_q8_0(n, k);
                for at in [2, 3, 33, 34 * (n * kb - 1) + 20] {
                    data[at] = 0x80;
                }
                for m in [5, 6, 7, 8, 16, 33, 128] {
                    let mut x: Vec<f32> = random_activations(m * k);
                    x[k * (m - 1)..k * (m - 1) + 32].fill(0.0);
                    // SAFETY: features checked; shapes match.
                    let got = unsafe { q8_0_avx512::matmul(&data, &x, m, k, n) };
                    // SAFETY: AVX-512 implies AVX2, FMA, F16C here (checked by `available`).
                    let avx2 = unsafe { q8_0_avx2::matmul(&data, &x, m, k, n) };
                    let mut xq = quantize_rows::<BlockQ8_0>(&x, k);
                    let xb = bytes_mut(&mut xq).to_vec();
                    for i in 0..m {
                        for r in 0..n {
                            let g = got[i * n + r];
                            let a = avx2[i * n + r];
                            assert_eq!(g.to_bits(), a.to_bits(), "k {k} n {n} m {m} {i} {r}");
                            if i % 7 == 0 || i == m - 1 {
                                let want = dot_plain::<Q8_0>(
                                    &data[r * kb * 34..(r + 1) * kb * 34],
                                    &xb[i * kb * 34..(i + 1) * kb * 34],
                                    34,
                                );
                                assert_eq!(g.to_bits(), want.to_bits(), "k {k} n {n} m {m}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn q8_quantizer_rounds_half_to_even() {
        // 127/max = 1 with max 127: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (ggml's _mm256_round_ps).
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 0.5;
        x[2] = 1.5;
        x[3] = 2.5;
        let mut out = [0u8; 34];
        quantize_q8_block(&x, &mut out, false);
        assert_eq!(&out[2..6], &[127, 0, 2, 2]);
    }
}
