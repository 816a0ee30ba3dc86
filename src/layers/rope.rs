//! Rotary position embedding, half-split (GPT-NeoX) layout: the first and second halves of
//! each head form the rotated pairs. Angles are computed in f32 as transformers does.
//! Frequency scaling (`linear`, `llama3`) is applied to the inverse frequencies once, at load,
//! with transformers' f32 operation order (`modeling_rope_utils.py`). Models read from GGUF
//! switch to llama.cpp's angle arithmetic ([`Rope::with_ggml_angles`]), which differs from
//! transformers' by up to ~1e-3 rad at long positions.

use crate::error::{Error, Result};
use crate::loader::config_json::float_from_value;

/// Precomputed inverse frequencies for one head size.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
    theta: f64,
    scaling: RopeScaling,
    ggml: Option<GgmlAngles>,
}

/// llama.cpp's angle recurrence (`ggml_rope_cache_init`): `θ₀ = pos`, `θᵢ₊₁ = θᵢ · s` in f32
/// with `s = powf(base, -2/dims)`, each angle times `freq_scale`. The rounding error of the
/// running product grows with the pair index, so angles differ from `pos · inv_freq[i]`.
#[derive(Debug, Clone, Copy)]
struct GgmlAngles {
    theta_scale: f32,
    freq_scale: f32,
}

impl Rope {
    /// Default (unscaled) RoPE: `inv_freq[i] = theta^(-2i/head_dim)`.
    pub fn new(theta: f64, head_dim: usize) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        Self {
            inv_freq,
            head_dim,
            theta,
            scaling: RopeScaling::None,
            ggml: None,
        }
    }

    /// RoPE with the inverse frequencies rescaled as `scaling` says.
    pub fn scaled(theta: f64, head_dim: usize, scaling: RopeScaling) -> Self {
        let mut rope = Self::new(theta, head_dim);
        rope.scaling = scaling;
        match scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => rope.inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3(p) => rope.inv_freq.iter_mut().for_each(|f| *f = p.apply(*f)),
        }
        rope
    }

    /// The same rotation with llama.cpp's angle arithmetic, for GGUF files (whose reference
    /// engine is llama.cpp). llama3 band scaling keeps transformers' angles: GGUF stores it as
    /// a `rope_freqs` tensor, which the GGUF loader rejects.
    pub fn into_ggml_angles(mut self) -> Self {
        let factor = match self.scaling {
            RopeScaling::None => 1.0f32,
            RopeScaling::Linear { factor } => factor,
            RopeScaling::Llama3(_) => return self,
        };
        self.ggml = Some(GgmlAngles {
            theta_scale: (self.theta as f32).powf(-2.0f32 / self.head_dim as f32),
            freq_scale: 1.0f32 / factor,
        });
        self
    }

    /// `(cos, sin)` of every pair's angle at `pos`.
    fn angles(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        match self.ggml {
            None => self
                .inv_freq
                .iter()
                .map(|f| {
                    let a = pos as f32 * f;
                    (a.cos(), a.sin())
                })
                .unzip(),
            Some(g) => {
                let mut theta = pos as f32;
                (0..self.inv_freq.len())
                    .map(|_| {
                        let a = g.freq_scale * theta;
                        theta *= g.theta_scale;
                        (a.cos(), a.sin())
                    })
                    .unzip()
            }
        }
    }

    /// The inverse frequency of each rotated pair.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Rotates every head of one token's `[n_heads * head_dim]` row for position `pos`.
    pub fn apply(&self, row: &mut [f32], pos: usize) {
        let half = self.head_dim / 2;
        let (cos, sin) = self.angles(pos);
        for head in row.chunks_mut(self.head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = b * cos[i] + a * sin[i];
            }
        }
    }
}

/// How a checkpoint rescales RoPE frequencies (`rope_parameters.rope_type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `default`: unscaled.
    None,
    /// `linear`: every inverse frequency divided by `factor`.
    Linear {
        /// Position interpolation factor.
        factor: f32,
    },
    /// `llama3`: Llama 3.1's band-wise interpolation.
    Llama3(Llama3Scaling),
}

