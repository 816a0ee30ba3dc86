//! The engine: batch invariance (alone == batched == chunked == preempted == prefix-cache hit),
//! agreement with transformers' greedy tokens, multi-turn prefix reuse on a hybrid model, no
//! leaked blocks/slots/snapshots, and per-request failures.

use std::path::{Path, PathBuf};

use nanovllm::llm::{EngineConfig, Prompt, LLM};
use nanovllm::outputs::FinishReason;
use nanovllm::sampling_params::SamplingParams;
use rand::{Rng, SeedableRng};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/granite_hybrid")
        .join(name)
}

fn prompts(n: usize, vocab: u32, seed: u64) -> Vec<Prompt> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.gen_range(3..60);
            Prompt::Tokens((0..len).map(|_| rng.gen_range(0..vocab)).collect())
        })
        .collect()
}

fn config() -> EngineConfig {
    EngineConfig {
        max_model_len: Some(128),
        kv_cache_memory: 8 << 20,
        prefix_cache_memory: 8 << 20,
        ..EngineConfig::default()
    }
}

fn run(
    model: &Path,
    cfg: EngineConfig,
    prompts: &[Prompt],
    params: &SamplingParams,
) -> Vec<Vec<u32>> {
    let mut llm = LLM::new(model, cfg).unwrap();
    let outs = llm
        .generate(prompts, std::slice::from_ref(params), false)
        .unwrap();
    let tokens = outs
        .into_iter()
        .map(|o| o.unwrap().outputs[0].token_ids.clone())
        .collect();
    assert_no_leaks(&mut llm);
    tokens
}

fn assert_no_leaks(llm: &mut LLM) {
    let engine = llm.engine_mut();
    assert!(!engine.has_unfinished());
    let ((free_blocks, blocks), (free_slots, slots)) = engine.scheduler().free_resources();
    assert_eq!(free_blocks, blocks, "leaked KV blocks");
    assert_eq!(free_slots, slots, "leaked state slots");
    assert_eq!(
        engine.scheduler().prefix_cache().pinned_snapshots(),
        0,
        "leaked snapshots"
    );
}

fn alone(model: &Path, prompts: &[Prompt], params: &SamplingParams) -> Vec<Vec<u32>> {
    let cfg = EngineConfig {
        enable_prefix_caching: false,
        max_num_seqs: 1,
        ..config()
    };
    prompts
        .iter()
        .flat_map(|p| run(model, cfg.clone(), std::slice::from_ref(p), params))
        .collect()
}

fn batch_invariance(name: &str, check_preemption: bool) {
    let model = fixture(name);
    let prompts = prompts(16, 256, 11);
    for params in [
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(20)
        },
        SamplingParams {
            ignore_eos: true,
            seed: Some(5),
            top_p: 0.9,
            max_tokens: 20,
            ..Default::default()
        },
    ] {
        let reference = alone(&model, &prompts, &params);
        // All 16 together, prompts chunked to 24 tokens so steps mix prefill chunks and decodes.
        let batched = run(
            &model,
            EngineConfig {
                max_num_batched_tokens: 24,
                ..config()
            },
            &prompts,
            &params,
        );
        assert_eq!(batched, reference, "{name}: batched != alone");
        if check_preemption {
            // A KV pool of 16 blocks (256 tokens) cannot hold 16 sequences: preemption.
            let kv_per_token = nanovllm::models::load(&model)
                .unwrap()
                .cache_costs()
                .kv_bytes_per_token;
            let cfg = EngineConfig {
                kv_cache_memory: kv_per_token * 16 * 16,
                ..config()
            };
            let mut llm = LLM::new(&model, cfg).unwrap();
            let outs = llm
                .generate(&prompts, std::slice::from_ref(&params), false)
                .unwrap();
            assert!(
                llm.engine_mut().scheduler().num_preemptions() > 0,
                "no preemption happened"
            );
            let toks: Vec<Vec<u32>> = outs
                .into_iter()
                .map(|o| o.unwrap().outputs[0].token_ids.clone())
                .collect();
            assert_eq!(toks, reference, "{name}: preempted != alone");
            assert_no_leaks(&mut llm);
        }
        // The same prompts twice on one engine: the second round hits the prefix cache.
        let mut llm = LLM::new(&model, config()).unwrap();
        llm.generate(&prompts, std::slice::from_ref(&params), false)
            .unwrap();
        let again = llm
            .generate(&prompts, std::slice::from_ref(&params), false)
            .unwrap();
        let cached: usize = again
            .iter()
            .map(|o| o.as_ref().unwrap().metrics.num_cached_tokens)
            .sum();
        assert!(
            cached > 0,
            "{name}: no prefix-cache hit on identical prompts"
        );
        let toks: Vec<Vec<u32>> = again
            .into_iter()
            .map(|o| o.unwrap().outputs[0].token_ids.clone())
            .collect();
        assert_eq!(toks, reference, "{name}: prefix-cache hit != alone");
        assert_no_leaks(&mut llm);
    }
}

