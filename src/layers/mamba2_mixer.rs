//! The Mamba2 mixer (spec §4.3): `in_proj` → split z | xBC | dt → causal conv + SiLU on xBC →
//! selective scan with per-head decay → D skip → gated RMSNorm with z → `out_proj`.
//! Each sequence continues from its own state slot, updated in place; a sequence with no
//! cached tokens starts from zero state whatever the slot held before.

use candle_core::Tensor;

use super::linear::Linear;
use super::norm::GatedRmsNorm;
use super::{from_vec, to_vec};
use crate::cache::{StateCache, StateShape};
use crate::engine::batch::Batch;
use crate::error::{Error, Result};
use crate::kernels::reference::{
    causal_conv1d_silu, softplus, ssm_scan_batch, ScanDims, ScanInputs,
};
use crate::loader::config_json::float_from_value;
use crate::loader::safetensors::WeightStore;

/// Geometry of a Mamba2 mixer.
#[derive(Debug, Clone, Copy)]
pub struct Mamba2Config {
    /// Residual width H.
    pub hidden_size: usize,
    /// SSM heads nH.
    pub n_heads: usize,
    /// Channels per head P.
    pub head_dim: usize,
    /// B/C groups G.
    pub n_groups: usize,
    /// State size N.
    pub d_state: usize,
    /// Conv kernel width K.
    pub d_conv: usize,
    /// Whether the conv has a bias.
    pub conv_bias: bool,
    /// Whether in_proj / out_proj have biases.
    pub proj_bias: bool,
    /// Clamp applied to dt after softplus.
    pub dt_limit: (f32, f32),
    /// Epsilon of the gated RMSNorm.
    pub norm_eps: f64,
}

impl Mamba2Config {
    /// Inner width `nH·P`.
    pub fn d_inner(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Channels through the conv: x, B and C.
    pub fn conv_dim(&self) -> usize {
        self.d_inner() + 2 * self.n_groups * self.d_state
    }

    /// The recurrent state this mixer keeps per sequence.
    pub fn state_shape(&self) -> StateShape {
        StateShape {
            conv_dim: self.conv_dim(),
            conv_kernel: self.d_conv,
            n_heads: self.n_heads,
            head_dim: self.head_dim,
            d_state: self.d_state,
        }
    }
}

/// Reads a config's `time_step_limit` (`[low, high]`, numbers or any spelling of `Infinity`
/// transformers writes); absent or null means no clamp.
pub fn time_step_limit(limit: Option<&[serde_json::Value]>) -> Result<(f32, f32)> {
    let Some(limit) = limit else {
        return Ok((f32::NEG_INFINITY, f32::INFINITY));
    };
    let vals: Option<Vec<f64>> = limit.iter().map(float_from_value).collect();
    match vals.as_deref() {
        Some([lo, hi]) if lo <= hi => Ok((*lo as f32, *hi as f32)),
        _ => Err(Error::config(
            "time_step_limit",
            format!("expected [low, high] with low <= high, got {limit:?}"),
        )),
    }
}

/// A Mamba2 mixer's weights.
pub struct Mamba2Mixer {
    cfg: Mamba2Config,
    in_proj: Linear,
    conv_weight: Vec<f32>,
    conv_bias: Vec<f32>,
    dt_bias: Vec<f32>,
    a: Vec<f32>,
    d: Vec<f32>,
    norm: GatedRmsNorm,
    out_proj: Linear,
}

impl Mamba2Mixer {
    /// Loads `{prefix}.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj}`.
    pub fn load(store: &WeightStore, prefix: &str, cfg: Mamba2Config) -> Result<Self> {
        let (h, di, cd, nh, k) = (
            cfg.hidden_size,
            cfg.d_inner(),
            cfg.conv_dim(),
            cfg.n_heads,
            cfg.d_conv,
        );
        let vec = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            to_vec(&store.f32(&format!("{prefix}.{name}"), shape)?)
        };
        let a_log = vec("A_log", &[nh])?;
        Ok(Self {
            in_proj: Linear::load(
                store,
                &format!("{prefix}.in_proj"),
                di + cd + nh,
                h,
                cfg.proj_bias,
            )?,
            conv_weight: vec("conv1d.weight", &[cd, 1, k])?,
            conv_bias: if cfg.conv_bias {
                vec("conv1d.bias", &[cd])?
            } else {
                vec![0.0; cd]
            },
            dt_bias: vec("dt_bias", &[nh])?,
            a: a_log.iter().map(|v| -v.exp()).collect(),
            d: vec("D", &[nh])?,
            norm: GatedRmsNorm::load(
                store,
                &format!("{prefix}.norm.weight"),
                di,
                cfg.n_groups,
                cfg.norm_eps,
            )?,
            out_proj: Linear::load(store, &format!("{prefix}.out_proj"), h, di, cfg.proj_bias)?,
            cfg,
        })
    }