/// Parameters of `llama3` RoPE scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    /// Divisor for the low-frequency band.
    pub factor: f32,
    /// Wavelengths above `original / low_freq_factor` are fully scaled.
    pub low_freq_factor: f32,
    /// Wavelengths below `original / high_freq_factor` are kept.
    pub high_freq_factor: f32,
    /// Context length of pre-training.
    pub original_max_position_embeddings: usize,
}

impl Llama3Scaling {
    /// One inverse frequency through `_compute_llama3_parameters`, in its f32 operation order
    /// (torch computes `scalar / tensor` as `tensor.reciprocal() * scalar`).
    fn apply(&self, inv: f32) -> f32 {
        let old = self.original_max_position_embeddings as f64;
        let low_wavelen = (old / self.low_freq_factor as f64) as f32;
        let high_wavelen = (old / self.high_freq_factor as f64) as f32;
        let wavelen = (1.0 / inv) * (2.0 * std::f64::consts::PI) as f32;
        let scaled = if wavelen > low_wavelen {
            inv / self.factor
        } else {
            inv
        };
        if wavelen < high_wavelen || wavelen > low_wavelen {
            return scaled;
        }
        let smooth = ((1.0 / wavelen) * old as f32 - self.low_freq_factor)
            / (self.high_freq_factor as f64 - self.low_freq_factor as f64) as f32;
        (1.0 - smooth) * scaled / self.factor + smooth * scaled
    }
}

/// RoPE base and scaling read from a config's RoPE parameter object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    /// Base `theta`.
    pub theta: f64,
    /// Frequency scaling.
    pub scaling: RopeScaling,
}

