//! The trainable parameters of a DynamicHybridModel: named candle `Var`s in checkpoint order,
//! their initialisation, and safetensors save/load. [`Weights`] is the view a forward reads
//! them through: tracked (the graph reaches the `Var`s) or detached (no graph, for the first
//! pass of gradient checkpointing).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::DynamicHybridConfig;
use crate::error::{Error, Result};

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy)]
enum Init {
    /// Normal with this standard deviation.
    Normal(f64),
    /// Uniform in `[-a, a]`.
    Uniform(f64),
    /// Every entry this value.
    Const(f64),
    /// `A_log = log(U[1, 16])` (Mamba2's range of decay rates).
    ALog,
    /// `dt_bias = softplus⁻¹(dt)`, `dt` log-uniform in [0.001, 0.1] (Mamba2).
    DtBias,
}

/// One parameter's name, shape, initialiser and whether weight decay applies.
struct Spec {
    name: String,
    shape: Vec<usize>,
    init: Init,
    decay: bool,
}

/// Every parameter of a model with this config, in checkpoint order.
fn specs(cfg: &DynamicHybridConfig) -> Vec<Spec> {
    let (h, v, i) = (cfg.hidden_dim, cfg.vocab_size, cfg.ffn_dim);
    let (di, cd, nh, k) = (
        cfg.d_inner(),
        cfg.conv_dim(),
        cfg.ssm_heads(),
        cfg.ssm_kernel_size,
    );
    let kv = cfg.kv_heads() * cfg.head_dim();
    let std = 0.02;
    let out_std = 0.02 / (2.0 * cfg.num_layers as f64).sqrt();
    let mut s = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, init: Init, decay: bool| {
        s.push(Spec {
            name,
            shape,
            init,
            decay,
        })
    };
    add(
        "embed_tokens.weight".into(),
        vec![v, h],
        Init::Normal(std),
        true,
    );
    for l in 0..cfg.num_layers {
        let p = format!("layers.{l}");
        add(
            format!("{p}.input_norm.weight"),
            vec![h],
            Init::Const(1.0),
            false,
        );
        add(
            format!("{p}.router.weight"),
            vec![1, h],
            Init::Normal(std),
            true,
        );
        add(format!("{p}.router.bias"), vec![1], Init::Const(0.0), false);
        let m = format!("{p}.ssm");
        add(
            format!("{m}.in_proj.weight"),
            vec![cfg.in_proj_dim(), h],
            Init::Normal(std),
            true,
        );
        let conv = Init::Uniform(1.0 / (k as f64).sqrt());
        add(format!("{m}.conv1d.weight"), vec![cd, 1, k], conv, false);
        add(
            format!("{m}.conv1d.bias"),
            vec![cd],
            Init::Const(0.0),
            false,
        );
        add(format!("{m}.dt_bias"), vec![nh], Init::DtBias, false);
        add(format!("{m}.A_log"), vec![nh], Init::ALog, false);
        add(format!("{m}.D"), vec![nh], Init::Const(1.0), false);
        add(
            format!("{m}.norm.weight"),
            vec![di],
            Init::Const(1.0),
            false,
        );
        add(
            format!("{m}.out_proj.weight"),
            vec![h, di],
            Init::Normal(out_std),
            true,
        );
        add(
            format!("{m}.state_importance"),
            vec![cfg.ssm_d_state],
            Init::Const(0.0),
            false,
        );
        let a = format!("{p}.attn");
        add(
            format!("{a}.q_proj.weight"),
            vec![h, h],
            Init::Normal(std),
            true,
        );
        add(
            format!("{a}.k_proj.weight"),
            vec![kv, h],
            Init::Normal(std),
            true,
        );
        add(
            format!("{a}.v_proj.weight"),
            vec![kv, h],
            Init::Normal(std),
            true,
        );
        add(
            format!("{a}.o_proj.weight"),
            vec![h, h],
            Init::Normal(out_std),
            true,
        );
        add(
            format!("{p}.ffn_norm.weight"),
            vec![h],
            Init::Const(1.0),
            false,
        );
        add(
            format!("{p}.ffn.input_linear.weight"),
            vec![2 * i, h],
            Init::Normal(std),
            true,
        );
        add(
            format!("{p}.ffn.output_linear.weight"),
            vec![h, i],
            Init::Normal(out_std),
            true,
        );
        let b = format!("{p}.bridge");
        // The gates start mostly closed (sigmoid(-2) = 0.12): each path begins on its own.
        for (gate, proj) in [("gate_s", "proj_t2s"), ("gate_t", "proj_s2t")] {
            add(
                format!("{b}.{gate}.weight"),
                vec![h, 2 * h],
                Init::Normal(std),
                true,
            );
            add(
                format!("{b}.{gate}.bias"),
                vec![h],
                Init::Const(-2.0),
                false,
            );
            add(
                format!("{b}.{proj}.weight"),
                vec![h, h],
                Init::Normal(std),
                true,
            );
        }
    }
    add("norm.weight".into(), vec![h], Init::Const(1.0), false);
    if !cfg.tie_word_embeddings {
        add("lm_head.weight".into(), vec![v, h], Init::Normal(std), true);
    }
    s
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller; 1 - u keeps the log finite.
    let (u, v): (f64, f64) = (rng.gen(), rng.gen());
    (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn init_values(init: Init, n: usize, rng: &mut StdRng) -> Vec<f64> {
    (0..n)
        .map(|_| match init {
            Init::Normal(std) => normal(rng) * std,
            Init::Uniform(a) => rng.gen_range(-a..=a),
            Init::Const(c) => c,
            Init::ALog => rng.gen_range(1.0f64..16.0).ln(),
            Init::DtBias => {
                let dt = (rng.gen_range(0.001f64.ln()..0.1f64.ln())).exp();
                dt + (-(-dt).exp_m1()).ln() // softplus⁻¹(dt) = dt + log(1 - e^-dt)
            }
        })
        .collect()
}

/// A model's parameters.
pub struct ParamStore {
    names: Vec<String>,
    vars: Vec<Var>,
    decay: Vec<bool>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    /// Freshly initialised parameters (deterministic in `cfg.seed`) of dtype `dtype`.
    pub fn init(cfg: &DynamicHybridConfig, dtype: DType) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut tensors = Vec::new();
        for s in specs(cfg) {
            let n = s.shape.iter().product();
            let v = init_values(s.init, n, &mut rng);
            let t = Tensor::from_vec(v, s.shape.clone(), &Device::Cpu)?.to_dtype(dtype)?;
            tensors.push((s.name, t, s.decay));
        }
        Self::from_parts(tensors)
    }

    /// Loads parameters from safetensors `tensors` (every name of `cfg` must be present with
    /// its shape); they become `dtype`.
    pub fn from_tensors(
        cfg: &DynamicHybridConfig,
        tensors: &HashMap<String, Tensor>,
        dtype: DType,
        origin: &Path,
    ) -> Result<Self> {
        let mut parts = Vec::new();
        for s in specs(cfg) {
            let t = tensors.get(&s.name).ok_or_else(|| Error::MissingTensor {
                name: s.name.clone(),
                file: origin.to_path_buf(),
            })?;
            if t.dims() != s.shape.as_slice() {
                return Err(Error::ShapeMismatch {
                    name: s.name,
                    expected: s.shape,
                    got: t.dims().to_vec(),
                });
            }
            parts.push((s.name, t.to_dtype(dtype)?, s.decay));
        }
        Self::from_parts(parts)
    }

    fn from_parts(parts: Vec<(String, Tensor, bool)>) -> Result<Self> {
        let mut store = Self {
            names: Vec::new(),
            vars: Vec::new(),
            decay: Vec::new(),
            index: HashMap::new(),
        };
        for (name, t, decay) in parts {
            store.index.insert(name.clone(), store.names.len());
            store.names.push(name);
            store.vars.push(Var::from_tensor(&t)?);
            store.decay.push(decay);
        }
        Ok(store)
    }

    /// The parameter names every config of this shape has, in order.
    pub fn names_for(cfg: &DynamicHybridConfig) -> Vec<String> {
        specs(cfg).into_iter().map(|s| s.name).collect()
    }

    /// The parameter called `name`.
    pub fn var(&self, name: &str) -> Result<&Var> {
        self.index
            .get(name)
            .map(|&i| &self.vars[i])
            .ok_or_else(|| Error::request("parameter", format!("no parameter `{name}`")))
    }

    /// `(name, var, weight decay applies)` for every parameter, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var, bool)> {
        self.names
            .iter()
            .zip(&self.vars)
            .zip(&self.decay)
            .map(|((n, v), d)| (n.as_str(), v, *d))
    }

    /// Total number of scalars.
    pub fn num_params(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }

    /// Detached copies of every parameter by name (for saving).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.names
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
            .collect()
    }

    /// Writes every parameter (f32) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        for (n, v) in self.names.iter().zip(&self.vars) {
            map.insert(n.clone(), v.as_detached_tensor().to_dtype(DType::F32)?);
        }
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }
}

/// How a forward reads the parameters.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    store: &'a ParamStore,
    detached: bool,
    /// Matmuls on BF16-rounded operands.
    pub bf16: bool,
}

impl<'a> Weights<'a> {
    /// A view whose tensors reach the `Var`s (gradients flow to them).
    pub fn tracked(store: &'a ParamStore, bf16: bool) -> Self {
        Self {
            store,
            detached: false,
            bf16,
        }
    }

    /// A view with no graph behind it.
    pub fn detached(store: &'a ParamStore, bf16: bool) -> Self {
        Self {
            store,
            detached: true,
            bf16,
        }
    }

    /// The parameter `name`.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let v = self.store.var(name)?;
        Ok(if self.detached {
            v.as_detached_tensor()
        } else {
            v.as_tensor().clone()
        })
    }
}
