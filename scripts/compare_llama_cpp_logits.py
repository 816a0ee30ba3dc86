#!/usr/bin/env python3
"""Row-by-row logit comparison between llama.cpp and nanovllm on one GGUF file (a diagnosis
tool for numerics; run by hand after scripts/build_llama_cpp.sh).

For each reference case of tests/fixtures/gguf/<name>.json it feeds the prompt as one batch and
then llama.cpp's own greedy continuation one token at a time, in both engines, and prints per
row max|Δ| of the logits, whether the argmax agrees, and the llama.cpp top-2 gap.

    python3 scripts/compare_llama_cpp_logits.py smollm2 [--cases 0,1] [--tokens 64]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("LLAMA_CPP_HOME", Path.home() / ".cache/nanovllm/llama.cpp"))
sys.path.insert(0, str(HOME / "src"))
os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(HOME / "build/bin"))

import llama_cpp  # noqa: E402

GGML_TYPE_F32 = 0
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def llama_rows(path: Path, prompt: list[int], cont: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(str(path), n_ctx=1024, n_batch=512, n_threads=2,
                          type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False,
                          logits_all=True, verbose=False)
    llm.reset()
    llm.eval(prompt)
    for t in cont:
        llm.eval([t])
    return np.array(llm.scores[: len(prompt) + len(cont)], dtype=np.float32)


def ours(path: Path, prompt: list[int], cont: list[int], vocab: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".f32") as f:
        exe = TARGET / "release/examples/dump_logits"
        subprocess.run([str(exe), str(path), f.name, ",".join(map(str, prompt)),
                        ",".join(map(str, cont))], check=True)
        return np.fromfile(f.name, dtype="<f4").reshape(-1, vocab)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--cases", default="0")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    fx = json.loads((ROOT / "tests/fixtures/gguf" / f"{a.name}.json").read_text())
    path = ROOT / "models" / fx["model"]
    total, agree = 0, 0
    for ci in map(int, a.cases.split(",")):
        case = fx["cases"][ci]
        prompt, cont = case["prompt_ids"], case["output_ids"][: a.tokens]
        ref = llama_rows(path, prompt, cont)
        got = ours(path, prompt, cont, ref.shape[1])
        assert got.shape == ref.shape, (got.shape, ref.shape)
        print(f"case {ci}: {len(prompt)} prompt + {len(cont)} decoded rows")
        for r in range(ref.shape[0]):
            d = float(np.abs(ref[r] - got[r]).max())
            top = np.argsort(ref[r])[-2:]
            gap = float(ref[r][top[1]] - ref[r][top[0]])
            same = int(np.argmax(got[r])) == int(top[1])
            if r >= len(prompt) - 1:
                total += 1
                agree += same
            if not a.quiet or not same:
                kind = "prefill" if r < len(prompt) else "decode "
                print(f"  row {r:4d} {kind} max|d| {d:.6f} top1 {'==' if same else '!='} gap {gap:.4f}")
    print(f"next-token rows: argmax agrees {agree}/{total}")


if __name__ == "__main__":
    main()
