//! Real GGUF models against llama.cpp (reference ids in tests/fixtures/gguf/, made by
//! scripts/make_gguf_references.py). The models are not in the repository: scripts/fetch_models.sh
//! puts SmolLM2 and Gemma 3 in models/ (`.ci/run` does), scripts/convert_granite_gguf.py the
//! Granite conversions. A test whose model is absent says so and passes.

use std::path::{Path, PathBuf};

use nanovllm::cache::{CacheCapacity, ModelCache};
use nanovllm::engine::batch::{Batch, LogitsRows};
use nanovllm::llm::{EngineConfig, Prompt, LLM};
use nanovllm::models::Model;
use nanovllm::sampling_params::SamplingParams;
use nanovllm::tokenizer::Tokenizer;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn fixture(name: &str) -> Value {
    let p = root().join("tests/fixtures/gguf").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The model file, or `None` (with a message) when it has not been fetched.
fn model(file: &str, how: &str) -> Option<PathBuf> {
    let p = root().join("models").join(file);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("SKIPPED: models/{file} is absent (run {how})");
        None
    }
}

fn engine(path: &Path) -> LLM {
    let cfg = EngineConfig {
        max_num_seqs: 1,
        max_model_len: Some(1024),
        kv_cache_memory: 256 << 20,
        prefix_cache_memory: 0,
        // One request at a time, whole-prompt prefill: the shape of llama.cpp's reference run.
        enable_prefix_caching: false,
        ..EngineConfig::default()
    };
    LLM::new(path, cfg).unwrap()
}

/// Greedy tokens for each prompt, one request at a time, never stopping at EOS.
fn greedy(llm: &mut LLM, prompt: Vec<u32>, n: usize) -> Vec<u32> {
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(n)
    };
    let out = llm
        .generate(&[Prompt::Tokens(prompt)], &[params], false)
        .unwrap();
    out.into_iter().next().unwrap().unwrap().outputs[0]
        .token_ids
        .clone()
}

/// Teacher-forced top-1: feeds llama.cpp's own continuation (prompt prefill, then one token
/// at a time, as it generated) and counts the steps where our argmax is llama.cpp's token.
/// Returns (agreeing steps, steps, smallest llama.cpp top-2 gap among disagreements).
fn teacher_forced(model: &dyn Model, name: &str) -> (usize, usize, f64) {
    let fx = fixture(&format!("{name}.json"));
    let (mut agree, mut total, mut worst_gap) = (0, 0, 0f64);
    for case in fx["cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["output_ids"]);
        let len = prompt.len() + want.len();
        let blocks = len.div_ceil(16) + 1;
        let mut cache = ModelCache::new(
            model.cache_specs(),
            CacheCapacity {
                state_slots: 1,
                kv_blocks: blocks,
                block_size: 16,
            },
        );
        let table: Vec<u32> = (0..blocks as u32).collect();
        let mut past = 0;
        let mut input = prompt.clone();
        for (step, &w) in want.iter().enumerate() {
            let b = Batch::new(
                vec![(input.clone(), past, 0, table.clone())],
                LogitsRows::LastPerSequence,
            );
            let logits: Vec<f32> = model
                .forward(&b, &mut cache)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            past += input.len();
            let top = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .unwrap()
                .0 as u32;
            total += 1;
            if top == w {
                agree += 1;
            } else {
                let gap = case["top2_gaps"][step].as_f64().unwrap_or(f64::NAN);
                worst_gap = worst_gap.max(gap);
            }
            input = vec![w];
        }
    }
    eprintln!(
        "{name}: teacher-forced top-1 agreement {agree}/{total} ({:.2}%); largest llama.cpp top-2 gap at a disagreement {worst_gap:.4}",
        100.0 * agree as f64 / total as f64
    );
    (agree, total, worst_gap)
}

struct Agreement {
    tokens: usize,
    matched: usize,
    first_divergence: Option<(usize, usize, f64)>,
}

/// Runs every case of a reference file and compares with llama.cpp's greedy tokens.
fn check_reference(llm: &mut LLM, name: &str) -> Agreement {
    let fx = fixture(&format!("{name}.json"));
    let mut a = Agreement {
        tokens: 0,
        matched: 0,
        first_divergence: None,
    };
    for (i, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let want = ids(&case["output_ids"]);
        let got = greedy(llm, ids(&case["prompt_ids"]), want.len());
        let same = want.iter().zip(&got).take_while(|(a, b)| a == b).count();
        a.tokens += want.len();
        a.matched += same;
        if same < want.len() {
            let gap = case["top2_gaps"][same].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "{name} case {i}: first divergence at token {same} (llama.cpp top-2 gap there {gap:.4}): want {:?} got {:?}",
                &want[same..(same + 4).min(want.len())],
                &got[same..(same + 4).min(got.len())]
            );
            if a.first_divergence.is_none() {
                a.first_divergence = Some((i, same, gap));
            }
        }
    }
    eprintln!(
        "{name}: {}/{} greedy tokens equal llama.cpp's",
        a.matched, a.tokens
    );
    a
}

