//! Every block's backward against central finite differences in f64 on tiny shapes, and
//! gradient checkpointing against the plain backward.

use candle_core::{DType, Device, Tensor, Var};

use super::config::DynamicHybridConfig;
use super::layer::{bridge, compressor_gate, layer_forward, router, ssm_path, transformer_path};
use super::network::{loss_and_grads, Grads};
use super::params::{ParamStore, Weights};

/// A tiny config with every feature switched on (GQA, 2 SSM groups, a compressor that drops
/// dimensions, a slack the router can use).
pub(crate) fn tiny() -> DynamicHybridConfig {
    DynamicHybridConfig {
        vocab_size: 13,
        hidden_dim: 8,
        num_layers: 2,
        num_heads: 2,
        num_kv_heads: Some(1),
        ssm_d_state: 6,
        ssm_head_dim: 4,
        ssm_n_groups: 2,
        ffn_dim: 12,
        compression_factor: 3.0,
        compression_threshold: -0.5,
        router_slack: 1.0,
        seq_len: 7,
        max_seq_len: 64,
        embedding_multiplier: 2.0,
        residual_multiplier: 0.7,
        logits_scaling: 1.5,
        aux_loss_weight: 0.3,
        compression_loss_weight: 0.2,
        seed: 7,
        ..Default::default()
    }
}

