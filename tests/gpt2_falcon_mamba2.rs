//! GPT-2, Falcon and Mamba2 beyond the fixtures' validate modes: the engine (continuous
//! batching, chunked prefill, prefix-cache hits) reproduces transformers' greedy tokens;
//! unsupported or inconsistent configs give one clear error naming the field (library and CLI);
//! positions past GPT-2's learned table are a request error; and checkpoint spellings
//! transformers cannot load still load here.

mod common;

use std::path::Path;

use common::{copy_fixture, edit_config, fixture};
use std::process::Command;

use nanovllm::cache::block_pool::BlockPool;
use nanovllm::cache::{CacheCapacity, ModelCache};
use nanovllm::engine::batch::{Batch, LogitsRows};
use nanovllm::validate::{validate, Reference};
use nanovllm::Error;
use serde_json::Value;

/// Loads through the library (must be a config error on `field`) and through `nanovllm info`
/// (one-line error, exit 1, no panic); returns the library's message.
fn config_error(dir: &Path, field: &str) -> String {
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
    err.to_string()
}

#[test]
fn falcon_alibi_is_rejected_naming_the_field() {
    let d = copy_fixture("falcon/falcon7b_multi_query");
    edit_config(d.path(), |v| v["alibi"] = Value::from(true));
    let e = config_error(d.path(), "alibi");
    assert!(e.contains("ALiBi"), "{e}");
}

#[test]
fn falcon_combinations_transformers_cannot_run_are_rejected() {
    let d = copy_fixture("falcon/new_decoder_architecture");
    edit_config(d.path(), |v| v["parallel_attn"] = Value::from(false));
    config_error(d.path(), "parallel_attn");

    let d = copy_fixture("falcon/new_decoder_architecture");
    edit_config(d.path(), |v| v["num_kv_heads"] = Value::from(4));
    config_error(d.path(), "num_kv_heads");

    let d = copy_fixture("falcon/falcon7b_multi_query");
    edit_config(d.path(), |v| v["num_ln_in_parallel_attn"] = Value::from(2));
    config_error(d.path(), "num_ln_in_parallel_attn");

    let d = copy_fixture("falcon/sequential_mha");
    edit_config(d.path(), |v| v["num_kv_heads"] = Value::from(2));
    config_error(d.path(), "num_kv_heads");

    let d = copy_fixture("falcon/sequential_mha");
    edit_config(d.path(), |v| {
        v["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0})
    });
    config_error(d.path(), "rope_scaling");
}

#[test]
fn gpt2_and_mamba2_inconsistent_geometry_is_named() {
    let d = copy_fixture("gpt2/tied");
    edit_config(d.path(), |v| v["n_head"] = Value::from(5));
    config_error(d.path(), "n_head");

    let d = copy_fixture("gpt2/tied");
    edit_config(d.path(), |v| {
        v["activation_function"] = Value::from("gelu_fast_typo")
    });
    config_error(d.path(), "activation_function");

    let d = copy_fixture("mamba2/groups_chunked");
    edit_config(d.path(), |v| v["head_dim"] = Value::from(7));
    let e = config_error(d.path(), "head_dim");
    assert!(e.contains("expand"), "{e}");

    let d = copy_fixture("mamba2/groups_chunked");
    edit_config(d.path(), |v| v["n_groups"] = Value::from(3));
    config_error(d.path(), "n_groups");
}

#[test]
fn gpt2_positions_past_the_learned_table_are_a_request_error() {
    let model = nanovllm::models::load(&fixture("gpt2/tied")).unwrap();
    let max = model.info().max_position_embeddings.unwrap();
    assert_eq!(max, 64);
    let block_size = 16;
    let mut pool = BlockPool::new(8);
    let table = pool.allocate_n(5).unwrap();
    let mut cache = ModelCache::new(
        model.cache_specs(),
        CacheCapacity {
            state_slots: 1,
            kv_blocks: 8,
            block_size,
        },
    );
    // The last position in the table is fine; one past it is not.
    let ok = Batch::new(vec![(vec![5], max - 1, 0, table.clone())], LogitsRows::All);
    assert!(model.forward(&ok, &mut cache).is_ok());
    let past = Batch::new(vec![(vec![5], max, 0, table)], LogitsRows::All);
    let err = model.forward(&past, &mut cache).err().unwrap();
    assert!(
        matches!(&err, Error::InvalidRequest { field, .. } if field == "positions"),
        "{err}"
    );
}

/// Renames one tensor in a single-file checkpoint's header (data offsets stay valid).
fn rename_tensor(file: &Path, from: &str, to: &str) {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let entry = header.remove(from).unwrap();
    header.insert(to.into(), entry);
    let mut text = serde_json::to_string(&Value::Object(header)).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(file, out).unwrap();
}

/// Older Mamba2 checkpoints say `backbone.embedding.weight`. transformers 5.23 no longer renames
/// it (its load hook is not run; the embedding is left random), so there is no transformers
/// reference for that spelling: the same weights under the old name must give the same outputs.
#[test]
fn mamba2_legacy_embedding_name_loads() {
    let d = copy_fixture("mamba2/tied_bias");
    rename_tensor(
        &d.path().join("model.safetensors"),
        "backbone.embeddings.weight",
        "backbone.embedding.weight",
    );
    let model = nanovllm::models::load(d.path()).unwrap();
    let reference = Reference::load(&d.path().join("reference.safetensors")).unwrap();
    let report = validate(model.as_ref(), &reference).unwrap();
    assert!(report.max_abs_diff <= 1e-4, "{}", report.max_abs_diff);
    assert_eq!(report.greedy_match, 1.0);
}

#[test]
fn architectures_are_picked_by_model_type_too() {
    for (fixture_dir, arch) in [
        ("gpt2/tied", "GPT2LMHeadModel"),
        ("falcon/sequential_mha", "FalconForCausalLM"),
        ("mamba2/groups_chunked", "Mamba2ForCausalLM"),
    ] {
        let d = copy_fixture(fixture_dir);
        edit_config(d.path(), |v| {
            v.as_object_mut().unwrap().remove("architectures");
        });
        let model = nanovllm::models::load(d.path()).unwrap();
        assert_eq!(model.info().architecture, arch);
    }
}
