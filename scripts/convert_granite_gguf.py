#!/usr/bin/env python3
"""Converts a random full-size Granite 4.0-H checkpoint (scripts/make_full_size.py) to GGUF with
llama.cpp's own converter and quantizer (scripts/build_llama_cpp.sh builds them):

    python3 scripts/convert_granite_gguf.py [MODEL] [--types bf16,q8_0,q4_k_m]

    models/MODEL-bf16.gguf     convert_hf_to_gguf.py --outtype bf16
    models/MODEL-q8_0.gguf     llama-quantize (from the BF16 file) Q8_0
    models/MODEL-q4_k_m.gguf   llama-quantize (from the BF16 file) Q4_K_M

MODEL defaults to granite-4.0-h-350m (also: granite-4.0-h-1b); --types defaults to bf16,q8_0.
The home-made tokenizer is unknown to the converter's pre-tokenizer hash table; its regex is
the cl100k one that real Granite 4.0 ships, so it is converted as `dbrx` (what llama.cpp
uses for real Granite 4.0 files). Idempotent: existing outputs are kept.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_HOME = Path(os.environ.get("LLAMA_CPP_HOME", Path.home() / ".cache/nanovllm/llama.cpp"))
LLAMA_SRC = LLAMA_HOME / "src/vendor/llama.cpp"
QUANTIZE = LLAMA_HOME / "build/bin/llama-quantize"
# File suffix -> llama-quantize type name.
QUANT_TYPES = {"q8_0": "Q8_0", "q4_k_m": "Q4_K_M"}


def convert(model_dir: Path, out: Path, outtype: str) -> None:
    # Written under a temporary name so an interrupted run never leaves a truncated .gguf.
    tmp = out.with_suffix(".tmp")
    code = f"""
import sys
sys.path.insert(0, {str(LLAMA_SRC / 'gguf-py')!r})
sys.path.insert(0, {str(LLAMA_SRC)!r})
sys.argv = ["convert_hf_to_gguf.py", {str(model_dir)!r}, "--outfile", {str(tmp)!r}, "--outtype", {outtype!r}]
import convert_hf_to_gguf as conv
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "dbrx"
conv.main()
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    tmp.rename(out)


def quantize(src: Path, out: Path, qtype: str) -> None:
    tmp = out.with_suffix(".tmp")
    subprocess.run([str(QUANTIZE), str(src), str(tmp), qtype], check=True,
                   env={**os.environ, "LD_LIBRARY_PATH": str(QUANTIZE.parent)})
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="granite-4.0-h-350m")
    ap.add_argument("--types", default="bf16,q8_0",
                    help="comma-separated subset of bf16," + ",".join(QUANT_TYPES))
    args = ap.parse_args()
    types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in types if t != "bf16" and t not in QUANT_TYPES]
    if unknown:
        sys.exit(f"unknown --types {unknown}; choose from bf16,{','.join(QUANT_TYPES)}")
    model_dir = ROOT / "models" / args.model
    if not (model_dir / "config.json").is_file():
        sys.exit(f"{model_dir} missing: run python3 scripts/make_full_size.py --model {args.model}")
    bf16 = ROOT / "models" / f"{args.model}-bf16.gguf"
    # Quantized files are made from the BF16 file, so it is needed whatever was asked.
    if not bf16.is_file():
        convert(model_dir, bf16, "bf16")
    made = [bf16]
    for t in types:
        if t in QUANT_TYPES:
            out = ROOT / "models" / f"{args.model}-{t}.gguf"
            if not out.is_file():
                quantize(bf16, out, QUANT_TYPES[t])
            made.append(out)
    print("have " + ", ".join(str(p.relative_to(ROOT)) for p in made))


if __name__ == "__main__":
    main()
