//! The training loop: for each optimizer step, `grad_accum_steps` micro-batches forward and
//! backward (optionally checkpointed), clip, AdamW with the scheduled learning rate; a JSONL
//! line per step (loss, perplexity, tokens/s, router and compression metrics, memory per
//! phase) and per evaluation; `best` (lowest eval perplexity) and `final` checkpoints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;
use serde_json::json;

use super::checkpoint::{self, TrainerState};
use super::data::{Corpus, DataSource};
use super::memory::{self, MemoryTracker};
use super::optim::{clip_grad_norm, learning_rate, AdamW, AdamWConfig};
use crate::error::{Error, Result};
use crate::models::dynamic_hybrid::config::DynamicHybridConfig;
use crate::models::dynamic_hybrid::network::{evaluate, loss_and_grads, Grads};
use crate::models::dynamic_hybrid::params::ParamStore;

/// What to train and where.
pub struct TrainOptions {
    /// Model + training config (ignored when resuming: the checkpoint's config is used).
    pub config: DynamicHybridConfig,
    /// The corpus.
    pub data: DataSource,
    /// Output directory (`metrics.jsonl`, `best/`, `final/`).
    pub out: PathBuf,
    /// Total optimizer steps (overrides `max_steps`; also the cosine horizon).
    pub steps: Option<usize>,
    /// Evaluate every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Checkpoint to continue from.
    pub resume: Option<PathBuf>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Outcome of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    /// Steps completed in total.
    pub steps: usize,
    /// Training loss of the last step.
    pub last_loss: f64,
    /// Last evaluation perplexity.
    pub eval_ppl: Option<f64>,
    /// Best evaluation perplexity.
    pub best_eval_ppl: Option<f64>,
    /// Parameters.
    pub num_params: usize,
    /// Training / eval windows.
    pub windows: (usize, usize),
    /// Maximum peak bytes per phase.
    pub memory_peak: std::collections::BTreeMap<String, usize>,
    /// Whether memory numbers are heap bytes (else RSS).
    pub memory_is_heap: bool,
}