fn rand(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_add(99);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Parameters in f64 with every tensor re-drawn at scale 0.5 (so no block is near-linear),
/// and importance logits spread across the compressor threshold.
pub(crate) fn params(cfg: &DynamicHybridConfig) -> ParamStore {
    let p = ParamStore::init(cfg, DType::F64).unwrap();
    for (i, (name, var, _)) in p.iter().enumerate() {
        let dims = var.dims().to_vec();
        let t = if name.ends_with("state_importance") {
            rand(&dims, 1000 + i as u64, 1.5)
        } else if name.ends_with("A_log")
            || name.ends_with("dt_bias")
            || name.ends_with("norm.weight")
        {
            rand(&dims, 1000 + i as u64, 0.5).affine(1.0, 0.5).unwrap()
        } else {
            rand(&dims, 1000 + i as u64, 0.5)
        };
        var.set(&t).unwrap();
    }
    p
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Compares autograd's gradient of `f` for the named parameters and the input `x` with
/// central differences at a few entries each.
fn check(p: &ParamStore, x: &Var, names: &[String], f: &dyn Fn(&Weights, &Tensor) -> Tensor) {
    let w = Weights::tracked(p, false);
    let g = f(&w, x.as_tensor()).backward().unwrap();
    let eval = || scalar(&f(&Weights::detached(p, false), &x.as_detached_tensor()));
    let eps = 1e-6;
    let mut targets: Vec<(String, &Var)> = names
        .iter()
        .map(|n| (n.clone(), p.var(n).unwrap()))
        .collect();
    targets.push(("input".into(), x));
    for (name, var) in targets {
        let analytic: Vec<f64> = match g.get(var.as_tensor()) {
            Some(t) => t.flatten_all().unwrap().to_vec1().unwrap(),
            None => vec![0.0; var.elem_count()],
        };
        let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        let n = base.len();
        for k in 0..n.min(5) {
            let i = (k * 7919 + 3) % n;
            let bump = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                eval()
            };
            let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(base.clone(), var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            let a = analytic[i];
            assert!(
                (a - fd).abs() <= 1e-6 + 1e-5 * fd.abs().max(a.abs()),
                "{name}[{i}]: autograd {a} vs finite difference {fd}"
            );
        }
    }
}

fn names(cfg: &DynamicHybridConfig, part: &str) -> Vec<String> {
    ParamStore::names_for(cfg)
        .into_iter()
        .filter(|n| n.starts_with("layers.0.") && n.contains(part))
        .collect()
}

fn input(cfg: &DynamicHybridConfig, seed: u64) -> Var {
    Var::from_tensor(&rand(&[2, cfg.seq_len, cfg.hidden_dim], seed, 1.0)).unwrap()
}

fn weighted_sum(y: &Tensor, seed: u64) -> Tensor {
    (y * rand(y.dims(), seed, 1.0)).unwrap().sum_all().unwrap()
}

#[test]
fn router_weights_backward_matches_finite_differences() {
    let cfg = tiny();
    let p = params(&cfg);
    check(&p, &input(&cfg, 1), &names(&cfg, "router"), &|w, x| {
        weighted_sum(&router(x, w, "layers.0", &cfg).unwrap().weight, 2)
    });
}

#[test]
fn ssm_path_and_compressor_backward_matches_finite_differences() {
    let cfg = tiny();
    let p = params(&cfg);
    let (_, _, kept) = compressor_gate(&Weights::detached(&p, false), "layers.0", &cfg).unwrap();
    assert!(
        kept < cfg.ssm_d_state && kept >= cfg.min_kept_state(),
        "kept {kept}"
    );
    check(&p, &input(&cfg, 3), &names(&cfg, ".ssm."), &|w, x| {
        let (gate, _, _) = compressor_gate(w, "layers.0", &cfg).unwrap();
        weighted_sum(&ssm_path(x, &gate, w, "layers.0", &cfg).unwrap(), 4)
    });
}

#[test]
fn transformer_path_backward_matches_finite_differences() {
    let cfg = tiny();
    let p = params(&cfg);
    let mut n = names(&cfg, ".attn.");
    n.extend(names(&cfg, "ffn"));
    check(&p, &input(&cfg, 5), &n, &|w, x| {
        weighted_sum(&transformer_path(x, w, "layers.0", &cfg).unwrap(), 6)
    });
}

#[test]
fn bridge_backward_matches_finite_differences() {
    let cfg = tiny();
    let p = params(&cfg);
    let other = rand(&[2, cfg.seq_len, cfg.hidden_dim], 8, 1.0);
    check(&p, &input(&cfg, 7), &names(&cfg, "bridge"), &|w, x| {
        let (s, t) = bridge(x, &other, w, "layers.0").unwrap();
        (weighted_sum(&s, 9) + weighted_sum(&t, 10)).unwrap()
    });
}

#[test]
fn whole_layer_with_aux_loss_backward_matches_finite_differences() {
    let cfg = tiny();
    let p = params(&cfg);
    let mut n = names(&cfg, "norm");
    n.extend(names(&cfg, "state_importance"));
    n.extend(names(&cfg, "router"));
    n.extend(names(&cfg, "bridge.gate_t"));
    check(&p, &input(&cfg, 11), &n, &|w, x| {
        let (y, st) = layer_forward(x, w, 0, &cfg).unwrap();
        (weighted_sum(&y, 12) + st.aux).unwrap()
    });
}

fn tokens(cfg: &DynamicHybridConfig, seed: u64) -> (Tensor, Tensor) {
    let n = 2 * (cfg.seq_len + 1);
    let ids: Vec<u32> = (0..n as u64)
        .map(|i| ((i * 2654435761 + seed * 97) % cfg.vocab_size as u64) as u32)
        .collect();
    let all = Tensor::from_vec(ids, (2, cfg.seq_len + 1), &Device::Cpu).unwrap();
    (
        all.narrow(1, 0, cfg.seq_len).unwrap(),
        all.narrow(1, 1, cfg.seq_len).unwrap(),
    )
}

fn close(a: &Grads, b: &Grads) {
    assert_eq!(a.len(), b.len());
    for (name, ga) in a {
        let gb = &b[name];
        let diff = (ga - gb).unwrap().abs().unwrap().max_all().unwrap();
        assert!(scalar(&diff) < 1e-12, "{name}: {}", scalar(&diff));
    }
}

#[test]
fn model_loss_backward_matches_finite_differences_and_checkpointing() {
    for tie in [false, true] {
        let cfg = DynamicHybridConfig {
            tie_word_embeddings: tie,
            ..tiny()
        };
        let p = params(&cfg);
        let (inp, tgt) = tokens(&cfg, 1);
        let (s1, plain) = loss_and_grads(&p, &inp, &tgt, &cfg, false, &mut |_| {}).unwrap();
        let (s2, ckpt) = loss_and_grads(&p, &inp, &tgt, &cfg, true, &mut |_| {}).unwrap();
        assert!((s1.loss - s2.loss).abs() < 1e-12 && (s1.aux_loss - s2.aux_loss).abs() < 1e-12);
        assert_eq!(plain.len(), ParamStore::names_for(&cfg).len());
        close(&plain, &ckpt);
        // Finite differences of the total loss for the embedding, head and a layer-1 tensor.
        let total = |p: &ParamStore| {
            let (s, _) = loss_and_grads(p, &inp, &tgt, &cfg, true, &mut |_| {}).unwrap();
            s.loss + s.aux_loss
        };
        let mut which = vec![
            "embed_tokens.weight",
            "norm.weight",
            "layers.1.ssm.in_proj.weight",
        ];
        if !tie {
            which.push("lm_head.weight");
        }
        for name in which {
            let var = p.var(name).unwrap();
            let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
            let analytic: Vec<f64> = plain[name].flatten_all().unwrap().to_vec1().unwrap();
            for k in 0..4 {
                let i = (k * 7919 + 5) % base.len();
                let at = |d: f64| {
                    let mut v = base.clone();
                    v[i] += d;
                    var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    total(&p)
                };
                let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                var.set(&Tensor::from_vec(base.clone(), var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                assert!(
                    (analytic[i] - fd).abs() <= 1e-6 + 1e-5 * fd.abs(),
                    "{name}[{i}] tie={tie}: {} vs {fd}",
                    analytic[i]
                );
            }
        }
    }
}
