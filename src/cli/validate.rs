//! `nanovllm validate`: agreement with transformers on a reference file.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `validate`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (config.json + safetensors) or a `.gguf` file.
    #[arg(long)]
    model: PathBuf,
    /// Reference safetensors: input_ids [B,T], logits [B,T,V], greedy_ids [B,N].
    #[arg(long)]
    reference: PathBuf,
    /// Print one JSON object instead of a line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let model = nanovllm::models::load(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let reference = nanovllm::validate::Reference::load(&args.reference)
        .with_context(|| format!("reading {}", args.reference.display()))?;
    let report = nanovllm::validate::validate(model.as_ref(), &reference)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "max_abs_diff={:.3e} cosine={:.7} pearson={:.7} top1_match={:.4} greedy_match={:.4}",
            report.max_abs_diff,
            report.cosine,
            report.pearson,
            report.top1_match,
            report.greedy_match
        );
        for m in &report.modes {
            eprintln!(
                "  {:<16} max_abs_diff={:.3e} cosine={:.7} top1_match={:.4}",
                m.mode, m.max_abs_diff, m.cosine, m.top1_match
            );
        }
    }
    Ok(())
}
