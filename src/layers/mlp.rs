//! Gated MLP `down(act(gate(x)) ⊙ up(x))` with gate and up fused in one `[2I, H]` projection
//! (gate rows first, as Granite's `input_linear` stores them), and the plain two-layer MLP
//! `down(act(up(x)))` of GPT-2 and Falcon.

use candle_core::Tensor;

use super::linear::Linear;
use super::{from_vec, silu, to_vec};
use crate::error::{Error, Result};
use crate::loader::safetensors::WeightStore;

/// A SiLU-gated MLP with a fused gate/up projection.
pub struct GatedMlp {
    gate_up: Linear,
    down: Linear,
    intermediate: usize,
}

impl GatedMlp {
    /// Loads Granite's `{prefix}.input_linear` ([2I, H]) and `{prefix}.output_linear` ([H, I]).
    pub fn load_granite(
        store: &WeightStore,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
    ) -> Result<Self> {
        Ok(Self {
            gate_up: Linear::load(
                store,
                &format!("{prefix}.input_linear"),
                2 * intermediate,
                hidden,
                false,
            )?,
            down: Linear::load(
                store,
                &format!("{prefix}.output_linear"),
                hidden,
                intermediate,
                false,
            )?,
            intermediate,
        })
    }

    /// `[tokens, hidden] -> [tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gu = to_vec(&self.gate_up.forward(x)?)?;
        let act = swiglu(&gu, self.intermediate);
        let rows = act.len() / self.intermediate.max(1);
        self.down.forward(&from_vec(act, rows, self.intermediate)?)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.gate_up.num_params() + self.down.num_params()
    }
}

/// `silu(gate) ⊙ up` for rows laid out as `[gate (I) | up (I)]`.
pub fn swiglu(gate_up: &[f32], intermediate: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks(2 * intermediate) {
        let (gate, up) = row.split_at(intermediate);
        out.extend(gate.iter().zip(up).map(|(g, u)| silu(*g) * u));
    }
    out
}

/// Element-wise activation of a plain [`Mlp`], by its transformers `ACT2FN` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: exact, `x·Φ(x)` with erf (Falcon).
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation (GPT-2).
    GeluTanh,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    /// Parses a transformers activation name; `field` names the config field for the error.
    pub fn from_hf(field: &str, name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            "silu" | "swish" => Ok(Self::Silu),
            other => Err(Error::config(
                field,
                format!("unsupported activation `{other}` (supported: gelu, gelu_new, gelu_pytorch_tanh, relu, silu)"),
            )),
        }
    }

    /// Applies the activation element-wise.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Gelu => x.gelu_erf()?,
            Self::GeluTanh => x.gelu()?,
            Self::Relu => x.relu()?,
            Self::Silu => x.silu()?,
        })
    }
}

/// A plain MLP `down(act(up(x)))`.
pub struct Mlp {
    up: Linear,
    down: Linear,
    act: Activation,
}

impl Mlp {
    /// Wraps already-loaded `up` (`[I, H]`) and `down` (`[H, I]`) projections.
    pub fn new(up: Linear, down: Linear, act: Activation) -> Self {
        Self { up, down, act }
    }

    /// `[tokens, hidden] -> [tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&self.act.forward(&self.up.forward(x)?)?)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.up.num_params() + self.down.num_params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_variants_match_their_formulas() {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let t = from_vec(xs.to_vec(), 1, xs.len()).unwrap();
        let exact = to_vec(&Activation::Gelu.forward(&t).unwrap()).unwrap();
        let tanh = to_vec(&Activation::GeluTanh.forward(&t).unwrap()).unwrap();
        // Φ(-0.5) = 0.3085375, Φ(0.7) = 0.7580364 (standard normal CDF).
        assert!((exact[1] - (-0.5 * 0.308_537_5)).abs() < 1e-6);
        assert!((exact[3] - 0.7 * 0.758_036_4).abs() < 1e-6);
        for (x, y) in xs.iter().zip(&tanh) {
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            let want = 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh());
            assert!((y - want).abs() < 1e-6);
        }
        assert!(Activation::from_hf("activation", "gelu_fast_typo").is_err());
    }
}