    /// `[tokens, hidden] -> [tokens, hidden]`, advancing each sequence's state slot.
    pub fn forward(&self, x: &Tensor, batch: &Batch, cache: &mut StateCache) -> Result<Tensor> {
        let tokens = x.dim(0)?;
        let cfg = &self.cfg;
        let (di, cd, nh) = (cfg.d_inner(), cfg.conv_dim(), cfg.n_heads);
        let width = di + cd + nh;
        let proj = to_vec(&self.in_proj.forward(x)?)?;

        let mut z = Vec::with_capacity(tokens * di);
        let mut xbc = Vec::with_capacity(tokens * cd);
        let mut dt = Vec::with_capacity(tokens * nh);
        for row in proj.chunks(width) {
            z.extend_from_slice(&row[..di]);
            xbc.extend_from_slice(&row[di..di + cd]);
            // spec §4.3 step 4; the clamp is applied on every path (see docs/architecture.md).
            dt.extend(
                row[di + cd..]
                    .iter()
                    .zip(&self.dt_bias)
                    .map(|(v, b)| softplus(v + b).clamp(cfg.dt_limit.0, cfg.dt_limit.1)),
            );
        }

        let mut conv_out = vec![0f32; tokens * cd];
        let mut y = vec![0f32; tokens * di];
        let slots: Vec<usize> = batch.seqs.iter().map(|s| s.state_slot).collect();
        let (conv_states, mut ssm_states): (Vec<_>, Vec<_>) =
            cache.slots_mut(&slots)?.into_iter().unzip();
        for ((s, conv_state), ssm_state) in batch
            .seqs
            .iter()
            .zip(conv_states)
            .zip(ssm_states.iter_mut())
        {
            if s.past_len == 0 {
                conv_state.fill(0.0);
                ssm_state.fill(0.0);
            }
            let rows = s.start * cd..(s.start + s.len) * cd;
            causal_conv1d_silu(
                &xbc[rows.clone()],
                conv_state,
                &self.conv_weight,
                &self.conv_bias,
                cfg.d_conv,
                &mut conv_out[rows],
            );
        }
        let inputs: Vec<ScanInputs> = batch
            .seqs
            .iter()
            .map(|s| ScanInputs {
                xbc: &conv_out[s.start * cd..(s.start + s.len) * cd],
                dt: &dt[s.start * nh..(s.start + s.len) * nh],
                a: &self.a,
                d: &self.d,
            })
            .collect();
        let mut ys = Vec::with_capacity(batch.seqs.len());
        let mut rest = y.as_mut_slice();
        for s in &batch.seqs {
            let (head, tail) = rest.split_at_mut(s.len * di);
            ys.push(head);
            rest = tail;
        }
        let dims = ScanDims {
            n_heads: nh,
            head_dim: cfg.head_dim,
            d_state: cfg.d_state,
            n_groups: cfg.n_groups,
        };
        ssm_scan_batch(&inputs, dims, ssm_states, ys);
        self.norm.forward_in_place(&mut y, &z);
        self.out_proj.forward(&from_vec(y, tokens, di)?)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.in_proj.num_params()
            + self.conv_weight.len()
            + if self.cfg.conv_bias {
                self.conv_bias.len()
            } else {
                0
            }
            + self.dt_bias.len()
            + self.a.len()
            + self.d.len()
            + self.norm.num_params()
            + self.out_proj.num_params()
    }
}
