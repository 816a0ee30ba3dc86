//! The Mamba2 causal depthwise conv with its SiLU, in place on the `in_proj` rows (reference
//! twin: [`super::reference::causal_conv1d_silu`]). Weights are stored tap-major `[K, C]` so
//! every tap is a contiguous multiply-add over the channels; the sums run in the reference's
//! order (bias, then taps 0..K), so the pre-activation values are bitwise the reference's and
//! only the SiLU's `exp` ([`super::fast_math`]) differs, by a few ulp.

use rayon::prelude::*;

use super::fast_math::silu;
use super::scan_layout::{split_seqs, SeqRows};

/// Channels per block: one 512-bit register of f32.
const LANES: usize = 16;

/// `[C, K]` (PyTorch's `conv1d.weight[c, 0, k]`) to tap-major `[K, C]`.
pub fn tap_major(weight: &[f32], kernel: usize) -> Vec<f32> {
    let c = weight.len() / kernel.max(1);
    let mut out = vec![0f32; weight.len()];
    for ch in 0..c {
        for k in 0..kernel {
            out[k * c + ch] = weight[ch * kernel + k];
        }
    }
    out
}

/// Conv + SiLU over `len` token rows of `buf` (`stride` floats apart, channels at
/// `offset..offset + C`), continuing from `state` (`[K-1, C]`, oldest first). Overwrites the
/// channels with the activations and leaves the last K-1 raw rows in `state`. `weight` is
/// tap-major `[K, C]` with tap K-1 on the current token.
pub fn conv1d_silu_rows(
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
    // Row r of [state; new]: a state row for r < K-1, else token r-(K-1).
    let at = |r: usize| -> (bool, usize) {
        if r < hist {
            (true, r * c)
        } else {
            (false, (r - hist) * stride + offset)
        }
    };
    // The next state (the last K-1 raw rows) is taken before the rows are overwritten.
    let mut next = vec![0f32; hist * c];
    for r in 0..hist {
        let (from_state, i) = at(len + r);
        let src = if from_state {
            &state[i..i + c]
        } else {
            &buf[i..i + c]
        };
        next[r * c..(r + 1) * c].copy_from_slice(src);
    }
    // Latest token first: token t's window is tokens t-K+1..=t, none of which is overwritten
    // before t itself.
    let mut acc = [0f32; LANES];
    for t in (0..len).rev() {
        for c0 in (0..c).step_by(LANES) {
            let n = LANES.min(c - c0);
            acc[..n].copy_from_slice(&bias[c0..c0 + n]);
            for k in 0..kernel {
                let (from_state, i) = at(t + k);
                let src = if from_state {
                    &state[i + c0..i + c0 + n]
                } else {
                    &buf[i + c0..i + c0 + n]
                };
                let w = &weight[k * c + c0..k * c + c0 + n];
                for ((a, wv), sv) in acc[..n].iter_mut().zip(w).zip(src) {
                    *a += wv * sv;
                }
            }
            let o = t * stride + offset + c0;
            for (dst, a) in buf[o..o + n].iter_mut().zip(&acc[..n]) {
                *dst = silu(*a);
            }
        }
    }
    state.copy_from_slice(&next);
}

