//! The Mamba2 mixer (spec §4.3): `in_proj` → split z | xBC | dt → causal conv + SiLU on xBC →
//! selective scan with per-head decay → D skip → gated RMSNorm with z → `out_proj`.
//! Each sequence continues from its own state slot, updated in place; a sequence with no
//! cached tokens starts from zero state whatever the slot held before.

use candle_core::Tensor;
use rayon::prelude::*;

use super::linear::Linear;
use super::norm::rms_normalize;
use super::{from_vec, to_vec};
use crate::cache::{StateCache, StateShape};
use crate::engine::batch::Batch;
use crate::error::{Error, Result};
use crate::kernels::conv1d::{conv1d_silu_seqs, tap_major};
use crate::kernels::fast_math::silu;
use crate::kernels::ggml_math;
use crate::kernels::ggml_ssm;
use crate::kernels::reference::ScanDims;
use crate::kernels::scan_layout::{split_seqs, RowLayout, SeqRows};
use crate::kernels::ssd::ssd_scan_batch;
use crate::kernels::ssm_step::{activate_dt, mamba2_step_batch, StepParams};
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

/// Tokens per parallel block of the prefill conv.
const CONV_BLOCK: usize = 64;

/// Tokens per chunk of the SSD prefill scan. Numerics only (spec §4.4); smaller than the
/// checkpoints' `chunk_size` (256) because the intra-chunk term costs `chunk·P` per token and
/// head on a CPU, while the state terms cost `2·N·P` whatever the chunk.
const SSD_CHUNK: usize = 64;

/// `y` shared by the scan tasks, each writing its own (token, head) slices.
struct YPtr(*mut f32);
// SAFETY: tasks write disjoint slices (one head of one sequence's tokens each).
unsafe impl Send for YPtr {}
unsafe impl Sync for YPtr {}