fn check_tokenizer(path: &Path, name: &str) {
    let tok = Tokenizer::from_gguf(path).unwrap();
    let fx = fixture(&format!("tokenizer_{name}.json"));
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&case["ids"]),
            "{name}: {text:?}"
        );
    }
    // The reference prompts (chat-template renderings included) with BOS as the vocab says.
    for case in fixture(&format!("{name}.json"))["cases"]
        .as_array()
        .unwrap()
    {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["prompt_ids"]),
            "{name}: {text:?}"
        );
    }
}

#[test]
fn smollm2_tokenizer_matches_llama_cpp() {
    if let Some(p) = model("SmolLM2-135M-Instruct.Q4_1.gguf", "scripts/fetch_models.sh") {
        check_tokenizer(&p, "smollm2");
    }
}

#[test]
fn gemma3_tokenizer_matches_llama_cpp() {
    if let Some(p) = model("gemma-3-270m-q4_k_m.gguf", "scripts/fetch_models.sh") {
        check_tokenizer(&p, "gemma3");
    }
}

/// Whether `path` is the file the references were made from, when they record its sha256 (the
/// random Granite checkpoints are made on each machine, not always to the same bytes).
fn same_file_as_reference(path: &Path, name: &str) -> bool {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let Some(want) = fixture(&format!("{name}.json"))["sha256"]
        .as_str()
        .map(str::to_owned)
    else {
        return true;
    };
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != want {
        eprintln!(
            "SKIPPED: {} (sha256 {got}) is not the file {name}'s references were made from \
             ({want}); remake them for this file with scripts/make_gguf_references.py granite",
            path.display()
        );
    }
    got == want
}

/// Exact greedy equality with llama.cpp is the goal; these small quantized models are so
/// sensitive that a one-ulp difference in an activation flips a Q8 rounding and moves logits by
/// ~0.1. Where a kernel is not reproduced bit for bit (`exact == false`), the test reports the
/// first divergence and its margin and asserts teacher-forced top-1 agreement instead
/// (thresholds: what this build achieves, see README "llama.cpp agreement").
fn check_model(file: &str, how: &str, name: &str, exact: bool, min_teacher_forced: f64) {
    let Some(p) = model(file, how) else {
        return;
    };
    if !same_file_as_reference(&p, name) {
        return;
    }
    let a = check_reference(&mut engine(&p), name);
    let model = nanovllm::models::load(&p).unwrap();
    let (agree, total, _) = teacher_forced(model.as_ref(), name);
    if a.matched < a.tokens {
        eprintln!(
            "{name}: greedy {}/{} tokens equal; first divergence (case, token, llama.cpp gap) {:?}",
            a.matched, a.tokens, a.first_divergence
        );
    }
    if exact {
        assert_eq!(
            (a.matched, agree),
            (a.tokens, total),
            "{name}: greedy tokens and teacher-forced argmax must equal llama.cpp's"
        );
    }
    let rate = agree as f64 / total as f64;
    assert!(
        rate >= min_teacher_forced,
        "{name}: teacher-forced top-1 agreement {rate:.4} < {min_teacher_forced}"
    );
}

#[test]
fn smollm2_q4_1_agrees_with_llama_cpp() {
    check_model(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "scripts/fetch_models.sh",
        "smollm2",
        true,
        1.0,
    );
}

#[test]
fn gemma3_q4_k_m_agrees_with_llama_cpp() {
    check_model(
        "gemma-3-270m-q4_k_m.gguf",
        "scripts/fetch_models.sh",
        "gemma3",
        true,
        1.0,
    );
}

/// Issue 4 item 5: a full-size random-weight granite-4.0-h-350m converted by llama.cpp's
/// converter gives llama.cpp's greedy tokens, all 40 of every reference prompt (logits bit for
/// bit: src/kernels/ggml_ssm.rs, src/kernels/cpu/ggml_bf16.rs).
#[test]
fn granite_hybrid_bf16_gguf_agrees_with_llama_cpp() {
    check_model(
        "granite-4.0-h-350m-bf16.gguf",
        "python3 scripts/convert_granite_gguf.py",
        "granite_bf16",
        true,
        1.0,
    );
}

#[test]
fn granite_hybrid_q8_0_gguf_agrees_with_llama_cpp() {
    check_model(
        "granite-4.0-h-350m-q8_0.gguf",
        "python3 scripts/convert_granite_gguf.py",
        "granite_q8_0",
        true,
        1.0,
    );
}

#[test]
fn quantize_at_load_time_stays_close_to_f32() {
    use nanovllm::loader::{LoadOptions, Quantization};
    let dir = root().join("tests/fixtures/granite_hybrid/hybrid_dense");
    let reference =
        nanovllm::validate::Reference::load(&dir.join("reference.safetensors")).unwrap();
    let exact = nanovllm::models::load(&dir).unwrap();
    let q8 = nanovllm::models::load_with(
        &dir,
        &LoadOptions {
            quantize: Some(Quantization::Q8_0),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let e = nanovllm::validate::validate(exact.as_ref(), &reference).unwrap();
    let q = nanovllm::validate::validate(q8.as_ref(), &reference).unwrap();
    eprintln!("f32 cosine {} / Q8_0 cosine {}", e.cosine, q.cosine);
    // A tiny random model (hidden 32: one Q8 block per row) is the worst case for 8-bit noise.
    assert!(q.cosine > 0.98, "Q8_0 cosine {}", q.cosine);
    assert!(
        q.max_abs_diff > e.max_abs_diff,
        "quantization should change the logits"
    );
}
