//! Differentiable building blocks of the training forward, written with candle-core ops that
//! have backward rules, generic over f32/f64 (the gradient tests run in f64). Activations are
//! `[batch, time, features]`; every op is causal along time.

use candle_core::{DType, Device, Tensor, D};

use crate::error::Result;

/// `x Wᵀ` for `x` `[.., in]` and `w` `[out, in]`; with `bf16` both operands are rounded to
/// BF16 for the product and the result is widened back (autocast with f32 master weights).
pub fn linear(x: &Tensor, w: &Tensor, bf16: bool) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (inp, out) = (dims[dims.len() - 1], w.dim(0)?);
    let rows = x.elem_count() / inp.max(1);
    let x2 = x.reshape((rows, inp))?;
    let y = if bf16 && x.dtype() == DType::F32 {
        x2.to_dtype(DType::BF16)?
            .matmul(&w.to_dtype(DType::BF16)?.t()?)?
            .to_dtype(DType::F32)?
    } else {
        x2.matmul(&w.t()?)?
    };
    let mut shape = dims;
    let last = shape.len() - 1;
    shape[last] = out;
    Ok(y.reshape(shape)?)
}

/// `w ⊙ x / sqrt(mean(x²) + eps)` over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let inv = x
        .sqr()?
        .mean_keepdim(D::Minus1)?
        .affine(1.0, eps)?
        .sqrt()?
        .recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// `1 / (1 + e^-x)` as `(1 + tanh(x/2)) / 2`, whose backward stays finite for any `x`.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(x.affine(0.5, 0.0)?.tanh()?.affine(0.5, 0.5)?)
}

/// `log(1 + e^x)` as `relu(x) + log(1 + e^-|x|)` (no overflow either way).
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok((x.relu()? + tail)?)
}

/// Causal depthwise conv along time: `out[t, c] = bias[c] + Σ_k w[c, k] · x[t - K + 1 + k, c]`
/// with zeros before the sequence start (tap K-1 on the current token, as Mamba2's conv1d).
/// `x` `[B, T, C]`, `w` `[C, K]`, `bias` `[C]`.
pub fn causal_conv(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    let k = w.dim(1)?;
    let pad = Tensor::zeros((b, k - 1, c), x.dtype(), x.device())?;
    let xp = Tensor::cat(&[&pad, x], 1)?;
    let mut out = bias
        .reshape((1, 1, c))?
        .broadcast_as((b, t, c))?
        .contiguous()?;
    for tap in 0..k {
        let wk = w.narrow(1, tap, 1)?.reshape((1, 1, c))?;
        out = (out + xp.narrow(1, tap, t)?.broadcast_mul(&wk)?)?;
    }
    Ok(out)
}

/// Inputs of one selective scan over a batch of sequences starting from zero state.
pub struct ScanArgs<'a> {
    /// `[B, T, nH, P]` inputs.
    pub x: &'a Tensor,
    /// `[B, T, nH]` step sizes (after softplus).
    pub dt: &'a Tensor,
    /// `[nH]` decay rates `A = -exp(A_log)`.
    pub a: &'a Tensor,
    /// `[B, T, G, N]` input projections.
    pub b: &'a Tensor,
    /// `[B, T, G, N]` output projections.
    pub c: &'a Tensor,
    /// `[nH]` skip.
    pub d: &'a Tensor,
}

/// Mamba2's scan `S_t = exp(dt_t A) S_{t-1} + dt_t x_t ⊗ B_t`, `y_t = S_t C_t + D x_t`, in its
/// chunked state-space-dual form (within a chunk a masked `C Bᵀ` matmul weighted by the
/// decay between positions; across chunks the state is carried), so it is matmuls that
/// candle can differentiate. Returns `[B, T, nH, P]`.
pub fn selective_scan(args: &ScanArgs, chunk: usize) -> Result<Tensor> {
    let (bsz, t, nh, p) = args.x.dims4()?;
    let (g, n) = (args.b.dim(2)?, args.b.dim(3)?);
    let hpg = nh / g;
    let (dtype, dev) = (args.x.dtype(), args.x.device().clone());
    let heads = |m: &Tensor, q: usize| -> Result<Tensor> {
        // [B, q, G, N] -> [B, nH, q, N], each group repeated for its heads.
        Ok(m.permute((0, 2, 1, 3))?
            .unsqueeze(2)?
            .broadcast_as((bsz, g, hpg, q, n))?
            .reshape((bsz, nh, q, n))?)
    };
    let mut state: Option<Tensor> = None; // [B, nH, P, N]
    let mut outs = Vec::new();
    let mut start = 0;
    while start < t {
        let q = chunk.min(t - start);
        let xc = args
            .x
            .narrow(1, start, q)?
            .permute((0, 2, 1, 3))?
            .contiguous()?; // [B,nH,q,P]
        let dtc = args
            .dt
            .narrow(1, start, q)?
            .permute((0, 2, 1))?
            .contiguous()?; // [B,nH,q]
        let bc = heads(&args.b.narrow(1, start, q)?, q)?.contiguous()?;
        let cc = heads(&args.c.narrow(1, start, q)?, q)?.contiguous()?;
        let cs = dtc.broadcast_mul(&args.a.reshape((1, nh, 1))?)?.cumsum(2)?; // [B,nH,q], non-increasing
        let seg = cs.unsqueeze(3)?.broadcast_sub(&cs.unsqueeze(2)?)?; // cs_i - cs_j
        let decay = masked_exp(&seg, q, dtype, &dev)?;
        let scores = cc.matmul(&bc.t()?)?; // [B,nH,q,q] C_i·B_j
        let m = (decay * scores)?.broadcast_mul(&dtc.unsqueeze(2)?)?;
        let mut y = m.matmul(&xc)?; // [B,nH,q,P]
        if let Some(s) = &state {
            let from_state = cc.matmul(&s.t()?)?; // [B,nH,q,P]
            y = (y + from_state.broadcast_mul(&cs.exp()?.unsqueeze(3)?)?)?;
        }
        let last = cs.narrow(2, q - 1, 1)?; // [B,nH,1]
        let w = last.broadcast_sub(&cs)?.exp()?.mul(&dtc)?; // exp(cs_Q - cs_j)·dt_j
        let contrib = xc.broadcast_mul(&w.unsqueeze(3)?)?.t()?.matmul(&bc)?; // [B,nH,P,N]
        state = Some(match &state {
            Some(s) => (s.broadcast_mul(&last.exp()?.unsqueeze(3)?)? + contrib)?,
            None => contrib,
        });
        let y = (y + xc.broadcast_mul(&args.d.reshape((1, nh, 1, 1))?)?)?;
        outs.push(y);
        start += q;
    }
    let y = Tensor::cat(&outs, 2)?; // [B,nH,T,P]
    Ok(y.permute((0, 2, 1, 3))?.reshape((bsz, t, nh, p))?)
}

