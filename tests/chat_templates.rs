//! Chat templates render exactly what transformers' `apply_chat_template` renders, for the
//! committed fixtures (Granite 4 with and without tools and documents, SmolLM2, Gemma 3, a
//! Llama 3 style template); `raise_exception` in a template becomes a request error.
//! Regenerate the expected outputs with `python3 scripts/render_chat_templates.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nanovllm::tokenizer::chat_template::{ChatInputs, ChatTemplate};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

fn read_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

#[test]
fn templates_render_like_transformers() {
    let spec = read_json("cases.json");
    let expected = read_json("expected.json");
    let tools = spec["tools"].as_array().unwrap().clone();
    let cases = spec["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let src = std::fs::read_to_string(dir().join(case["template"].as_str().unwrap())).unwrap();
        let special: BTreeMap<String, String> = ["bos_token", "eos_token"]
            .iter()
            .map(|k| (k.to_string(), case[*k].as_str().unwrap().to_string()))
            .collect();
        let t = ChatTemplate::with_special_tokens(&src, special).unwrap();
        let messages = case["messages"].as_array().unwrap().clone();
        let documents = case.get("documents").and_then(Value::as_array).cloned();
        let use_tools = case
            .get("use_tools")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let got = t.render_chat(&ChatInputs {
            messages: &messages,
            tools: use_tools.then_some(tools.as_slice()),
            documents: documents.as_deref(),
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            extra: case.get("kwargs").and_then(Value::as_object),
        });
        let want = &expected[name];
        match (got, want) {
            (Ok(text), Value::String(w)) if &text == w => {}
            (Err(e), Value::Object(o)) => {
                let msg = o["error"].as_str().unwrap();
                let e = e.to_string();
                if !e.contains(msg) || !e.contains("messages") {
                    failures.push(format!(
                        "{name}: error `{e}`, expected one containing `{msg}`"
                    ));
                }
            }
            (got, want) => failures.push(format!(
                "{name}:\n--- got ---\n{got:?}\n--- transformers ---\n{want}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn model_directory_templates_come_from_tokenizer_config() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(ChatTemplate::from_model_dir(tmp.path()).unwrap().is_none());
    // A list of named templates: `tool_use` is picked when tools are given.
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        serde_json::json!({
            "bos_token": {"content": "<s>", "special": true},
            "eos_token": "</s>",
            "chat_template": [
                {"name": "default", "template": "{{ bos_token }}plain:{{ messages[0].content }}{{ eos_token }}"},
                {"name": "tool_use", "template": "tools:{{ tools | length }}"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let t = ChatTemplate::from_model_dir(tmp.path()).unwrap().unwrap();
    let msgs = vec![serde_json::json!({"role": "user", "content": "hi"})];
    let plain = t
        .render_chat(&ChatInputs {
            messages: &msgs,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(plain, "<s>plain:hi</s>");
    let tools = vec![serde_json::json!({"type": "function", "function": {"name": "f"}})];
    let with_tools = t
        .render_chat(&ChatInputs {
            messages: &msgs,
            tools: Some(&tools),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(with_tools, "tools:1");
    // chat_template.jinja wins over tokenizer_config.json.
    std::fs::write(
        tmp.path().join("chat_template.jinja"),
        "jinja:{{ eos_token }}",
    )
    .unwrap();
    let t = ChatTemplate::from_model_dir(tmp.path()).unwrap().unwrap();
    assert_eq!(
        t.render_chat(&ChatInputs {
            messages: &msgs,
            ..Default::default()
        })
        .unwrap(),
        "jinja:</s>"
    );
    // A syntax error is a config error, not a panic.
    let e = ChatTemplate::new("{% if %}", None, None).unwrap_err();
    assert!(e.to_string().contains("chat_template"), "{e}");
}