/// Runs training as `opts` says.
pub fn train(opts: &TrainOptions) -> Result<TrainReport> {
    let adam = |cfg: &DynamicHybridConfig| AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: cfg.weight_decay,
    };
    let (cfg, params, mut opt, mut state) = match &opts.resume {
        Some(dir) => {
            let ck = checkpoint::load(dir, DType::F32)?;
            let mut opt = AdamW::new(adam(&ck.config));
            opt.restore(ck.moments, ck.state.step)?;
            (ck.config, ck.params, opt, ck.state)
        }
        None => {
            opts.config.validate()?;
            let params = ParamStore::init(&opts.config, DType::F32)?;
            (
                opts.config.clone(),
                params,
                AdamW::new(adam(&opts.config)),
                TrainerState::default(),
            )
        }
    };
    let total = opts.steps.unwrap_or(cfg.max_steps);
    let eos = cfg.eos_token_id.unwrap_or(0);
    let corpus = Corpus::load(&opts.data, cfg.seq_len, cfg.eval_fraction, eos)?;
    if corpus.max_id() as usize >= cfg.vocab_size {
        return Err(Error::config(
            "vocab_size",
            format!(
                "{} is too small for the tokenizer (ids up to {})",
                cfg.vocab_size,
                corpus.max_id()
            ),
        ));
    }
    let tokenizer = match &opts.data {
        DataSource::Text { tokenizer, .. } => Some(tokenizer.as_path()),
        DataSource::Synthetic { .. } => None,
    };
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let metrics_path = opts.out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let mut log = |v: serde_json::Value| -> Result<()> {
        writeln!(metrics, "{v}").map_err(|e| Error::io(&metrics_path, e))
    };
    let bar = progress_bar(opts.progress, total, state.step);
    let mut tracker = MemoryTracker::default();
    let tokens_per_step = (cfg.batch_size * cfg.seq_len * cfg.grad_accum_steps) as u64;
    let mut last_loss = f64::NAN;
    let mut eval_ppl = None;
    while state.step < total {
        let step = state.step;
        let t0 = Instant::now();
        let lr = learning_rate(
            step,
            cfg.learning_rate,
            cfg.warmup_steps,
            total,
            cfg.min_lr_ratio,
        );
        let mut grads = Grads::new();
        let mut sums = [0f64; 5];
        for micro in 0..cfg.grad_accum_steps {
            let (inp, tgt) = corpus.train_batch(cfg.seed, step, micro, cfg.batch_size)?;
            let (st, g) = loss_and_grads(
                &params,
                &inp,
                &tgt,
                &cfg,
                cfg.gradient_checkpointing,
                &mut |p| tracker.begin(p),
            )?;
            tracker.end();
            for (name, gt) in g {
                let sum = match grads.remove(&name) {
                    Some(prev) => (prev + gt)?,
                    None => gt,
                };
                grads.insert(name, sum);
            }
            for (s, v) in sums.iter_mut().zip([
                st.loss,
                st.aux_loss,
                st.ssm_fraction,
                st.router_prob,
                st.compression_rate,
            ]) {
                *s += v / cfg.grad_accum_steps as f64;
            }
        }
        if cfg.grad_accum_steps > 1 {
            let k = 1.0 / cfg.grad_accum_steps as f64;
            for g in grads.values_mut() {
                *g = (&*g * k)?;
            }
        }
        let grad_norm = clip_grad_norm(&mut grads, cfg.grad_clip)?;
        tracker.begin("optimizer");
        opt.update(&params, &grads, lr)?;
        drop(grads);
        tracker.end();
        state.step += 1;
        state.tokens_seen += tokens_per_step;
        let secs = t0.elapsed().as_secs_f64();
        let [loss, aux, ssm, prob, rate] = sums;
        last_loss = loss;
        if !loss.is_finite() {
            return Err(Error::request(
                "training",
                format!("loss became {loss} at step {}", state.step),
            ));
        }
        let mem: serde_json::Map<String, serde_json::Value> = tracker
            .last
            .iter()
            .map(|(k, m)| {
                (
                    k.clone(),
                    json!({"peak_mib": mib(m.peak), "delta_mib": m.delta as f64 / 1048576.0}),
                )
            })
            .collect();
        log(json!({
            "step": state.step, "loss": loss, "ppl": loss.exp(), "lr": lr, "grad_norm": grad_norm,
            "tok_per_s": tokens_per_step as f64 / secs, "step_s": secs, "aux_loss": aux,
            "ssm_fraction": ssm, "transformer_fraction": 1.0 - ssm, "router_prob": prob,
            "compression_rate": rate, "memory": mem,
        }))?;
        bar.set_position(state.step as u64);
        bar.set_message(format!(
            "loss {loss:.3} ppl {:.1} {:.0} tok/s ssm {ssm:.2} comp {rate:.2}",
            loss.exp(),
            tokens_per_step as f64 / secs
        ));
        let at_eval = opts.eval_every > 0 && state.step.is_multiple_of(opts.eval_every);
        if (at_eval || state.step == total) && corpus.num_eval() > 0 {
            let ppl = evaluation(&params, &corpus, &cfg)?;
            eval_ppl = Some(ppl);
            let best = state.best_eval_ppl.is_none_or(|b| ppl < b);
            log(json!({"step": state.step, "eval_loss": ppl.ln(), "eval_ppl": ppl, "best": best}))?;
            bar.println(format!(
                "step {}: eval ppl {ppl:.2}{}",
                state.step,
                if best { " (best)" } else { "" }
            ));
            if best {
                state.best_eval_ppl = Some(ppl);
                checkpoint::save(
                    &opts.out.join("best"),
                    &cfg,
                    &params,
                    &opt,
                    &state,
                    tokenizer,
                )?;
            }
        }
    }
    bar.finish();
    checkpoint::save(
        &opts.out.join("final"),
        &cfg,
        &params,
        &opt,
        &state,
        tokenizer,
    )?;
    Ok(TrainReport {
        steps: state.step,
        last_loss,
        eval_ppl,
        best_eval_ppl: state.best_eval_ppl,
        num_params: params.num_params(),
        windows: (corpus.num_train(), corpus.num_eval()),
        memory_peak: tracker.max_peak.clone(),
        memory_is_heap: memory::counting(),
    })
}

fn mib(b: usize) -> f64 {
    b as f64 / 1048576.0
}

/// Perplexity over the held-out windows.
fn evaluation(params: &ParamStore, corpus: &Corpus, cfg: &DynamicHybridConfig) -> Result<f64> {
    let batches = corpus.eval_batches(cfg.batch_size, cfg.eval_sequences)?;
    let (mut sum, mut n) = (0.0, 0usize);
    for (inp, tgt) in &batches {
        let rows = inp.dim(0)?;
        sum += evaluate(params, inp, tgt, cfg)?.loss * rows as f64;
        n += rows;
    }
    Ok((sum / n.max(1) as f64).exp())
}

fn progress_bar(show: bool, total: usize, at: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    ) {
        bar.set_style(style);
    }
    bar.set_position(at as u64);
    bar
}

/// Reads the JSONL metrics of a run (for tests and plots).
pub fn read_metrics(out: &Path) -> Result<Vec<serde_json::Value>> {
    let p = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| Error::request("metrics", e.to_string())))
        .collect()
}