/// `exp(seg)` on and below the diagonal, 0 above it, without ever exponentiating the
/// (positive, possibly huge) entries above it.
fn masked_exp(seg: &Tensor, q: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mask: Vec<f64> = (0..q * q)
        .map(|i| if i % q <= i / q { 1.0 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, (q, q), dev)?.to_dtype(dtype)?;
    let off = mask.affine(1e4, -1e4)?; // 0 where kept, -1e4 above the diagonal
    Ok(seg.broadcast_mul(&mask)?.broadcast_add(&off)?.exp()?)
}

/// Causal multi-head attention with GQA: `q` `[B, T, nh, hd]`, `k`/`v` `[B, T, nkv, hd]`.
/// Returns `[B, T, nh·hd]`.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, t, nh, hd) = q.dims4()?;
    let nkv = k.dim(2)?;
    let expand = |m: &Tensor| -> Result<Tensor> {
        Ok(m.permute((0, 2, 1, 3))?
            .unsqueeze(2)?
            .broadcast_as((b, nkv, nh / nkv, t, hd))?
            .reshape((b, nh, t, hd))?)
    };
    let q = q.permute((0, 2, 1, 3))?.contiguous()?;
    let (k, v) = (expand(k)?.contiguous()?, expand(v)?.contiguous()?);
    let scores = q.matmul(&k.t()?)?.affine(scale, 0.0)?;
    let mask: Vec<f64> = (0..t * t)
        .map(|i| {
            if i % t <= i / t {
                0.0
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), q.device())?.to_dtype(q.dtype())?;
    let scores = scores.broadcast_add(&mask)?;
    let probs = softmax_last(&scores)?;
    Ok(probs
        .matmul(&v)?
        .permute((0, 2, 1, 3))?
        .reshape((b, t, nh * hd))?)
}

/// Softmax over the last dimension (the max is a constant shift, so it is detached).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Mean token cross-entropy of `logits` `[N, V]` against `targets` `[N]` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    Ok((lse - picked)?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(shape: &[usize], seed: u64, scale: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The chunked scan equals the plain recurrence for any chunk size, groups > 1 included.
    #[test]
    fn chunked_scan_equals_the_recurrence() {
        let (b, t, nh, p, g, n) = (2, 11, 4, 3, 2, 5);
        let x = rand(&[b, t, nh, p], 1, 1.0);
        let dt = rand(&[b, t, nh], 2, 0.5).affine(1.0, 0.6).unwrap();
        let a = rand(&[nh], 3, 0.5).affine(1.0, -1.0).unwrap();
        let bm = rand(&[b, t, g, n], 4, 1.0);
        let cm = rand(&[b, t, g, n], 5, 1.0);
        let d = rand(&[nh], 6, 1.0);
        let args = ScanArgs {
            x: &x,
            dt: &dt,
            a: &a,
            b: &bm,
            c: &cm,
            d: &d,
        };
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let (xv, dtv, av, bv, cv, dv) = (v(&x), v(&dt), v(&a), v(&bm), v(&cm), v(&d));
        let mut want = vec![0f64; b * t * nh * p];
        for bi in 0..b {
            for h in 0..nh {
                let gi = h / (nh / g);
                let mut s = vec![0f64; p * n];
                for ti in 0..t {
                    let dtt = dtv[(bi * t + ti) * nh + h];
                    let dec = (dtt * av[h]).exp();
                    for pi in 0..p {
                        let xi = xv[((bi * t + ti) * nh + h) * p + pi];
                        let mut y = dv[h] * xi;
                        for ni in 0..n {
                            let bn = bv[((bi * t + ti) * g + gi) * n + ni];
                            let cn = cv[((bi * t + ti) * g + gi) * n + ni];
                            s[pi * n + ni] = dec * s[pi * n + ni] + dtt * xi * bn;
                            y += s[pi * n + ni] * cn;
                        }
                        want[((bi * t + ti) * nh + h) * p + pi] = y;
                    }
                }
            }
        }
        for chunk in [1, 4, 11, 64] {
            let got = v(&selective_scan(&args, chunk).unwrap());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-10, "chunk {chunk} [{i}]: {a} vs {b}");
            }
        }
    }
}