/// [`conv1d_silu_rows`] for every sequence of a batch (`states[i]` is sequence i's conv
/// state), in parallel over blocks of `block` tokens, so one long prompt uses every thread.
/// The conv looks back K-1 raw rows, so each block starts from a copy of the raw rows before
/// it, taken before any block is overwritten; the first block of a sequence starts from its
/// state and the last block's history becomes the new state. `then` runs on each block's rows
/// after its conv (the caller's other per-token work).
#[allow(clippy::too_many_arguments)]
pub fn conv1d_silu_seqs(
    rows: &mut [f32],
    stride: usize,
    offset: usize,
    seqs: &[SeqRows],
    states: &mut [&mut [f32]],
    weight: &[f32],
    bias: &[f32],
    block: usize,
    then: impl Fn(&mut [f32]) + Sync,
) {
    let c = bias.len();
    let hist = (weight.len() / c.max(1)).saturating_sub(1);
    let block = block.max(1);
    let mut blocks = Vec::new();
    for ((si, s), piece) in seqs.iter().enumerate().zip(split_seqs(rows, stride, seqs)) {
        let mut history = states[si].to_vec();
        let n_blocks = s.len.div_ceil(block);
        for (bi, part) in piece.chunks_mut(block * stride).enumerate() {
            // The last K-1 raw rows of [history; part].
            let len = part.len() / stride;
            let mut next = vec![0f32; hist * c];
            for r in 0..hist {
                let src = if len + r < hist {
                    &history[(len + r) * c..(len + r + 1) * c]
                } else {
                    let o = (len + r - hist) * stride + offset;
                    &part[o..o + c]
                };
                next[r * c..(r + 1) * c].copy_from_slice(src);
            }
            blocks.push((si, bi + 1 == n_blocks, part, history));
            history = next;
        }
    }
    blocks.par_iter_mut().for_each(|(_, _, part, history)| {
        let len = part.len() / stride;
        conv1d_silu_rows(part, stride, offset, len, history, weight, bias);
        then(part);
    });
    for (si, last, _, history) in blocks {
        if last {
            states[si].copy_from_slice(&history);
        }
    }
}

