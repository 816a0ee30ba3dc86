//! Subcommands of the `nanovllm` binary. Results go to stdout, progress and logs to stderr.

mod bench;
mod bench_serve;
mod chat;
mod compare;
mod convert;
mod engine_args;
mod generate;
mod info;
mod serve;
mod train;
mod validate;

use clap::{Parser, Subcommand};

/// nanovllm: exact, fast inference for hybrid Mamba2/attention LLMs.
#[derive(Parser)]
#[command(name = "nanovllm", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, layer pattern, parameters and memory needs.
    Info(info::Args),
    /// Generate text from a prompt, streaming it to stdout.
    Generate(generate::Args),
    /// Chat with a model in the terminal, using its chat template (multi-turn).
    Chat(chat::Args),
    /// Compare the model's logits and greedy tokens with a transformers reference file.
    Validate(validate::Args),
    /// Measure prefill and decode speed and peak memory.
    Bench(bench::Args),
    /// Serve an OpenAI-compatible HTTP API (completions, chat, tools, metrics).
    Serve(serve::Args),
    /// Train a DynamicHybridModel from a JSON config on a text corpus.
    Train(train::Args),
    /// Initialise a DynamicHybridModel from a Granite 4.0-H checkpoint.
    Convert(convert::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = match &cli.command {
        Command::Generate(a) => a.threads(),
        Command::Bench(a) => a.threads(),
        Command::Chat(a) => a.threads(),
        Command::Train(a) => a.threads(),
        _ => None,
    };
    nanovllm::llm::init_threads(threads);
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Validate(a) => validate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Train(a) => train::run(a),
        Command::Convert(a) => convert::run(a),
    }
}

/// Logs to stderr; `RUST_LOG` selects the level (default: warnings).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
