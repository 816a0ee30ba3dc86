//! A Hugging Face `tokenizers::Tokenizer` built from a GGUF file's `tokenizer.ggml.*` metadata,
//! reproducing llama.cpp's tokenization:
//!
//! - `gpt2` (byte-level BPE): vocabulary + merges, the pre-tokenizer regexes llama.cpp uses
//!   for `tokenizer.ggml.pre` (applied in sequence, each isolating its matches), byte-level
//!   mapping; `ignore_merges` where llama.cpp sets it (llama3-style vocabularies).
//! - `llama` (SentencePiece BPE): llama.cpp merges the adjacent pair whose concatenation has
//!   the best score; the same falls out of a BPE whose merges are ranked by the merged piece's
//!   score. Spaces become `▁`, an optional `▁` prefix, unknown characters fall back to
//!   `<0xXX>` byte tokens.
//!
//! Control tokens (type 3) and user-defined tokens (type 4) are split out before the model
//! runs, as llama.cpp does when parsing special tokens; control tokens are "special" (skipped
//! when decoding with `skip_special`).

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::loader::gguf::GgufFile;

/// The llama.cpp token types (`tokenizer.ggml.token_type`).
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// What a GGUF vocabulary says beyond the token ids.
pub struct GgufVocab {
    /// The tokenizer, ready for encode/decode.
    pub tokenizer: tokenizers::Tokenizer,
    /// Beginning-of-sequence token text, if any.
    pub bos_token: Option<String>,
    /// End-of-sequence token text, if any.
    pub eos_token: Option<String>,
    /// Whether encoding with special tokens prepends BOS.
    pub add_bos: bool,
    /// `tokenizer.chat_template`, if present.
    pub chat_template: Option<String>,
}

/// llama.cpp's pre-tokenizer regexes for a `tokenizer.ggml.pre` value, and whether that
/// vocabulary ignores merges for words already in the vocabulary.
fn pre_tokenizer(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    const LLAMA3: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    const GPT2: &str =
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => (vec![LLAMA3], true),
        "dbrx" | "smaug-bpe" => (vec![LLAMA3], false),
        "qwen2" | "hunyuan" => (
            vec!["(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"],
            false,
        ),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
        | "minerva-7b" => (vec!["\\p{N}", GPT2], false),
        "gpt-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => (vec![GPT2], false),
        "falcon" => (
            vec![
                "[\\p{P}\\$\\+<=>\\^~\\|`]+",
                "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
                "[0-9][0-9][0-9]",
            ],
            false,
        ),
        "default" => (
            vec![
                "[\\p{P}\\$\\+<=>\\^~\\|]+",
                GPT2,
                "\\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            false,
        ),
        _ => return None,
    })
}

fn tok_err(key: &str, reason: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("GGUF `{key}`: {reason}"))
}

