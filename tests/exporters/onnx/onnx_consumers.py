"""The bundled model exported with the README's command, once per test session, for the
tests that run a folder in another consumer (onnxruntime-genai, transformers.js)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BUNDLED = ROOT / "examples" / "liquid-metal-tiny"
# `lmexport onnx` options per folder: fused and plain graphs, fp32 and int4, both targets
VARIANTS = {
    "fp32": (),
    "int4": ("--quantize", "int4"),
    "plain": ("--no-fused-ops",),
    "tjs-fp32": ("--target", "transformers.js"),
    "tjs-int4": ("--target", "transformers.js", "--quantize", "int4"),
}
# two prompts of equal token length (8 with BOS): genai does not mask left padding
PROMPTS = ("def read_file(path):", "class Point(object):")
NEW_TOKENS = 32

_folders: dict[str, Path] = {}


def run_cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmexport.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ}, timeout=600, **kw)


def exported(name: str, tmp_path_factory) -> Path:
    """The bundled model exported as VARIANTS[name] (validated against PyTorch, as by default)."""
    if name not in _folders:
        out = tmp_path_factory.mktemp("consumers") / name
        done = run_cli("onnx", BUNDLED, "-o", out, *VARIANTS[name])
        assert done.returncode == 0, done.stdout + done.stderr
        _folders[name] = out
    return _folders[name]


def lmexport_tokens(folder: Path, prompts=PROMPTS, new_tokens: int = NEW_TOKENS) -> list[list[int]]:
    """Greedy new tokens from lmexport's runtime (the Generator `lmexport generate` runs)."""
    from lmexport.runtime import Generator

    return [r.token_ids for r in Generator.from_folder(folder).generate(list(prompts), max_new_tokens=new_tokens)]


DOCS = ROOT / "docs" / "runtime.md"
# what the examples in docs/runtime.md generate: their text is compared with `lmexport generate`'s
DOC_PROMPT, DOC_NEW_TOKENS = "def read_file(path):", 32


def doc_example(name: str) -> str:
    """The code block right after ``<!-- example: NAME -->`` in docs/runtime.md."""
    text = DOCS.read_text(encoding="utf-8")
    marker = f"<!-- example: {name} -->"
    assert text.count(marker) == 1, marker
    block = re.match(r"\s*```\w+\n(.*?)```", text.split(marker, 1)[1], re.S)
    assert block, f"no code block after {marker}"
    code = block.group(1)
    assert repr(DOC_PROMPT)[1:-1] in code and str(DOC_NEW_TOKENS) in code
    return code


def lmexport_generate_text(cwd: Path, folder: str) -> str:
    """What `lmexport generate FOLDER --prompt DOC_PROMPT` prints (stdout)."""
    done = run_cli("generate", folder, "--prompt", DOC_PROMPT, "--max-new-tokens", DOC_NEW_TOKENS, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout
