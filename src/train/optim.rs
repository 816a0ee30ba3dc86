//! AdamW (decoupled weight decay on matrices only), the warm-up + cosine learning-rate
//! schedule, and global gradient-norm clipping. The moments are plain tensors so a checkpoint
//! can store them and a resumed run continues bit for bit.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::models::dynamic_hybrid::network::Grads;
use crate::models::dynamic_hybrid::params::ParamStore;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// AdamW state: first and second moments per parameter and the step count.
pub struct AdamW {
    cfg: AdamWConfig,
    /// Updates taken so far.
    pub step: usize,
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
}

impl AdamW {
    /// Fresh state.
    pub fn new(cfg: AdamWConfig) -> Self {
        Self {
            cfg,
            step: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// Applies one update with learning rate `lr`.
    pub fn update(&mut self, params: &ParamStore, grads: &Grads, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (name, var, decay) in params.iter() {
            let Some(g) = grads.get(name) else { continue };
            let m = match self.m.get(name) {
                Some(m) => ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?,
                None => (g * (1.0 - c.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                None => (g.sqr()? * (1.0 - c.beta2))?,
            };
            let step = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let p = var.as_detached_tensor();
            let p = if decay && c.weight_decay > 0.0 {
                (&p * (1.0 - lr * c.weight_decay))?
            } else {
                p
            };
            var.set(&(p - (step * lr)?)?)?;
            self.m.insert(name.to_string(), m);
            self.v.insert(name.to_string(), v);
        }
        Ok(())
    }

    /// Moments by `m.{name}` / `v.{name}`, for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (n, t) in &self.m {
            out.insert(format!("m.{n}"), t.clone());
        }
        for (n, t) in &self.v {
            out.insert(format!("v.{n}"), t.clone());
        }
        out
    }

    /// Restores moments written by [`AdamW::state_tensors`] and the step count.
    pub fn restore(&mut self, tensors: HashMap<String, Tensor>, step: usize) -> Result<()> {
        for (k, t) in tensors {
            if let Some(n) = k.strip_prefix("m.") {
                self.m.insert(n.to_string(), t);
            } else if let Some(n) = k.strip_prefix("v.") {
                self.v.insert(n.to_string(), t);
            } else {
                return Err(Error::request(
                    "resume",
                    format!("unexpected optimizer tensor `{k}`"),
                ));
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Learning rate at optimizer step `step` (0-based): linear warm-up to `peak` over `warmup`
/// steps, then cosine decay to `peak · min_ratio` at `total`.
pub fn learning_rate(step: usize, peak: f64, warmup: usize, total: usize, min_ratio: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cosine)
}

/// Scales `grads` so their global L2 norm is at most `max_norm` (0 = off); returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut Grads, max_norm: f64) -> Result<f64> {
    let mut sq = 0.0;
    for g in grads.values() {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr = |s| learning_rate(s, 1.0, 10, 110, 0.1);
        assert!((lr(0) - 0.1).abs() < 1e-12 && (lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.55).abs() < 1e-12);
        assert!((lr(110) - 0.1).abs() < 1e-12 && (lr(500) - 0.1).abs() < 1e-12);
    }
}
