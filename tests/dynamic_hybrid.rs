//! DynamicHybridModel end to end: a tiny model overfits a tiny corpus, training resumes
//! exactly, the engine's greedy generation equals the argmax of the training forward and is
//! batch invariant, Granite transfer copies tensors bit for bit, bad inputs are named.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use nanovllm::llm::{EngineConfig, Prompt, LLM};
use nanovllm::models::dynamic_hybrid::config::DynamicHybridConfig;
use nanovllm::models::dynamic_hybrid::network::forward;
use nanovllm::models::dynamic_hybrid::params::{ParamStore, Weights};
use nanovllm::sampling_params::SamplingParams;
use nanovllm::train::data::DataSource;
use nanovllm::train::trainer::{read_metrics, train, TrainOptions};
use rand::{Rng, SeedableRng};

fn tiny() -> DynamicHybridConfig {
    DynamicHybridConfig {
        vocab_size: 64,
        hidden_dim: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: Some(2),
        ssm_d_state: 8,
        ssm_head_dim: 16,
        ffn_dim: 48,
        compression_factor: 2.0,
        compression_threshold: -0.5,
        router_slack: 2.0,
        max_seq_len: 128,
        seq_len: 32,
        batch_size: 8,
        warmup_steps: 10,
        learning_rate: 3e-3,
        weight_decay: 0.0,
        eval_fraction: 0.1,
        eval_sequences: 8,
        eos_token_id: Some(0),
        ..Default::default()
    }
}

/// A random model with weights large enough that logits and routes are decisive.
fn random_model(dir: &Path, cfg: &DynamicHybridConfig) -> ParamStore {
    let p = ParamStore::init(cfg, DType::F32).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for (name, var, _) in p.iter() {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let scale = if name.ends_with("norm.weight")
            || name.ends_with("A_log")
            || name.ends_with("dt_bias")
        {
            None
        } else if name.ends_with("state_importance") {
            Some(1.5)
        } else {
            Some(1.5 / (*dims.last().unwrap() as f32).sqrt())
        };
        if let Some(s) = scale {
            let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-s..s)).collect();
            var.set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg).unwrap(),
    )
    .unwrap();
    p.save(&dir.join("model.safetensors")).unwrap();
    p
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        max_model_len: Some(128),
        kv_cache_memory: 8 << 20,
        prefix_cache_memory: 8 << 20,
        ..EngineConfig::default()
    }
}

fn generate(
    dir: &Path,
    cfg: EngineConfig,
    prompts: &[Prompt],
    params: &SamplingParams,
) -> Vec<Vec<u32>> {
    let mut llm = LLM::new(dir, cfg).unwrap();
    let outs = llm
        .generate(prompts, std::slice::from_ref(params), false)
        .unwrap();
    let engine = llm.engine_mut();
    let ((fb, b), (fs, s)) = engine.scheduler().free_resources();
    assert_eq!((fb, fs), (b, s), "leaked blocks or slots");
    outs.into_iter()
        .map(|o| o.unwrap().outputs[0].token_ids.clone())
        .collect()
}

fn prompts(n: usize, vocab: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            (0..rng.gen_range(3..40))
                .map(|_| rng.gen_range(0..vocab))
                .collect()
        })
        .collect()
}

#[test]
fn engine_greedy_equals_the_training_forward_argmax() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny();
    let params = random_model(dir.path(), &cfg);
    let n_new = 12;
    let ps = prompts(3, 64, 5);
    let w = Weights::detached(&params, false);
    let mut expected = Vec::new();
    for p in &ps {
        let mut seq = p.clone();
        for _ in 0..n_new {
            let t = Tensor::from_vec(seq.clone(), (1, seq.len()), &Device::Cpu).unwrap();
            let (logits, stats, _) = forward(&t, &w, &cfg).unwrap();
            assert!(stats.compression_rate > 1.0, "compressor keeps every dim");
            let last = logits.get(0).unwrap().get(seq.len() - 1).unwrap();
            seq.push(last.argmax(0).unwrap().to_scalar::<u32>().unwrap());
        }
        expected.push(seq[p.len()..].to_vec());
    }
    let prompts: Vec<Prompt> = ps.into_iter().map(Prompt::Tokens).collect();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(n_new)
    };
    let got = generate(dir.path(), engine_config(), &prompts, &params);
    assert_eq!(got, expected);
}

#[test]
fn engine_is_batch_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny();
    random_model(dir.path(), &cfg);
    let prompts: Vec<Prompt> = prompts(12, 64, 11)
        .into_iter()
        .map(Prompt::Tokens)
        .collect();
    for params in [
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(16)
        },
        SamplingParams {
            ignore_eos: true,
            seed: Some(5),
            top_p: 0.9,
            max_tokens: 16,
            ..Default::default()
        },
    ] {
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .flat_map(|p| {
                let cfg = EngineConfig {
                    enable_prefix_caching: false,
                    max_num_seqs: 1,
                    ..engine_config()
                };
                generate(dir.path(), cfg, std::slice::from_ref(p), &params)
            })
            .collect();
        let chunked = EngineConfig {
            max_num_batched_tokens: 24,
            ..engine_config()
        };
        assert_eq!(
            generate(dir.path(), chunked, &prompts, &params),
            alone,
            "batched"
        );
        let kv = nanovllm::models::load(dir.path())
            .unwrap()
            .cache_costs()
            .kv_bytes_per_token;
        let tight = EngineConfig {
            kv_cache_memory: kv * 16 * 12,
            ..engine_config()
        };
        assert_eq!(
            generate(dir.path(), tight, &prompts, &params),
            alone,
            "preempted"
        );
        let mut llm = LLM::new(dir.path(), engine_config()).unwrap();
        llm.generate(&prompts, std::slice::from_ref(&params), false)
            .unwrap();
        let again = llm
            .generate(&prompts, std::slice::from_ref(&params), false)
            .unwrap();
        let cached: usize = again
            .iter()
            .map(|o| o.as_ref().unwrap().metrics.num_cached_tokens)
            .sum();
        assert!(cached > 0, "no prefix-cache hit");
        let toks: Vec<Vec<u32>> = again
            .into_iter()
            .map(|o| o.unwrap().outputs[0].token_ids.clone())
            .collect();
        assert_eq!(toks, alone, "prefix-cache hit");
    }
}

