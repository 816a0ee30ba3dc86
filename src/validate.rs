//! Checks a model against reference logits and greedy tokens from transformers, in the four
//! ways an engine calls it: one batched full prefill, token-by-token decode, prefill in chunks
//! of mixed sizes continued through the cache (sequences batched with different lengths), and
//! greedy generation.

use std::path::Path;

use serde::Serialize;

use crate::cache::block_pool::BlockPool;
use crate::cache::{CacheCapacity, ModelCache};
use crate::engine::batch::{Batch, LogitsRows};
use crate::engine::sampler::argmax;
use crate::error::{Error, Result};
use crate::layers::to_vec;
use crate::loader::safetensors::WeightStore;
use crate::models::Model;

/// Reference data: `input_ids` [B, T], `logits` [B, T, V], `greedy_ids` [B, N].
pub struct Reference {
    /// Token ids per row.
    pub input_ids: Vec<Vec<u32>>,
    /// Logits, row-major [B, T, V].
    pub logits: Vec<f32>,
    /// Greedy continuation per row.
    pub greedy_ids: Vec<Vec<u32>>,
    /// Vocabulary size V.
    pub vocab: usize,
}

impl Reference {
    /// Reads a reference safetensors file.
    pub fn load(path: &Path) -> Result<Self> {
        let store = WeightStore::open_files(&[path.to_path_buf()])?;
        let ids = read_ids(&store, "input_ids")?;
        let greedy_ids = read_ids(&store, "greedy_ids")?;
        let logits_t = store.raw("logits")?;
        let dims = logits_t.dims().to_vec();
        let (b, t) = (ids.len(), ids.first().map_or(0, |r| r.len()));
        let [lb, lt, vocab] = dims[..] else {
            return Err(shape_err("logits", vec![b, t, 0], dims));
        };
        if lb != b || lt != t || greedy_ids.len() != b || b == 0 || t == 0 {
            return Err(shape_err("logits", vec![b, t, vocab], dims));
        }
        let logits = to_vec(&logits_t.to_dtype(candle_core::DType::F32)?)?;
        Ok(Self {
            input_ids: ids,
            logits,
            greedy_ids,
            vocab,
        })
    }

    fn row_logits(&self, row: usize, pos: usize) -> &[f32] {
        let t = self.input_ids[0].len();
        let off = (row * t + pos) * self.vocab;
        &self.logits[off..off + self.vocab]
    }
}

fn shape_err(name: &str, expected: Vec<usize>, got: Vec<usize>) -> Error {
    Error::ShapeMismatch {
        name: name.into(),
        expected,
        got,
    }
}

fn read_ids(store: &WeightStore, name: &str) -> Result<Vec<Vec<u32>>> {
    let t = store.raw(name)?;
    let (rows, cols) = t
        .dims2()
        .map_err(|_| shape_err(name, vec![0, 0], t.dims().to_vec()))?;
    let flat = t
        .to_dtype(candle_core::DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    let flat: Vec<u32> = flat
        .into_iter()
        .map(|v| u32::try_from(v).map_err(|_| Error::request(name, format!("bad token id {v}"))))
        .collect::<Result<_>>()?;
    Ok((0..rows)
        .map(|r| flat[r * cols..(r + 1) * cols].to_vec())
        .collect())
}

/// Agreement of one mode with the reference.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// Mode name.
    pub mode: String,
    /// Largest absolute logit difference.
    pub max_abs_diff: f32,
    /// Smallest per-position cosine similarity.
    pub cosine: f64,
    /// Fraction of positions whose argmax agrees.
    pub top1_match: f64,
}

/// The result of [`validate`].
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    /// Worst absolute logit difference over all logit modes.
    pub max_abs_diff: f32,
    /// Minimum per-position cosine similarity over all logit modes.
    pub cosine: f64,
    /// Pearson correlation over all compared logits.
    pub pearson: f64,
    /// Fraction of positions (all logit modes) whose argmax agrees.
    pub top1_match: f64,
    /// Fraction of greedy tokens equal to the reference.
    pub greedy_match: f64,
    /// Per-mode details.
    pub modes: Vec<ModeReport>,
}

#[derive(Default)]
struct Accumulator {
    max_abs: f32,
    min_cos: f64,
    top1_hits: usize,
    positions: usize,
    n: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    syy: f64,
    sxy: f64,
}

impl Accumulator {
    fn new() -> Self {
        Self {
            min_cos: 1.0,
            ..Default::default()
        }
    }

