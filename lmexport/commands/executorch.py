"""`lmexport executorch`: a checkpoint -> an ExecuTorch .pte for XNNPACK (phones: Android, iOS)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("executorch")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The .pte to write; model.lmexport.json and the tokenizer files are written beside it.")
@click.option("--quantize", type=click.Choice(["none", "8da4w"]), default="none", show_default=True,
              help="8da4w: int4 weights per group with int8 dynamic activations (XNNPACK), int8 embedding rows.")
@click.option("--group-size", type=int, default=32, show_default=True, help="8da4w: weights per int4 scale.")
@click.option("--embedding-bits", type=click.Choice(["8", "32"]), default="8", show_default=True,
              help="8da4w: the embedding table as int8 rows (8) or fp32 (32).")
@click.option("--head-bits", type=click.Choice(["8", "4"]), default="8", show_default=True,
              help="8da4w: lm_head as int8 per output row (8) or int4 groups like the other linears (4).")
@click.option("--max-context", type=click.IntRange(2), default=None,
              help="KV cache length, the largest position + 1 (default: the model's, at most 2048).")
@click.option("--no-validate", is_flag=True, help="Skip the comparison with PyTorch in executorch.runtime.")
@click.option("--overwrite", is_flag=True, help="Replace the output files if they exist.")
def executorch(model_dir, output, quantize, group_size, embedding_bits, head_bits, max_context, no_validate, overwrite):
    """Export a Liquid-Metal checkpoint to an ExecuTorch program (.pte), lowered to XNNPACK.

    The program follows ExecuTorch's LLM runner contract: forward(tokens [1, T], input_pos [1])
    returns logits [1, T, V]; the KV cache, conv window and context sums are mutable buffers;
    input_pos 0 starts a new sequence; get_max_seq_len, get_bos_id, get_eos_ids, ... are
    constant methods. It is validated in executorch.runtime against PyTorch (prefill and
    decode steps) before it is written. See docs/executorch.md.

    \b
    Examples:
      lmexport executorch examples/liquid-metal-tiny -o out/tiny.pte
      lmexport executorch examples/liquid-metal-tiny -o out/tiny-8da4w.pte --quantize 8da4w
    """
    from lmexport.atomic import check_output_path
    from lmexport.errors import InputError
    from lmexport.modeling.precheck import precheck

    if output.suffix != ".pte":
        raise InputError(f"{output} does not end in .pte", hint="name the output file e.g. model.pte")
    check_output_path(output.absolute(), overwrite, directory=False, inputs=[model_dir])   # before importing torch
    precheck(model_dir)
    try:
        import executorch as _  # noqa: F401
    except ImportError:
        raise InputError("`lmexport executorch` needs the executorch package, which this installation lacks",
                         hint="pip install torch==2.13.0 'lmexport[executorch]' (torch pinned to its CPU build)") from None
    from lmexport.exporters.executorch.export import ExecutorchExportOptions, export_executorch

    options = ExecutorchExportOptions(quantize=quantize, group_size=group_size, embedding_bits=int(embedding_bits),
                                      head_bits=int(head_bits),
                                      max_context=max_context, validate=not no_validate)
    result = export_executorch(model_dir, output, options, overwrite=overwrite)
    m = result.report
    if m is not None:
        click.echo(f"validated in executorch.runtime against PyTorch ({options.preset} preset): "
                   f"max |logit diff| {m.max_abs:.3g} (relative {m.rel:.2g}), top-1 {m.top1:.3f}, KL {m.kl_mean:.2g}")
    else:
        click.echo("validation skipped (--no-validate)")
    size = result.path.stat().st_size
    click.echo(f"wrote {result.path} ({options.variant}, context {result.meta['max_context']}, {size / 1e6:,.1f} MB) "
               f"and {result.sidecar.name}")