fn options(out: &Path, steps: usize, resume: Option<&Path>) -> TrainOptions {
    TrainOptions {
        config: tiny(),
        data: DataSource::Synthetic {
            vocab: 64,
            tokens: 4000,
        },
        out: out.to_path_buf(),
        steps: Some(steps),
        eval_every: 0,
        resume: resume.map(Path::to_path_buf),
        progress: false,
    }
}

fn losses(out: &Path) -> Vec<f64> {
    read_metrics(out)
        .unwrap()
        .iter()
        .filter_map(|m| m.get("loss").and_then(|l| l.as_f64()))
        .collect()
}

#[test]
fn tiny_model_overfits_a_tiny_corpus() {
    let out = tempfile::tempdir().unwrap();
    let report = train(&options(out.path(), 150, None)).unwrap();
    let l = losses(out.path());
    assert!(l[0] > 3.5, "first loss {}", l[0]);
    assert!(
        report.last_loss < 0.5,
        "final training loss {}",
        report.last_loss
    );
    assert!(
        report.eval_ppl.unwrap() < 3.0,
        "eval ppl {:?}",
        report.eval_ppl
    );
    assert!(out.path().join("final/model.safetensors").is_file());
    assert!(out.path().join("best/optimizer.safetensors").is_file());
}

#[test]
fn resume_continues_the_loss_curve_exactly() {
    let whole = tempfile::tempdir().unwrap();
    train(&options(whole.path(), 8, None)).unwrap();
    let split = tempfile::tempdir().unwrap();
    train(&options(split.path(), 4, None)).unwrap();
    let again = tempfile::tempdir().unwrap();
    train(&options(again.path(), 8, Some(&split.path().join("final")))).unwrap();
    let (a, b, c) = (
        losses(whole.path()),
        losses(split.path()),
        losses(again.path()),
    );
    assert_eq!(a.len(), 8);
    assert_eq!(b, a[..4]);
    assert_eq!(c, a[4..], "resumed curve differs");
}

#[test]
fn gradient_checkpointing_gives_the_same_run() {
    let plain = tempfile::tempdir().unwrap();
    train(&options(plain.path(), 3, None)).unwrap();
    let ck = tempfile::tempdir().unwrap();
    let mut o = options(ck.path(), 3, None);
    o.config.gradient_checkpointing = true;
    train(&o).unwrap();
    let (a, b) = (losses(plain.path()), losses(ck.path()));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn bad_data_paths_and_configs_are_named() {
    let out = tempfile::tempdir().unwrap();
    let mut o = options(out.path(), 1, None);
    o.data = DataSource::Text {
        path: "/nonexistent/corpus".into(),
        tokenizer: common::fixture("tokenizer/tokenizer.json"),
    };
    let e = train(&o).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/corpus"), "{e}");
    let mut o = options(out.path(), 1, None);
    o.config.router_capacity = 2.0;
    let e = train(&o).unwrap_err().to_string();
    assert!(e.contains("router_capacity"), "{e}");
    let e = train(&options(
        out.path(),
        1,
        Some(Path::new("/nonexistent/ckpt")),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/ckpt"), "{e}");
}

#[test]
fn granite_transfer_copies_tensors_bit_for_bit() {
    let src = common::fixture("granite_hybrid/hybrid_dense");
    let out = tempfile::tempdir().unwrap();
    let report = nanovllm::models::dynamic_hybrid::transfer::convert(&src, out.path(), 0).unwrap();
    let granite =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let dh =
        candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
    // 5 layers [M, M, A, M, A]: embed + norm + per layer 2 norms + 2 MLP + 8 mamba or 4 attention.
    assert_eq!(report.transferred.len(), 2 + 5 * 4 + 3 * 8 + 2 * 4);
    for c in &report.transferred {
        let a = granite[&c.from]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = dh[&c.to].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{} differs",
            c.to
        );
    }
    assert!(report
        .fresh
        .iter()
        .any(|(n, _)| n == "layers.2.ssm.in_proj.weight"));
    assert!(report
        .fresh
        .iter()
        .any(|(n, _)| n == "layers.0.attn.q_proj.weight"));
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);
    // The converted model is served by the engine.
    let p = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(4)
    };
    let got = generate(
        out.path(),
        engine_config(),
        &[Prompt::Tokens(vec![1, 2, 3])],
        &p,
    );
    assert_eq!(got[0].len(), 4);
}
