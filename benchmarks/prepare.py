"""Everything the benchmark rows run on, built once and cached under ``benchmarks/.work/<shape>/``.

* ``llama/``: a random Hugging Face Llama of the chosen shape, written by
  transformers (``save_pretrained``), with the small lmexport tokenizer (the GGUF
  exporter pads its vocabulary to the embedding; prompts are token ids anyway);
* ``liquid/``: that Llama converted by ``lmexport convert`` (modules near identity);
* ``onnx-fp32/``, ``onnx-int8/``, ``onnx-int4/`` (and ``onnx-fp16/``): ``lmexport onnx``;
  ``onnx-fp32-plain/``, ``onnx-int4-plain/``: the same with ``--no-fused-ops --opset 18``
  (the graph before the fused ops: the "before" rows of RESULTS.md); ``onnx-int4-b128/``:
  int4 with blocks of 128 weights per scale instead of 32; ``onnx-int4-nopack/``: int4 with
  one MatMul per weight (``--no-pack-matmuls``, the graph before q|k|v and gate|up were packed);
  ``onnx-int4-rtn/``: every weight at 4 bits, round-to-nearest (what the default's searched
  scales and mixed bits are measured against, docs/onnx.md);
* ``optimum-fp32/``: ``optimum-cli export onnx --task text-generation-with-past`` of
  ``llama/``, run in the optimum virtual environment;
* ``gguf/llama-{f16,q8_0,q4_0}.gguf``: ``lmexport gguf --arch llama`` of ``llama/``;
* ``gguf/llama-q4_k_m.gguf``: llama.cpp's own converter (``convert_llamacpp.py``: the
  ``convert_hf_to_gguf.py`` of the vendored llama.cpp) of ``llama/`` to f16, then llama.cpp's
  quantizer (``lmexport llamacpp quantize --type q4_k_m``): the file users download;
* ``gguf/liquid-{q4_0,q4_k_m}.gguf``: ``lmexport gguf`` of ``liquid/`` (the liquidmetal architecture);
* ``pte-{fp32,8da4w}/model.pte``: ``lmexport executorch`` of ``liquid/`` (the [executorch] extra; the
  KV cache at the config's 2048 tokens);
* ``venv-optimum/`` (beside the shape folders): its own virtual environment (optimum-onnx pins
  transformers<4.58). The llama.cpp rows run in this checkout's environment on the patched
  llama-cpp-python that ``lmexport llamacpp build`` installs (cached wheel; AMX code paths off,
  so the same build runs on AMX and non-AMX hosts).

A step whose output exists is skipped (delete it to rebuild). Every step runs in a
subprocess, so the memory of one model build is returned before the next.

    python benchmarks/prepare.py llama OUT_DIR --shape 1b     # the in-process step
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("bench.prepare")
ROOT = Path(__file__).resolve().parents[1]

# TinyLlama-1.1B's shape; "small" is for trying the pipeline in a minute.
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=4096),
    # the 1.1B's layer at half width, fewer layers, small vocabulary: profiles the llama.cpp graph quickly
    "medium": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                   num_key_value_heads=2, vocab_size=8192),
}
ONNX_VARIANTS = {  # name -> lmexport onnx options
    "fp32": [],
    "fp16": ["--dtype", "fp16"],
    "int8": ["--quantize", "int8"],
    "int4": ["--quantize", "int4"],
    "fp32-plain": ["--no-fused-ops", "--opset", "18"],
    "int4-plain": ["--quantize", "int4", "--no-fused-ops", "--opset", "18"],
    "int4-b128": ["--quantize", "int4", "--block-size", "128"],
    "int4-nopack": ["--quantize", "int4", "--no-pack-matmuls"],
    "int4-rtn": ["--quantize", "int4", "--round-to-nearest", "--bits-per-weight", "4"],
}
# GGUF rows: name -> (source folder, how it is made). "lmexport" = ``lmexport gguf --outtype``;
# "llama.cpp" = llama.cpp's converter to f16, then llama.cpp's quantizer.
GGUF_FILES = {
    "llama-f16": ("llama", "lmexport", "f16"),
    "llama-q8_0": ("llama", "lmexport", "q8_0"),
    "llama-q4_0": ("llama", "lmexport", "q4_0"),
    "llama-q4_k_m": ("llama", "llama.cpp", "q4_k_m"),
    "liquid-q4_0": ("liquid", "lmexport", "q4_0"),
    "liquid-q4_k_m": ("liquid", "lmexport", "q4_k_m"),
}
# ExecuTorch rows: name -> lmexport executorch options.
PTE_VARIANTS = {"fp32": [], "8da4w": ["--quantize", "8da4w"]}
OPTIMUM_REQUIREMENTS = ["optimum-onnx[onnxruntime]"]


def lmexport_exe() -> str:
    return str(Path(sys.executable).with_name("lmexport"))


def run_step(name: str, cmd: list[str], *, timeout: float, env: dict | None = None, log_file: Path) -> None:
    """Run one build step, its output to ``log_file``; raise with the tail of that log if it fails."""
    log.info("%s: %s", name, " ".join(cmd))
    t0 = time.perf_counter()
    with open(log_file, "w") as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, **(env or {})}, cwd=ROOT)
        except subprocess.TimeoutExpired as exc:
            raise StepError(f"{name} timed out after {timeout:.0f} s (log: {log_file})") from exc
    if proc.returncode:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
        raise StepError(f"{name} failed (exit {proc.returncode}): {' | '.join(tail)} (log: {log_file})")
    log.info("%s: done in %.0f s", name, time.perf_counter() - t0)


class StepError(RuntimeError):
    pass


class Work:
    """Paths of everything under the work folder."""

    def __init__(self, cache: Path, shape: str):
        self.root = cache / shape               # models and exports of one shape
        root = self.root
        self.logs = root / "logs"
        self.llama = root / "llama"
        self.liquid = root / "liquid"
        self.optimum = root / "optimum-fp32"
        self.venv_optimum = cache / "venv-optimum"    # shared by every shape

    def onnx(self, variant: str) -> Path:
        return self.root / f"onnx-{variant}"

    def gguf(self, name: str) -> Path:
        return self.root / "gguf" / f"{name}.gguf"

    def pte(self, variant: str) -> Path:
        return self.root / f"pte-{variant}" / "model.pte"

    def python(self, venv: Path) -> Path:
        return venv / "bin" / "python"


# ---------------------------------------------------------------- model folders
def build_llama(out: Path, shape: str, seed: int = 0) -> None:
    """A random transformers Llama of ``shape``, saved with the lmexport tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmexport.modeling.tiny import make_tokenizer, write_tokenizer_files

    dims = SHAPES[shape]
    config = LlamaConfig(**dims, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                         hidden_act="silu", attention_bias=False, mlp_bias=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    write_tokenizer_files(make_tokenizer(), tmp)
    tmp.rename(out)


def prepare_models(work: Work, shape: str, onnx_variants: list[str], gguf_names: list[str], *,
                   with_optimum: bool, validate: bool, timeout: float,
                   pte_variants: list[str] = ()) -> dict[str, str]:
    """Build what is missing; return {artifact: reason} for every step that failed."""
    work.logs.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    lm = lmexport_exe()

    def step(key: str, target: Path, name: str, cmd: list[str], **kw) -> None:
        if target.exists():
            log.info("%s: cached (%s)", name, target)
            return
        try:
            run_step(name, cmd, timeout=timeout, log_file=work.logs / f"{key}.log", **kw)
        except StepError as exc:
            log.error("%s", exc)
            failed[key] = str(exc)

    step("llama", work.llama, "random Llama", [sys.executable, __file__, "llama", str(work.llama),
                                                  "--shape", shape])
    if "llama" in failed:
        return failed
    step("liquid", work.liquid, "lmexport convert", [lm, "convert", str(work.llama), "-o", str(work.liquid)])
    for variant in onnx_variants:
        if "liquid" in failed:
            failed[f"onnx-{variant}"] = "the converted checkpoint was not built"
            continue
        step(f"onnx-{variant}", work.onnx(variant), f"lmexport onnx {variant}",
             [lm, "onnx", str(work.liquid), "-o", str(work.onnx(variant)), *ONNX_VARIANTS[variant],
              *([] if validate else ["--no-validate"])])
    for variant in pte_variants:
        if "liquid" in failed:
            failed[f"pte-{variant}"] = "the converted checkpoint was not built"
            continue
        work.pte(variant).parent.mkdir(exist_ok=True)
        step(f"pte-{variant}", work.pte(variant), f"lmexport executorch {variant}",
             [lm, "executorch", str(work.liquid), "-o", str(work.pte(variant)), *PTE_VARIANTS[variant],
              *([] if validate else ["--no-validate"])])
    work.gguf("x").parent.mkdir(exist_ok=True)
    for name in gguf_names:
        source, tool, outtype = GGUF_FILES[name]
        folder = work.llama if source == "llama" else work.liquid
        if tool == "lmexport":
            step(f"gguf-{name}", work.gguf(name), f"lmexport gguf {name}",
                 [lm, "gguf", str(folder), *(["--arch", "llama"] if source == "llama" else []),
                  "--outtype", outtype, "-o", str(work.gguf(name))])
            continue
        f16 = work.gguf(f"{source}-llamacpp-convert-f16")
        step(f"gguf-{source}-convert", f16, "llama.cpp convert_hf_to_gguf.py f16",
             [sys.executable, str(Path(__file__).with_name("convert_llamacpp.py")), str(folder), str(f16),
              "--outtype", "f16", "--sdist", str(llamacpp_sdist())])
        if f16.exists():
            step(f"gguf-{name}", work.gguf(name), f"llama.cpp quantize {outtype}",
                 [lm, "llamacpp", "quantize", str(f16), str(work.gguf(name)), "--type", outtype])
        else:
            failed[f"gguf-{name}"] = "llama.cpp's converter did not run"
    if with_optimum:
        if not (work.venv_optimum / ".ready").exists():
            failed["optimum-fp32"] = "the optimum virtual environment is not ready"
        else:
            cli = str(work.venv_optimum / "bin" / "optimum-cli")
            step("optimum-fp32", work.optimum, "optimum-cli export onnx",
                 [cli, "export", "onnx", "--model", str(work.llama), "--task", "text-generation-with-past",
                  str(work.optimum)])
    return failed


# ---------------------------------------------------------------- virtual environments
def make_venv(venv: Path, installs: list[list[str]], *, timeout: float, log_file: Path,
              env: dict | None = None) -> None:
    """Create ``venv`` and run each ``pip install`` in order; ``.ready`` marks success."""
    if (venv / ".ready").exists():
        log.info("%s: cached", venv.name)
        return
    run_step(f"{venv.name}: venv", [sys.executable, "-m", "venv", "--clear", str(venv)], timeout=timeout,
             log_file=log_file)
    py = str(venv / "bin" / "python")
    for i, args in enumerate(installs):
        run_step(f"{venv.name}: pip install {' '.join(args)}", [py, "-m", "pip", "install", *args],
                 timeout=timeout, env=env, log_file=log_file.with_suffix(f".{i}.log"))
    (venv / ".ready").write_text("ok\n")


def llamacpp_sdist() -> Path:
    """The llama-cpp-python sdist ``lmexport llamacpp build`` downloaded (pip, cached)."""
    from lmexport.runtime.llamacpp.build import cache_root, download_sdist

    return download_sdist(cache_root())


def prepare_envs(work: Work, *, optimum: bool, llamacpp: bool, timeout: float) -> dict[str, str]:
    work.logs.mkdir(parents=True, exist_ok=True)
    failed = {}
    # torch first, pinned to the CPU build, so optimum does not pull a CUDA torch.
    if optimum:
        try:
            make_venv(work.venv_optimum, [["torch==2.13.0"], OPTIMUM_REQUIREMENTS], timeout=timeout,
                      log_file=work.logs / "venv-optimum.log")
        except StepError as exc:
            failed["venv-optimum"] = str(exc)
    if llamacpp:
        # The patched llama-cpp-python, in this environment: compiled once (GGML_NATIVE, AMX off),
        # then installed from its cached wheel in seconds.
        try:
            run_step("lmexport llamacpp build", [lmexport_exe(), "llamacpp", "build"], timeout=timeout,
                     log_file=work.logs / "llamacpp-build.log")
        except StepError as exc:
            failed["llamacpp-build"] = str(exc)
    return failed


def main() -> None:
    ap = argparse.ArgumentParser(description="Build the random Llama of a benchmark shape.")
    ap.add_argument("what", choices=["llama"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", choices=list(SHAPES), default="1b")
    args = ap.parse_args()
    build_llama(args.out, args.shape)


if __name__ == "__main__":
    main()
