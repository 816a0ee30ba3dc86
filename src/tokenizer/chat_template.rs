//! A model's chat template: the Jinja program (Hugging Face `chat_template`) that turns a list of
//! messages into prompt text, rendered with minijinja the way transformers'
//! `apply_chat_template` does: `trim_blocks` and `lstrip_blocks` on, loop controls, Python string
//! and dict methods, and the helpers HF templates call (`raise_exception`, `strftime_now`, a
//! `tojson` that writes what Python's `json.dumps` writes), with `messages`, `tools`,
//! `documents`, `add_generation_prompt`, the tokenizer's special tokens and any extra variables.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, ErrorKind, Value};
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// One plain chat message (role and text), for callers without tools or documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What a template is rendered with.
#[derive(Debug, Clone, Default)]
pub struct ChatInputs<'a> {
    /// The conversation, as OpenAI-style message objects.
    pub messages: &'a [Json],
    /// Tool definitions (`{"type": "function", "function": {...}}`), if any.
    pub tools: Option<&'a [Json]>,
    /// Documents for retrieval-augmented templates, if any.
    pub documents: Option<&'a [Json]>,
    /// End with the header of a new assistant turn.
    pub add_generation_prompt: bool,
    /// Extra template variables (`chat_template_kwargs`).
    pub extra: Option<&'a serde_json::Map<String, Json>>,
}

/// A compiled chat template with the tokenizer's special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Names of the templates (`default`, `tool_use`, ...).
    names: Vec<String>,
    sources: Vec<String>,
    special_tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("names", &self.names)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `template`; `bos_token`/`eos_token` are the texts templates insert.
    pub fn new(template: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let special = [("bos_token", bos_token), ("eos_token", eos_token)]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?.to_string())))
            .collect();
        Self::with_special_tokens(template, special)
    }

    /// Compiles one template; `special_tokens` maps e.g. `bos_token` to its text.
    pub fn with_special_tokens(
        source: &str,
        special_tokens: BTreeMap<String, String>,
    ) -> Result<Self> {
        Self::named(vec![("default".into(), source.to_string())], special_tokens)
    }

    /// Compiles a set of named templates (HF's list form); `default` is used unless tools are
    /// given and a `tool_use` template exists.
    pub fn named(
        templates: Vec<(String, String)>,
        special_tokens: BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| Error::config("chat_template", e.to_string()))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let mut names = Vec::new();
        let mut sources = Vec::new();
        for (name, source) in templates {
            env.add_template_owned(name.clone(), source.clone())
                .map_err(|e| Error::config("chat_template", format!("template `{name}`: {e}")))?;
            names.push(name);
            sources.push(source);
        }
        if names.is_empty() {
            return Err(Error::config("chat_template", "no template given"));
        }
        Ok(Self {
            env,
            names,
            sources,
            special_tokens,
        })
    }

    /// The template of a model directory: `tokenizer_config.json`'s `chat_template` (a string or
    /// a list of named templates) or a `chat_template.jinja` file; None if there is neither.
    /// Special tokens (`bos_token`, `eos_token`, ...) come from `tokenizer_config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Json = if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|e| {
                Error::config(
                    "tokenizer_config.json",
                    format!("{}: {e}", cfg_path.display()),
                )
            })?
        } else {
            Json::Null
        };
        let special = special_tokens_of(&cfg);
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let src = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
            return Self::with_special_tokens(&src, special).map(Some);
        }
        match cfg.get("chat_template") {
            Some(Json::String(s)) => Self::with_special_tokens(s, special).map(Some),
            Some(Json::Array(list)) => {
                let named = list
                    .iter()
                    .filter_map(|t| {
                        Some((
                            t.get("name")?.as_str()?.to_string(),
                            t.get("template")?.as_str()?.to_string(),
                        ))
                    })
                    .collect();
                Self::named(named, special).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Whether any of the template sources contains `text` (e.g. to learn the tool-call format).
    pub fn mentions(&self, text: &str) -> bool {
        self.sources.iter().any(|s| s.contains(text))
    }

    /// The special tokens the template sees.
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.special_tokens
    }

    /// The prompt text for plain `messages`; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<Json> = messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        self.render_chat(&ChatInputs {
            messages: &msgs,
            add_generation_prompt,
            ..Default::default()
        })
    }

    /// Renders a conversation with tools, documents and extra variables. Errors from the
    /// template itself (e.g. `raise_exception` for roles that do not alternate) are request
    /// errors naming `messages`.
    pub fn render_chat(&self, inputs: &ChatInputs) -> Result<String> {
        let has_tools = inputs.tools.is_some_and(|t| !t.is_empty());
        let name = if has_tools && self.names.iter().any(|n| n == "tool_use") {
            "tool_use"
        } else if self.names.iter().any(|n| n == "default") {
            "default"
        } else {
            self.names.first().map(String::as_str).unwrap_or("default")
        };
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| Error::config("chat_template", e.to_string()))?;
        let mut ctx: serde_json::Map<String, Json> = serde_json::Map::new();
        for (k, v) in &self.special_tokens {
            ctx.insert(k.clone(), Json::String(v.clone()));
        }
        if let Some(extra) = inputs.extra {
            for (k, v) in extra {
                ctx.insert(k.clone(), v.clone());
            }
        }
        ctx.insert("messages".into(), Json::Array(inputs.messages.to_vec()));
        ctx.insert(
            "tools".into(),
            inputs.tools.map_or(Json::Null, |t| Json::Array(t.to_vec())),
        );
        ctx.insert(
            "documents".into(),
            inputs
                .documents
                .map_or(Json::Null, |d| Json::Array(d.to_vec())),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(inputs.add_generation_prompt),
        );
        tmpl.render(Value::from(Serde(Json::Object(ctx))))
            .map_err(|e| {
                let reason = match e.kind() {
                    ErrorKind::InvalidOperation if e.detail().is_some() => {
                        e.detail().unwrap_or_default().to_string()
                    }
                    _ => e.to_string(),
                };
                Error::request("messages", format!("chat template: {reason}"))
            })
    }
}

