//! `nanovllm generate`: stream one completion to stdout, or run a file of prompts through the
//! continuous-batching engine and write one JSON line per prompt.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use nanovllm::llm::{Prompt, LLM};
use nanovllm::sampling_params::SamplingParams;
use nanovllm::tokenizer::chat_template::Message;

use super::engine_args::EngineArgs;

/// Arguments of `generate`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (config.json + safetensors + tokenizer.json) or a `.gguf` file.
    #[arg(long)]
    model: PathBuf,
    /// The prompt text (streams the completion to stdout).
    #[arg(long, conflicts_with = "prompts_file")]
    prompt: Option<String>,
    /// Send the prompt as a user message through the model's chat template.
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// A file with one prompt per line; writes one JSON object per prompt.
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    /// Where to write the JSON lines (default: stdout).
    #[arg(long)]
    output: Option<PathBuf>,
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
    /// Penalty > 1 discourages repeating prompt and output tokens.
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed (reproducible sampling).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this string appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating after end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
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
        top_k: args.top_k,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        ..SamplingParams::default()
    };
    params.validate()?;
    let mut llm = args.engine.load(&args.model)?;
    eprintln!("{}", llm.memory_plan());
    match (&args.prompt, &args.prompts_file) {
        (Some(prompt), _) if args.chat => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(Message::new("system", system.as_str()));
            }
            messages.push(Message::new("user", prompt.as_str()));
            let tokenizer = llm
                .engine_mut()
                .tokenizer()
                .cloned()
                .context("--chat needs the model's tokenizer")?;
            let tokens = tokenizer.encode_chat(&messages, true)?;
            stream_one(&mut llm, Prompt::Tokens(tokens), params)
        }
        (Some(prompt), _) => stream_one(&mut llm, Prompt::Text(prompt.clone()), params),
        (None, Some(file)) => run_file(&mut llm, file, args.output.as_ref(), params),
        (None, None) => anyhow::bail!("give --prompt TEXT or --prompts-file FILE"),
    }
}

/// Streams one completion to stdout; returns its text.
pub fn stream_one(llm: &mut LLM, prompt: Prompt, params: SamplingParams) -> anyhow::Result<()> {
    stream_completion(llm, prompt, params, true).map(|_| ())
}

/// Runs one request, writing its text to stdout as it comes; `report` prints speed to stderr.
pub fn stream_completion(
    llm: &mut LLM,
    prompt: Prompt,
    params: SamplingParams,
    report: bool,
) -> anyhow::Result<String> {
    let tokens = llm.tokenize(&prompt)?;
    let n_prompt = tokens.len();
    let engine = llm.engine_mut();
    engine.add_request("cli", tokens, params)?;
    let mut out = std::io::stdout().lock();
    let mut metrics = None;
    let mut n_out = 0;
    let mut text = String::new();
    while engine.has_unfinished() {
        for update in engine.step()? {
            n_out += update.new_token_ids.len();
            text.push_str(&update.new_text);
            out.write_all(update.new_text.as_bytes())?;
            out.flush()?;
            if let Some((reason, _)) = update.finish {
                metrics = update.metrics.map(|m| (m, reason));
            }
        }
    }
    writeln!(out)?;
    if !report {
        return Ok(text);
    }
    if let Some((m, reason)) = metrics {
        let ttft = m.time_to_first_token.unwrap_or_default().as_secs_f64();
        eprintln!(
            "prompt {n_prompt} tokens, time to first token {ttft:.3}s ({:.1} tok/s prefill); \
             generated {n_out} tokens at {:.1} tok/s; finish: {reason:?}",
            n_prompt as f64 / ttft.max(1e-9),
            m.decode_tokens_per_s.unwrap_or(0.0),
        );
    }
    Ok(text)
}

fn run_file(
    llm: &mut LLM,
    file: &PathBuf,
    output: Option<&PathBuf>,
    params: SamplingParams,
) -> anyhow::Result<()> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    );
    let prompts: Vec<Prompt> = reader
        .lines()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .map(Prompt::Text)
        .collect();
    let texts: Vec<String> = prompts
        .iter()
        .map(|p| match p {
            Prompt::Text(t) => t.clone(),
            Prompt::Tokens(_) => String::new(),
        })
        .collect();
    let results = llm.generate(&prompts, &[params], true)?;
    let mut sink: Box<dyn Write> = match output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut failed = 0;
    for (prompt, result) in texts.iter().zip(results) {
        let line = match result {
            Ok(out) => serde_json::json!({
                "prompt": prompt,
                "text": out.outputs.first().map(|o| o.text.clone()).unwrap_or_default(),
                "token_ids": out.outputs.first().map(|o| o.token_ids.clone()).unwrap_or_default(),
                "finish_reason": out.outputs.first().and_then(|o| o.finish_reason),
                "prompt_tokens": out.prompt_token_ids.len(),
                "cached_tokens": out.metrics.num_cached_tokens,
                "time_to_first_token_s": out.metrics.time_to_first_token.map(|d| d.as_secs_f64()),
                "decode_tokens_per_s": out.metrics.decode_tokens_per_s,
            }),
            Err(e) => {
                failed += 1;
                serde_json::json!({"prompt": prompt, "error": e.to_string()})
            }
        };
        writeln!(sink, "{line}")?;
    }
    if failed > 0 {
        eprintln!("{failed} prompt(s) failed; see the \"error\" fields");
    }
    Ok(())
}
