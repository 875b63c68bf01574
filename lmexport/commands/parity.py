from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("parity")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path),
              help="Text file, one prompt per line (default: built-in prompts of different lengths).")
@click.option("--steps", default=16, show_default=True, type=click.IntRange(0, 4096),
              help="Decode steps after the prefill, state fed back on both sides.")
@click.option("--batch", "batch_size", default=3, show_default=True, type=click.IntRange(1, 256),
              help="Prompts per left-padded batch.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Execution provider for an ONNX artifact.")
@click.option("--engine", type=click.Choice(["pytorch", "llama.cpp"]), default="pytorch", show_default=True,
              help="What runs a GGUF: pytorch rebuilds the model from its tensors; llama.cpp runs the file in "
                   "the patched llama.cpp (lmexport llamacpp build), F32 KV cache, each prompt its own "
                   "sequence; a failure is localised with the PyTorch rebuild of the same file.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the report as JSON.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --json report.")
@click.option("--tolerance", "preset", help="Tolerance preset (default: from the artifact's precision): "
              "fp32, fp16, int8, int4, gguf-f32, gguf-f16, gguf-bf16, gguf-q8_0, gguf-q4_0, ...")
def parity(model_dir, artifact, prompts_file, steps, batch_size, device, engine, json_path, overwrite, preset):
    """Compare an ONNX folder or GGUF file with the PyTorch model it came from.

    Exit code 0 when every bound of the tolerance preset holds, 1 when one does
    not (the first diverging layer and module are named), 2 for bad input.
    """
    from tqdm import tqdm

    from lmexport.atomic import atomic_output, check_output_path
    from lmexport.errors import ParityError
    from lmexport.parity.report import format_table
    from lmexport.parity.run import run_parity

    if json_path is not None:
        check_output_path(json_path.absolute(), overwrite, directory=False, inputs=[model_dir, artifact])
    with tqdm(desc="parity", unit="step", disable=None, leave=False) as bar:
        report = run_parity(model_dir, artifact, prompts_file=prompts_file, steps=steps,
                            batch_size=batch_size, device=device, preset=preset, engine=engine,
                            progress=bar.update)
    click.echo(format_table(report))
    if json_path is not None:
        with atomic_output(json_path, overwrite=overwrite, inputs=[model_dir, artifact]) as tmp:
            tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    if not report.passed:
        where = f"; first divergence at {report.divergence.where}" if report.divergence else ""
        raise ParityError(f"{artifact} ({report.engine}) does not match PyTorch at preset {report.preset}{where}", report.failures)
