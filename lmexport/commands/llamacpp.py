"""``lmexport llamacpp``: build llama.cpp with the liquidmetal architecture and quantize GGUFs with it.

A GGUF runs through the same commands as an ONNX folder (``lmexport generate``, ``chat``, ``bench``,
``parity``, ``perplexity``); ``lmexport llamacpp generate`` is an alias of ``lmexport generate``."""
from __future__ import annotations

from pathlib import Path

import click


@click.group("llamacpp")
def llamacpp():
    """llama.cpp (through llama-cpp-python) patched for the liquidmetal GGUF.

    \b
    Examples:
      lmexport llamacpp build
      CMAKE_ARGS=-DGGML_CUDA=on lmexport llamacpp build
      lmexport llamacpp quantize lm-f32.gguf lm-q4_k_m.gguf --type q4_k_m
      lmexport generate lm-q4_k_m.gguf --prompt "def add(a, b):"
    """


@llamacpp.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if the installed package is this build.")
def build_cmd(force):
    """Download llama-cpp-python's sdist, patch its llama.cpp and pip-install it here.

    The sdist and the CMake build folder are kept in $LMEXPORT_CACHE/llamacpp
    (default ~/.cache/lmexport/llamacpp): a rerun with an unchanged patch and
    CMAKE_ARGS returns at once, a changed patch recompiles only what it touches.
    CPU build by default; the CMAKE_ARGS environment variable is appended
    (e.g. -DGGML_CUDA=on).
    """
    from lmexport.runtime.llamacpp.build import build

    result = build(force=force, progress=lambda line: click.echo(line, err=True))
    click.echo(f"{result.status}: llama-cpp-python with liquidmetal in {result.package_dir} ({result.seconds:.0f} s)")


@llamacpp.command("quantize")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--type", "ftype", required=True, type=click.Choice(["q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0"]),
              help="llama.cpp quantization mix.")
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
def quantize_cmd(src, dst, ftype, overwrite):
    """Quantize an f32/f16 liquidmetal GGUF with llama.cpp's own quantizer (K-quants)."""
    from lmexport.runtime.llamacpp.quantize import quantize

    out = quantize(src, dst, ftype, overwrite=overwrite)
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {ftype})")


def _generate_alias():
    """``lmexport llamacpp generate``: a plain alias of ``lmexport generate`` (same options, defaults, output)."""
    from lmexport.commands.generate import generate

    return click.Command("generate", params=generate.params, callback=generate.callback,
                         help="Alias of `lmexport generate` for a GGUF file (the same options and defaults).")


llamacpp.add_command(_generate_alias())
