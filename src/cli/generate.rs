//! `nanovllm generate`: stream a completion of one prompt to stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use nanovllm::engine::generator::Generator;
use nanovllm::sampling_params::SamplingParams;
use nanovllm::tokenizer::detokenizer::Detokenizer;
use nanovllm::tokenizer::Tokenizer;

/// Arguments of `generate`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (config.json + safetensors + tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Drop tokens below min_p times the top probability.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Random seed (reproducible sampling).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep generating after end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Largest number of prompt tokens per forward pass.
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        seed: args.seed,
        max_tokens: args.max_tokens,
        ignore_eos: args.ignore_eos,
        ..SamplingParams::default()
    };
    params.validate()?;
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let model = nanovllm::models::load(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let prompt = tokenizer.encode(&args.prompt, true)?;
    if prompt.is_empty() {
        anyhow::bail!("the prompt encodes to no tokens");
    }
    let max_len = prompt.len() + args.max_tokens;
    if let Some(limit) = model.info().max_position_embeddings {
        if max_len > limit {
            anyhow::bail!(
                "prompt ({} tokens) + max_tokens ({}) exceeds the model's context ({limit})",
                prompt.len(),
                args.max_tokens
            );
        }
    }
    let mut generator = Generator::new(model, max_len);
    let mut detok = Detokenizer::new(&prompt, true);
    let mut out = std::io::stdout().lock();
    let result = generator.generate(&prompt, &params, args.prefill_chunk, |id| {
        let text = detok.push(&tokenizer, id)?;
        let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
        Ok(())
    })?;
    let rest = detok.flush(&tokenizer)?;
    writeln!(out, "{rest}")?;
    let prefill_s = result.prefill_time.as_secs_f64();
    let decode_s = result.decode_time.as_secs_f64();
    eprintln!(
        "prompt {} tokens in {:.3}s ({:.1} tok/s); generated {} tokens, decode {:.1} tok/s; finish: {:?}",
        prompt.len(),
        prefill_s,
        prompt.len() as f64 / prefill_s.max(1e-9),
        result.tokens.len(),
        (result.tokens.len().saturating_sub(1)) as f64 / decode_s.max(1e-9),
        result.finish_reason
    );
    Ok(())
}
