//! `nanovllm train`: trains a DynamicHybridModel from a JSON config on a text corpus (or
//! synthetic tokens), writing `metrics.jsonl`, `best/` and `final/` checkpoints under `--out`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use nanovllm::models::dynamic_hybrid::config::DynamicHybridConfig;
use nanovllm::train::data::DataSource;
use nanovllm::train::trainer::{train, TrainOptions};

/// The Granite-compatible BPE `scripts/make_full_size.py` writes, used when no tokenizer is named.
const DEFAULT_TOKENIZER: &str = "models/granite-4.0-h-350m/tokenizer.json";

/// Arguments of `train`.
#[derive(clap::Args)]
pub struct Args {
    /// Model + training config (JSON; see docs/dynamic_hybrid.md). Not needed with --resume.
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// A text file, a directory of text files, or `synthetic` for generated tokens.
    #[arg(long)]
    data: String,
    /// tokenizer.json for text data (default: next to the config, else the Granite BPE in
    /// models/granite-4.0-h-350m/).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Total optimizer steps (default: the config's max_steps).
    #[arg(long)]
    steps: Option<usize>,
    /// Evaluate (and maybe save `best/`) every K steps; 0 = only at the end.
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    /// Continue from a checkpoint directory (e.g. OUT/final) exactly where it stopped.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Synthetic data: corpus length in tokens.
    #[arg(long, default_value_t = 200_000)]
    synthetic_tokens: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Compute threads (default: all cores; 1 is faster on a busy machine, see
    /// docs/dynamic_hybrid.md).
    #[arg(long)]
    threads: Option<usize>,
}

impl Args {
    /// The requested compute threads.
    pub fn threads(&self) -> Option<usize> {
        self.threads
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = match (&args.config, &args.resume) {
        (Some(p), _) => {
            DynamicHybridConfig::from_file(p).with_context(|| format!("config {}", p.display()))?
        }
        (None, Some(dir)) => DynamicHybridConfig::from_file(&dir.join("config.json"))
            .with_context(|| format!("checkpoint {}", dir.display()))?,
        (None, None) => anyhow::bail!("--config or --resume is required"),
    };
    let data = if args.data == "synthetic" {
        DataSource::Synthetic {
            vocab: config.vocab_size,
            tokens: args.synthetic_tokens,
        }
    } else {
        let path = PathBuf::from(&args.data);
        anyhow::ensure!(
            path.exists(),
            "--data {}: no such file or directory",
            path.display()
        );
        DataSource::Text {
            path,
            tokenizer: find_tokenizer(&args)?,
        }
    };
    eprintln!(
        "DynamicHybridModel: {} parameters, {} layers, hidden {}",
        config.num_params(),
        config.num_layers,
        config.hidden_dim
    );
    let report = train(&TrainOptions {
        config,
        data,
        out: args.out.clone(),
        steps: args.steps,
        eval_every: args.eval_every,
        resume: args.resume.clone(),
        progress: !args.quiet,
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn find_tokenizer(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(t) = &args.tokenizer {
        anyhow::ensure!(t.is_file(), "--tokenizer {}: no such file", t.display());
        return Ok(t.clone());
    }
    let beside = [&args.config, &args.resume].into_iter().flatten().map(|p| {
        if p.is_dir() {
            p.join("tokenizer.json")
        } else {
            p.parent().unwrap_or(Path::new(".")).join("tokenizer.json")
        }
    });
    beside
        .chain(std::iter::once(PathBuf::from(DEFAULT_TOKENIZER)))
        .find(|p| p.is_file())
        .context("no tokenizer.json next to the config or at models/granite-4.0-h-350m/; pass --tokenizer")
}
