#!/usr/bin/env python3
"""Renders the chat-template fixtures with transformers' `apply_chat_template` and writes the
expected prompts that `tests/chat_templates.rs` compares nanovllm's minijinja rendering with.

Inputs: tests/fixtures/chat_templates/cases.json (conversations, tools, documents, extra
template variables) and the *.jinja templates beside it. Output:
tests/fixtures/chat_templates/expected.json, {case name: rendered text} or
{case name: {"error": message}} when the template raises.

Run: python3 scripts/render_chat_templates.py   (transformers 5.23.0 was used for the committed
file; the tokenizer is the small test tokenizer, only its special tokens matter here).
"""

import json
import os

import transformers
from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = os.path.join(ROOT, "tests", "fixtures", "chat_templates")


def main():
    with open(os.path.join(DIR, "cases.json")) as f:
        spec = json.load(f)
    out = {}
    for case in spec["cases"]:
        with open(os.path.join(DIR, case["template"])) as f:
            template = f.read()
        tok = PreTrainedTokenizerFast(
            tokenizer_file=os.path.join(ROOT, "tests", "fixtures", "tokenizer", "tokenizer.json"),
            bos_token=case["bos_token"],
            eos_token=case["eos_token"],
        )
        tok.chat_template = template
        try:
            text = tok.apply_chat_template(
                case["messages"],
                tools=spec["tools"] if case.get("use_tools") else None,
                documents=case.get("documents"),
                add_generation_prompt=case["add_generation_prompt"],
                tokenize=False,
                **case.get("kwargs", {}),
            )
            out[case["name"]] = text
        except Exception as e:  # the template's raise_exception
            out[case["name"]] = {"error": str(e)}
    with open(os.path.join(DIR, "expected.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"transformers {transformers.__version__}: wrote {len(out)} cases")


if __name__ == "__main__":
    main()
