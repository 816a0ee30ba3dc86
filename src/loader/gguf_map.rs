//! The per-architecture half of GGUF loading: which `{arch}.*` metadata keys become which
//! `config.json` fields, and which llama.cpp tensor (with which rewrite) serves each Hugging Face
//! tensor name, for `llama`, `granite`, `granitehybrid`, `gemma3` and `mamba2` (llama.cpp's
//! `llama-arch.cpp` keeps the same kind of table; `convert_hf_to_gguf.py` is what is undone).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Map};

use super::gguf::{GgufFile, Source, Transform};
use crate::error::{Error, Result};

/// A GGUF file translated to Hugging Face terms: the `config.json` equivalent and the name map.
pub struct GgufModel {
    /// The opened file.
    pub file: GgufFile,
    /// `config.json` values for the architecture's model file.
    pub config: serde_json::Value,
    /// Hugging Face tensor name → GGUF source.
    pub names: HashMap<String, Source>,
}

/// Opens a GGUF file and maps it to Hugging Face names and config.
pub fn open(path: &Path) -> Result<GgufModel> {
    let file = GgufFile::open(path)?;
    let (config, names) = match file.arch() {
        "llama" => map_llama(&file, "LlamaForCausalLM", "llama")?,
        "granite" => map_llama(&file, "GraniteForCausalLM", "granite")?,
        "granitehybrid" => map_granite_hybrid(&file)?,
        "gemma3" => map_gemma3(&file)?,
        "mamba2" => map_mamba2(&file)?,
        other => {
            return Err(Error::UnsupportedArchitecture(format!(
                "{other} (GGUF general.architecture; supported: llama, granite, granitehybrid, gemma3, mamba2)"
            )))
        }
    };
    Ok(GgufModel {
        file,
        config,
        names,
    })
}

type Names = HashMap<String, Source>;

fn plain(parts: &[String]) -> Source {
    Source {
        parts: parts.to_vec(),
        transform: Transform::None,
    }
}

/// Adds `hf` ← `gguf` when the GGUF tensor exists.
fn add(names: &mut Names, file: &GgufFile, hf: String, gguf: String, transform: Transform) {
    if file.tensors().contains_key(&gguf) {
        names.insert(
            hf,
            Source {
                parts: vec![gguf],
                transform,
            },
        );
    }
}

/// Adds `hf` ← rows of `parts` concatenated, when all exist.
fn add_cat(names: &mut Names, file: &GgufFile, hf: String, parts: &[String]) {
    if parts.iter().all(|p| file.tensors().contains_key(p)) {
        names.insert(hf, plain(parts));
    }
}

/// Token rows of the embedding (GGUF may pad or trim the vocabulary relative to the tokenizer).
fn vocab_rows(file: &GgufFile) -> Result<usize> {
    let e = file
        .tensors()
        .get("token_embd.weight")
        .ok_or_else(|| Error::MissingTensor {
            name: "token_embd.weight".into(),
            file: file.path().to_path_buf(),
        })?;
    e.shape
        .first()
        .copied()
        .ok_or_else(|| Error::config("token_embd.weight", "has no dimensions"))
}

