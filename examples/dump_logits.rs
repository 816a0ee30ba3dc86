//! Writes a model's logits for a token sequence as raw little-endian f32 `[rows, vocab]`, for
//! comparing numerics with another engine (scripts/compare_llama_cpp_logits.py).
//!
//!   cargo run --release --example dump_logits -- MODEL OUT.f32 PROMPT_IDS [CONTINUATION_IDS]
//!
//! Ids are comma-separated. The prompt is one prefill batch (one logits row per prompt token);
//! each continuation token is then fed alone, as a decoding engine (and llama.cpp's `eval`)
//! does, adding one row each.

use std::io::Write;

use anyhow::{bail, Context, Result};
use nanovllm::cache::{CacheCapacity, ModelCache};
use nanovllm::engine::batch::{Batch, LogitsRows};

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            t.trim()
                .parse::<u32>()
                .with_context(|| format!("bad id `{t}`"))
        })
        .collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: dump_logits MODEL OUT.f32 PROMPT_IDS [CONTINUATION_IDS]");
    }
    let model = nanovllm::models::load(std::path::Path::new(&args[0]))?;
    let prompt = parse_ids(&args[2])?;
    let cont = match args.get(3) {
        Some(s) => parse_ids(s)?,
        None => Vec::new(),
    };
    let len = prompt.len() + cont.len();
    let blocks = len.div_ceil(16) + 1;
    let mut cache = ModelCache::new(
        model.cache_specs(),
        CacheCapacity {
            state_slots: 1,
            kv_blocks: blocks,
            block_size: 16,
        },
    );
    let table: Vec<u32> = (0..blocks as u32).collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args[1])?);
    let mut past = 0;
    let mut steps = vec![prompt];
    steps.extend(cont.into_iter().map(|t| vec![t]));
    for input in steps {
        let n = input.len();
        let batch = Batch::new(vec![(input, past, 0, table.clone())], LogitsRows::All);
        let logits: Vec<f32> = model
            .forward(&batch, &mut cache)?
            .flatten_all()?
            .to_vec1()?;
        for v in logits {
            out.write_all(&v.to_le_bytes())?;
        }
        past += n;
    }
    out.flush()?;
    Ok(())
}