/// `bos_token`, `eos_token`, `unk_token`, `pad_token` of a `tokenizer_config.json` (each a
/// string or an added-token object with `content`).
fn special_tokens_of(cfg: &Json) -> BTreeMap<String, String> {
    ["bos_token", "eos_token", "unk_token", "pad_token"]
        .iter()
        .filter_map(|k| {
            let v = cfg.get(*k)?;
            let s = v
                .as_str()
                .or_else(|| v.get("content").and_then(Json::as_str))?;
            Some((k.to_string(), s.to_string()))
        })
        .collect()
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// Local time formatted with a C `strftime` format, as HF's `strftime_now`.
fn strftime_now(fmt: String) -> std::result::Result<String, minijinja::Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&fmt)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: bad format `{fmt}`"),
        )
    })?;
    Ok(out)
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`: `", "` and `": "` between
/// items without indent, key order kept, no HTML escaping.
fn tojson(
    value: Serde<Json>,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    // HF passes these through to json.dumps; accept the common ones.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, &value.0, indent, 0);
    Ok(Value::from_safe_string(out))
}

fn write_json(out: &mut String, v: &Json, indent: Option<usize>, depth: usize) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                write_json(out, item, indent, depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
        Json::Number(n) if n.is_f64() => {
            // Python writes 1.0 for a float that is whole; serde_json does the same.
            out.push_str(&n.to_string());
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, messages: Json) -> Result<String> {
        let t = ChatTemplate::new(src, None, None)?;
        let msgs = messages.as_array().cloned().unwrap_or_default();
        t.render_chat(&ChatInputs {
            messages: &msgs,
            add_generation_prompt: true,
            ..Default::default()
        })
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let out = render(
            "{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}",
            json!([{"b": [1, 2.5, "é<"], "a": {}, "c": null}]),
        )
        .unwrap();
        assert_eq!(
            out,
            "{\"b\": [1, 2.5, \"é<\"], \"a\": {}, \"c\": null}|{\n  \"b\": [\n    1,\n    2.5,\n    \"é<\"\n  ],\n  \"a\": {},\n  \"c\": null\n}"
        );
    }

    #[test]
    fn raise_exception_is_a_request_error() {
        let err = render(
            "{% if messages[0].role != 'user' %}{{ raise_exception('roles must alternate') }}{% endif %}",
            json!([{"role": "assistant", "content": "x"}]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
        assert!(err.to_string().contains("messages"), "{err}");
    }

    #[test]
    fn plain_messages_with_special_tokens() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content.strip() }};{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}{{ eos_token }}",
            Some("<s>"),
            Some("</s>"),
        )
        .unwrap();
        let out = t.render(&[Message::new("user", "  x ")], true).unwrap();
        assert_eq!(out, "<s>user:x;assistant:</s>");
    }

    #[test]
    fn python_methods_and_strftime() {
        let out = render(
            "{{ messages[0].content.strip().upper() }} {{ strftime_now('%Y') | length }}",
            json!([{"role": "user", "content": "  hi "}]),
        )
        .unwrap();
        assert_eq!(out, "HI 4");
    }
}
