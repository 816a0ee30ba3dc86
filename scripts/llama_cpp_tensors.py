#!/usr/bin/env python3
"""Dumps llama.cpp's intermediate tensors (ggml eval callback) for a token sequence, to find
where nanovllm's arithmetic departs from llama.cpp's (a diagnosis tool, run by hand after
scripts/build_llama_cpp.sh). Same context settings as scripts/make_gguf_references.py.

    python3 scripts/llama_cpp_tensors.py MODEL.gguf OUT.npz IDS [--steps N] [--layer L]

IDS (comma-separated) are decoded as one batch; with --steps N the last N ids are then fed
one at a time instead. Every F32 tensor of layer L (names ending in `-L`) plus the logits is
saved as `<step>/<name>#<k>` (k counts repeats of a name), in ggml's [ne3, ne2, ne1, ne0] order.
"""
import argparse
import ctypes
import os
import sys
from pathlib import Path

import numpy as np

HOME = Path(os.environ.get("LLAMA_CPP_HOME", Path.home() / ".cache/nanovllm/llama.cpp"))
sys.path.insert(0, str(HOME / "src"))
os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(HOME / "build/bin"))

import llama_cpp  # noqa: E402


class GgmlTensor(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


GGML_TYPE_F32 = 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("ids")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--layer", type=int, default=0)
    a = ap.parse_args()
    ids = [int(t) for t in a.ids.split(",") if t.strip()]
    suffix = f"-{a.layer}"
    saved: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    step = [0]

    def callback(t_ptr, ask, _user):
        t = ctypes.cast(t_ptr, ctypes.POINTER(GgmlTensor)).contents
        name = t.name.decode(errors="replace")
        if not (name.endswith(suffix) or name == "result_output"):
            return False if ask else True
        if ask:
            return t.type == GGML_TYPE_F32
        ne = [int(x) for x in t.ne]
        nb = [int(x) for x in t.nb]
        span = sum((n - 1) * s for n, s in zip(ne, nb)) + 4
        raw = (ctypes.c_char * span).from_address(t.data)
        base = np.frombuffer(raw, dtype=np.uint8)
        arr = np.lib.stride_tricks.as_strided(
            base.view(np.float32) if all(s % 4 == 0 for s in nb) else base,
            shape=ne[::-1], strides=nb[::-1]).copy()
        key = f"{step[0]}/{name}"
        k = counts.get(key, 0)
        counts[key] = k + 1
        saved[f"{key}#{k}"] = arr
        return True

    cb = llama_cpp.ggml_backend_sched_eval_callback(callback)
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(a.model.encode(), mparams)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = 1024
    cparams.n_batch = 512
    cparams.n_ubatch = 512
    cparams.n_threads = 2
    cparams.n_threads_batch = 2
    cparams.type_k = GGML_TYPE_F32
    cparams.type_v = GGML_TYPE_F32
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cparams.cb_eval = cb
    cparams.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    batches = [ids[: len(ids) - a.steps]] + [[t] for t in ids[len(ids) - a.steps:]]
    for b in batches:
        arr = (llama_cpp.llama_token * len(b))(*b)
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(b))) != 0:
            raise SystemExit("llama_decode failed")
        step[0] += 1
    np.savez(a.out, **saved)
    for k, v in saved.items():
        print(k, v.shape)


if __name__ == "__main__":
    main()
