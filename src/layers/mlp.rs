//! Gated MLP `down(act(gate(x)) ⊙ up(x))` with gate and up fused in one `[2I, H]` projection
//! (gate rows first, as Granite's `input_linear` stores them).

use candle_core::Tensor;

use super::linear::Linear;
use super::{from_vec, silu, to_vec};
use crate::error::Result;
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
