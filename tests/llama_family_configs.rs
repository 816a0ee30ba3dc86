//! Llama / Granite / Gemma 3 beyond the fixtures' validate modes: the engine (continuous
//! batching, chunked prefill, prefix-cache hits) reproduces transformers' greedy tokens; the
//! other config spellings transformers accepts load to the same model; bad values give one
//! clear error naming the field (library and CLI).

use std::path::{Path, PathBuf};
use std::process::Command;

use nanovllm::validate::{validate, Reference};
use nanovllm::Error;
use serde_json::{json, Value};

const FIXTURES: [(&str, &str); 6] = [
    ("llama/gqa_untied", "LlamaForCausalLM"),
    ("llama/tied_llama3", "LlamaForCausalLM"),
    ("granite/dense_multipliers", "GraniteForCausalLM"),
    ("granite/moe", "GraniteMoeForCausalLM"),
    ("gemma3/sliding_mixed", "Gemma3ForCausalLM"),
    ("gemma3/softcap_legacy", "Gemma3ForCausalLM"),
];

fn fixture(arch_variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(arch_variant)
}

/// Copies a fixture into a temp dir with its config.json edited by `f`.
fn edited(
    arch_variant: &str,
    f: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(arch_variant)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    let path = tmp.path().join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    tmp
}

fn assert_matches_reference(dir: &Path) {
    let model = nanovllm::models::load(dir).unwrap();
    let reference = Reference::load(&dir.join("reference.safetensors")).unwrap();
    let r = validate(model.as_ref(), &reference).unwrap();
    assert!(r.max_abs_diff <= 1e-4, "max_abs_diff {}", r.max_abs_diff);
    assert_eq!(r.greedy_match, 1.0);
}

/// A config edit, boxed so differing closures share one list.
type Edit = Box<dyn FnOnce(&mut serde_json::Map<String, Value>)>;

/// Loads through the library (must be a config error on `field`) and through `nanovllm info`
/// (one-line error, exit 1, no panic).
fn config_error(dir: &Path, field: &str) {
    let err = match nanovllm::models::load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    };
    assert!(
        matches!(&err, Error::InvalidConfig { field: f, .. } if f == field),
        "expected a config error on `{field}`, got: {err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nanovllm"))
        .args(["info", "--model"])
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(
        stderr.starts_with("error:") && stderr.trim_end().lines().count() == 1,
        "stderr: {stderr}"
    );
}

#[test]
fn architectures_are_picked_by_model_type_too() {
    for (name, arch) in FIXTURES {
        let d = edited(name, |c| {
            c.remove("architectures");
        });
        let model = nanovllm::models::load(d.path()).unwrap();
        assert_eq!(model.info().architecture, arch);
    }
}

#[test]
fn llama3_scaling_as_rope_parameters_is_the_same_model() {
    // The fixture uses the released spelling (rope_theta + rope_scaling); transformers 5 writes
    // one `rope_parameters` object instead.
    let d = edited("llama/tied_llama3", |c| {
        let mut rp = c.remove("rope_scaling").unwrap();
        rp["rope_theta"] = c.remove("rope_theta").unwrap();
        c.insert("rope_parameters".into(), rp);
    });
    assert_matches_reference(d.path());
}

#[test]
fn gemma3_legacy_rope_and_explicit_layer_types_are_the_same_model() {
    let d = edited("gemma3/sliding_mixed", |c| {
        c.remove("rope_parameters");
        c.insert("rope_theta".into(), json!(1000000.0));
        c.insert("rope_local_base_freq".into(), json!(10000.0));
    });
    assert_matches_reference(d.path());
    // `layer_types` wins over any pattern key, which transformers ignores when the list exists.
    let d = edited("gemma3/softcap_legacy", |c| {
        c.insert("sliding_window_pattern".into(), json!(6));
        c.insert(
            "layer_types".into(),
            json!([
                "sliding_attention",
                "full_attention",
                "sliding_attention",
                "full_attention"
            ]),
        );
    });
    assert_matches_reference(d.path());
}

#[test]
fn bad_values_name_the_field() {
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "llama/tied_llama3",
            Box::new(|c| {
                c["rope_scaling"]["rope_type"] = json!("yarn");
            }),
            "rope_scaling.rope_type",
        ),
        (
            "llama/tied_llama3",
            Box::new(|c| {
                c["rope_scaling"]
                    .as_object_mut()
                    .unwrap()
                    .remove("low_freq_factor");
            }),
            "rope_scaling.low_freq_factor",
        ),
        (
            "llama/gqa_untied",
            Box::new(|c| {
                c["num_key_value_heads"] = json!(3);
            }),
            "num_key_value_heads",
        ),
        (
            "llama/gqa_untied",
            Box::new(|c| {
                c["hidden_act"] = json!("gelu_fast_typo");
            }),
            "hidden_act",
        ),
        (
            "granite/moe",
            Box::new(|c| {
                c["num_experts_per_tok"] = json!(9);
            }),
            "num_experts_per_tok",
        ),
        (
            "granite/dense_multipliers",
            Box::new(|c| {
                c["logits_scaling"] = json!(0.0);
            }),
            "logits_scaling",
        ),
        (
            "gemma3/sliding_mixed",
            Box::new(|c| {
                c["layer_types"] = json!(["sliding_attention", "full_attention"]);
            }),
            "layer_types",
        ),
        (
            "gemma3/sliding_mixed",
            Box::new(|c| {
                c["sliding_window"] = json!(0);
            }),
            "sliding_window",
        ),
        (
            "gemma3/softcap_legacy",
            Box::new(|c| {
                c["rope_scaling"]["factor"] = json!(-1.0);
            }),
            "rope_parameters.full_attention.factor",
        ),
    ];
    for (fixture_name, edit, field) in cases {
        let d = edited(fixture_name, edit);
        config_error(d.path(), field);
    }
}