    fn add(&mut self, ours: &[f32], theirs: &[f32]) {
        let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
        for (&a, &b) in ours.iter().zip(theirs) {
            self.max_abs = self.max_abs.max((a - b).abs());
            let (a, b) = (a as f64, b as f64);
            dot += a * b;
            na += a * a;
            nb += b * b;
            self.n += 1.0;
            self.sx += a;
            self.sy += b;
            self.sxx += a * a;
            self.syy += b * b;
            self.sxy += a * b;
        }
        let cos = if na == 0.0 || nb == 0.0 {
            if na == nb {
                1.0
            } else {
                0.0
            }
        } else {
            dot / (na.sqrt() * nb.sqrt())
        };
        self.min_cos = self.min_cos.min(cos);
        self.top1_hits += usize::from(argmax(ours) == argmax(theirs));
        self.positions += 1;
        if ours.iter().any(|v| !v.is_finite()) {
            self.max_abs = f32::INFINITY;
        }
    }

    fn merge(&mut self, o: &Accumulator) {
        self.max_abs = self.max_abs.max(o.max_abs);
        self.min_cos = self.min_cos.min(o.min_cos);
        self.top1_hits += o.top1_hits;
        self.positions += o.positions;
        self.n += o.n;
        self.sx += o.sx;
        self.sy += o.sy;
        self.sxx += o.sxx;
        self.syy += o.syy;
        self.sxy += o.sxy;
    }

    fn pearson(&self) -> f64 {
        let cov = self.sxy - self.sx * self.sy / self.n;
        let vx = self.sxx - self.sx * self.sx / self.n;
        let vy = self.syy - self.sy * self.sy / self.n;
        cov / (vx.sqrt() * vy.sqrt())
    }

    fn report(&self, mode: &str) -> ModeReport {
        ModeReport {
            mode: mode.into(),
            max_abs_diff: self.max_abs,
            cosine: self.min_cos,
            top1_match: self.top1_hits as f64 / self.positions.max(1) as f64,
        }
    }
}

/// Fresh cache and block tables for `rows` sequences of up to `max_len` tokens.
fn fresh_cache(
    model: &dyn Model,
    rows: usize,
    max_len: usize,
) -> Result<(ModelCache, Vec<Vec<u32>>)> {
    let block_size = 16;
    let per_seq = max_len.div_ceil(block_size);
    let mut pool = BlockPool::new(rows * per_seq);
    let tables = (0..rows)
        .map(|_| pool.allocate_n(per_seq))
        .collect::<Result<Vec<_>>>()?;
    let cache = ModelCache::new(
        model.cache_specs(),
        CacheCapacity {
            state_slots: rows,
            kv_blocks: rows * per_seq,
            block_size,
        },
    );
    Ok((cache, tables))
}

/// Logits `[rows · T, vocab]` of one batched full prefill of equal-length prompts (row-major,
/// prompt after prompt): the first mode of [`validate`], for comparing two loads of one model.
pub fn prefill_logits(model: &dyn Model, prompts: &[Vec<u32>]) -> Result<Vec<f32>> {
    let t = prompts.first().map_or(0, |p| p.len());
    let (mut cache, tables) = fresh_cache(model, prompts.len(), t.max(1))?;
    let parts = prompts
        .iter()
        .enumerate()
        .map(|(r, p)| (p.clone(), 0, r, tables[r].clone()))
        .collect();
    to_vec(&model.forward(&Batch::new(parts, LogitsRows::All), &mut cache)?)
}

