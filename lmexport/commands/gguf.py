from __future__ import annotations

import logging
from pathlib import Path

import click

from lmexport.formats.gguf import KQUANTS, OUTTYPES


@click.command("gguf")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="GGUF file to write (split output: NAME-00001-of-0000N.gguf beside it).")
@click.option("--outtype", type=click.Choice([*OUTTYPES, *KQUANTS]), default="f16", show_default=True,
              help="Type of the weight matrices; norms, biases and the convolution stay f32. "
                   "q4_k_m, q5_k_m, q6_k: llama.cpp's K-quant mixes, made by the patched llama.cpp's "
                   "quantizer (lmexport llamacpp build) from an f32 file.")
@click.option("--split-max-size", default=None, metavar="SIZE",
              help="Split into shards of at most SIZE (e.g. 500M, 2G).")
@click.option("--arch", type=click.Choice(["auto", "llama"]), default="auto", show_default=True,
              help="auto: liquidmetal for Liquid-Metal checkpoints; llama: a standard llama GGUF "
                   "(plain Llama checkpoints only).")
@click.option("--name", default=None, help="general.name (default: the model folder's name).")
@click.option("--tokenizer-pre", default=None, metavar="NAME",
              help="llama.cpp's pre-tokenizer name (tokenizer.ggml.pre) for a byte-level BPE tokenizer that "
                   "lmexport does not identify (it knows gpt-2, smollm, llama-bpe).")
@click.option("--allow-pickle", is_flag=True, help="Read a .bin checkpoint (torch.load, weights_only=True).")
@click.option("--overwrite", is_flag=True, help="Replace the output file(s) if they exist.")
def gguf(model_dir, output, outtype, split_max_size, arch, name, tokenizer_pre, allow_pickle, overwrite):
    """Export a checkpoint folder to GGUF, validated by reading it back.

    \b
    Examples:
      lmexport gguf liquid-metal-1.1b -o lm.gguf --outtype q8_0
      lmexport gguf TinyLlama-1.1B -o tinyllama.gguf --arch llama --outtype f16
      lmexport gguf liquid-metal-1.1b -o lm-q4_k_m.gguf --outtype q4_k_m
    """
    from lmexport.atomic import check_output_path
    from lmexport.modeling.precheck import precheck

    check_output_path(output.absolute(), overwrite, directory=False, inputs=[model_dir])  # before importing torch
    precheck(model_dir)
    from lmexport.exporters.gguf.write import GGUFOptions, export_gguf, parse_size

    logging.getLogger("gguf").setLevel(logging.WARNING)   # the writer's own info lines repeat ours
    options = GGUFOptions(outtype=outtype, arch=arch, split_max_size=parse_size(split_max_size),
                          name=name, allow_pickle=allow_pickle, tokenizer_pre=tokenizer_pre)
    report = export_gguf(model_dir, output, options, overwrite=overwrite)
    for path in report.paths:
        click.echo(f"wrote {path}")
    worst = ", ".join(f"{t} {v:.2e}" for t, v in sorted(report.validation.worst_by_type().items()))
    click.echo(f"{report.arch} GGUF, {outtype}, {len(report.plan)} tensors, {report.nbytes / 1e6:,.1f} MB; "
               f"validated, worst weight round-trip error (x max|w|): {worst}")
    if report.fallbacks:
        click.echo(f"{len(report.fallbacks)} tensor(s) fell back to F16 (row length not a multiple of the "
                   f"{outtype} block size): {', '.join(report.fallbacks)}")
