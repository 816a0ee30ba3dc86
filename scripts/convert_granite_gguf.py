#!/usr/bin/env python3
"""Converts the random full-size granite-4.0-h-350m checkpoint (scripts/make_full_size.py) to GGUF
with llama.cpp's own converter and quantizer (scripts/build_llama_cpp.sh builds them):

    models/granite-4.0-h-350m-bf16.gguf   convert_hf_to_gguf.py --outtype bf16
    models/granite-4.0-h-350m-q8_0.gguf   llama-quantize (from the BF16 file) Q8_0

The home-made tokenizer is unknown to the converter's pre-tokenizer hash table; its regex is
the cl100k one that real Granite 4.0 ships, so it is converted as `dbrx` (what llama.cpp
uses for real Granite 4.0 files). Idempotent: existing outputs are kept.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_HOME = Path(os.environ.get("LLAMA_CPP_HOME", Path.home() / ".cache/nanovllm/llama.cpp"))
LLAMA_SRC = LLAMA_HOME / "src/vendor/llama.cpp"
QUANTIZE = LLAMA_HOME / "build/bin/llama-quantize"


def convert(model_dir: Path, out: Path, outtype: str) -> None:
    code = f"""
import sys
sys.path.insert(0, {str(LLAMA_SRC / 'gguf-py')!r})
sys.path.insert(0, {str(LLAMA_SRC)!r})
sys.argv = ["convert_hf_to_gguf.py", {str(model_dir)!r}, "--outfile", {str(out)!r}, "--outtype", {outtype!r}]
import convert_hf_to_gguf as conv
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "dbrx"
conv.main()
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "granite-4.0-h-350m"
    model_dir = ROOT / "models" / name
    if not (model_dir / "config.json").is_file():
        sys.exit(f"{model_dir} missing: run python3 scripts/make_full_size.py --model {name}")
    bf16 = ROOT / "models" / f"{name}-bf16.gguf"
    q8 = ROOT / "models" / f"{name}-q8_0.gguf"
    if not bf16.is_file():
        convert(model_dir, bf16, "bf16")
    if not q8.is_file():
        subprocess.run([str(QUANTIZE), str(bf16), str(q8), "Q8_0"], check=True,
                       env={**os.environ, "LD_LIBRARY_PATH": str(QUANTIZE.parent)})
    print(f"have {bf16.relative_to(ROOT)} and {q8.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
