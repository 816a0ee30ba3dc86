//! Training data: a text file or a directory of text files tokenized with a `tokenizer.json`
//! and packed into `seq_len + 1`-token windows (documents joined by the EOS id), or a
//! synthetic corpus for smoke tests. The last `eval_fraction` of the windows is held out.
//! Which windows form a micro-batch depends only on (seed, step, micro-batch), so a resumed
//! run draws exactly the batches the uninterrupted run would have.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Where the training text comes from.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// A UTF-8 file, or every UTF-8 file under a directory (binary files are skipped).
    Text {
        /// File or directory.
        path: PathBuf,
        /// The `tokenizer.json` to encode it with.
        tokenizer: PathBuf,
    },
    /// `tokens` ids of a repeating pattern over `vocab` ids (learnable, for smoke tests).
    Synthetic {
        /// Vocabulary to draw from.
        vocab: usize,
        /// Corpus length in tokens.
        tokens: usize,
    },
}

/// A packed, split corpus.
pub struct Corpus {
    windows: Vec<Vec<u32>>,
    eval_start: usize,
    /// Tokens in the corpus.
    pub num_tokens: usize,
    /// Files read (0 for synthetic data).
    pub num_files: usize,
}

/// Reads every text file under `path` (sorted, so the corpus is the same on every run).
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    if path.is_dir() {
        collect_files(path, &mut files)?;
        files.sort();
    } else if path.is_file() {
        files.push(path.to_path_buf());
    } else {
        return Err(Error::request(
            "data",
            format!("{} is neither a file nor a directory", path.display()),
        ));
    }
    let mut texts = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
        if bytes.contains(&0) {
            continue; // binary (e.g. fortune's .dat indexes)
        }
        if let Ok(s) = String::from_utf8(bytes) {
            if !s.trim().is_empty() {
                texts.push(s);
            }
        }
    }
    if texts.is_empty() {
        return Err(Error::request(
            "data",
            format!("no UTF-8 text found in {}", path.display()),
        ));
    }
    Ok(texts)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let ft = e.file_type().map_err(|err| Error::io(e.path(), err))?;
        if ft.is_dir() {
            collect_files(&e.path(), out)?;
        } else if ft.is_file() {
            out.push(e.path()); // symlinks are skipped: they duplicate files
        }
    }
    Ok(())
}

impl Corpus {
    /// Tokenizes and packs `source` into windows of `seq_len + 1` tokens.
    pub fn load(source: &DataSource, seq_len: usize, eval_fraction: f64, eos: u32) -> Result<Self> {
        let (ids, num_files) = match source {
            DataSource::Text { path, tokenizer } => {
                let texts = read_texts(path)?;
                let tok = load_tokenizer(tokenizer)?;
                let mut ids = Vec::new();
                for t in &texts {
                    ids.extend(tok.encode(t, false)?);
                    ids.push(eos);
                }
                (ids, texts.len())
            }
            DataSource::Synthetic { vocab, tokens } => (synthetic(*vocab, *tokens), 0),
        };
        let w = seq_len + 1;
        let windows: Vec<Vec<u32>> = ids.chunks_exact(w).map(|c| c.to_vec()).collect();
        let eval = ((windows.len() as f64 * eval_fraction).ceil() as usize)
            .min(windows.len().saturating_sub(1));
        if windows.len() < 2 && eval_fraction > 0.0 || windows.is_empty() {
            return Err(Error::request(
                "data",
                format!(
                    "{} tokens make {} windows of {w}; need at least 2",
                    ids.len(),
                    windows.len()
                ),
            ));
        }
        Ok(Self {
            eval_start: windows.len() - eval,
            num_tokens: ids.len(),
            windows,
            num_files,
        })
    }

    /// Training windows.
    pub fn num_train(&self) -> usize {
        self.eval_start
    }

    /// Held-out windows.
    pub fn num_eval(&self) -> usize {
        self.windows.len() - self.eval_start
    }

    /// Largest token id in the corpus.
    pub fn max_id(&self) -> u32 {
        self.windows.iter().flatten().copied().max().unwrap_or(0)
    }

    /// `(inputs, targets)` `[batch, seq_len]` of micro-batch `micro` of optimizer step `step`.
    pub fn train_batch(
        &self,
        seed: u64,
        step: usize,
        micro: usize,
        batch: usize,
    ) -> Result<(Tensor, Tensor)> {
        let mix = seed
            ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (micro as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let mut rng = StdRng::seed_from_u64(mix);
        let rows: Vec<usize> = (0..batch)
            .map(|_| rng.gen_range(0..self.eval_start))
            .collect();
        self.stack(&rows)
    }

    /// Evaluation batches over the first `max` held-out windows.
    pub fn eval_batches(&self, batch: usize, max: usize) -> Result<Vec<(Tensor, Tensor)>> {
        let rows: Vec<usize> = (self.eval_start..self.windows.len()).take(max).collect();
        rows.chunks(batch.max(1)).map(|c| self.stack(c)).collect()
    }

    fn stack(&self, rows: &[usize]) -> Result<(Tensor, Tensor)> {
        let w = self.windows[0].len();
        let flat: Vec<u32> = rows
            .iter()
            .flat_map(|&r| self.windows[r].iter().copied())
            .collect();
        let all = Tensor::from_vec(flat, (rows.len(), w), &Device::Cpu)?;
        Ok((all.narrow(1, 0, w - 1)?, all.narrow(1, 1, w - 1)?))
    }
}

/// Loads `tokenizer.json` given as the file itself or its directory.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    match path.parent() {
        Some(dir) if path.is_file() && path.file_name().is_some_and(|n| n == "tokenizer.json") => {
            Tokenizer::from_dir(dir)
        }
        _ => Tokenizer::from_path(path),
    }
}

/// A corpus of "counting" runs: each run starts at a random id and steps by a random stride,
/// so the next token is predictable from the two before it.
fn synthetic(vocab: usize, tokens: usize) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(1234);
    let v = vocab.max(2) as u64;
    let mut out = Vec::with_capacity(tokens);
    while out.len() < tokens {
        let (mut x, stride) = (rng.gen_range(0..v), rng.gen_range(1..4u64));
        for _ in 0..rng.gen_range(8..32) {
            out.push(x as u32);
            x = (x + stride) % v;
        }
    }
    out.truncate(tokens);
    out
}
