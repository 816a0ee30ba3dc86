#!/usr/bin/env python3
"""Tiny GGUF fixtures for the `granite` (Granite 3 dense) and `mamba2` GGUF loaders, made from
committed safetensors fixtures by llama.cpp's own converter (scripts/build_llama_cpp.sh fetches
it), so that `cargo test` checks those GGUF tensor maps and metadata against the fixtures'
transformers reference logits. Run by hand, never in CI; the outputs (a few hundred KiB) are
committed next to the fixture they come from, as `model.gguf`:

    python3 scripts/make_gguf_fixtures.py

The fixtures carry no tokenizer; the converter is given its built-in GPT-NeoX vocabulary cut to
the fixture's vocab_size (what it does for a Mamba2 checkpoint without tokenizer files).
Outtype F32: the weights stay exactly the fixture's.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_HOME = Path(os.environ.get("LLAMA_CPP_HOME", Path.home() / ".cache/nanovllm/llama.cpp"))
LLAMA_SRC = LLAMA_HOME / "src/vendor/llama.cpp"
FIXTURES = ["granite/dense_multipliers", "mamba2/groups_chunked", "mamba2/tied_bias"]


def convert(src: Path, out: Path) -> None:
    code = f"""
import sys
sys.path.insert(0, {str(LLAMA_SRC / 'gguf-py')!r})
sys.path.insert(0, {str(LLAMA_SRC)!r})
sys.argv = ["convert_hf_to_gguf.py", {str(src)!r}, "--outfile", {str(out)!r}, "--outtype", "f32"]
import convert_hf_to_gguf as conv
from conversion import base, granite, llama, mamba  # noqa: F401 (their set_vocab is replaced below)
def builtin_vocab(self):
    self._set_vocab_builtin("gpt-neox", self.hparams["vocab_size"])
todo = [base.TextModel]
while todo:
    cls = todo.pop()
    if "set_vocab" in cls.__dict__:
        cls.set_vocab = builtin_vocab
    todo.extend(cls.__subclasses__())
conv.main()
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def main() -> None:
    if not (LLAMA_SRC / "convert_hf_to_gguf.py").is_file():
        sys.exit(f"{LLAMA_SRC} is missing: run scripts/build_llama_cpp.sh first")
    for name in FIXTURES:
        d = ROOT / "tests/fixtures" / name
        with tempfile.TemporaryDirectory() as tmp:
            # The converter reads every file of the directory; give it the checkpoint only.
            for f in ("config.json", "model.safetensors"):
                shutil.copy(d / f, Path(tmp) / f)
            out = Path(tmp) / "model.gguf"
            convert(Path(tmp), out)
            shutil.copy(out, d / "model.gguf")
        print(f"wrote {d / 'model.gguf'} ({(d / 'model.gguf').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
