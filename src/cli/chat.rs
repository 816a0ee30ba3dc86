//! `nanovllm chat`: an interactive multi-turn conversation in the terminal. Each turn renders
//! the whole conversation with the model's chat template and runs it through the engine, whose
//! prefix cache finds the earlier turns already computed (KV blocks and recurrent-state
//! snapshots), so a turn costs only its new tokens.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use nanovllm::llm::Prompt;
use nanovllm::sampling_params::SamplingParams;
use nanovllm::tokenizer::chat_template::Message;

use super::engine_args::EngineArgs;
use super::generate::stream_completion;

/// Arguments of `chat`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory or `.gguf` file (needs a chat template).
    #[arg(long)]
    model: PathBuf,
    /// A system message opening the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Maximum new tokens per reply.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Penalty > 1 discourages repetition.
    #[arg(long, default_value_t = 1.1)]
    repetition_penalty: f32,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    engine: EngineArgs,
}

impl Args {
    /// The requested compute threads.
    pub fn threads(&self) -> Option<usize> {
        self.engine.threads
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        max_tokens: args.max_tokens,
        ..SamplingParams::default()
    };
    params.validate()?;
    let mut llm = args.engine.load(&args.model)?;
    let tokenizer = llm
        .engine_mut()
        .tokenizer()
        .cloned()
        .context("chat needs the model's tokenizer")?;
    if tokenizer.chat_template().is_none() {
        anyhow::bail!(
            "{} has no chat template; use `nanovllm generate --prompt` instead",
            args.model.display()
        );
    }
    let system: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new("system", s.as_str()))
        .collect();
    let mut messages = system.clone();
    eprintln!(
        "chat with {} — /reset starts over, /exit or Ctrl-D quits",
        args.model.display()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let Some(line) = lines.next() else {
            eprintln!();
            break;
        };
        let line = line?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = system.clone();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line.trim()));
        let tokens = tokenizer.encode_chat(&messages, true)?;
        let reply = stream_completion(&mut llm, Prompt::Tokens(tokens), params.clone(), false)?;
        messages.push(Message::new("assistant", reply.trim()));
    }
    Ok(())
}
