//! The OpenAI-compatible HTTP server (axum + tokio) over the engine thread. Handlers turn
//! requests into engine submissions and stream the engine's events back; the engine loop owns
//! all engine state and the server reaches it only through [`EngineHandle`] channels. Every
//! response stream owns its request's event receiver, so a client that goes away aborts its
//! request and frees its cache at once.
//!
//! Shutdown: when the shutdown future resolves the server stops accepting, lets in-flight
//! requests finish for up to `shutdown_grace`, then aborts what is left and returns.

pub mod auth;
pub mod generation;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod sse;
pub mod tool_calls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;

use crate::engine::engine_thread::{EngineHandle, EngineThread};
use crate::tokenizer::chat_template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// How the server presents itself and behaves.
#[derive(Debug)]
pub struct ServerConfig {
    /// Names clients may use in `model` (the first is reported).
    pub served_model_names: Vec<String>,
    /// Where the model came from (reported by `/v1/models`).
    pub model_root: String,
    /// Required bearer key for `/v1/*`, `/tokenize` and `/detokenize`.
    pub api_key: Option<String>,
    /// The chat template (None: chat requests are refused with a clear error).
    pub chat_template: Option<ChatTemplate>,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Largest `n` a request may ask for.
    pub max_n: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            served_model_names: vec!["model".into()],
            model_root: String::new(),
            api_key: None,
            chat_template: None,
            shutdown_grace: Duration::from_secs(10),
            max_n: 64,
        }
    }
}

/// State shared by all handlers.
pub struct AppState {
    /// The engine.
    pub engine: EngineHandle,
    /// The tokenizer (None: only token-id prompts).
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// Configuration.
    pub config: ServerConfig,
    /// Counters and histograms.
    pub metrics: metrics::Metrics,
    /// Unix time the server started (the model's `created`).
    pub created: u64,
    /// Set once shutdown begins: new generation requests get 503.
    pub stopping: AtomicBool,
    next_id: AtomicU64,
}

impl AppState {
    /// Wraps an engine handle.
    pub fn new(engine: EngineHandle, config: ServerConfig) -> Self {
        let created = unix_now();
        Self {
            tokenizer: engine.info().tokenizer.clone(),
            engine,
            config,
            metrics: metrics::Metrics::default(),
            created,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(rand::random::<u32>() as u64),
        }
    }

    /// A fresh request id with `prefix`.
    pub fn request_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{n:016x}{:08x}", rand::random::<u32>())
    }

    /// The name reported back to clients.
    pub fn model_name(&self) -> &str {
        self.config
            .served_model_names
            .first()
            .map(String::as_str)
            .unwrap_or("model")
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serves until `shutdown` resolves, then drains (bounded by `shutdown_grace`), aborts what is
/// left and stops the engine thread.
pub async fn serve(
    engine: EngineThread,
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = config.shutdown_grace;
    let state = Arc::new(AppState::new(engine.handle(), config));
    let app = routes::router(state.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let st = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        st.stopping.store(true, Ordering::SeqCst);
        tracing::info!("shutting down: no new requests; waiting for in-flight ones");
        let _ = stop_tx.send(true);
    });
    let mut graceful_rx = stop_rx.clone();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = graceful_rx.wait_for(|s| *s).await;
            })
            .await
    });
    let mut stop_rx = stop_rx;
    tokio::select! {
        r = &mut server => return join_result(r),
        _ = stop_rx.wait_for(|s| *s) => {}
    }
    // Stopped accepting; give in-flight requests the grace period.
    if let Ok(r) = tokio::time::timeout(grace, &mut server).await {
        engine_shutdown(engine).await;
        return join_result(r);
    }
    tracing::warn!(
        "{} request(s) still running after {grace:?}; aborting them",
        state.engine.in_flight()
    );
    // Aborting ends every stream (finish_reason "abort"), so connections close.
    engine_shutdown(engine).await;
    match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
        Ok(r) => join_result(r),
        Err(_) => {
            server.abort();
            Ok(())
        }
    }
}

async fn engine_shutdown(engine: EngineThread) {
    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
}

fn join_result(
    r: std::result::Result<std::io::Result<()>, tokio::task::JoinError>,
) -> std::io::Result<()> {
    match r {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}