/// One decode step of [`conv1d_silu_rows`]: `row` holds the token's raw channels and receives
/// the activations; `state` shifts by one row in place (no scratch).
pub fn conv1d_silu_step(row: &mut [f32], state: &mut [f32], weight: &[f32], bias: &[f32]) {
    let c = bias.len();
    let kernel = weight.len() / c.max(1);
    let hist = kernel.saturating_sub(1);
    let mut acc = [0f32; LANES];
    for c0 in (0..c).step_by(LANES) {
        let n = LANES.min(c - c0);
        acc[..n].copy_from_slice(&bias[c0..c0 + n]);
        for k in 0..hist {
            let s = &state[k * c + c0..k * c + c0 + n];
            let w = &weight[k * c + c0..k * c + c0 + n];
            for ((a, wv), sv) in acc[..n].iter_mut().zip(w).zip(s) {
                *a += wv * sv;
            }
        }
        let raw = &mut row[c0..c0 + n];
        let w = &weight[hist * c + c0..hist * c + c0 + n];
        for ((a, wv), x) in acc[..n].iter_mut().zip(w).zip(raw.iter()) {
            *a += wv * x;
        }
        // Shift this block of the state: drop the oldest row, append the raw input.
        for k in 1..hist {
            state.copy_within(k * c + c0..k * c + c0 + n, (k - 1) * c + c0);
        }
        if hist > 0 {
            state[(hist - 1) * c + c0..(hist - 1) * c + c0 + n].copy_from_slice(raw);
        }
        for (dst, a) in raw.iter_mut().zip(&acc[..n]) {
            *dst = silu(*a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::causal_conv1d_silu;

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + seed as f32 * 7.31) * 0.618).sin() * 1.7)
            .collect()
    }

    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 2e-6 * y.abs().max(1.0), "{x} vs {y}");
        }
    }

    /// Embeds `[len, c]` rows in a wider buffer with padding on both sides of each row.
    fn padded(rows: &[f32], c: usize, stride: usize, offset: usize) -> Vec<f32> {
        let len = rows.len() / c;
        let mut buf = noise(len * stride, 99);
        for t in 0..len {
            buf[t * stride + offset..t * stride + offset + c]
                .copy_from_slice(&rows[t * c..(t + 1) * c]);
        }
        buf
    }

    #[test]
    fn rows_match_the_reference_in_pieces_and_with_history() {
        for (c, k) in [(37usize, 4usize), (64, 4), (16, 2), (5, 1), (33, 3)] {
            let len = 11;
            let (stride, offset) = (c + 9, 4);
            let new = noise(len * c, 1);
            let w = noise(c * k, 2);
            let b = noise(c, 3);
            let wt = tap_major(&w, k);
            let mut st_ref = noise((k - 1) * c, 4);
            let mut st = st_ref.clone();
            let mut want = vec![0f32; len * c];
            causal_conv1d_silu(&new, &mut st_ref, &w, &b, k, &mut want);
            let mut buf = padded(&new, c, stride, offset);
            let pad_before = buf.clone();
            // Three calls (1, 2 and 8 tokens) continue from each other's state.
            for (a, e) in [(0usize, 1usize), (1, 3), (3, 11)] {
                conv1d_silu_rows(
                    &mut buf[a * stride..],
                    stride,
                    offset,
                    e - a,
                    &mut st,
                    &wt,
                    &b,
                );
            }
            for t in 0..len {
                let row = &buf[t * stride..(t + 1) * stride];
                close(&row[offset..offset + c], &want[t * c..(t + 1) * c]);
                // Channels outside the window are untouched.
                assert_eq!(row[..offset], pad_before[t * stride..t * stride + offset]);
                assert_eq!(
                    row[offset + c..],
                    pad_before[t * stride + offset + c..(t + 1) * stride]
                );
            }
            assert_eq!(st, st_ref, "c={c} k={k}");
        }
    }

    #[test]
    fn blocked_sequences_match_the_reference() {
        let (c, k) = (21usize, 4usize);
        let (stride, offset) = (c + 5, 3);
        let lens = [1usize, 2, 9, 30, 7];
        let w = noise(c * k, 2);
        let b = noise(c, 3);
        let wt = tap_major(&w, k);
        let total: usize = lens.iter().sum();
        let new = noise(total * c, 1);
        for block in [1usize, 2, 4, 64] {
            let mut buf = padded(&new, c, stride, offset);
            let mut seqs = Vec::new();
            let mut start = 0;
            for &len in &lens {
                seqs.push(SeqRows { start, len });
                start += len;
            }
            let init: Vec<Vec<f32>> = (0..lens.len())
                .map(|i| noise((k - 1) * c, 40 + i as u32))
                .collect();
            let mut states = init.clone();
            let mut refs: Vec<&mut [f32]> = states.iter_mut().map(|s| s.as_mut_slice()).collect();
            let touched = std::sync::atomic::AtomicUsize::new(0);
            conv1d_silu_seqs(
                &mut buf,
                stride,
                offset,
                &seqs,
                &mut refs,
                &wt,
                &b,
                block,
                |part| {
                    touched.fetch_add(part.len() / stride, std::sync::atomic::Ordering::Relaxed);
                },
            );
            assert_eq!(touched.into_inner(), total);
            for (i, s) in seqs.iter().enumerate() {
                let mut st = init[i].clone();
                let mut want = vec![0f32; s.len * c];
                let raw = &new[s.start * c..(s.start + s.len) * c];
                causal_conv1d_silu(raw, &mut st, &w, &b, k, &mut want);
                for t in 0..s.len {
                    let o = (s.start + t) * stride + offset;
                    close(&buf[o..o + c], &want[t * c..(t + 1) * c]);
                }
                assert_eq!(states[i], st, "block {block} seq {i}");
            }
        }
    }

    #[test]
    fn step_matches_the_reference_token_by_token() {
        for (c, k) in [(37usize, 4usize), (48, 4), (7, 2)] {
            let len = 6;
            let new = noise(len * c, 5);
            let w = noise(c * k, 6);
            let b = noise(c, 7);
            let wt = tap_major(&w, k);
            let mut st_ref = noise((k - 1) * c, 8);
            let mut st = st_ref.clone();
            let mut want = vec![0f32; len * c];
            causal_conv1d_silu(&new, &mut st_ref, &w, &b, k, &mut want);
            for t in 0..len {
                let mut row = new[t * c..(t + 1) * c].to_vec();
                conv1d_silu_step(&mut row, &mut st, &wt, &b);
                close(&row, &want[t * c..(t + 1) * c]);
            }
            assert_eq!(st, st_ref);
        }
    }
}
