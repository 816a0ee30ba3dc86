//! `nanovllm serve`: load a model, start the engine thread and serve the OpenAI-compatible API
//! until SIGINT/SIGTERM, then drain in-flight requests (bounded) and exit 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nanovllm::engine::engine_thread::EngineThread;
use nanovllm::llm::{build_engine, init_threads};
use nanovllm::server::{serve, ServerConfig};
use nanovllm::tokenizer::chat_template::ChatTemplate;
use nanovllm::tokenizer::Tokenizer;

use super::engine_args::EngineArgs;

/// Arguments of `serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (config.json + safetensors + tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Address to bind (loopback by default; use 0.0.0.0 to expose it).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is logged).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` (also read from NANOVLLM_API_KEY).
    #[arg(long, env = "NANOVLLM_API_KEY")]
    api_key: Option<String>,
    /// Model name(s) clients use (default: the --model argument). Repeatable.
    #[arg(long)]
    served_model_name: Vec<String>,
    /// A Jinja chat template file (default: the model's own, from tokenizer_config.json or
    /// chat_template.jinja).
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Most requests accepted at once (running + waiting); more get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Seconds in-flight requests may run after SIGINT/SIGTERM before they are aborted.
    #[arg(long, default_value_t = 10.0)]
    shutdown_timeout: f64,
    #[command(flatten)]
    engine: EngineArgs,
}

fn load_template(
    args: &Args,
    tokenizer: Option<&Tokenizer>,
) -> anyhow::Result<Option<ChatTemplate>> {
    let from_dir = if nanovllm::models::is_gguf(&args.model) {
        // A GGUF file carries its template and special tokens in its metadata.
        match tokenizer.and_then(|t| t.chat_template().map(|c| (t, c))) {
            Some((t, c)) => Some(ChatTemplate::new(c, t.bos_token(), t.eos_token())?),
            None => None,
        }
    } else {
        ChatTemplate::from_model_dir(&args.model)?
    };
    let Some(path) = &args.chat_template else {
        return Ok(from_dir);
    };
    let src = std::fs::read_to_string(path)
        .with_context(|| format!("reading chat template {}", path.display()))?;
    // Keep the model's special tokens (bos_token, ...) for a template given by file.
    let special = from_dir
        .map(|t| t.special_tokens().clone())
        .unwrap_or_else(BTreeMap::new);
    Ok(Some(ChatTemplate::with_special_tokens(&src, special)?))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args.engine.config();
    init_threads(cfg.threads);
    let tokenizer =
        if nanovllm::models::is_gguf(&args.model) || args.model.join("tokenizer.json").is_file() {
            Some(Arc::new(Tokenizer::from_path(&args.model)?))
        } else {
            None
        };
    let template = load_template(&args, tokenizer.as_deref())?;
    let model = nanovllm::models::load_with(&args.model, &args.engine.load_options())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let (engine, plan) = build_engine(model, tokenizer, &cfg)?;
    let thread = EngineThread::spawn(engine, args.max_queue.max(1));
    let names = if args.served_model_name.is_empty() {
        vec![args.model.display().to_string()]
    } else {
        args.served_model_name.clone()
    };
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(&(args.host.as_str(), args.port))
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(())
        })
        .map_err(|_| anyhow::anyhow!("cannot resolve --host {}", args.host))?;
    if !args.shutdown_timeout.is_finite() || args.shutdown_timeout < 0.0 {
        anyhow::bail!("--shutdown-timeout must be a non-negative number of seconds");
    }
    let config = ServerConfig {
        served_model_names: names.clone(),
        model_root: args.model.display().to_string(),
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        chat_template: template,
        shutdown_grace: Duration::from_secs_f64(args.shutdown_timeout),
        ..ServerConfig::default()
    };
    let has_template = config.chat_template.is_some();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!("{plan}");
        eprintln!(
            "serving model {:?} at http://{local} (chat template: {}; api key: {})",
            names.first().map(String::as_str).unwrap_or_default(),
            if has_template { "yes" } else { "none" },
            if config.api_key.is_some() {
                "required"
            } else {
                "none"
            },
        );
        serve(thread, config, listener, shutdown_signal()).await?;
        eprintln!("server stopped");
        Ok::<_, anyhow::Error>(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