/// Runs all four modes and compares them with the reference.
pub fn validate(model: &dyn Model, reference: &Reference) -> Result<ValidationReport> {
    let vocab = model.info().vocab_size;
    if reference.input_ids.is_empty() || reference.input_ids[0].is_empty() {
        return Err(Error::request("input_ids", "reference has no tokens"));
    }
    if vocab != reference.vocab {
        return Err(Error::ShapeMismatch {
            name: "logits".into(),
            expected: vec![
                reference.input_ids.len(),
                reference.input_ids[0].len(),
                vocab,
            ],
            got: vec![
                reference.input_ids.len(),
                reference.input_ids[0].len(),
                reference.vocab,
            ],
        });
    }
    let rows = reference.input_ids.len();
    let t = reference.input_ids[0].len();
    let n_new = reference.greedy_ids.first().map_or(0, |g| g.len());
    let max_len = t + n_new;

    // Mode 1: all rows in one batched full prefill.
    let mut full = Accumulator::new();
    {
        let (mut cache, tables) = fresh_cache(model, rows, max_len)?;
        let parts = (0..rows)
            .map(|r| (reference.input_ids[r].clone(), 0, r, tables[r].clone()))
            .collect();
        let logits = to_vec(&model.forward(&Batch::new(parts, LogitsRows::All), &mut cache)?)?;
        for r in 0..rows {
            for p in 0..t {
                let off = (r * t + p) * vocab;
                full.add(&logits[off..off + vocab], reference.row_logits(r, p));
            }
        }
    }

    // Mode 2: token by token, all rows batched per step.
    let mut decode = Accumulator::new();
    {
        let (mut cache, tables) = fresh_cache(model, rows, max_len)?;
        for p in 0..t {
            let parts = (0..rows)
                .map(|r| (vec![reference.input_ids[r][p]], p, r, tables[r].clone()))
                .collect();
            let logits = to_vec(&model.forward(&Batch::new(parts, LogitsRows::All), &mut cache)?)?;
            for r in 0..rows {
                decode.add(
                    &logits[r * vocab..(r + 1) * vocab],
                    reference.row_logits(r, p),
                );
            }
        }
    }

    // Mode 3: chunks of mixed sizes; rows advance with different chunk lengths in one batch.
    let mut chunked = Accumulator::new();
    {
        let (mut cache, tables) = fresh_cache(model, rows, max_len)?;
        const SIZES: [usize; 6] = [3, 1, 7, 2, 5, 11];
        let mut done = vec![0usize; rows];
        let mut step = 0;
        while done.iter().any(|&d| d < t) {
            let active: Vec<usize> = (0..rows).filter(|&r| done[r] < t).collect();
            let parts = active
                .iter()
                .map(|&r| {
                    let len = SIZES[(step + r) % SIZES.len()].min(t - done[r]);
                    let toks = reference.input_ids[r][done[r]..done[r] + len].to_vec();
                    (toks, done[r], r, tables[r].clone())
                })
                .collect::<Vec<_>>();
            let lens: Vec<usize> = parts.iter().map(|p| p.0.len()).collect();
            let logits = to_vec(&model.forward(&Batch::new(parts, LogitsRows::All), &mut cache)?)?;
            let mut row = 0;
            for (&r, &len) in active.iter().zip(&lens) {
                for i in 0..len {
                    chunked.add(
                        &logits[row * vocab..(row + 1) * vocab],
                        reference.row_logits(r, done[r] + i),
                    );
                    row += 1;
                }
                done[r] += len;
            }
            step += 1;
        }
    }

    // Mode 4: greedy generation, rows batched.
    let mut greedy_hits = 0;
    {
        let (mut cache, tables) = fresh_cache(model, rows, max_len)?;
        let parts = (0..rows)
            .map(|r| (reference.input_ids[r].clone(), 0, r, tables[r].clone()))
            .collect();
        let mut logits =
            to_vec(&model.forward(&Batch::new(parts, LogitsRows::LastPerSequence), &mut cache)?)?;
        for step in 0..n_new {
            let next: Vec<u32> = (0..rows)
                .map(|r| argmax(&logits[r * vocab..(r + 1) * vocab]))
                .collect();
            for (expected, got) in reference.greedy_ids.iter().zip(&next) {
                greedy_hits += usize::from(expected[step] == *got);
            }
            if step + 1 == n_new {
                break;
            }
            let parts = (0..rows)
                .map(|r| (vec![next[r]], t + step, r, tables[r].clone()))
                .collect();
            logits = to_vec(
                &model.forward(&Batch::new(parts, LogitsRows::LastPerSequence), &mut cache)?,
            )?;
        }
    }

    let modes = vec![
        full.report("full_prefill"),
        decode.report("decode"),
        chunked.report("chunked_prefill"),
    ];
    let mut all = Accumulator::new();
    for a in [&full, &decode, &chunked] {
        all.merge(a);
    }
    Ok(ValidationReport {
        max_abs_diff: all.max_abs,
        cosine: all.min_cos,
        pearson: all.pearson(),
        top1_match: all.top1_hits as f64 / all.positions.max(1) as f64,
        greedy_match: if n_new == 0 {
            1.0
        } else {
            greedy_hits as f64 / (rows * n_new) as f64
        },
        modes,
    })
}
