"""``lmexport llamacpp``: build llama.cpp with the liquidmetal architecture, quantize and run GGUFs in it."""
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
      lmexport llamacpp generate lm-q4_k_m.gguf --prompt "def add(a, b):"
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


@llamacpp.command("generate")
@click.argument("gguf_path", type=click.Path(path_type=Path))
@click.option("--prompt", required=True)
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(1, 1 << 20))
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0 is greedy.")
@click.option("--top-k", default=40, show_default=True, type=int)
@click.option("--top-p", default=0.95, show_default=True, type=float)
@click.option("--repeat-penalty", default=1.0, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--n-ctx", default=2048, show_default=True, type=int)
@click.option("--n-gpu-layers", default=0, show_default=True, type=int)
def generate_cmd(gguf_path, prompt, max_tokens, temperature, top_k, top_p, repeat_penalty, seed, stop, n_ctx,
                 n_gpu_layers):
    """Stream a completion from a GGUF with the patched llama.cpp."""
    from lmexport.runtime.llamacpp.engine import LlamaCppEngine

    with LlamaCppEngine(gguf_path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, seed=seed) as eng:
        click.echo(prompt, nl=False)
        for piece in eng.generate(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                  top_p=top_p, repeat_penalty=repeat_penalty, seed=seed, stop=list(stop)):
            click.echo(piece, nl=False)
        click.echo()
