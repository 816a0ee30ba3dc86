//! Finds tool calls in generated text and turns them into OpenAI `tool_calls`, incrementally so
//! streaming works: text that cannot be part of a call is released at once, a call is released
//! whole when it closes (or when generation ends).
//!
//! Recognised forms:
//! - Granite 4 / Hermes / Qwen: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, repeated;
//! - Granite 3: `<|tool_call|>[{"name": …, "arguments": …}, …]`;
//! - Mistral: `[TOOL_CALLS][{"name": …, "arguments": …}]`;
//! - a bare JSON object or array of `{"name", "arguments" | "parameters"}` as the whole answer
//!   (Llama 3 style), accepted only when every name is one of the request's tools.

use serde_json::Value;

/// A call found in the output.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    /// Function name.
    pub name: String,
    /// Arguments as JSON text.
    pub arguments: String,
}

/// A piece of parsed output, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Plain text for `content`.
    Text(String),
    /// A tool call.
    Call(ParsedCall),
}

const TAG_OPEN: &str = "<tool_call>";
const TAG_CLOSE: &str = "</tool_call>";
/// Markers after which the rest of the output is a JSON list of calls.
const LIST_MARKERS: [&str; 2] = ["<|tool_call|>", "[TOOL_CALLS]"];

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    /// Ordinary text; markers are searched for.
    Text,
    /// Inside `<tool_call>`; waiting for `</tool_call>`.
    Tagged,
    /// After a list marker: everything to the end is calls.
    List,
    /// The answer began with `{` or `[`: decided at the end.
    Bare,
}

/// Incremental tool-call parser for one choice.
pub struct ToolCallParser {
    mode: Mode,
    buf: String,
    /// Whether any text has been released (bare JSON must be the whole answer).
    started: bool,
    tool_names: Vec<String>,
}

impl ToolCallParser {
    /// A parser for a request offering `tool_names`.
    pub fn new(tool_names: Vec<String>) -> Self {
        Self {
            mode: Mode::Text,
            buf: String::new(),
            started: false,
            tool_names,
        }
    }

    /// Adds generated text; returns what is now final.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        loop {
            match self.mode {
                Mode::Text => {
                    if !self.started {
                        let t = self.buf.trim_start();
                        // Too short to tell a list marker or a ```json fence from bare JSON.
                        if ["[TOOL_CALLS]", "```json"]
                            .iter()
                            .any(|m| t.len() < m.len() && m.starts_with(t) && !t.is_empty())
                        {
                            return out;
                        }
                        if t.starts_with('{')
                            || t.starts_with("```json")
                            || (t.starts_with('[') && !t.starts_with("[TOOL_CALLS]"))
                        {
                            self.mode = Mode::Bare;
                            return out;
                        }
                    }
                    let found = std::iter::once(TAG_OPEN)
                        .chain(LIST_MARKERS)
                        .filter_map(|m| self.buf.find(m).map(|p| (p, m)))
                        .min_by_key(|(p, _)| *p);
                    if let Some((pos, marker)) = found {
                        let before: String = self.buf[..pos].to_string();
                        self.buf.drain(..pos + marker.len());
                        self.emit_text(&mut out, before);
                        self.mode = if marker == TAG_OPEN {
                            Mode::Tagged
                        } else {
                            Mode::List
                        };
                        self.started = true;
                        continue;
                    }
                    // Hold back a tail that may be the start of a marker.
                    let hold = std::iter::once(TAG_OPEN)
                        .chain(LIST_MARKERS)
                        .map(|m| suffix_prefix_len(&self.buf, m))
                        .max()
                        .unwrap_or(0);
                    let keep_from = self.buf.len() - hold;
                    if !self.started && self.buf[..keep_from].trim().is_empty() {
                        // Only whitespace so far: wait to see whether JSON follows.
                        return out;
                    }
                    let text: String = self.buf.drain(..keep_from).collect();
                    self.emit_text(&mut out, text);
                    return out;
                }
                Mode::Tagged => {
                    let Some(end) = self.buf.find(TAG_CLOSE) else {
                        return out;
                    };
                    let body: String = self.buf[..end].to_string();
                    self.buf.drain(..end + TAG_CLOSE.len());
                    match parse_calls(&body) {
                        Some(calls) => out.extend(calls.into_iter().map(Piece::Call)),
                        None => out.push(Piece::Text(format!("{TAG_OPEN}{body}{TAG_CLOSE}"))),
                    }
                    self.mode = Mode::Text;
                }
                Mode::List | Mode::Bare => return out,
            }
        }
    }

    /// Generation ended: releases everything still held.
    pub fn finish(&mut self) -> Vec<Piece> {
        let buf = std::mem::take(&mut self.buf);
        let mut out = Vec::new();
        match self.mode {
            Mode::Text => self.emit_text(&mut out, buf),
            Mode::Tagged => match parse_calls(&buf) {
                // An unclosed final call (generation stopped at EOS or a stop string).
                Some(calls) => out.extend(calls.into_iter().map(Piece::Call)),
                None => out.push(Piece::Text(format!("{TAG_OPEN}{buf}"))),
            },
            Mode::List => match parse_calls(&buf) {
                Some(calls) => out.extend(calls.into_iter().map(Piece::Call)),
                None => out.push(Piece::Text(buf)),
            },
            Mode::Bare => match parse_calls(&strip_fence(&buf)) {
                Some(calls)
                    if calls
                        .iter()
                        .all(|c| self.tool_names.iter().any(|n| n == &c.name)) =>
                {
                    out.extend(calls.into_iter().map(Piece::Call))
                }
                _ => out.push(Piece::Text(buf)),
            },
        }
        self.mode = Mode::Text;
        out
    }

    fn emit_text(&mut self, out: &mut Vec<Piece>, text: String) {
        if !text.is_empty() {
            self.started = true;
            out.push(Piece::Text(text));
        }
    }
}