/// A Mamba2 mixer's weights.
pub struct Mamba2Mixer {
    cfg: Mamba2Config,
    in_proj: Linear,
    /// Tap-major `[K, conv_dim]`.
    conv_weight: Vec<f32>,
    conv_bias: Vec<f32>,
    dt_bias: Vec<f32>,
    a: Vec<f32>,
    d: Vec<f32>,
    norm_weight: Vec<f32>,
    out_proj: Linear,
    /// llama.cpp's arithmetic (GGUF files), see [`ggml_ssm`].
    ggml: bool,
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
        // llama.cpp uses the GGUF's stored `A = -exp(A_log)` as it is; `-exp(ln(-A))` can be
        // an ulp away.
        let a = match store.gguf_as_stored(&format!("{prefix}.A_log"), &[nh])? {
            Some(stored) => to_vec(&stored)?,
            None => vec("A_log", &[nh])?.iter().map(|v| -v.exp()).collect(),
        };
        Ok(Self {
            in_proj: Linear::load(
                store,
                &format!("{prefix}.in_proj"),
                di + cd + nh,
                h,
                cfg.proj_bias,
            )?,
            conv_weight: tap_major(&vec("conv1d.weight", &[cd, 1, k])?, k),
            conv_bias: if cfg.conv_bias {
                vec("conv1d.bias", &[cd])?
            } else {
                vec![0.0; cd]
            },
            dt_bias: vec("dt_bias", &[nh])?,
            a,
            d: vec("D", &[nh])?,
            norm_weight: vec("norm.weight", &[di])?,
            out_proj: Linear::load(store, &format!("{prefix}.out_proj"), h, di, cfg.proj_bias)?,
            ggml: store.gguf().is_some(),
            cfg,
        })
    }

    fn dims(&self) -> ScanDims {
        ScanDims {
            n_heads: self.cfg.n_heads,
            head_dim: self.cfg.head_dim,
            d_state: self.cfg.d_state,
            n_groups: self.cfg.n_groups,
        }
    }

    /// `[tokens, hidden] -> [tokens, hidden]`, advancing each sequence's state slot.
    pub fn forward(&self, x: &Tensor, batch: &Batch, cache: &mut StateCache) -> Result<Tensor> {
        let tokens = x.dim(0)?;
        let cfg = &self.cfg;
        let (di, nh) = (cfg.d_inner(), cfg.n_heads);
        let layout = RowLayout::in_proj(di, cfg.n_groups * cfg.d_state, nh);
        // The projection rows are the kernels' working buffer: conv and dt are activated in
        // place and the scan reads x, B, C, dt and the gate z from them.
        let mut rows = self.in_proj.forward_vec(x)?;
        let slots: Vec<usize> = batch.seqs.iter().map(|s| s.state_slot).collect();
        let mut states = cache.slots_mut(&slots)?;
        for (s, (conv, ssm)) in batch.seqs.iter().zip(states.iter_mut()) {
            if s.past_len == 0 {
                conv.fill(0.0);
                ssm.fill(0.0);
            }
        }
        let decode = batch
            .seqs
            .iter()
            .enumerate()
            .all(|(i, s)| s.len == 1 && s.start == i);
        let mut y = vec![0f32; tokens * di];
        if self.ggml {
            self.forward_ggml(&mut rows, layout, batch, states, &mut y);
        } else if decode {
            let params = StepParams {
                conv_weight: &self.conv_weight,
                conv_bias: &self.conv_bias,
                dt_bias: &self.dt_bias,
                dt_limit: cfg.dt_limit,
                a: &self.a,
                d: &self.d,
            };
            mamba2_step_batch(&mut rows, layout, self.dims(), params, states, &mut y);
            self.gate_and_norm(&mut y, &rows, layout);
        } else {
            let seqs = self.prefill_rows(&mut rows, layout, batch, &mut states);
            let ssm = states.into_iter().map(|(_, ssm)| ssm).collect();
            let mut heads = vec![0f32; tokens * di];
            ssd_scan_batch(
                &rows,
                layout,
                &seqs,
                self.dims(),
                &self.a,
                &self.d,
                SSD_CHUNK,
                ssm,
                &mut heads,
            );
            // The scan writes each sequence head-major; gather into token rows.
            let p = cfg.head_dim;
            for s in &seqs {
                let src = &heads[s.start * di..(s.start + s.len) * di];
                let dst = &mut y[s.start * di..(s.start + s.len) * di];
                for (h, yh) in src.chunks(s.len * p).enumerate() {
                    for (t, v) in yh.chunks(p).enumerate() {
                        dst[t * di + h * p..t * di + (h + 1) * p].copy_from_slice(v);
                    }
                }
            }
            self.gate_and_norm(&mut y, &rows, layout);
        }
        self.out_proj.forward(&from_vec(y, tokens, di)?)
    }

    /// llama.cpp's arithmetic ([`ggml_ssm`]): conv and dt per sequence, then every sequence's
    /// tokens one at a time through the recurrence as `ggml_ssm_scan` runs them (prefill
    /// included; parallel over sequence and head), then the gate and the grouped norm.
    fn forward_ggml(
        &self,
        rows: &mut [f32],
        layout: RowLayout,
        batch: &Batch,
        states: Vec<(&mut [f32], &mut [f32])>,
        y: &mut [f32],
    ) {
        let cfg = &self.cfg;
        let (di, nh, p, n) = (cfg.d_inner(), cfg.n_heads, cfg.head_dim, cfg.d_state);
        let seqs: Vec<SeqRows> = batch
            .seqs
            .iter()
            .map(|s| SeqRows {
                start: s.start,
                len: s.len,
            })
            .collect();
        let (convs, ssms): (Vec<_>, Vec<_>) = states.into_iter().unzip();
        split_seqs(rows, layout.stride, &seqs)
            .into_par_iter()
            .zip(convs)
            .for_each(|(part, conv)| {
                let len = part.len() / layout.stride;
                ggml_ssm::conv_silu_rows(
                    part,
                    layout.stride,
                    layout.x,
                    len,
                    conv,
                    &self.conv_weight,
                    &self.conv_bias,
                );
                for row in part.chunks_exact_mut(layout.stride) {
                    for (v, b) in row[layout.dt..layout.dt + nh].iter_mut().zip(&self.dt_bias) {
                        *v = ggml_ssm::softplus(*v + b);
                    }
                }
            });
        let rows = &*rows;
        let heads_per_group = nh / cfg.n_groups;
        let out = YPtr(y.as_mut_ptr());
        let out = &out;
        let tasks: Vec<(SeqRows, usize, &mut [f32])> = ssms
            .into_iter()
            .zip(&seqs)
            .flat_map(|(ssm, s)| {
                ssm.chunks_mut(p * n)
                    .enumerate()
                    .map(move |(h, st)| (*s, h, st))
            })
            .collect();
        tasks.into_par_iter().for_each(|(s, h, st)| {
            let g = h / heads_per_group;
            for t in s.start..s.start + s.len {
                let row = &rows[t * layout.stride..(t + 1) * layout.stride];
                // SAFETY: token `t`'s head `h` (`p` values inside `y`, which holds
                // `tokens * di`) belongs to this task alone.
                let yh = unsafe { std::slice::from_raw_parts_mut(out.0.add(t * di + h * p), p) };
                ggml_ssm::scan_head_token(
                    &row[layout.x + h * p..layout.x + (h + 1) * p],
                    &row[layout.b + g * n..layout.b + (g + 1) * n],
                    &row[layout.c + g * n..layout.c + (g + 1) * n],
                    row[layout.dt + h],
                    self.a[h],
                    self.d[h],
                    st,
                    yh,
                );
            }
        });
        let group = di / cfg.n_groups;
        let eps = cfg.norm_eps as f32;
        y.par_chunks_mut(di)
            .zip(rows.par_chunks(layout.stride))
            .for_each(|(yr, row)| {
                // ggml gates per head (rows of `head_dim`).
                for (yh, zh) in yr.chunks_mut(p).zip(row[..di].chunks(p)) {
                    ggml_math::swiglu_in_place(zh, yh);
                }
                for (g, w) in yr.chunks_mut(group).zip(self.norm_weight.chunks(group)) {
                    rms_normalize(g, w, eps);
                }
            });
    }

    /// Conv + SiLU and dt activation of every sequence's rows, in place, in parallel over
    /// sequences; returns the sequences' row ranges for the scan.
    fn prefill_rows(
        &self,
        rows: &mut [f32],
        layout: RowLayout,
        batch: &Batch,
        states: &mut [(&mut [f32], &mut [f32])],
    ) -> Vec<SeqRows> {
        let seqs: Vec<SeqRows> = batch
            .seqs
            .iter()
            .map(|s| SeqRows {
                start: s.start,
                len: s.len,
            })
            .collect();
        let mut convs: Vec<&mut [f32]> = states.iter_mut().map(|(c, _)| &mut **c).collect();
        conv1d_silu_seqs(
            rows,
            layout.stride,
            layout.x,
            &seqs,
            &mut convs,
            &self.conv_weight,
            &self.conv_bias,
            CONV_BLOCK,
            |part| activate_dt(part, layout, &self.dt_bias, self.cfg.dt_limit),
        );
        seqs
    }

    /// Gated RMSNorm (spec §4.3 step 7): `y ⊙ silu(z)`, normalised per group, in place, in
    /// parallel over tokens.
    fn gate_and_norm(&self, y: &mut [f32], rows: &[f32], layout: RowLayout) {
        let di = self.cfg.d_inner();
        let group = di / self.cfg.n_groups;
        let eps = self.cfg.norm_eps as f32;
        y.par_chunks_mut(di)
            .zip(rows.par_chunks(layout.stride))
            .for_each(|(yr, row)| {
                for (v, z) in yr.iter_mut().zip(&row[..di]) {
                    *v *= silu(*z);
                }
                for (g, w) in yr.chunks_mut(group).zip(self.norm_weight.chunks(group)) {
                    rms_normalize(g, w, eps);
                }
            });
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
            + self.norm_weight.len()
            + self.out_proj.num_params()
    }
}
