//! Bad checkpoints and configs give one clear error naming the field/tensor/file, and the CLI
//! exits non-zero without panicking.

mod common;

use std::path::Path;

use common::{copy_fixture, edit_config, fixture};
use std::process::Command;

use serde_json::Value;

/// Loads through the library and through `nanovllm info`; returns the library's message.
fn load_error(dir: &Path) -> String {
    let err = match nanovllm::models::load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    };
    let out = Command::new(env!("CARGO_BIN_EXE_nanovllm"))
        .args(["info", "--model"])
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(stderr.starts_with("error:"), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line error: {stderr}"
    );
    err
}

#[test]
fn malformed_config_json() {
    let d = copy_fixture("granite_hybrid/hybrid_dense");
    std::fs::write(d.path().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    let e = load_error(d.path());
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn wrong_type_names_the_field() {
    let d = copy_fixture("granite_hybrid/hybrid_dense");
    edit_config(d.path(), |v| v["hidden_size"] = Value::from("sixty-four"));
    let e = load_error(d.path());
    assert!(e.contains("hidden_size"), "{e}");
}

#[test]
fn inconsistent_mamba_heads() {
    let d = copy_fixture("granite_hybrid/hybrid_moe_nope");
    edit_config(d.path(), |v| v["mamba_d_head"] = Value::from(7));
    let e = load_error(d.path());
    assert!(
        e.contains("mamba_d_head") && e.contains("mamba_expand"),
        "{e}"
    );
}

#[test]
fn unknown_model_type() {
    let d = copy_fixture("granite_hybrid/hybrid_dense");
    edit_config(d.path(), |v| {
        v["model_type"] = Value::from("banana");
        v["architectures"] = serde_json::json!(["BananaForCausalLM"]);
    });
    let e = load_error(d.path());
    assert!(e.contains("model_type") && e.contains("banana"), "{e}");
}

#[test]
fn zero_heads() {
    let d = copy_fixture("granite_hybrid/hybrid_dense");
    edit_config(d.path(), |v| v["num_attention_heads"] = Value::from(0));
    let e = load_error(d.path());
    assert!(e.contains("num_attention_heads"), "{e}");
}

#[test]
fn layer_types_length_and_names() {
    let d = copy_fixture("granite_hybrid/hybrid_dense");
    edit_config(d.path(), |v| {
        v["layer_types"] = serde_json::json!(["mamba", "attention"])
    });
    assert!(load_error(d.path()).contains("layer_types"));
    edit_config(d.path(), |v| {
        v["layer_types"] = serde_json::json!(["mamba", "mamba", "conv", "mamba", "attention"])
    });
    assert!(load_error(d.path()).contains("conv"));
}

#[test]
fn missing_config_and_missing_weights() {
    let d = tempfile::tempdir().unwrap();
    assert!(load_error(d.path()).contains("config.json"));
    std::fs::copy(
        fixture("granite_hybrid/hybrid_dense").join("config.json"),
        d.path().join("config.json"),
    )
    .unwrap();
    assert!(load_error(d.path()).contains("model.safetensors"));
}

/// Rewrites one tensor's header entry of a single-file checkpoint.
fn rewrite_header(file: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    f(&mut header);
    let mut text = serde_json::to_string(&Value::Object(header)).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(file, out).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let d = copy_fixture("granite_hybrid/hybrid_dense");
    let name = "model.layers.1.mamba.A_log";
    rewrite_header(&d.path().join("model.safetensors"), |h| {
        // Rename rather than delete so the data offsets stay valid.
        let entry = h.remove(name).unwrap();
        h.insert("unused.tensor".into(), entry);
    });
    let e = load_error(d.path());
    assert!(e.contains(name), "{e}");
}

#[test]
fn wrong_shape_is_named() {
    let d = copy_fixture("granite_hybrid/hybrid_dense");
    let name = "model.layers.0.mamba.D";
    rewrite_header(&d.path().join("model.safetensors"), |h| {
        let shape = h[name]["shape"].as_array().unwrap()[0].as_u64().unwrap();
        // Same byte count, different shape: [n] -> [n/2, 2].
        h.get_mut(name).unwrap()["shape"] = serde_json::json!([shape / 2, 2]);
    });
    let e = load_error(d.path());
    assert!(e.contains(name) && e.contains("shape"), "{e}");
}

#[test]
fn wrong_dtype_is_named() {
    let d = copy_fixture("granite_hybrid/hybrid_dense");
    let name = "model.norm.weight";
    rewrite_header(&d.path().join("model.safetensors"), |h| {
        h.get_mut(name).unwrap()["dtype"] = Value::from("I32");
    });
    let e = load_error(d.path());
    assert!(e.contains(name) && e.contains("dtype"), "{e}");
}

#[test]
fn truncated_weights_file() {
    let d = copy_fixture("granite_hybrid/hybrid_dense");
    let file = d.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_error(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    std::fs::write(&file, &bytes[..4]).unwrap();
    assert!(load_error(d.path()).contains("model.safetensors"));
}

#[test]
fn corrupt_header() {
    let d = copy_fixture("granite_hybrid/hybrid_dense");
    let file = d.path().join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[9] = b'!';
    std::fs::write(&file, &bytes).unwrap();
    assert!(load_error(d.path()).contains("model.safetensors"));
}

#[test]
fn sharded_checkpoint_with_missing_shard() {
    let d = copy_fixture("granite_hybrid/bf16_sharded");
    let shard = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("-of-"))
        .unwrap();
    std::fs::remove_file(&shard).unwrap();
    let e = load_error(d.path());
    assert!(
        e.contains(shard.file_name().unwrap().to_str().unwrap()),
        "{e}"
    );
}

#[test]
fn bad_reference_file_is_an_error_not_a_panic() {
    let d = copy_fixture("granite_hybrid/hybrid_dense");
    std::fs::write(d.path().join("reference.safetensors"), b"garbage").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nanovllm"))
        .args(["validate", "--model"])
        .arg(d.path())
        .arg("--reference")
        .arg(d.path().join("reference.safetensors"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("reference.safetensors") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
