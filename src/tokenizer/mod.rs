//! Text ⇄ token ids with Hugging Face's `tokenizer.json` or a GGUF file's vocabulary, plus the
//! facts the engine and chat need (special tokens, whether to prepend BOS, the chat template).

pub mod chat_template;
pub mod detokenizer;
pub mod gguf_vocab;

use std::path::Path;

use crate::error::{Error, Result};
use crate::loader::gguf::GgufFile;

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl Tokenizer {
    /// Loads the tokenizer of a model directory (`tokenizer.json`) or a `.gguf` file.
    pub fn from_path(path: &Path) -> Result<Self> {
        if crate::models::is_gguf(path) {
            Self::from_gguf(path)
        } else {
            Self::from_dir(path)
        }
    }

    /// Loads `tokenizer.json` from a model directory (and the chat template and special
    /// tokens of `tokenizer_config.json` / `chat_template.jinja` when present).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::Tokenizer(format!(
                "no tokenizer.json in {}",
                dir.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let config: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let token_text = |key: &str| match config.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v) => v
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            None => None,
        };
        let chat_template = std::fs::read_to_string(dir.join("chat_template.jinja"))
            .ok()
            .or_else(|| {
                config
                    .get("chat_template")
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            });
        Ok(Self {
            inner,
            chat_template,
            bos_token: token_text("bos_token"),
            eos_token: token_text("eos_token"),
        })
    }

    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let v = gguf_vocab::from_gguf(&file)?;
        Ok(Self {
            inner: v.tokenizer,
            chat_template: v.chat_template,
            bos_token: v.bos_token,
            eos_token: v.eos_token,
        })
    }

    /// Token ids of `text`; `add_special` applies the tokenizer's post-processor (e.g. BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The model's chat template (Jinja), if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders `messages` with the model's chat template (`add_generation_prompt` opens the
    /// assistant's turn).
    pub fn apply_chat_template(
        &self,
        messages: &[chat_template::Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            Error::Tokenizer("this model ships no chat template (tokenizer.chat_template)".into())
        })?;
        chat_template::ChatTemplate::new(
            template,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )?
        .render(messages, add_generation_prompt)
    }

    /// Token ids of a chat: the rendered template, with the tokenizer's own BOS added unless
    /// the template already wrote it (as llama.cpp avoids a double BOS).
    pub fn encode_chat(
        &self,
        messages: &[chat_template::Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        let starts_with_bos = self
            .bos_token
            .as_deref()
            .is_some_and(|b| !b.is_empty() && text.starts_with(b));
        self.encode(&text, !starts_with_bos)
    }

    /// Beginning-of-sequence token text.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// End-of-sequence token text.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }
}