/// Builds the tokenizer described by `file`'s metadata.
pub fn from_gguf(file: &GgufFile) -> Result<GgufVocab> {
    let model = file
        .opt_str("tokenizer.ggml.model")?
        .ok_or_else(|| tok_err("tokenizer.ggml.model", "missing"))?
        .to_string();
    let tokens: Vec<String> = file
        .opt_str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| tok_err("tokenizer.ggml.tokens", "missing"))?
        .into_iter()
        .map(str::to_string)
        .collect();
    let types: Vec<i64> = match file.opt_f64_array("tokenizer.ggml.token_type")? {
        Some(t) if t.len() == tokens.len() => t.into_iter().map(|v| v as i64).collect(),
        Some(t) => {
            return Err(tok_err(
                "tokenizer.ggml.token_type",
                format!("has {} entries for {} tokens", t.len(), tokens.len()),
            ))
        }
        None => vec![1; tokens.len()],
    };
    let id_of = |key: &str| -> Result<Option<u32>> {
        match file.opt_usize(key)? {
            Some(id) if id < tokens.len() => Ok(u32::try_from(id).ok()),
            Some(id) => Err(tok_err(
                key,
                format!("id {id} is outside the {}-token vocabulary", tokens.len()),
            )),
            None => Ok(None),
        }
    };
    let bos = id_of("tokenizer.ggml.bos_token_id")?;
    let eos = id_of("tokenizer.ggml.eos_token_id")?;
    let unk = id_of("tokenizer.ggml.unknown_token_id")?;
    let pre = file
        .opt_str("tokenizer.ggml.pre")?
        .unwrap_or("default")
        .to_string();

    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let id = u32::try_from(i).map_err(|_| tok_err("tokenizer.ggml.tokens", "too many"))?;
        vocab.entry(t.clone()).or_insert(id);
    }

    let (mut tk, default_add_bos, add_space_prefix) = match model.as_str() {
        "gpt2" => {
            let merges = file
                .opt_str_array("tokenizer.ggml.merges")?
                .ok_or_else(|| tok_err("tokenizer.ggml.merges", "missing for a BPE vocabulary"))?;
            let merges: Vec<(String, String)> = merges
                .iter()
                .filter_map(|m| {
                    // llama.cpp splits at the first space after the first character.
                    let first = m.chars().next()?.len_utf8();
                    let pos = m[first..].find(' ')? + first;
                    Some((m[..pos].to_string(), m[pos + 1..].to_string()))
                })
                .collect();
            let (regexes, ignore_merges) = pre_tokenizer(&pre).ok_or_else(|| {
                tok_err(
                    "tokenizer.ggml.pre",
                    format!("pre-tokenizer `{pre}` is not supported"),
                )
            })?;
            let bpe = BPE::builder()
                .vocab_and_merges(
                    vocab
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect::<Vocab>(),
                    merges,
                )
                .ignore_merges(ignore_merges)
                .build()
                .map_err(|e| tok_err("tokenizer.ggml.merges", e))?;
            let mut pres: Vec<PreTokenizerWrapper> = Vec::new();
            for r in regexes {
                let split = Split::new(
                    SplitPattern::Regex(r.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| tok_err("tokenizer.ggml.pre", e))?;
                pres.push(split.into());
            }
            pres.push(ByteLevel::new(false, false, false).into());
            let mut tk = tokenizers::Tokenizer::new(bpe);
            tk.with_pre_tokenizer(Some(PreSequence::new(pres)));
            tk.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
            (tk, ignore_merges, false)
        }
        "llama" => {
            let scores = file
                .opt_f64_array("tokenizer.ggml.scores")?
                .ok_or_else(|| {
                    tok_err(
                        "tokenizer.ggml.scores",
                        "missing for a SentencePiece vocabulary",
                    )
                })?;
            if scores.len() != tokens.len() {
                return Err(tok_err(
                    "tokenizer.ggml.scores",
                    format!("has {} entries for {} tokens", scores.len(), tokens.len()),
                ));
            }
            let merges = spm_merges(&tokens, &scores, &types, &vocab);
            let mut builder = BPE::builder()
                .vocab_and_merges(
                    vocab
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect::<Vocab>(),
                    merges,
                )
                .byte_fallback(true)
                .fuse_unk(true);
            if let Some(u) = unk {
                builder = builder.unk_token(tokens[u as usize].clone());
            }
            let bpe = builder
                .build()
                .map_err(|e| tok_err("tokenizer.ggml.scores", e))?;
            let add_space_prefix = file
                .opt_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            let mut norms: Vec<NormalizerWrapper> = Vec::new();
            if add_space_prefix {
                norms.push(Prepend::new("▁".into()).into());
            }
            norms.push(
                Replace::new(" ", "▁")
                    .map_err(|e| tok_err("tokenizer.ggml.model", e))?
                    .into(),
            );
            let mut decoders: Vec<DecoderWrapper> = vec![
                Replace::new("▁", " ")
                    .map_err(|e| tok_err("tokenizer.ggml.model", e))?
                    .into(),
                ByteFallback::default().into(),
                Fuse::default().into(),
            ];
            if add_space_prefix {
                decoders.push(Strip::new(' ', 1, 0).into());
            }
            let mut tk = tokenizers::Tokenizer::new(bpe);
            tk.with_normalizer(Some(NormSequence::new(norms)));
            tk.with_decoder(Some(DecoderSequence::new(decoders)));
            (tk, true, add_space_prefix)
        }
        other => {
            return Err(tok_err(
                "tokenizer.ggml.model",
                format!("vocabulary type `{other}` is not supported (gpt2, llama)"),
            ))
        }
    };
    let _ = add_space_prefix;

    // Control and user-defined tokens are matched in the text before the model runs.
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match types.get(i).copied() {
            Some(TYPE_CONTROL) => special.push(AddedToken::from(t.clone(), true).normalized(false)),
            Some(TYPE_USER_DEFINED) => {
                user.push(AddedToken::from(t.clone(), false).normalized(false))
            }
            _ => {}
        }
    }
    tk.add_special_tokens(&special);
    tk.add_tokens(&user);

    let add_bos = file
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(default_add_bos);
    let add_eos = file
        .opt_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let bos_token = bos.map(|b| tokens[b as usize].clone());
    let eos_token = eos.map(|e| tokens[e as usize].clone());
    let mut single: Vec<String> = Vec::new();
    let mut specials: Vec<(String, u32)> = Vec::new();
    if let (true, Some(b), Some(bt)) = (add_bos, bos, &bos_token) {
        single.push(bt.clone());
        specials.push((bt.clone(), b));
    }
    single.push("$A".into());
    if let (true, Some(e), Some(et)) = (add_eos, eos, &eos_token) {
        single.push(et.clone());
        if !specials.iter().any(|(t, _)| t == et) {
            specials.push((et.clone(), e));
        }
    }
    if single.len() > 1 {
        let pair: Vec<String> = single
            .iter()
            .cloned()
            .chain(
                single
                    .iter()
                    .map(|s| if s == "$A" { "$B".into() } else { s.clone() }),
            )
            .collect();
        let post = TemplateProcessing::builder()
            .try_single(single.join(" "))
            .and_then(|b| b.try_pair(pair.join(" ")))
            .map_err(|e| tok_err("tokenizer.ggml.add_bos_token", e))?
            .special_tokens(specials)
            .build()
            .map_err(|e| tok_err("tokenizer.ggml.add_bos_token", e))?;
        tk.with_post_processor(Some(post));
    }
    let chat_template = file.opt_str("tokenizer.chat_template")?.map(str::to_string);
    Ok(GgufVocab {
        tokenizer: tk,
        bos_token,
        eos_token,
        add_bos,
        chat_template,
    })
}

