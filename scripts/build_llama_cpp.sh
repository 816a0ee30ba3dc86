#!/usr/bin/env bash
# Builds llama.cpp (CPU only) from the llama-cpp-python sdist on PyPI, for making reference
# fixtures; nothing here is needed to build or test nanovllm. Idempotent.
#
#   scripts/build_llama_cpp.sh            # -> $LLAMA_CPP_HOME (default ~/.cache/nanovllm/llama.cpp)
#   scripts/build_llama_cpp.sh --avx2     # also build-avx2/: libllama without AVX-512, for the
#                                         # reference fixtures (scripts/make_gguf_references.py)
#
# Afterwards:
#   $LLAMA_CPP_HOME/src/vendor/llama.cpp/convert_hf_to_gguf.py   the converter
#   $LLAMA_CPP_HOME/build/bin/llama-quantize                     the quantizer
#   $LLAMA_CPP_HOME/build/bin/libllama.so                        for the python bindings:
#   PYTHONPATH=$LLAMA_CPP_HOME/src LLAMA_CPP_LIB_PATH=$LLAMA_CPP_HOME/build/bin python3 -c 'import llama_cpp'
# llama.cpp code and binaries stay outside the repository.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
HOME_DIR="${LLAMA_CPP_HOME:-$HOME/.cache/nanovllm/llama.cpp}"
mkdir -p "$HOME_DIR"
cd "$HOME_DIR"

if [ ! -f "src/vendor/llama.cpp/CMakeLists.txt" ]; then
    # The sdist's metadata step needs its build backend; install it as wheels rather than
    # letting pip build cmake from source in an isolated environment.
    python3 -m pip install -q scikit-build-core cmake ninja
    rm -rf dl && mkdir dl
    python3 -m pip download --no-binary llama-cpp-python --no-deps --no-build-isolation \
        -d dl "llama-cpp-python==$VERSION"
    rm -rf src && mkdir src
    tar xzf dl/llama_cpp_python-"$VERSION".tar.gz -C src --strip-components=1
fi
# The python bindings import these; install them as wheels.
python3 -m pip install -q numpy typing_extensions diskcache jinja2 sentencepiece "protobuf<6" 2>/dev/null || true

if [ ! -x build/bin/llama-quantize ] || [ ! -x build/bin/llama-bench ] || [ ! -x build/bin/llama-batched-bench ] || [ ! -f build/bin/libllama.so ]; then
    command -v cmake >/dev/null || python3 -m pip install -q cmake ninja
    cmake -S src/vendor/llama.cpp -B build -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_OPENSSL=OFF
    cmake --build build -j "$(nproc)" --target llama llama-quantize llama-bench llama-batched-bench
fi
echo "llama.cpp ready in $HOME_DIR ($(cd src/vendor/llama.cpp && git log -1 --format=%h 2>/dev/null || echo "sdist $VERSION"))"

if [ "${1:-}" = "--avx2" ] && [ ! -f build-avx2/bin/libllama.so ]; then
    # nanovllm's GGUF numerics follow ggml's AVX2 + FMA kernels, whatever CPU this is.
    cmake -S src/vendor/llama.cpp -B build-avx2 -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
        -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DLLAMA_CURL=OFF \
        -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_OPENSSL=OFF
    cmake --build build-avx2 -j "$(nproc)" --target llama
    echo "AVX2 llama.cpp library in $HOME_DIR/build-avx2/bin"
fi
