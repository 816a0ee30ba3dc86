//! Every committed model fixture (`tests/fixtures/<architecture>/<variant>/` with a
//! `reference.safetensors` from transformers) matches in all four modes (full prefill,
//! token-by-token decode, mixed chunked prefill, greedy) within the project's thresholds.

use std::path::{Path, PathBuf};
use std::process::Command;

use nanovllm::llm::{EngineConfig, Prompt, LLM};
use nanovllm::sampling_params::SamplingParams;
use nanovllm::validate::{validate, Reference, ValidationReport};

fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flat_map(|arch| {
            std::fs::read_dir(arch.unwrap().path())
                .into_iter()
                .flatten()
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("reference.safetensors").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn assert_exact(name: &str, r: &ValidationReport) {
    for m in &r.modes {
        assert!(
            m.max_abs_diff <= 1e-4,
            "{name} {}: max_abs_diff {}",
            m.mode,
            m.max_abs_diff
        );
        assert!(
            m.cosine >= 0.99999,
            "{name} {}: cosine {}",
            m.mode,
            m.cosine
        );
        assert_eq!(m.top1_match, 1.0, "{name} {}: top1", m.mode);
    }
    assert!(r.pearson >= 0.99999, "{name}: pearson {}", r.pearson);
    assert_eq!(r.greedy_match, 1.0, "{name}: greedy");
}

#[test]
fn all_fixtures_match_transformers() {
    let dirs = fixture_dirs();
    assert!(
        dirs.len() >= 8,
        "expected the committed fixtures, found {}",
        dirs.len()
    );
    for dir in dirs {
        let name = dir
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .display()
            .to_string();
        let model = nanovllm::models::load(&dir).unwrap();
        let reference = Reference::load(&dir.join("reference.safetensors")).unwrap();
        let report = validate(model.as_ref(), &reference).unwrap();
        assert_exact(&name, &report);
    }
}

/// The `granite` and `mamba2` GGUF loaders, on fixtures converted by llama.cpp's own
/// converter (F32, `scripts/make_gguf_fixtures.py`): same logits as transformers, and `info`
/// describes the file.
#[test]
fn gguf_conversions_of_fixtures_match_transformers() {
    let ggufs: Vec<PathBuf> = fixture_dirs()
        .into_iter()
        .map(|d| d.join("model.gguf"))
        .filter(|p| p.is_file())
        .collect();
    assert!(
        ggufs.len() >= 3,
        "expected the committed GGUF fixtures, found {}",
        ggufs.len()
    );
    for path in ggufs {
        let name = path.display().to_string();
        let model = nanovllm::models::load(&path).unwrap();
        let reference = Reference::load(&path.with_file_name("reference.safetensors")).unwrap();
        let report = validate(model.as_ref(), &reference).unwrap();
        assert_exact(&name, &report);
        let out = Command::new(env!("CARGO_BIN_EXE_nanovllm"))
            .args(["info", "--model"])
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("GGUF"),
            "{name}: {stdout}"
        );
    }
}

#[test]
fn validate_cli_prints_json_report() {
    let dir = fixture_dirs().into_iter().next().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nanovllm"))
        .args(["validate", "--json", "--model"])
        .arg(&dir)
        .arg("--reference")
        .arg(dir.join("reference.safetensors"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "max_abs_diff",
        "cosine",
        "pearson",
        "top1_match",
        "greedy_match",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["greedy_match"], 1.0);
    assert!(v["max_abs_diff"].as_f64().unwrap() <= 1e-4);
}

/// A corrupted reference (one logit moved) must be caught: the check can fail.
#[test]
fn a_perturbed_reference_fails() {
    let dir = fixture_dirs().into_iter().next().unwrap();
    let model = nanovllm::models::load(&dir).unwrap();
    let mut reference = Reference::load(&dir.join("reference.safetensors")).unwrap();
    reference.logits[5] += 1e-3;
    let report = validate(model.as_ref(), &reference).unwrap();
    assert!(report.max_abs_diff > 5e-4);
    reference.greedy_ids[1][3] = (reference.greedy_ids[1][3] + 1) % reference.vocab as u32;
    let report = validate(model.as_ref(), &reference).unwrap();
    assert!(report.greedy_match < 1.0);
}

/// Every fixture through the engine, all rows at once with prefill chunks of 7 tokens, twice on
/// one engine: both rounds give transformers' greedy tokens, the second from prefix-cache hits
/// (shared KV blocks, recurrent-state snapshots, sliding windows, learned positions).
#[test]
fn engine_greedy_matches_transformers_with_prefix_cache_hits() {
    for dir in fixture_dirs() {
        let name = dir.display().to_string();
        let reference = Reference::load(&dir.join("reference.safetensors")).unwrap();
        let prompts: Vec<Prompt> = reference
            .input_ids
            .iter()
            .map(|r| Prompt::Tokens(r.clone()))
            .collect();
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(reference.greedy_ids[0].len())
        };
        let mut llm = LLM::new(
            &dir,
            EngineConfig {
                max_model_len: Some(64),
                max_num_batched_tokens: 7,
                kv_cache_memory: 8 << 20,
                prefix_cache_memory: 8 << 20,
                ..EngineConfig::default()
            },
        )
        .unwrap();
        for round in 0..2 {
            let outs = llm
                .generate(&prompts, std::slice::from_ref(&params), false)
                .unwrap();
            let outs: Vec<_> = outs.into_iter().map(|o| o.unwrap()).collect();
            let cached: usize = outs.iter().map(|o| o.metrics.num_cached_tokens).sum();
            assert_eq!(
                round == 1,
                cached > 0,
                "{name} round {round}: cached {cached}"
            );
            let got: Vec<Vec<u32>> = outs
                .into_iter()
                .map(|o| o.outputs[0].token_ids.clone())
                .collect();
            assert_eq!(got, reference.greedy_ids, "{name} round {round}");
        }
    }
}
