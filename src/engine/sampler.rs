//! Picks the next token from one row of logits: greedy, or temperature sampling restricted by
//! top-k, top-p and min-p. Each request owns its random stream, so a seeded request samples
//! the same tokens whatever else shares its batch.

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

/// Samples one token id from `logits` under `params`.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut RequestRng) -> u32 {
    if params.temperature == 0.0 || params.top_k == 1 {
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
    fn invalid_params_name_the_field() {
        let p = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("top_p"));
        let p = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
    }
}
