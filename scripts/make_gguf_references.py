#!/usr/bin/env python3
"""Reference token ids from llama.cpp for the GGUF tests (tests/gguf_models.rs).

Run once after scripts/build_llama_cpp.sh, scripts/fetch_models.sh and
scripts/convert_granite_gguf.py; it writes small JSON files under tests/fixtures/gguf/:

  <model>.json      greedy continuations (temperature 0, no EOS stop) of >= 64 tokens per
                    prompt; chat prompts are rendered with the GGUF's own chat template
                    (jinja2), text prompts get BOS as the vocabulary's add_bos flag says.
                    Also the top-1/top-2 logit gap at every step, for diagnosing divergences.
  tokenizer_<model>.json   llama.cpp's ids for a set of strings (special tokens parsed,
                    no BOS), to check our GGUF tokenizer against.

Numerics: the KV cache is F32 and flash attention is off, matching nanovllm (llama.cpp's
default F16 KV cache rounds keys/values; that is a cache setting, not the model). Use an AVX2
build of llama.cpp (no AVX-512): ggml's results differ in the last bits between its AVX2 and
AVX-512 builds, and nanovllm reproduces the AVX2 build's arithmetic (src/kernels/ggml_math.rs).
On an AVX-512 machine `scripts/build_llama_cpp.sh --avx2` builds one into build-avx2/:

    LLAMA_CPP_LIB_PATH=$LLAMA_CPP_HOME/build-avx2/bin \\
        python3 scripts/make_gguf_references.py [smollm2|gemma3|granite]...

The Granite files are random checkpoints made here, and the same script run on another machine
does not always give the same bytes (the BF16 file of 2026-11-23 and that of 2026-12-03 differ),
so the Granite references record the file's sha256 and the test skips a different file.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("LLAMA_CPP_HOME", Path.home() / ".cache/nanovllm/llama.cpp"))
sys.path.insert(0, str(HOME / "src"))
os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(HOME / "build/bin"))

import jinja2  # noqa: E402
import llama_cpp  # noqa: E402

OUT = ROOT / "tests/fixtures/gguf"
GGML_TYPE_F32 = 0

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one paragraph.",
    "List three uses of a paperclip.",
    "How do I reverse a list in Python?",
    "Tell me a short story about a robot who learns to paint.",
]
TEXT_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In machine learning, a neural network is",
]
TOKENIZER_STRINGS = [
    "Hello world",
    " Hello  world ",
    "The capital of France is Paris.",
    "I'm sure they'll say: \"it's fine\" -- or won't they?",
    "numbers: 1 12 123 1234 12345 3.14159 1,000,000",
    "héllo wörld, naïve café, Ελληνικά, русский, 日本語の文章, 中文句子",
    "emoji 🎉🚀 and symbols ©®™ ∑∫√",
    "def f(x):\n    return x ** 2\n\n\nprint(f(3))\t# tab",
    "   leading spaces and trailing   ",
    "\n\nnewlines\n\n\n\nmany\r\nwindows",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<start_of_turn>user\nHi<end_of_turn>\n",
    "UPPER lower MiXeD CamelCaseWord snake_case_word kebab-case-word",
    "a",
    "",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz qqqqqqqq",
]

MODELS = {
    "smollm2": {"file": "SmolLM2-135M-Instruct.Q4_1.gguf", "chat": True, "tokens": 64},
    "gemma3": {"file": "gemma-3-270m-q4_k_m.gguf", "chat": False, "tokens": 64},
}
GRANITE = {
    "granite_bf16": "granite-4.0-h-350m-bf16.gguf",
    "granite_q8_0": "granite-4.0-h-350m-q8_0.gguf",
}
GRANITE_PROMPTS = [
    [100, 2000, 3000, 400, 5000, 60, 700],
    [42, 1337, 31337, 9000, 12, 77777, 5, 100, 256, 99999, 4321],
    [100257, 15, 30000, 45000, 60000, 75000, 90000],
]


def load(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        str(path),
        n_ctx=1024,
        n_batch=512,
        n_threads=2,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        flash_attn=False,
        verbose=False,
    )


def greedy(llm: llama_cpp.Llama, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    llm.reset()
    llm.eval(prompt)
    vocab = llm.n_vocab()
    out, gaps = [], []
    for _ in range(n):
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,)).copy()
        top2 = np.argsort(logits)[-2:]
        nxt = int(top2[1])
        out.append(nxt)
        gaps.append(float(logits[top2[1]] - logits[top2[0]]))
        llm.eval([nxt])
    return out, gaps


def meta(llm: llama_cpp.Llama, key: str):
    return llm.metadata.get(key)


def render_chat(template: str, user: str, bos: str, eos: str) -> str:
    def raise_exception(msg):
        raise jinja2.TemplateError(msg)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=[{"role": "user", "content": user}],
        add_generation_prompt=True,
        bos_token=bos,
        eos_token=eos,
    )


def version() -> str:
    # ggml's arithmetic depends on the SIMD level it was built for; nanovllm's GGUF numerics
    # (kernels/ggml_math.rs) follow the AVX2 + FMA build, so record what this library has.
    info = llama_cpp.llama_print_system_info().decode()
    simd = "avx512" if "AVX512 = 1" in info else "avx2" if "AVX2 = 1" in info else "other"
    return f"llama-cpp-python {llama_cpp.__version__} (vendored llama.cpp, {simd} build)"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_model(name: str, spec: dict) -> None:
    path = ROOT / "models" / spec["file"]
    if not path.is_file():
        print(f"skip {name}: {path} missing (scripts/fetch_models.sh)")
        return
    llm = load(path)
    add_bos = meta(llm, "tokenizer.ggml.add_bos_token") == "true"
    cases = []
    prompts = CHAT_PROMPTS if spec["chat"] else TEXT_PROMPTS
    for p in prompts:
        if spec["chat"]:
            tmpl = meta(llm, "tokenizer.chat_template")
            bos = llm.detokenize([llm.token_bos()], special=True).decode()
            eos = llm.detokenize([llm.token_eos()], special=True).decode()
            text = render_chat(tmpl, p, bos, eos)
        else:
            text = p
        ids = llm.tokenize(text.encode(), add_bos=add_bos, special=True)
        out, gaps = greedy(llm, ids, spec["tokens"])
        cases.append({"prompt": p, "text": text, "prompt_ids": ids, "output_ids": out,
                      "top2_gaps": [round(g, 4) for g in gaps]})
        print(f"{name}: {p!r} -> {llm.detokenize(out).decode(errors='replace')!r}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(
        {"model": spec["file"], "chat": spec["chat"], "add_bos": add_bos,
         "llama_cpp": version(), "cases": cases}, indent=1) + "\n")
    toks = []
    for s in TOKENIZER_STRINGS:
        toks.append({"text": s, "ids": llm.tokenize(s.encode(), add_bos=False, special=True)})
    (OUT / f"tokenizer_{name}.json").write_text(json.dumps(
        {"model": spec["file"], "llama_cpp": version(), "cases": toks}, indent=1) + "\n")


def make_granite() -> None:
    for name, file in GRANITE.items():
        path = ROOT / "models" / file
        if not path.is_file():
            print(f"skip {name}: {path} missing (scripts/convert_granite_gguf.py)")
            continue
        llm = load(path)
        cases = []
        for ids in GRANITE_PROMPTS:
            out, gaps = greedy(llm, ids, 40)
            cases.append({"prompt_ids": ids, "output_ids": out,
                          "top2_gaps": [round(g, 4) for g in gaps]})
            print(f"{name}: {out[:12]}...")
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{name}.json").write_text(json.dumps(
            {"model": file, "sha256": sha256(path), "llama_cpp": version(), "cases": cases}, indent=1) + "\n")


def main() -> None:
    which = sys.argv[1:] or ["smollm2", "gemma3", "granite"]
    for w in which:
        if w == "granite":
            make_granite()
        else:
            make_model(w, MODELS[w])


if __name__ == "__main__":
    main()
