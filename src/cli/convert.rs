//! `nanovllm convert --from GRANITE_DIR --to dynamic-hybrid OUT`: initialises a
//! DynamicHybridModel from a Granite 4.0-H checkpoint and prints what was transferred,
//! what was freshly initialised, and a side-by-side architecture comparison.

use std::path::PathBuf;

use anyhow::Context;
use nanovllm::models::dynamic_hybrid::transfer::convert;

/// Target architectures of `convert`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Target {
    /// DynamicHybridModel (docs/dynamic_hybrid.md).
    DynamicHybrid,
}

/// Arguments of `convert`.
#[derive(clap::Args)]
pub struct Args {
    /// Granite 4.0-H checkpoint directory (config.json + safetensors).
    #[arg(long = "from")]
    from: PathBuf,
    /// Architecture to convert to.
    #[arg(long = "to", value_enum)]
    to: Target,
    /// Output directory.
    out: PathBuf,
    /// Seed of the freshly initialised tensors.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Target::DynamicHybrid = args.to;
    let report = convert(&args.from, &args.out, args.seed)
        .with_context(|| format!("converting {}", args.from.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let count = |v: &[Vec<usize>]| v.iter().map(|s| s.iter().product::<usize>()).sum::<usize>();
    let transferred: Vec<Vec<usize>> = report.transferred.iter().map(|c| c.shape.clone()).collect();
    let fresh: Vec<Vec<usize>> = report.fresh.iter().map(|(_, s)| s.clone()).collect();
    println!(
        "transferred {} tensors ({} parameters), reshaped {}, freshly initialised {} tensors ({} parameters), dropped {} Granite tensors",
        report.transferred.len(),
        count(&transferred),
        report.reshaped.len(),
        report.fresh.len(),
        count(&fresh),
        report.dropped.len()
    );
    println!("\n| DynamicHybrid tensor | from Granite | shape | dtype |\n|---|---|---|---|");
    for c in &report.transferred {
        println!("| {} | {} | {:?} | {} |", c.to, c.from, c.shape, c.dtype);
    }
    println!("\n| freshly initialised | shape |\n|---|---|");
    for (n, s) in &report.fresh {
        println!("| {n} | {s:?} |");
    }
    if !report.dropped.is_empty() {
        println!(
            "\nnot transferred from Granite: {}",
            report.dropped.join(", ")
        );
    }
    println!("\n| | Granite 4.0-H | DynamicHybridModel |\n|---|---|---|");
    for r in &report.comparison {
        println!("| {} | {} | {} |", r.item, r.granite, r.dynamic_hybrid);
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
