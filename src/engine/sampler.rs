//! Picks the next token from one row of logits, in vLLM's order: logit bias, min-tokens
//! masking, repetition/frequency/presence penalties, temperature, top-k, top-p, min-p. Each
//! request owns its random stream, so a seeded request samples the same tokens whatever else
//! shares its batch.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::sampling_params::SamplingParams;

/// A request's random stream.
pub struct RequestRng(StdRng);

impl RequestRng {
    /// Seeded, or from entropy when `seed` is None.
    pub fn new(seed: Option<u64>) -> Self {
        Self(match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        })
    }
}

/// Index of the largest logit (lowest index on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Tokens a sequence has seen, for penalties.
pub struct TokenHistory<'a> {
    /// Prompt token ids.
    pub prompt: &'a [u32],
    /// Generated token ids so far.
    pub output: &'a [u32],
}

/// Log-probabilities around one chosen token.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprobs {
    /// The chosen (or actual) token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens with their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// Log-softmax of `logits` at `token`, with the `k` best entries.
pub fn logprobs_of(logits: &[f32], token: u32, k: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
    let mut top: Vec<(u32, f32)> = Vec::new();
    if k > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        idx.truncate(k);
        idx.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        top = idx
            .into_iter()
            .map(|i| (i, logits[i as usize] - lse))
            .collect();
    }
    TokenLogprobs {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |v| v - lse),
        top,
    }
}

/// Applies bias, min-tokens masking and penalties to `logits` in place.
pub fn process_logits(
    logits: &mut [f32],
    params: &SamplingParams,
    history: &TokenHistory,
    eos_ids: &[u32],
) {
    for (&t, &b) in &params.logit_bias {
        if let Some(v) = logits.get_mut(t as usize) {
            *v += b;
        }
    }
    if history.output.len() < params.min_tokens {
        for &t in eos_ids.iter().chain(&params.stop_token_ids) {
            if let Some(v) = logits.get_mut(t as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    if params.repetition_penalty != 1.0 {
        let p = params.repetition_penalty;
        let mut seen = vec![false; logits.len()];
        for &t in history.prompt.iter().chain(history.output) {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (v, _) in logits.iter_mut().zip(&seen).filter(|(_, s)| **s) {
            *v = if *v > 0.0 { *v / p } else { *v * p };
        }
    }
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in history.output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(v) = logits.get_mut(t as usize) {
                *v -= params.frequency_penalty * c as f32 + params.presence_penalty;
            }
        }
    }
}

/// Samples one token id from processed `logits` under `params`.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut RequestRng) -> u32 {
    if params.is_greedy() {
        return argmax(logits);
    }
    let inv_t = 1.0 / params.temperature;
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, &v)| (i as u32, v * inv_t))
        .collect();
    if cand.is_empty() {
        return argmax(logits);
    }
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if params.top_k > 0 {
        cand.truncate(params.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f32> = cand.iter().map(|(_, v)| (v - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    let mut keep = probs.len();
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= params.top_p {
                keep = i + 1;
                break;
            }
        }
    }
    if params.min_p > 0.0 {
        let floor = params.min_p * probs[0];
        keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
    }
    let total: f32 = probs[..keep].iter().sum();
    let mut r = rng.0.gen::<f32>() * total;
    for (i, p) in probs[..keep].iter().enumerate() {
        r -= p;
        if r <= 0.0 {
            return cand[i].0;
        }
    }
    cand[keep - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_HISTORY: TokenHistory = TokenHistory {
        prompt: &[],
        output: &[],
    };

    #[test]
    fn greedy_and_top_k_one_take_the_max() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        let mut rng = RequestRng::new(Some(0));
        assert_eq!(sample(&logits, &SamplingParams::greedy(1), &mut rng), 1);
        let p = SamplingParams {
            top_k: 1,
            ..SamplingParams::default()
        };
        assert_eq!(sample(&logits, &p, &mut rng), 1);
    }

    #[test]
    fn top_p_restricts_to_the_nucleus_and_seed_repeats() {
        let logits = [10.0, 9.0, 0.0, 0.0];
        let p = SamplingParams {
            top_p: 0.9,
            seed: Some(7),
            ..SamplingParams::default()
        };
        let draw = |seed| {
            let mut rng = RequestRng::new(Some(seed));
            (0..200)
                .map(|_| sample(&logits, &p, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert!(a.iter().all(|&t| t <= 1));
        assert!(a.contains(&0) && a.contains(&1));
        assert_eq!(a, draw(7));
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // p = [0.5, 0.4, 0.1]: min_p 0.3 keeps tokens with p >= 0.15.
        let logits = [0.5f32.ln(), 0.4f32.ln(), 0.1f32.ln()];
        let p = SamplingParams {
            min_p: 0.3,
            ..SamplingParams::default()
        };
        let mut rng = RequestRng::new(Some(1));
        assert!((0..300).all(|_| sample(&logits, &p, &mut rng) != 2));
    }

    #[test]
    fn penalties_bias_and_min_tokens() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            min_tokens: 3,
            logit_bias: [(3u32, 1.5f32)].into_iter().collect(),
            ..SamplingParams::default()
        };
        let mut logits = vec![2.0, -2.0, 1.0, 0.0, 4.0];
        let history = TokenHistory {
            prompt: &[0],
            output: &[1, 1],
        };
        process_logits(&mut logits, &params, &history, &[4]);
        assert_eq!(logits[0], 1.0); // 2.0 / 2 (prompt token, repetition only)
        assert_eq!(logits[1], -4.0 - 0.5 - 0.5); // -2*2, then presence 0.5 + 2*0.25
        assert_eq!(logits[2], 1.0);
        assert_eq!(logits[3], 1.5);
        assert_eq!(logits[4], f32::NEG_INFINITY); // EOS masked before min_tokens
        let mut l2 = vec![0.0; 5];
        process_logits(&mut l2, &SamplingParams::default(), &NO_HISTORY, &[4]);
        assert_eq!(l2, vec![0.0; 5]);
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let lp = logprobs_of(&[1.0, 3.0, 2.0], 2, 2);
        let total: f32 = [1.0f32, 3.0, 2.0].iter().map(|v| (v - 3.0).exp()).sum();
        assert!((lp.logprob - (2.0 - 3.0 - total.ln())).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn invalid_params_name_the_field() {
        for (p, field) in [
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    n: 0,
                    ..Default::default()
                },
                "n",
            ),
            (
                SamplingParams {
                    min_tokens: 99,
                    ..Default::default()
                },
                "min_tokens",
            ),
            (
                SamplingParams {
                    logprobs: Some(99),
                    ..Default::default()
                },
                "logprobs",
            ),
            (
                SamplingParams {
                    presence_penalty: 3.0,
                    ..Default::default()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    stop: vec![String::new()],
                    ..Default::default()
                },
                "stop",
            ),
        ] {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