/// Special-token ids the engine stops on.
fn eos_ids(file: &GgufFile) -> Result<Vec<usize>> {
    let mut ids = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = file.opt_usize(key)? {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// Fields every architecture shares.
fn common(file: &GgufFile, arch: &str, model_type: &str) -> Result<Map<String, serde_json::Value>> {
    let mut c = Map::new();
    c.insert("architectures".into(), json!([arch]));
    c.insert("model_type".into(), json!(model_type));
    c.insert("vocab_size".into(), json!(vocab_rows(file)?));
    c.insert(
        "hidden_size".into(),
        json!(file.usize(&file.key("embedding_length"))?),
    );
    c.insert(
        "num_hidden_layers".into(),
        json!(file.usize(&file.key("block_count"))?),
    );
    if let Some(n) = file.opt_usize(&file.key("context_length"))? {
        c.insert("max_position_embeddings".into(), json!(n));
    }
    c.insert(
        "tie_word_embeddings".into(),
        json!(!file.tensors().contains_key("output.weight")),
    );
    c.insert("eos_token_id".into(), json!(eos_ids(file)?));
    if let Some(b) = file.opt_usize("tokenizer.ggml.bos_token_id")? {
        c.insert("bos_token_id".into(), json!(b));
    }
    Ok(c)
}

fn rms_eps(file: &GgufFile) -> Result<f64> {
    let key = file.key("attention.layer_norm_rms_epsilon");
    file.opt_f64(&key)?
        .ok_or_else(|| Error::config(key, "missing from the GGUF metadata"))
}

fn add_top_level(names: &mut Names, file: &GgufFile, embed: &str, norm: &str, norm_t: Transform) {
    add(
        names,
        file,
        embed.into(),
        "token_embd.weight".into(),
        Transform::None,
    );
    add(
        names,
        file,
        norm.into(),
        "output_norm.weight".into(),
        norm_t,
    );
    add(
        names,
        file,
        "lm_head.weight".into(),
        "output.weight".into(),
        Transform::None,
    );
}

/// Llama-body attention projections `{p}.self_attn.{q,k,v,o}_proj` from `blk.N.attn_*`.
fn add_attention(
    names: &mut Names,
    file: &GgufFile,
    i: usize,
    p: &str,
    permute: Option<(usize, usize)>,
) {
    let b = format!("blk.{i}");
    for kind in ["weight", "bias"] {
        let (tq, tk) = match permute {
            Some((nh, nkv)) => (Transform::Unpermute(nh), Transform::Unpermute(nkv)),
            None => (Transform::None, Transform::None),
        };
        add(
            names,
            file,
            format!("{p}.self_attn.q_proj.{kind}"),
            format!("{b}.attn_q.{kind}"),
            tq,
        );
        add(
            names,
            file,
            format!("{p}.self_attn.k_proj.{kind}"),
            format!("{b}.attn_k.{kind}"),
            tk,
        );
        add(
            names,
            file,
            format!("{p}.self_attn.v_proj.{kind}"),
            format!("{b}.attn_v.{kind}"),
            Transform::None,
        );
        add(
            names,
            file,
            format!("{p}.self_attn.o_proj.{kind}"),
            format!("{b}.attn_output.{kind}"),
            Transform::None,
        );
    }
}

/// `llama` and `granite` (dense): a Llama body; Granite adds its four multipliers.
fn map_llama(file: &GgufFile, arch: &str, model_type: &str) -> Result<(serde_json::Value, Names)> {
    let mut c = common(file, arch, model_type)?;
    let n_layers = file.usize(&file.key("block_count"))?;
    let hidden = file.usize(&file.key("embedding_length"))?;
    let n_head = file.usize(&file.key("attention.head_count"))?;
    let n_kv = file
        .opt_usize(&file.key("attention.head_count_kv"))?
        .unwrap_or(n_head);
    let head_dim = match file.opt_usize(&file.key("attention.key_length"))? {
        Some(d) => d,
        None => hidden.checked_div(n_head).unwrap_or(0),
    };
    c.insert("num_attention_heads".into(), json!(n_head));
    c.insert("num_key_value_heads".into(), json!(n_kv));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert(
        "intermediate_size".into(),
        json!(file.usize(&file.key("feed_forward_length"))?),
    );
    c.insert("rms_norm_eps".into(), json!(rms_eps(file)?));
    c.insert(
        "rope_theta".into(),
        json!(file
            .opt_f64(&file.key("rope.freq_base"))?
            .unwrap_or(10000.0)),
    );
    c.insert("hidden_act".into(), json!("silu"));
    if file.tensors().contains_key("rope_freqs.weight") {
        return Err(Error::config(
            "rope_freqs.weight",
            "per-dimension RoPE frequency factors (llama3-style scaling in GGUF) are not supported",
        ));
    }
    match file.opt_str(&file.key("rope.scaling.type"))? {
        None | Some("none") => {}
        Some("linear") => {
            let f = file
                .opt_f64(&file.key("rope.scaling.factor"))?
                .unwrap_or(1.0);
            c.insert(
                "rope_scaling".into(),
                json!({"rope_type": "linear", "factor": f}),
            );
        }
        Some(other) => {
            return Err(Error::config(
                file.key("rope.scaling.type"),
                format!("RoPE scaling `{other}` is not supported from GGUF"),
            ))
        }
    }
    c.insert(
        "attention_bias".into(),
        json!(file.tensors().contains_key("blk.0.attn_q.bias")),
    );
    c.insert(
        "mlp_bias".into(),
        json!(file.tensors().contains_key("blk.0.ffn_up.bias")),
    );
    if model_type == "granite" {
        granite_multipliers(file, &mut c, head_dim)?;
    }
    let mut names = Names::new();
    add_top_level(
        &mut names,
        file,
        "model.embed_tokens.weight",
        "model.norm.weight",
        Transform::None,
    );
    for i in 0..n_layers {
        let (p, b) = (format!("model.layers.{i}"), format!("blk.{i}"));
        add(
            &mut names,
            file,
            format!("{p}.input_layernorm.weight"),
            format!("{b}.attn_norm.weight"),
            Transform::None,
        );
        add(
            &mut names,
            file,
            format!("{p}.post_attention_layernorm.weight"),
            format!("{b}.ffn_norm.weight"),
            Transform::None,
        );
        add_attention(&mut names, file, i, &p, Some((n_head, n_kv)));
        for (hf, g) in [
            ("gate_proj", "ffn_gate"),
            ("up_proj", "ffn_up"),
            ("down_proj", "ffn_down"),
        ] {
            for kind in ["weight", "bias"] {
                add(
                    &mut names,
                    file,
                    format!("{p}.mlp.{hf}.{kind}"),
                    format!("{b}.{g}.{kind}"),
                    Transform::None,
                );
            }
        }
    }
    Ok((serde_json::Value::Object(c), names))
}

/// Granite's multipliers; absent keys take llama.cpp's defaults (softmax scale `1/sqrt(d)`,
/// the others 1).
fn granite_multipliers(
    file: &GgufFile,
    c: &mut Map<String, serde_json::Value>,
    head_dim: usize,
) -> Result<()> {
    let attn = file
        .opt_f64(&file.key("attention.scale"))?
        .filter(|v| *v != 0.0)
        .unwrap_or(1.0 / (head_dim.max(1) as f64).sqrt());
    c.insert("attention_multiplier".into(), json!(attn));
    for (key, field) in [
        ("embedding_scale", "embedding_multiplier"),
        ("residual_scale", "residual_multiplier"),
        ("logit_scale", "logits_scaling"),
    ] {
        let v = file
            .opt_f64(&file.key(key))?
            .filter(|v| *v != 0.0)
            .unwrap_or(1.0);
        c.insert(field.into(), json!(v));
    }
    Ok(())
}

/// Mamba2 `ssm.*` geometry as Hugging Face field values: (heads, head_dim, groups, state, conv).
struct SsmGeometry {
    n_heads: usize,
    d_inner: usize,
    n_groups: usize,
    d_state: usize,
    d_conv: usize,
}

fn ssm_geometry(file: &GgufFile) -> Result<SsmGeometry> {
    let g = SsmGeometry {
        n_heads: file.usize(&file.key("ssm.time_step_rank"))?,
        d_inner: file.usize(&file.key("ssm.inner_size"))?,
        n_groups: file.opt_usize(&file.key("ssm.group_count"))?.unwrap_or(1),
        d_state: file.usize(&file.key("ssm.state_size"))?,
        d_conv: file.usize(&file.key("ssm.conv_kernel"))?,
    };
    if g.n_heads == 0 || !g.d_inner.is_multiple_of(g.n_heads) {
        return Err(Error::config(
            file.key("ssm.time_step_rank"),
            format!(
                "{} heads do not divide ssm.inner_size {}",
                g.n_heads, g.d_inner
            ),
        ));
    }
    Ok(g)
}

/// The Mamba2 mixer tensors `{p}.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj}`.
fn add_mamba_mixer(names: &mut Names, file: &GgufFile, i: usize, p: &str) {
    let b = format!("blk.{i}");
    let t = Transform::None;
    add(
        names,
        file,
        format!("{p}.in_proj.weight"),
        format!("{b}.ssm_in.weight"),
        t.clone(),
    );
    add(
        names,
        file,
        format!("{p}.in_proj.bias"),
        format!("{b}.ssm_in.bias"),
        t.clone(),
    );
    add(
        names,
        file,
        format!("{p}.conv1d.weight"),
        format!("{b}.ssm_conv1d.weight"),
        t.clone(),
    );
    add(
        names,
        file,
        format!("{p}.conv1d.bias"),
        format!("{b}.ssm_conv1d.bias"),
        t.clone(),
    );
    add(
        names,
        file,
        format!("{p}.dt_bias"),
        format!("{b}.ssm_dt.bias"),
        t.clone(),
    );
    add(
        names,
        file,
        format!("{p}.A_log"),
        format!("{b}.ssm_a"),
        Transform::ALogFromA,
    );
    add(
        names,
        file,
        format!("{p}.D"),
        format!("{b}.ssm_d"),
        t.clone(),
    );
    add(
        names,
        file,
        format!("{p}.norm.weight"),
        format!("{b}.ssm_norm.weight"),
        t.clone(),
    );
    add(
        names,
        file,
        format!("{p}.out_proj.weight"),
        format!("{b}.ssm_out.weight"),
        t.clone(),
    );
    add(
        names,
        file,
        format!("{p}.out_proj.bias"),
        format!("{b}.ssm_out.bias"),
        t,
    );
}

/// `granitehybrid`: Mamba2 layers where `head_count_kv` is 0, attention elsewhere; dense or
/// MoE feed-forward with a shared MLP; Granite multipliers.
fn map_granite_hybrid(file: &GgufFile) -> Result<(serde_json::Value, Names)> {
    let mut c = common(file, "GraniteMoeHybridForCausalLM", "granitemoehybrid")?;
    let n_layers = file.usize(&file.key("block_count"))?;
    let hidden = file.usize(&file.key("embedding_length"))?;
    let kv = file.per_layer(&file.key("attention.head_count_kv"), n_layers)?;
    let heads = file.per_layer(&file.key("attention.head_count"), n_layers)?;
    let n_head = heads.iter().copied().max().unwrap_or(0);
    let n_kv = kv.iter().copied().max().unwrap_or(0);
    let layer_types: Vec<&str> = kv
        .iter()
        .map(|&k| if k == 0 { "mamba" } else { "attention" })
        .collect();
    let head_dim = match file.opt_usize(&file.key("attention.key_length"))? {
        Some(d) => d,
        None => hidden.checked_div(n_head.max(1)).unwrap_or(0),
    };
    c.insert("layer_types".into(), json!(layer_types));
    c.insert("num_attention_heads".into(), json!(n_head.max(1)));
    c.insert("num_key_value_heads".into(), json!(n_kv.max(1)));
    c.insert("head_dim".into(), json!(head_dim.max(1)));
    c.insert("rms_norm_eps".into(), json!(rms_eps(file)?));
    c.insert("hidden_act".into(), json!("silu"));
    // llama.cpp uses `rope.scaling.finetuned` as the RoPE switch for this architecture.
    let rope = file
        .opt_bool(&file.key("rope.scaling.finetuned"))?
        .unwrap_or(true);
    c.insert(
        "position_embedding_type".into(),
        json!(if rope { "rope" } else { "nope" }),
    );
    c.insert(
        "rope_theta".into(),
        json!(file
            .opt_f64(&file.key("rope.freq_base"))?
            .unwrap_or(10000.0)),
    );
    c.insert(
        "attention_bias".into(),
        json!(file.tensors().keys().any(|k| k.ends_with(".attn_q.bias"))),
    );
    granite_multipliers(file, &mut c, head_dim)?;

    let has_mamba = kv.contains(&0);
    if has_mamba {
        let g = ssm_geometry(file)?;
        if !g.d_inner.is_multiple_of(hidden.max(1)) {
            return Err(Error::config(
                file.key("ssm.inner_size"),
                format!(
                    "{} is not a multiple of embedding_length {hidden}",
                    g.d_inner
                ),
            ));
        }
        c.insert("mamba_n_heads".into(), json!(g.n_heads));
        c.insert("mamba_d_head".into(), json!(g.d_inner / g.n_heads));
        c.insert("mamba_expand".into(), json!(g.d_inner / hidden.max(1)));
        c.insert("mamba_n_groups".into(), json!(g.n_groups));
        c.insert("mamba_d_state".into(), json!(g.d_state));
        c.insert("mamba_d_conv".into(), json!(g.d_conv));
        let t = file.tensors();
        c.insert(
            "mamba_conv_bias".into(),
            json!(t.keys().any(|k| k.ends_with(".ssm_conv1d.bias"))),
        );
        c.insert(
            "mamba_proj_bias".into(),
            json!(t.keys().any(|k| k.ends_with(".ssm_in.bias"))),
        );
    }
    let n_experts = file.opt_usize(&file.key("expert_count"))?.unwrap_or(0);
    c.insert("num_local_experts".into(), json!(n_experts));
    let tensors = file.tensors();
    let ffn_rows = |name: &str| tensors.get(name).and_then(|e| e.shape.last().copied());
    if n_experts > 0 {
        c.insert(
            "num_experts_per_tok".into(),
            json!(file.usize(&file.key("expert_used_count"))?),
        );
        c.insert(
            "intermediate_size".into(),
            json!(file
                .usize(&file.key("expert_feed_forward_length"))
                .or_else(|_| file.usize(&file.key("feed_forward_length")))?),
        );
        let shared = file
            .opt_usize(&file.key("expert_shared_feed_forward_length"))?
            .or_else(|| ffn_rows("blk.0.ffn_down_shexp.weight"))
            .ok_or_else(|| {
                Error::config(
                    file.key("expert_shared_feed_forward_length"),
                    "missing, and no blk.0.ffn_down_shexp.weight to infer it from",
                )
            })?;
        c.insert("shared_intermediate_size".into(), json!(shared));
    } else {
        // Dense: the shared MLP is stored as plain ffn_{gate,up,down}.
        let shared = ffn_rows("blk.0.ffn_down.weight")
            .or(file.opt_usize(&file.key("feed_forward_length"))?)
            .ok_or_else(|| Error::config(file.key("feed_forward_length"), "missing"))?;
        c.insert("shared_intermediate_size".into(), json!(shared));
        c.insert("intermediate_size".into(), json!(shared));
        c.insert("num_experts_per_tok".into(), json!(0));
    }

    let mut names = Names::new();
    add_top_level(
        &mut names,
        file,
        "model.embed_tokens.weight",
        "model.norm.weight",
        Transform::None,
    );
    for (i, &kvh) in kv.iter().enumerate() {
        let (p, b) = (format!("model.layers.{i}"), format!("blk.{i}"));
        add(
            &mut names,
            file,
            format!("{p}.input_layernorm.weight"),
            format!("{b}.attn_norm.weight"),
            Transform::None,
        );
        add(
            &mut names,
            file,
            format!("{p}.post_attention_layernorm.weight"),
            format!("{b}.ffn_norm.weight"),
            Transform::None,
        );
        if kvh == 0 {
            add_mamba_mixer(&mut names, file, i, &format!("{p}.mamba"));
        } else {
            // The converter permutes q/k for every Granite attention layer, RoPE or not.
            add_attention(&mut names, file, i, &p, Some((heads[i], kvh)));
        }
        let sm = format!("{p}.shared_mlp");
        if n_experts > 0 {
            add_cat(
                &mut names,
                file,
                format!("{sm}.input_linear.weight"),
                &[
                    format!("{b}.ffn_gate_shexp.weight"),
                    format!("{b}.ffn_up_shexp.weight"),
                ],
            );
            if !names.contains_key(&format!("{sm}.input_linear.weight")) {
                // Newer converters keep the shared gate/up fused in ffn_up_shexp.
                add(
                    &mut names,
                    file,
                    format!("{sm}.input_linear.weight"),
                    format!("{b}.ffn_up_shexp.weight"),
                    Transform::None,
                );
            }
            add(
                &mut names,
                file,
                format!("{sm}.output_linear.weight"),
                format!("{b}.ffn_down_shexp.weight"),
                Transform::None,
            );
            let moe = format!("{p}.block_sparse_moe");
            add(
                &mut names,
                file,
                format!("{moe}.router.layer.weight"),
                format!("{b}.ffn_gate_inp.weight"),
                Transform::None,
            );
            add_cat(
                &mut names,
                file,
                format!("{moe}.input_linear.weight"),
                &[
                    format!("{b}.ffn_gate_exps.weight"),
                    format!("{b}.ffn_up_exps.weight"),
                ],
            );
            if !names.contains_key(&format!("{moe}.input_linear.weight")) {
                add(
                    &mut names,
                    file,
                    format!("{moe}.input_linear.weight"),
                    format!("{b}.ffn_gate_up_exps.weight"),
                    Transform::None,
                );
            }
            add(
                &mut names,
                file,
                format!("{moe}.output_linear.weight"),
                format!("{b}.ffn_down_exps.weight"),
                Transform::None,
            );
        } else {
            add_cat(
                &mut names,
                file,
                format!("{sm}.input_linear.weight"),
                &[format!("{b}.ffn_gate.weight"), format!("{b}.ffn_up.weight")],
            );
            add(
                &mut names,
                file,
                format!("{sm}.output_linear.weight"),
                format!("{b}.ffn_down.weight"),
                Transform::None,
            );
        }
    }
    Ok((serde_json::Value::Object(c), names))
}

/// `gemma3`: local/global attention with q/k norms and four norms per layer (stored `1 + w`).
fn map_gemma3(file: &GgufFile) -> Result<(serde_json::Value, Names)> {
    let mut c = common(file, "Gemma3ForCausalLM", "gemma3_text")?;
    let n_layers = file.usize(&file.key("block_count"))?;
    let hidden = file.usize(&file.key("embedding_length"))?;
    let n_head = file.usize(&file.key("attention.head_count"))?;
    let n_kv = file
        .opt_usize(&file.key("attention.head_count_kv"))?
        .unwrap_or(n_head);
    let head_dim = file
        .opt_usize(&file.key("attention.key_length"))?
        .unwrap_or(256);
    c.insert("num_attention_heads".into(), json!(n_head));
    c.insert("num_key_value_heads".into(), json!(n_kv));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert(
        "intermediate_size".into(),
        json!(file.usize(&file.key("feed_forward_length"))?),
    );
    c.insert("rms_norm_eps".into(), json!(rms_eps(file)?));
    c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
    // llama.cpp: 1/sqrt(head_dim), except the 27B (62 layers) which uses hidden/heads.
    let scalar = if n_layers == 62 {
        hidden / n_head.max(1)
    } else {
        head_dim
    };
    c.insert("query_pre_attn_scalar".into(), json!(scalar));
    c.insert(
        "rope_theta".into(),
        json!(file
            .opt_f64(&file.key("rope.freq_base"))?
            .unwrap_or(1_000_000.0)),
    );
    c.insert(
        "rope_local_base_freq".into(),
        json!(file
            .opt_f64(&file.key("rope.freq_base_swa"))?
            .unwrap_or(10000.0)),
    );
    if let Some(cap) = file.opt_f64(&file.key("final_logit_softcapping"))? {
        if cap != 0.0 {
            c.insert("final_logit_softcapping".into(), json!(cap));
        }
    }
    let window = file.opt_usize(&file.key("attention.sliding_window"))?;
    let layer_types: Vec<&str> = match window {
        Some(w) if w > 0 => {
            c.insert("sliding_window".into(), json!(w));
            // llama.cpp: an explicit bool array, else every `pattern`-th layer (default 6) is global.
            let key = file.key("attention.sliding_window_pattern");
            let is_swa: Vec<bool> = match file.get(&key) {
                Some(Value::Array(a)) => a.iter().map(|v| matches!(v, Value::Bool(true))).collect(),
                _ => {
                    let n = file.opt_usize(&key)?.unwrap_or(6);
                    (0..n_layers).map(|i| n == 0 || i % n < n - 1).collect()
                }
            };
            if is_swa.len() != n_layers {
                return Err(Error::config(
                    key,
                    format!("has {} entries for {n_layers} layers", is_swa.len()),
                ));
            }
            is_swa
                .iter()
                .map(|&s| {
                    if s {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                })
                .collect()
        }
        _ => vec!["full_attention"; n_layers],
    };
    c.insert("layer_types".into(), json!(layer_types));
    let mut names = Names::new();
    let norm = Transform::Add(-1.0);
    add_top_level(
        &mut names,
        file,
        "model.embed_tokens.weight",
        "model.norm.weight",
        norm.clone(),
    );
    for i in 0..n_layers {
        let (p, b) = (format!("model.layers.{i}"), format!("blk.{i}"));
        for (hf, g) in [
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "post_attention_norm"),
            ("pre_feedforward_layernorm", "ffn_norm"),
            ("post_feedforward_layernorm", "post_ffw_norm"),
            ("self_attn.q_norm", "attn_q_norm"),
            ("self_attn.k_norm", "attn_k_norm"),
        ] {
            add(
                &mut names,
                file,
                format!("{p}.{hf}.weight"),
                format!("{b}.{g}.weight"),
                norm.clone(),
            );
        }
        add_attention(&mut names, file, i, &p, None);
        for (hf, g) in [
            ("gate_proj", "ffn_gate"),
            ("up_proj", "ffn_up"),
            ("down_proj", "ffn_down"),
        ] {
            add(
                &mut names,
                file,
                format!("{p}.mlp.{hf}.weight"),
                format!("{b}.{g}.weight"),
                Transform::None,
            );
        }
    }
    Ok((serde_json::Value::Object(c), names))
}

/// `mamba2`: a pure Mamba2 stack (`backbone.*` names).
fn map_mamba2(file: &GgufFile) -> Result<(serde_json::Value, Names)> {
    let mut c = common(file, "Mamba2ForCausalLM", "mamba2")?;
    let n_layers = file.usize(&file.key("block_count"))?;
    let hidden = file.usize(&file.key("embedding_length"))?;
    let g = ssm_geometry(file)?;
    c.insert("num_heads".into(), json!(g.n_heads));
    c.insert("head_dim".into(), json!(g.d_inner / g.n_heads));
    c.insert(
        "expand".into(),
        json!(g.d_inner.checked_div(hidden).unwrap_or(0)),
    );
    c.insert("n_groups".into(), json!(g.n_groups));
    c.insert("state_size".into(), json!(g.d_state));
    c.insert("conv_kernel".into(), json!(g.d_conv));
    c.insert("layer_norm_epsilon".into(), json!(rms_eps(file)?));
    let t = file.tensors();
    c.insert(
        "use_conv_bias".into(),
        json!(t.contains_key("blk.0.ssm_conv1d.bias")),
    );
    c.insert(
        "use_bias".into(),
        json!(t.contains_key("blk.0.ssm_in.bias")),
    );
    c.insert("hidden_act".into(), json!("silu"));
    // llama.cpp applies no dt clamp.
    c.insert("time_step_limit".into(), json!([0.0, "Infinity"]));
    let mut names = Names::new();
    add_top_level(
        &mut names,
        file,
        "backbone.embeddings.weight",
        "backbone.norm_f.weight",
        Transform::None,
    );
    for i in 0..n_layers {
        let p = format!("backbone.layers.{i}");
        add(
            &mut names,
            file,
            format!("{p}.norm.weight"),
            format!("blk.{i}.attn_norm.weight"),
            Transform::None,
        );
        add_mamba_mixer(&mut names, file, i, &format!("{p}.mixer"));
    }
    Ok((serde_json::Value::Object(c), names))
}
