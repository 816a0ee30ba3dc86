#!/usr/bin/env python3
"""Drives `nanovllm serve` with the official `openai` Python package, unchanged: models,
completions and chat (plain and streaming), tool calls, vLLM's extra parameters, and the error
cases (400 / 401 / 404 / 503). The server runs on an ephemeral loopback port with a tiny
fixture model; it is stopped with SIGTERM at the end and must exit 0.

Usage: python3 tests/openai_client/test_openai.py [--bin PATH/TO/nanovllm]
(default: $CARGO_TARGET_DIR or target, then release/nanovllm). Prints "N passed, N failed" and
exits non-zero on any failure.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
KEY = "test-key"
TOOL_CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOL_TOKEN = 296
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def model_dir(tmp):
    """The bf16 sharded hybrid fixture plus the small tokenizer with one added token that spells
    a whole Granite tool call (so `logit_bias` can force a tool call)."""
    src = os.path.join(FIXTURES, "granite_hybrid", "bf16_sharded")
    for name in os.listdir(src):
        if name != "reference.safetensors":
            shutil.copy(os.path.join(src, name), tmp)
    with open(os.path.join(FIXTURES, "tokenizer", "tokenizer.json")) as f:
        tok = json.load(f)
    tok["added_tokens"].append(
        {"id": TOOL_TOKEN, "content": TOOL_CALL_TEXT, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": False}
    )
    with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
        json.dump(tok, f)


class Server:
    def __init__(self, binary, model, *extra):
        args = [binary, "serve", "--model", model, "--port", "0", "--served-model-name", "tiny",
                "--chat-template", os.path.join(FIXTURES, "chat_templates", "granite4.jinja"),
                "--max-model-len", "2048", "--kv-cache-mib", "16", "--prefix-cache-mib", "4",
                "--threads", "1", *extra]
        env = {k: v for k, v in os.environ.items() if k != "NANOVLLM_API_KEY"}
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
        self.log = []
        self.addr = None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"http://(\S+)", line)
                if m and not self.addr:
                    self.addr = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60) or not self.addr:
            raise RuntimeError("server did not start: " + "".join(self.log))
        self.base = f"http://{self.addr}"

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=60)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        assert code == 0, f"exit code {code}: {''.join(self.log)}"


def http_json(url, body=None, key=KEY):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def metrics(server):
    with urllib.request.urlopen(server.base + "/metrics", timeout=30) as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out


def expect_error(cls, status, fn, *snippets):
    try:
        fn()
    except cls as e:
        assert e.status_code == status, (e.status_code, e)
        msg = str(e)
        for s in snippets:
            assert s in msg, f"{s!r} not in {msg!r}"
        return e
    raise AssertionError(f"expected {cls.__name__}")


# --------------------------------------------------------------------------------------------


def test_models(s):
    c = s.client()
    models = c.models.list()
    assert [m.id for m in models.data] == ["tiny"], models
    assert c.models.retrieve("tiny").id == "tiny"


def test_completions(s):
    c = s.client()
    r = c.completions.create(model="tiny", prompt="Hello world", max_tokens=6, temperature=0,
                             n=2, logprobs=2, echo=True, extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert len(r.choices) == 2
    assert r.choices[0].text == r.choices[1].text
    assert r.choices[0].text.startswith("Hello world")
    assert r.choices[0].finish_reason == "length"
    assert len(r.choices[0].logprobs.tokens) == 10
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 12
    # Token-id prompt, stop strings, seed, penalties and vLLM extras.
    r = c.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=5, seed=3, top_p=0.9,
                             stop=["zz"], presence_penalty=0.1, frequency_penalty=0.1,
                             logit_bias={"10": -100},
                             extra_body={"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.05,
                                         "min_tokens": 2})
    assert r.usage.completion_tokens >= 2


def test_completions_streaming(s):
    c = s.client()
    full = c.completions.create(model="tiny", prompt="The capital of", max_tokens=10,
                                temperature=0, extra_body={"ignore_eos": True})
    chunks = list(c.completions.create(model="tiny", prompt="The capital of", max_tokens=10,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == full.choices[0].text, (text, full.choices[0].text)
    assert chunks[-1].usage.completion_tokens == 10
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"


def test_chat(s):
    c = s.client()
    r = c.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
    )
    assert r.object == "chat.completion"
    m = r.choices[0].message
    assert m.role == "assistant" and isinstance(m.content, str)
    assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    stream = c.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi"}],
        max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == m.content, (text, m.content)
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens


def test_chat_prefix_cache_across_turns(s):
    c = s.client()
    messages = [{"role": "user", "content": "Tell me a story."}]
    prev = 0
    for turn in range(3):
        r = c.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
        cached = r.usage.prompt_tokens_details.cached_tokens
        if turn:
            assert cached + 16 >= prev, (cached, prev)
        prev = r.usage.prompt_tokens
        messages += [{"role": "assistant", "content": f"Once upon a time {turn}."},
                     {"role": "user", "content": "And then?"}]


def test_tool_calls(s):
    c = s.client()
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Weather in Paris?"}],
              tools=TOOLS, max_tokens=1, logit_bias={str(TOOL_TOKEN): 100})
    r = c.chat.completions.create(**kw)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls", ch
    call = ch.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # Streaming: the client sees a tool_calls delta.
    chunks = list(c.chat.completions.create(stream=True, **kw))
    deltas = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].function.name == "get_weather", chunks
    assert json.loads(deltas[0].function.arguments) == {"city": "Paris"}
    # tool_choice none: no parsing.
    r = c.chat.completions.create(tool_choice="none", **kw)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == TOOL_CALL_TEXT
    # A named function comes back as a call to it.
    r = c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS,
        max_tokens=4, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    # Sending the call and its result back renders and runs.
    r = c.chat.completions.create(model="tiny", tools=TOOLS, max_tokens=2, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ])
    assert r.choices[0].finish_reason in ("length", "stop")


def test_tokenize_detokenize_health(s):
    t = http_json(s.base + "/tokenize", {"model": "tiny", "prompt": "Hello world"})
    assert t["count"] == 4
    d = http_json(s.base + "/detokenize", {"model": "tiny", "tokens": t["tokens"]})
    assert d["prompt"] == "Hello world"
    with urllib.request.urlopen(s.base + "/health", timeout=10) as r:
        assert r.status == 200


def test_errors(s):
    c = s.client()
    msgs = [{"role": "user", "content": "hi"}]
    e = expect_error(openai.BadRequestError, 400,
                     lambda: c.completions.create(model="tiny", prompt="x", top_p=3), "top_p")
    assert e.body["param"] == "top_p", e.body
    expect_error(openai.BadRequestError, 400,
                 lambda: c.completions.create(model="tiny", prompt="x",
                                              extra_body={"temperature": "hot"}), "temperature")
    expect_error(openai.BadRequestError, 400,
                 lambda: c.completions.create(model="tiny", prompt=[5] * 2100), "2048", "2100")
    expect_error(openai.BadRequestError, 400,
                 lambda: c.chat.completions.create(model="tiny", messages=msgs,
                                                   response_format={"type": "json_object"}),
                 "json_object")
    expect_error(openai.BadRequestError, 400,
                 lambda: c.chat.completions.create(
                     model="tiny", messages=msgs, tools=TOOLS,
                     tool_choice={"type": "function", "function": {"name": "nope"}}), "nope")
    expect_error(openai.NotFoundError, 404,
                 lambda: c.completions.create(model="gpt-4", prompt="x"), "gpt-4")
    expect_error(openai.NotFoundError, 404,
                 lambda: c.chat.completions.create(model="gpt-4", messages=msgs), "gpt-4")
    expect_error(openai.AuthenticationError, 401,
                 lambda: s.client("wrong").models.list(), "incorrect API key")


def test_queue_full(binary, model):
    s = Server(binary, model, "--max-queue", "1", "--api-key", KEY)
    try:
        c = s.client()
        held = c.completions.create(model="tiny", prompt="x", max_tokens=1500, stream=True,
                                    extra_body={"ignore_eos": True})
        next(iter(held))
        e = expect_error(openai.InternalServerError, 503,
                         lambda: c.completions.create(model="tiny", prompt="y", max_tokens=2),
                         "queue is full")
        assert e.response.headers.get("retry-after") == "1"
        held.close()
    finally:
        s.stop()


def main():
    ap = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap.add_argument("--bin", default=os.path.join(target, "release", "nanovllm"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    passed = failed = 0
    try:
        model_dir(tmp)
        s = Server(args.bin, tmp, "--api-key", KEY)
        tests = [test_models, test_completions, test_completions_streaming, test_chat,
                 test_chat_prefix_cache_across_turns, test_tool_calls,
                 test_tokenize_detokenize_health, test_errors]
        try:
            for t in tests:
                try:
                    t(s)
                    passed += 1
                    print(f"ok {t.__name__}")
                except Exception:
                    failed += 1
                    print(f"FAILED {t.__name__}\n{traceback.format_exc()}")
            # The whole run leaves nothing in the cache pools.
            deadline = time.time() + 10
            while True:
                m = metrics(s)
                if m["nanovllm_kv_blocks_in_use"] == 0 and m["nanovllm_state_slots_in_use"] == 0:
                    break
                assert time.time() < deadline, m
                time.sleep(0.05)
        finally:
            s.stop()
        for t in [test_queue_full]:
            try:
                t(args.bin, tmp)
                passed += 1
                print(f"ok {t.__name__}")
            except Exception:
                failed += 1
                print(f"FAILED {t.__name__}\n{traceback.format_exc()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"openai: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
