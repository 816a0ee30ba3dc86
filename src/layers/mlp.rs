//! Gated MLP `down(act(gate(x)) ⊙ up(x))` with gate and up fused in one `[2I, H]` projection
//! (gate rows first, as Granite's `input_linear` stores them; checkpoints with separate
//! `gate_proj` / `up_proj`, as Llama and Gemma, are concatenated into that layout at load),
//! and the plain two-layer MLP `down(act(up(x)))` of GPT-2 and Falcon.

use candle_core::Tensor;

use super::linear::Linear;
use super::{from_vec, silu, to_vec};
use crate::error::{Error, Result};
use crate::kernels::ggml_math;
use crate::loader::safetensors::WeightStore;

/// An MLP activation, by its transformers `ACT2FN` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` / `swish`: `x · sigmoid(x)`.
    Silu,
    /// `gelu_pytorch_tanh` / `gelu_new` (GPT-2): GELU, tanh approximation.
    GeluTanh,
    /// `gelu` (Falcon): exact GELU, `x · Φ(x)` with erf.
    Gelu,
    /// `relu`.
    Relu,
}

impl Activation {
    /// Parses a transformers activation name; `field` names the config key in errors.
    pub fn parse(name: &str, field: &str) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Self::GeluTanh),
            "gelu" => Ok(Self::Gelu),
            "relu" => Ok(Self::Relu),
            other => Err(Error::config(
                field,
                format!(
                    "activation `{other}` is not supported (silu, gelu_pytorch_tanh, gelu_new, gelu, relu)"
                ),
            )),
        }
    }

    /// Applies the activation to one value.
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Self::Silu => silu(v),
            Self::GeluTanh => gelu_tanh(v),
            Self::Gelu => gelu_erf(v),
            Self::Relu => v.max(0.0),
        }
    }
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, with PyTorch's constants and order of ops
/// (`GeluKernel.cpp`, approximate="tanh").
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const BETA: f32 = (std::f64::consts::SQRT_2 * std::f64::consts::FRAC_2_SQRT_PI * 0.5) as f32;
    const KAPPA: f32 = 0.044715;
    let inner = BETA * (x + KAPPA * (x * x * x));
    0.5 * x * (1.0 + inner.tanh())
}

/// `0.5·x·(1 + erf(x/√2))`, evaluated in f64 so the f32 result is correctly rounded.
#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x * std::f64::consts::FRAC_1_SQRT_2))) as f32
}

/// A gated MLP with a fused gate/up projection.
pub struct GatedMlp {
    gate_up: Linear,
    down: Linear,
    intermediate: usize,
    act: Activation,
    /// llama.cpp's element-wise arithmetic (GGUF files), see [`ggml_math`].
    ggml: bool,
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
            act: Activation::Silu,
            ggml: store.gguf().is_some(),
        })
    }

    /// Loads Llama-style `{prefix}.{gate_proj, up_proj, down_proj}` (with `.bias` when `bias`),
    /// fusing gate and up.
    pub fn load_split(
        store: &WeightStore,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
        act: Activation,
        bias: bool,
    ) -> Result<Self> {
        let gate = Linear::load(
            store,
            &format!("{prefix}.gate_proj"),
            intermediate,
            hidden,
            bias,
        )?;
        let up = Linear::load(
            store,
            &format!("{prefix}.up_proj"),
            intermediate,
            hidden,
            bias,
        )?;
        let gate_up = Linear::concat_out(&gate, &up)?;
        Ok(Self {
            gate_up,
            down: Linear::load(
                store,
                &format!("{prefix}.down_proj"),
                hidden,
                intermediate,
                bias,
            )?,
            intermediate,
            act,
            ggml: store.gguf().is_some(),
        })
    }

    /// `[tokens, hidden] -> [tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gu = self.gate_up.forward_vec(x)?;
        let act = if self.ggml {
            ggml_gated(&gu, self.intermediate, self.act)
        } else {
            gated(&gu, self.intermediate, self.act)
        };
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
    gated(gate_up, intermediate, Activation::Silu)
}

/// `act(gate) ⊙ up` for rows laid out as `[gate (I) | up (I)]`.
pub fn gated(gate_up: &[f32], intermediate: usize, act: Activation) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks(2 * intermediate.max(1)) {
        let (gate, up) = row.split_at(intermediate.min(row.len()));
        out.extend(gate.iter().zip(up).map(|(g, u)| act.apply(*g) * u));
    }
    out
}

/// [`gated`] with llama.cpp's arithmetic for the activations it fuses (SwiGLU, GeGLU).
pub fn ggml_gated(gate_up: &[f32], intermediate: usize, act: Activation) -> Vec<f32> {
    let kernel = match act {
        Activation::Silu => ggml_math::swiglu,
        Activation::GeluTanh => ggml_math::geglu,
        other => return gated(gate_up, intermediate, other),
    };
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks(2 * intermediate.max(1)) {
        let (gate, up) = row.split_at(intermediate.min(row.len()));
        kernel(gate, up, &mut out);
    }
    out
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
        let h = self.up.forward(x)?;
        let (rows, cols) = h.dims2()?;
        let mut v = to_vec(&h)?;
        for e in v.iter_mut() {
            *e = self.act.apply(*e);
        }
        self.down.forward(&from_vec(v, rows, cols)?)
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
        // Φ(-0.5) = 0.3085375, Φ(0.7) = 0.7580364 (standard normal CDF).
        assert!((Activation::Gelu.apply(-0.5) - (-0.5 * 0.308_537_5)).abs() < 1e-6);
        assert!((Activation::Gelu.apply(0.7) - 0.7 * 0.758_036_4).abs() < 1e-6);
        let c = (2.0f64 / std::f64::consts::PI).sqrt();
        for x in [-3.0f32, -0.5, 0.0, 0.7, 2.5] {
            let xd = x as f64;
            let want = 0.5 * xd * (1.0 + (c * (xd + 0.044715 * xd * xd * xd)).tanh());
            assert!((Activation::GeluTanh.apply(x) as f64 - want).abs() < 1e-6);
        }
        assert_eq!(
            Activation::parse("gelu_new", "activation_function").unwrap(),
            Activation::GeluTanh
        );
        assert!(Activation::parse("gelu_fast_typo", "activation_function").is_err());
    }

    /// `torch.nn.functional.gelu(x, approximate="tanh")` in f32, printed by torch 2.15.
    #[test]
    fn gelu_tanh_matches_torch() {
        let xs = [-3.0f32, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5];
        let torch: [f64; 7] = [
            -3.637_433_05e-3,
            -1.588_079_93e-1,
            -1.003_246_46e-1,
            0.0,
            3.457_140_03e-1,
            8.411_920_07e-1,
            2.484_915_73,
        ];
        for (x, t) in xs.iter().zip(torch) {
            let g = f64::from(gelu_tanh(*x));
            assert!(
                (g - t).abs() <= 1e-6 * t.abs().max(1.0),
                "gelu({x}) = {g}, torch {t}"
            );
        }
        assert_eq!(
            Activation::parse("gelu_pytorch_tanh", "hidden_activation").unwrap(),
            Activation::GeluTanh
        );
    }
}
