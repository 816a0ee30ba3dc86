#!/usr/bin/env bash
# Side-by-side CPU benchmark of nanovllm against llama.cpp on the same GGUF files (issue 7).
# From a fresh clone it builds what is missing, then prints one table (bench/compare.py):
#   1. llama.cpp (CPU, native) via scripts/build_llama_cpp.sh, version recorded in the table;
#   2. full-size random-weight Granite 4.0-H checkpoints via scripts/make_full_size.py
#      (installs torch + transformers from PyPI if missing), converted with llama.cpp's own
#      converter / quantizer via scripts/convert_granite_gguf.py;
#   3. nanovllm (release) and the memory-bandwidth probe (examples/membw.rs);
#   4. interleaved runs of llama-bench / llama-batched-bench / nanovllm bench, median of --reps.
#
#   bench/compare.sh [--models 350m,1b] [--formats bf16,q8_0,q4_k_m] [--reps 3] [--threads 2]
#                    [--no-batched] [--out DIR]
#
# Defaults: --models 350m --formats bf16,q8_0 --reps 3 --threads 2 (a run of about 10 minutes
# on 2 cores). Models are granite-4.0-h-350m and granite-4.0-h-1b (short names 350m, 1b).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

MODELS=350m
FORMATS=bf16,q8_0
REPS=3
THREADS=2
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --models) MODELS="$2"; shift 2 ;;
        --formats) FORMATS="$2"; shift 2 ;;
        --reps) REPS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --no-batched) EXTRA+=(--no-batched); shift ;;
        --out) EXTRA+=(--out "$2"); shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
for f in ${FORMATS//,/ }; do
    case "$f" in bf16|q8_0|q4_k_m) ;; *) echo "unknown format $f (bf16, q8_0, q4_k_m)" >&2; exit 2 ;; esac
done

# 1. llama.cpp
LLAMA_HOME="${LLAMA_CPP_HOME:-$HOME/.cache/nanovllm/llama.cpp}"
export LLAMA_CPP_HOME="$LLAMA_HOME"
scripts/build_llama_cpp.sh

# 2. models
FULL=()
for m in ${MODELS//,/ }; do
    case "$m" in granite-4.0-h-*) FULL+=("$m") ;; *) FULL+=("granite-4.0-h-$m") ;; esac
done
for m in "${FULL[@]}"; do
    if [ ! -f "models/$m/config.json" ]; then
        python3 -c 'import torch, transformers, safetensors, tokenizers' 2>/dev/null ||
            python3 -m pip install -q torch "transformers==5.23.0" safetensors tokenizers numpy
        python3 scripts/make_full_size.py --model "$m"
    fi
    python3 scripts/convert_granite_gguf.py "$m" --types "$FORMATS"
done

# 3. nanovllm
cargo build --release --bin nanovllm --example membw
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

# 4. runs
MODELS_CSV="$(IFS=,; echo "${FULL[*]}")"
exec python3 bench/compare.py --nanovllm "$TARGET/release/nanovllm" \
    --membw "$TARGET/release/examples/membw" --models "$MODELS_CSV" --formats "$FORMATS" \
    --reps "$REPS" --threads "$THREADS" "${EXTRA[@]}"