impl RopeParams {
    /// Reads a transformers RoPE parameter object (`rope_parameters`, or the legacy
    /// `rope_scaling`): `rope_type` (or `type`), `rope_theta`, `factor`, ... `field` names the
    /// object in errors; `theta` is used when the object has no `rope_theta`;
    /// `max_position_embeddings` stands in for a missing `original_max_position_embeddings`,
    /// as transformers does.
    pub fn parse(
        params: Option<&serde_json::Value>,
        field: &str,
        theta: f64,
        max_position_embeddings: Option<usize>,
    ) -> Result<Self> {
        let params = params.filter(|p| !p.is_null());
        let Some(obj) = params else {
            return Ok(Self {
                theta,
                scaling: RopeScaling::None,
            });
        };
        let Some(obj) = obj.as_object() else {
            return Err(Error::config(
                field,
                format!("expected an object, got {obj}"),
            ));
        };
        let num = |key: &str| -> Result<Option<f64>> {
            match obj.get(key).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => float_from_value(v).map(Some).ok_or_else(|| {
                    Error::config(format!("{field}.{key}"), format!("not a number: {v}"))
                }),
            }
        };
        let need = |key: &str| -> Result<f64> {
            num(key)?.ok_or_else(|| Error::config(format!("{field}.{key}"), "missing"))
        };
        let theta = num("rope_theta")?.unwrap_or(theta);
        if !(theta.is_finite() && theta > 0.0) {
            return Err(Error::config(
                format!("{field}.rope_theta"),
                format!("must be a positive number, got {theta}"),
            ));
        }
        if let Some(p) = num("partial_rotary_factor")? {
            if p != 1.0 {
                return Err(Error::config(
                    format!("{field}.partial_rotary_factor"),
                    format!("only full rotation (1.0) is supported, got {p}"),
                ));
            }
        }
        let rope_type = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let positive = |key: &str| -> Result<f32> {
            let v = need(key)?;
            if v.is_finite() && v > 0.0 {
                Ok(v as f32)
            } else {
                Err(Error::config(
                    format!("{field}.{key}"),
                    format!("must be positive, got {v}"),
                ))
            }
        };
        let scaling = match rope_type {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: positive("factor")?,
            },
            "llama3" => {
                let original = match num("original_max_position_embeddings")? {
                    Some(v) if v >= 1.0 && v.fract() == 0.0 => v as usize,
                    Some(v) => {
                        return Err(Error::config(
                            format!("{field}.original_max_position_embeddings"),
                            format!("must be a positive integer, got {v}"),
                        ))
                    }
                    None => max_position_embeddings.ok_or_else(|| {
                        Error::config(
                            format!("{field}.original_max_position_embeddings"),
                            "missing (and no max_position_embeddings to fall back on)",
                        )
                    })?,
                };
                let p = Llama3Scaling {
                    factor: positive("factor")?,
                    low_freq_factor: positive("low_freq_factor")?,
                    high_freq_factor: positive("high_freq_factor")?,
                    original_max_position_embeddings: original,
                };
                if p.high_freq_factor <= p.low_freq_factor {
                    return Err(Error::config(
                        format!("{field}.high_freq_factor"),
                        "must be greater than low_freq_factor",
                    ));
                }
                RopeScaling::Llama3(p)
            }
            other => {
                return Err(Error::config(
                    format!("{field}.rope_type"),
                    format!("RoPE type `{other}` is not supported (default, linear, llama3)"),
                ))
            }
        };
        Ok(Self { theta, scaling })
    }

    /// The rotary embedding for one head size.
    pub fn rope(&self, head_dim: usize) -> Rope {
        Rope::scaled(self.theta, head_dim, self.scaling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(ours: &[f32], theirs: &[f64]) {
        assert_eq!(ours.len(), theirs.len());
        for (i, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
            let rel = ((a as f64 - b) / b).abs();
            assert!(rel < 1e-6, "inv_freq[{i}]: {a} vs transformers {b}");
        }
    }

    /// Printed by transformers 5.23.0 `_compute_llama3_parameters` (head_dim 16, theta 5e5,
    /// factor 8, low/high 1/4, original 64): every band (kept, smoothed, divided) appears.
    #[test]
    fn llama3_inv_freq_matches_transformers() {
        let p = RopeParams::parse(
            Some(&serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
            "rope_parameters",
            10000.0,
            None,
        )
        .unwrap();
        let theirs = [
            1.000000000e+00,
            7.940301299e-02,
            4.700753838e-03,
            9.115831344e-04,
            1.767766807e-04,
            3.428102355e-05,
            6.647869668e-06,
            1.289173156e-06,
        ];
        assert_close(p.rope(16).inv_freq(), &theirs);
        // Llama 3.1 8B geometry (head_dim 128, original 8192): the smoothed band, spot-checked.
        let p = RopeParams {
            theta: 500000.0,
            scaling: RopeScaling::Llama3(Llama3Scaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
        };
        let inv = p.rope(128).inv_freq().to_vec();
        assert_close(
            &inv[27..38],
            &[
                3.942275885e-03,
                3.211446106e-03,
                2.166570630e-03,
                1.371893683e-03,
                8.567514597e-04,
                5.248460220e-04,
                3.126936499e-04,
                1.785077911e-04,
                9.556212171e-05,
                7.784655463e-05,
                6.341514381e-05,
            ],
        );
    }

    /// transformers `_compute_linear_scaling_rope_parameters` (head_dim 16, factor 4), and the
    /// legacy `type` key.
    #[test]
    fn linear_inv_freq_matches_transformers() {
        let p = RopeParams::parse(
            Some(&serde_json::json!({"type": "linear", "factor": 4.0})),
            "rope_scaling",
            10000.0,
            None,
        )
        .unwrap();
        assert_close(
            p.rope(16).inv_freq(),
            &[
                2.500000000e-01,
                7.905694097e-02,
                2.500000037e-02,
                7.905694656e-03,
                2.499999944e-03,
                7.905694656e-04,
                2.500000119e-04,
                7.905694656e-05,
            ],
        );
    }

    #[test]
    fn unsupported_or_incomplete_scaling_names_the_field() {
        let err = RopeParams::parse(
            Some(&serde_json::json!({"rope_type": "yarn", "factor": 4.0})),
            "rope_parameters",
            10000.0,
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("rope_parameters.rope_type"),
            "{err}"
        );
        let err = RopeParams::parse(
            Some(
                &serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}),
            ),
            "rope_scaling",
            10000.0,
            Some(128),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("rope_scaling.high_freq_factor"),
            "{err}"
        );
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        let rope = Rope::new(10000.0, 8);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.5).collect();
        let mut row = orig.clone();
        rope.apply(&mut row, 0);
        assert_eq!(row, orig);
        rope.apply(&mut row, 37);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = row.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
        // Pair (0, 4) of head 0 rotates by 37 rad with inv_freq 1.
        let (c, s) = (37f32.cos(), 37f32.sin());
        assert!((row[0] - (orig[0] * c - orig[4] * s)).abs() < 1e-6);
    }
}
