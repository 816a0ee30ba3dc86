//! `nanovllm info`: what a model is and what it costs to run.

use std::path::PathBuf;

use anyhow::Context;
use nanovllm::models::LayerKind;

/// Arguments of `info`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (config.json + safetensors) or a `.gguf` file.
    #[arg(long)]
    model: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: super::engine_args::EngineArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let model = nanovllm::models::load_with(&args.model, &args.engine.load_options())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let info = model.info();
    let costs = model.cache_costs();
    let plan = nanovllm::llm::plan_memory(model.as_ref(), &args.engine.config())?;
    let pattern: String = info
        .layer_kinds
        .iter()
        .map(|k| match k {
            LayerKind::Attention => 'A',
            LayerKind::Mamba => 'M',
            LayerKind::Hybrid => 'H',
        })
        .collect();
    let attention_layers: Vec<usize> = info
        .layer_kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| **k == LayerKind::Attention)
        .map(|(i, _)| i)
        .collect();
    let gguf = if nanovllm::models::is_gguf(&args.model) {
        Some(gguf_summary(&args.model)?)
    } else {
        None
    };
    if args.json {
        let v = serde_json::json!({
            "gguf": gguf,
            "architecture": info.architecture,
            "num_layers": info.layer_kinds.len(),
            "layer_pattern": pattern,
            "attention_layers": attention_layers,
            "num_params": info.num_params,
            "weight_bytes": info.weight_bytes,
            "hidden_size": info.hidden_size,
            "vocab_size": info.vocab_size,
            "state_bytes_per_sequence": costs.state_bytes_per_seq,
            "kv_bytes_per_token": costs.kv_bytes_per_token,
            "max_position_embeddings": info.max_position_embeddings,
            "plan": {
                "kv_tokens": plan.kv_tokens,
                "state_slots": plan.state_slots,
                "prefix_snapshots": plan.snapshots,
                "max_model_len": plan.max_model_len,
            },
        });
        println!("{v}");
    } else {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        println!("architecture        {}", info.architecture);
        let hybrid = info
            .layer_kinds
            .iter()
            .filter(|k| **k == LayerKind::Hybrid)
            .count();
        if hybrid > 0 {
            println!("layers              {hybrid} hybrid (SSM + attention path each, routed)");
        } else {
            println!(
                "layers              {} ({} mamba, {} attention at {:?})",
                info.layer_kinds.len(),
                info.layer_kinds.len() - attention_layers.len(),
                attention_layers.len(),
                attention_layers
            );
        }
        println!("layer pattern       {pattern}  (M = Mamba2, A = attention, H = hybrid)");
        println!(
            "parameters          {} ({:.1}M)",
            info.num_params,
            info.num_params as f64 / 1e6
        );
        match &gguf {
            Some(g) => println!(
                "weight memory       {:.1} MiB (as stored: quantized matrices stay quantized)",
                g["tensor_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            ),
            None => println!(
                "weight memory       {:.1} MiB (bf16 matrices stay bf16, the rest f32)",
                mib(info.weight_bytes)
            ),
        }
        println!(
            "recurrent state     {:.2} MiB per sequence",
            mib(costs.state_bytes_per_seq)
        );
        println!(
            "KV cache            {:.1} KiB per token",
            costs.kv_bytes_per_token as f64 / 1024.0
        );
        println!(
            "hidden / vocab      {} / {}",
            info.hidden_size, info.vocab_size
        );
        if let Some(m) = info.max_position_embeddings {
            println!("max positions       {m}");
        }
        if let Some(g) = &gguf {
            println!(
                "GGUF                {} ({}), {:.1} MiB of tensors",
                g["name"].as_str().unwrap_or("?"),
                g["general_architecture"].as_str().unwrap_or("?"),
                g["tensor_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            );
            if let Some(types) = g["types"].as_array() {
                for t in types {
                    println!(
                        "  {:<8} {:>5} tensors  {:>9.1} MiB",
                        t["type"].as_str().unwrap_or("?"),
                        t["tensors"],
                        t["bytes"].as_f64().unwrap_or(0.0) / 1048576.0
                    );
                }
            }
        }
        println!("with these engine options: {plan}");
    }
    Ok(())
}

/// Quantization types and sizes of a GGUF file.
fn gguf_summary(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let file = nanovllm::loader::gguf::GgufFile::open(path)?;
    let types: Vec<serde_json::Value> = file
        .type_summary()
        .into_iter()
        .map(|(dtype, tensors, bytes)| {
            serde_json::json!({"type": format!("{dtype:?}"), "tensors": tensors, "bytes": bytes})
        })
        .collect();
    let total: usize = file.tensors().values().map(|e| e.range.len()).sum();
    Ok(serde_json::json!({
        "name": file.opt_str("general.name").ok().flatten(),
        "general_architecture": file.arch(),
        "tensor_bytes": total,
        "types": types,
        "chat_template": file.opt_str("tokenizer.chat_template").ok().flatten().is_some(),
    }))
}