#[test]
fn batch_invariance_hybrid_moe_with_preemption() {
    batch_invariance("hybrid_moe_nope", true);
}

#[test]
fn batch_invariance_attention_only_with_preemption() {
    batch_invariance("attention_only", true);
}

#[test]
fn engine_greedy_matches_transformers() {
    for name in ["hybrid_moe_nope", "mamba_only", "hybrid_rope"] {
        let dir = fixture(name);
        let reference =
            nanovllm::validate::Reference::load(&dir.join("reference.safetensors")).unwrap();
        let prompts: Vec<Prompt> = reference
            .input_ids
            .iter()
            .map(|r| Prompt::Tokens(r.clone()))
            .collect();
        let n = reference.greedy_ids[0].len();
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(n)
        };
        let got = run(
            &dir,
            EngineConfig {
                max_num_batched_tokens: 7,
                ..config()
            },
            &prompts,
            &params,
        );
        assert_eq!(got, reference.greedy_ids, "{name}");
    }
}

#[test]
fn multi_turn_chat_reuses_the_conversation_on_a_hybrid_model() {
    let model = fixture("hybrid_moe_nope");
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(9)
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut warm = LLM::new(&model, config()).unwrap();
    let mut cold = LLM::new(
        &model,
        EngineConfig {
            enable_prefix_caching: false,
            ..config()
        },
    )
    .unwrap();
    let mut conversation: Vec<u32> = (0..21).map(|_| rng.gen_range(0..256)).collect();
    for turn in 0..4 {
        let p = [Prompt::Tokens(conversation.clone())];
        let w = warm
            .generate(&p, std::slice::from_ref(&params), false)
            .unwrap()
            .remove(0)
            .unwrap();
        let c = cold
            .generate(&p, std::slice::from_ref(&params), false)
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(
            w.outputs[0].token_ids, c.outputs[0].token_ids,
            "turn {turn}"
        );
        if turn > 0 {
            // Everything up to the last full block of the previous turn is reused.
            let reused = w.metrics.num_cached_tokens;
            assert!(
                conversation.len() - reused <= 16 + 7,
                "turn {turn}: reused {reused} of {}",
                conversation.len()
            );
        }
        conversation.extend(&w.outputs[0].token_ids);
        conversation.extend((0..7).map(|_| rng.gen_range(0..256u32)));
    }
    assert_no_leaks(&mut warm);
}

#[test]
fn too_long_prompt_fails_alone_and_aborts_free_everything() {
    let model = fixture("hybrid_dense");
    let mut llm = LLM::new(&model, config()).unwrap();
    let mut ps = prompts(3, 256, 1);
    ps.insert(1, Prompt::Tokens(vec![1; 200]));
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(8)
    };
    let outs = llm
        .generate(&ps, std::slice::from_ref(&params), false)
        .unwrap();
    let err = outs[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("128") && err.contains("200"), "{err}");
    for i in [0, 2, 3] {
        let o = outs[i].as_ref().unwrap();
        assert_eq!(o.outputs[0].token_ids.len(), 8);
        assert_eq!(o.outputs[0].finish_reason, Some(FinishReason::Length));
    }
    // Abort half-way through: everything returns to the pools.
    let engine = llm.engine_mut();
    for (i, p) in prompts(6, 256, 9).into_iter().enumerate() {
        let Prompt::Tokens(t) = p else { unreachable!() };
        let params = SamplingParams {
            ignore_eos: true,
            n: 2,
            ..SamplingParams::greedy(30)
        };
        engine.add_request(&format!("r{i}"), t, params).unwrap();
    }
    for _ in 0..5 {
        engine.step().unwrap();
    }
    for i in 0..3 {
        let ups = engine.abort(&format!("r{i}"));
        assert_eq!(ups.len(), 2);
        assert!(ups
            .iter()
            .all(|u| matches!(u.finish, Some((FinishReason::Abort, _)))));
    }
    while engine.has_unfinished() {
        engine.step().unwrap();
    }
    assert_no_leaks(&mut llm);
}