/// BPE merges equivalent to SentencePiece's score-driven merging: every way to split a
/// vocabulary piece into two vocabulary pieces, ranked by the piece's score (best first).
fn spm_merges(
    tokens: &[String],
    scores: &[f64],
    types: &[i64],
    vocab: &HashMap<String, u32>,
) -> Vec<(String, String)> {
    let mut ranked: Vec<(f64, u32, u32, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        // Control/user-defined/byte tokens are never the result of a merge in llama.cpp.
        if types.get(id).copied().unwrap_or(1) != 1 {
            continue;
        }
        let mut cuts = piece.char_indices().map(|(i, _)| i).skip(1);
        for cut in cuts.by_ref() {
            let (a, b) = piece.split_at(cut);
            if let (Some(&ia), Some(&ib)) = (vocab.get(a), vocab.get(b)) {
                ranked.push((scores.get(id).copied().unwrap_or(0.0), ia, ib, id));
            }
        }
    }
    ranked.sort_by(|x, y| {
        y.0.total_cmp(&x.0)
            .then(x.3.cmp(&y.3))
            .then(x.1.cmp(&y.1))
            .then(x.2.cmp(&y.2))
    });
    ranked
        .into_iter()
        .map(|(_, a, b, _)| (tokens[a as usize].clone(), tokens[b as usize].clone()))
        .collect()
}