/// Parses a whole output at once.
pub fn parse_all(text: &str, tool_names: Vec<String>) -> Vec<Piece> {
    let mut p = ToolCallParser::new(tool_names);
    let mut pieces = p.push(text);
    pieces.extend(p.finish());
    pieces
}

/// Length of the longest suffix of `text` that is a proper prefix of `marker`.
fn suffix_prefix_len(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| marker.is_char_boundary(n) && text.ends_with(&marker[..n]))
        .unwrap_or(0)
}

/// Removes a surrounding ```json fence.
fn strip_fence(s: &str) -> String {
    let t = s.trim();
    t.strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.strip_suffix("```"))
        .unwrap_or(t)
        .to_string()
}

/// Reads one or more JSON values (objects or arrays of objects) as calls; None if any part is
/// not a call.
fn parse_calls(body: &str) -> Option<Vec<ParsedCall>> {
    let mut calls = Vec::new();
    let stream = serde_json::Deserializer::from_str(body.trim()).into_iter::<Value>();
    for v in stream {
        match v.ok()? {
            Value::Array(items) => {
                for item in items {
                    calls.push(call_of(&item)?);
                }
            }
            obj @ Value::Object(_) => calls.push(call_of(&obj)?),
            _ => return None,
        }
    }
    (!calls.is_empty()).then_some(calls)
}

fn call_of(v: &Value) -> Option<ParsedCall> {
    // `{"type": "function", "function": {...}}` is unwrapped first.
    let v = v.get("function").filter(|f| f.is_object()).unwrap_or(v);
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some(ParsedCall { name, arguments })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &str) -> Piece {
        Piece::Call(ParsedCall {
            name: name.into(),
            arguments: args.into(),
        })
    }

    fn text(s: &str) -> Piece {
        Piece::Text(s.into())
    }

    /// Feeds `s` in chunks of `k` bytes (on char boundaries) and merges adjacent text.
    fn streamed(s: &str, k: usize, tools: &[&str]) -> Vec<Piece> {
        let mut p = ToolCallParser::new(tools.iter().map(|t| t.to_string()).collect());
        let mut out = Vec::new();
        let chars: Vec<char> = s.chars().collect();
        for chunk in chars.chunks(k) {
            out.extend(p.push(&chunk.iter().collect::<String>()));
        }
        out.extend(p.finish());
        let mut merged: Vec<Piece> = Vec::new();
        for piece in out {
            match (merged.last_mut(), piece) {
                (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                (_, p) => merged.push(p),
            }
        }
        merged
    }

    #[test]
    fn granite_tagged_calls_in_any_chunking() {
        let s = "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>";
        let want = vec![
            text("Let me check."),
            call("get_weather", r#"{"city":"Paris"}"#),
            text("\n"),
            call("get_time", "{}"),
        ];
        for k in [1, 2, 3, 7, 1000] {
            assert_eq!(streamed(s, k, &[]), want, "chunk size {k}");
        }
    }

    #[test]
    fn unclosed_call_at_end_and_broken_json() {
        assert_eq!(
            parse_all(
                "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}",
                vec![]
            ),
            vec![call("f", r#"{"x":1}"#)]
        );
        assert_eq!(
            parse_all("a <tool_call>{not json}</tool_call> b", vec![]),
            vec![
                text("a "),
                text("<tool_call>{not json}</tool_call>"),
                text(" b")
            ]
        );
    }

    #[test]
    fn list_markers_and_bare_json() {
        assert_eq!(
            parse_all(
                "<|tool_call|>[{\"name\": \"a\", \"arguments\": {\"q\": \"x\"}}, {\"name\": \"b\", \"arguments\": \"{}\"}]",
                vec![]
            ),
            vec![call("a", r#"{"q":"x"}"#), call("b", "{}")]
        );
        assert_eq!(
            parse_all("[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}]", vec![]),
            vec![call("a", "{}")]
        );
        assert_eq!(
            streamed("[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}]", 2, &[]),
            vec![call("a", "{}")]
        );
        let bare = " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}";
        assert_eq!(
            streamed(bare, 3, &["get_weather"]),
            vec![call("get_weather", r#"{"city":"Oslo"}"#)]
        );
        // JSON that names no offered tool stays text.
        assert_eq!(streamed(bare, 3, &["other"]), vec![text(bare)]);
        assert_eq!(
            parse_all(
                "```json\n{\"name\": \"a\", \"arguments\": {}}\n```",
                vec!["a".into()]
            ),
            vec![call("a", "{}")]
        );
    }

    #[test]
    fn plain_text_passes_through_and_partial_markers_are_held() {
        let mut p = ToolCallParser::new(vec![]);
        assert_eq!(p.push("Hello <tool"), vec![text("Hello ")]);
        assert_eq!(p.push("s are fun"), vec![text("<tools are fun")]);
        assert_eq!(p.finish(), vec![]);
        assert_eq!(
            streamed("x < y and [a]", 2, &[]),
            vec![text("x < y and [a]")]
        );
    }
}
