//! Tokenizer round trips, UTF-8-safe streaming detokenization, and `nanovllm generate` end to
//! end on a fixture model with a small byte-level BPE tokenizer.

use std::path::{Path, PathBuf};
use std::process::Command;

use nanovllm::tokenizer::detokenizer::Detokenizer;
use nanovllm::tokenizer::Tokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn streaming_never_emits_broken_utf8_and_reassembles_the_text() {
    let tok = Tokenizer::from_dir(&fixtures().join("tokenizer")).unwrap();
    let text = "Paris, héllo wörld: 世界 🎉 done";
    let ids = tok.encode(text, false).unwrap();
    // The emoji spans several byte-level tokens, so a naive stream would split it.
    assert!(tok.encode("🎉", false).unwrap().len() > 1);
    let prompt = tok.encode("The capital", false).unwrap();
    let mut detok = Detokenizer::new(&prompt, true);
    let mut streamed = String::new();
    for &id in &ids {
        let delta = detok.push(&tok, id).unwrap();
        assert!(!delta.contains('\u{FFFD}'), "broken char in {delta:?}");
        streamed.push_str(&delta);
    }
    streamed.push_str(&detok.flush(&tok).unwrap());
    assert_eq!(streamed, text);
    assert_eq!(tok.decode(&ids, true).unwrap(), text);
}

#[test]
fn generate_cli_streams_text_and_reports_speed() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("granite_hybrid/bf16_sharded");
    for e in std::fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(
        fixtures().join("tokenizer/tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nanovllm"))
            .args([
                "generate",
                "--prompt",
                "The capital of France",
                "--max-tokens",
                "12",
            ])
            .args(["--ignore-eos", "--model"])
            .arg(tmp.path())
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("tok/s"), "{stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let greedy = run(&["--temperature", "0"]);
    assert!(!greedy.trim().is_empty());
    assert_eq!(
        greedy,
        run(&["--temperature", "0"]),
        "greedy is deterministic"
    );
    let a = run(&["--temperature", "1.0", "--top-p", "0.9", "--seed", "3"]);
    assert_eq!(
        a,
        run(&["--temperature", "1.0", "--top-p", "0.9", "--seed", "3"])
    );

    // Invalid sampling values are rejected with the field named, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_nanovllm"))
        .args(["generate", "--prompt", "x", "--top-p", "1.5", "--model"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("top_p") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
