from __future__ import annotations

from pathlib import Path

import click


@click.command("convert")
@click.argument("llama_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder to write the Liquid-Metal checkpoint to.")
@click.option("--kernel-size", default=3, show_default=True, help="Token-mixing Conv1d kernel size K.")
@click.option("--se-reduction", default=16, show_default=True, help="SE reduction r (hidden size / r units).")
@click.option("--mode", "context_mode", type=click.Choice(["streaming", "legacy"]), default="streaming",
              show_default=True, help="Context mode written to config.json (see ARCHITECTURE.md).")
@click.option("--gate-bias", default=8.0, show_default=True,
              help="Bias that holds the new gates open: sigmoid(bias) scales norm and MLP outputs.")
@click.option("--allow-pickle", is_flag=True, help="Read a .bin checkpoint (torch.load, weights_only=True).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
def convert(llama_dir, out_dir, kernel_size, se_reduction, context_mode, gate_bias, allow_pickle, overwrite):
    """Turn a plain Llama/TinyLlama checkpoint into a Liquid-Metal one.

    The new modules start near identity; the largest logit difference against
    the original (transformers' LlamaForCausalLM) on a probe prompt is printed.

    \b
    Example:
      lmexport convert TinyLlama-1.1B -o liquid-metal-1.1b
    """
    from lmexport.atomic import check_output_path
    from lmexport.modeling.precheck import precheck

    check_output_path(out_dir.absolute(), overwrite, directory=True, inputs=[llama_dir])   # before importing torch
    precheck(llama_dir)
    from lmexport.modeling.convert import ConvertOptions
    from lmexport.modeling.convert import convert as run_convert

    options = ConvertOptions(kernel_size=kernel_size, se_reduction=se_reduction,
                             context_mode=context_mode, gate_bias=gate_bias)
    report = run_convert(llama_dir, out_dir, options, overwrite=overwrite, allow_pickle=allow_pickle)
    click.echo(f"wrote {out_dir}")
    click.echo(f"largest |logit difference| vs the original on a {report.probe_tokens}-token probe: "
               f"{report.max_abs_logit_diff:.3g} (gates open at {report.gate:.5f})")
