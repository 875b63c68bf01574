"""The bundled model exported with the README's command, once per test session, for the
tests that run a folder in another consumer (onnxruntime-genai, transformers.js)."""
from __future__ import annotations

import re
from pathlib import Path

from cli_helpers import run_cli

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
# two prompts of equal token length (7): the plain batch case of every consumer
PROMPTS = ("def read_file(path):", "class Point(object):")
NEW_TOKENS = 32

_folders: dict[str, Path] = {}


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


def bos_folder(tmp_path_factory) -> Path:
    """A tiny random model whose tokenizer adds BOS (tiny_tokenizers' ``gpt2-bos``: a
    post-processor that prepends ``<s>``), exported with --target transformers.js (a folder
    that every consumer runs). The bundled model's tokenizer adds no BOS."""
    if "bos" not in _folders:
        import shutil

        from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
        from lmexport.modeling.tiny import make_model_folder
        from lmexport.modeling.tiny_tokenizers import write_tokenizer_folder
        from lmexport.runtime.tokenizer import TextTokenizer

        root = tmp_path_factory.mktemp("bos")
        tokenizer_dir = write_tokenizer_folder("gpt2-bos", root / "tokenizer")
        vocab = TextTokenizer.from_folder(tokenizer_dir).vocab_size
        model = make_model_folder(root / "model", seed=3, vocab_size=vocab)
        for path in tokenizer_dir.iterdir():
            shutil.copy2(path, model / path.name)
        export_onnx(model, root / "onnx", OnnxExportOptions(target="transformers.js"))
        _folders["bos"] = root / "onnx"
    return _folders["bos"]


def until_eos(tokens: list[int], eos_ids) -> list[int]:
    """The tokens before the first EOS (lmexport generate drops EOS and stops there)."""
    ends = [i for i, t in enumerate(tokens) if t in set(eos_ids)]
    return tokens[:ends[0]] if ends else tokens