#[test]
fn invalid_requests_are_rejected_with_the_field_named() {
    let mut llm = LLM::new(&fixture("hybrid_dense"), config()).unwrap();
    let engine = llm.engine_mut();
    let bad = [
        (
            SamplingParams {
                temperature: -0.5,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                logit_bias: [(9999u32, 1.0f32)].into_iter().collect(),
                ..Default::default()
            },
            "logit_bias",
        ),
    ];
    for (p, field) in bad {
        let e = engine
            .add_request("x", vec![1, 2], p)
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{e}");
    }
    let e = engine
        .add_request("y", vec![1, 999], SamplingParams::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("999"), "{e}");
    engine
        .add_request("z", vec![1, 2], SamplingParams::default())
        .unwrap();
    let e = engine
        .add_request("z", vec![1, 2], SamplingParams::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("request_id"), "{e}");
}

fn log_softmax_at(row: &[f32], t: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
    row[t] - lse
}

#[test]
fn logprobs_and_prompt_logprobs_match_transformers_logits() {
    let dir = fixture("hybrid_moe_nope");
    let reference =
        nanovllm::validate::Reference::load(&dir.join("reference.safetensors")).unwrap();
    let (t, v) = (reference.input_ids[0].len(), reference.vocab);
    let mut llm = LLM::new(&dir, config()).unwrap();
    let params = SamplingParams {
        logprobs: Some(3),
        prompt_logprobs: Some(2),
        ignore_eos: true,
        ..SamplingParams::greedy(4)
    };
    let prompts: Vec<Prompt> = reference
        .input_ids
        .iter()
        .map(|r| Prompt::Tokens(r.clone()))
        .collect();
    let outs = llm
        .generate(&prompts, std::slice::from_ref(&params), false)
        .unwrap();
    for (r, out) in outs.into_iter().enumerate() {
        let out = out.unwrap();
        let row = |p: usize| &reference.logits[(r * t + p) * v..(r * t + p + 1) * v];
        let plp = out.prompt_logprobs.expect("prompt logprobs");
        assert_eq!(plp.len(), t);
        assert!(plp[0].is_none());
        for (p, lp) in plp.iter().enumerate().skip(1) {
            let lp = lp.as_ref().unwrap();
            let want = log_softmax_at(row(p - 1), reference.input_ids[r][p] as usize);
            assert!(
                (lp.logprob - want).abs() < 1e-4,
                "row {r} pos {p}: {} vs {want}",
                lp.logprob
            );
            assert_eq!(lp.top.len(), 2);
        }
        let c = &out.outputs[0];
        let lps = c.logprobs.as_ref().unwrap();
        assert_eq!(lps.len(), 4);
        assert_eq!(c.token_ids[0], reference.greedy_ids[r][0]);
        let want = log_softmax_at(row(t - 1), c.token_ids[0] as usize);
        assert!((lps[0].logprob - want).abs() < 1e-4);
        assert_eq!(
            lps[0].top[0].0, c.token_ids[0],
            "greedy token is the top logprob"
        );
        assert_eq!(lps[0].top.len(), 3);
    }
    assert_no_leaks(&mut llm);
}

#[test]
fn stop_strings_cut_the_text_and_are_never_streamed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("bf16_sharded");
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/tokenizer.json");
    std::fs::copy(tok, tmp.path().join("tokenizer.json")).unwrap();
    let mut llm = LLM::new(tmp.path(), config()).unwrap();
    let prompt = [Prompt::Text("The capital of France".into())];
    let base = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(40)
    };
    let full = llm
        .generate(&prompt, std::slice::from_ref(&base), false)
        .unwrap()
        .remove(0)
        .unwrap();
    let text = full.outputs[0].text.clone();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    assert!(chars.len() > 12, "{text:?}");
    let (a, _) = chars[chars.len() / 2];
    let (b, _) = chars[chars.len() / 2 + 3];
    let stop = text[a..b].to_string();
    let cut = &text[..text.find(&stop).unwrap()];

    let params = SamplingParams {
        stop: vec![stop.clone()],
        ..base
    };
    let engine = llm.engine_mut();
    let ids = engine
        .tokenizer()
        .unwrap()
        .encode("The capital of France", true)
        .unwrap();
    engine.add_request("s", ids, params).unwrap();
    let mut streamed = String::new();
    let mut finish = None;
    while engine.has_unfinished() {
        for u in engine.step().unwrap() {
            streamed.push_str(&u.new_text);
            assert!(
                !streamed.contains(&stop),
                "stop string streamed: {streamed:?}"
            );
            if u.finish.is_some() {
                finish = u.finish.clone();
            }
        }
    }
    assert_eq!(streamed, cut);
    assert_eq!(
        finish,
        Some((
            FinishReason::Stop,
            Some(nanovllm::outputs::StopReason::Text(stop))
        ))
    );
}
