//! The two discrete decisions of a DynamicHybridModel, shared by the training forward and the
//! engine so both take them identically: the router's causal capacity quota and the state
//! dimensions the adaptive compressor keeps (docs/dynamic_hybrid.md §2, §4).

/// Per-sequence capacity rule of the router: after `t + 1` tokens the number sent to the SSM
/// path stays within `capacity·(t+1) ± slack` (rounded outwards), and inside that band the
/// router's own preference (`logit >= 0`) decides. Only the past and the current token are
/// read, so generation can take the decision token by token.
#[derive(Debug, Clone, Copy)]
pub struct RouterQuota {
    /// Target fraction of tokens sent to the SSM path.
    pub capacity: f64,
    /// Allowed deviation, in tokens.
    pub slack: f64,
}

impl RouterQuota {
    /// Whether the token at position `t` goes to the SSM path, given `before` earlier tokens of
    /// its sequence went there and its router logit.
    pub fn to_ssm(&self, t: usize, before: usize, logit: f32) -> bool {
        let target = self.capacity * (t + 1) as f64;
        let lo = (target - self.slack).floor().max(0.0);
        let hi = (target + self.slack).ceil().min((t + 1) as f64);
        let before = before as f64;
        if before < lo {
            true
        } else if before + 1.0 > hi {
            false
        } else {
            logit >= 0.0
        }
    }

    /// Routes a whole sequence from position `past` on, continuing from `before` SSM tokens.
    pub fn route(&self, past: usize, mut before: usize, logits: &[f32]) -> Vec<bool> {
        logits
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                let r = self.to_ssm(past + i, before, z);
                before += usize::from(r);
                r
            })
            .collect()
    }
}

/// State dimensions the compressor keeps, ascending: the `min_keep` most important ones and
/// every one whose importance logit is above `threshold`.
pub fn kept_state_dims(importance: &[f32], min_keep: usize, threshold: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..importance.len()).collect();
    // Stable sort by descending importance: ties keep the lower index first.
    order.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]));
    let mut keep: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|&(rank, &i)| rank < min_keep || f64::from(importance[i]) > threshold)
        .map(|(_, &i)| i)
        .collect();
    keep.sort_unstable();
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_holds_the_band_for_any_preferences() {
        for (capacity, slack) in [(0.5, 0.0), (0.25, 2.0), (0.0, 0.0), (1.0, 3.0), (0.7, 1.5)] {
            let q = RouterQuota { capacity, slack };
            for pref in [1.0f32, -1.0] {
                let routes = q.route(0, 0, &[pref; 200]);
                let mut n = 0.0;
                for (t, r) in routes.iter().enumerate() {
                    n += f64::from(u8::from(*r));
                    let target = capacity * (t + 1) as f64;
                    assert!(n >= (target - slack).floor() && n <= (target + slack).ceil());
                }
            }
        }
        // Continuing from a prefix gives the same routes as the whole sequence.
        let q = RouterQuota {
            capacity: 0.5,
            slack: 2.0,
        };
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let whole = q.route(0, 0, &logits);
        let head = q.route(0, 0, &logits[..20]);
        let before = head.iter().filter(|r| **r).count();
        let tail = q.route(20, before, &logits[20..]);
        assert_eq!([head, tail].concat(), whole);
    }

    #[test]
    fn compressor_keeps_the_top_dims_and_everything_above_the_threshold() {
        let imp = [0.5, -4.0, -5.0, -3.5, 1.0, -6.0, -2.0, -7.0];
        assert_eq!(kept_state_dims(&imp, 2, -3.0), vec![0, 4, 6]);
        assert_eq!(kept_state_dims(&imp, 4, -3.0), vec![0, 3, 4, 6]);
        assert_eq!(kept_state_dims(&imp, 1, -10.0).len(), 8);
    }
}
