from __future__ import annotations

from pathlib import Path

import click

from lmexport.exporters.onnx.transformersjs import TARGET as TRANSFORMERSJS   # torch-free


@click.command("onnx")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder to write (model.onnx, model.onnx.data, lmexport.json, config, tokenizer).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Weights and compute; fp16 keeps RMS statistics, gates, softmax and context sums in fp32.")
@click.option("--quantize", type=click.Choice(["none", "int8", "int4"]), default="none", show_default=True,
              help="Weight-only block quantization of the fp32 graph (MatMulNBits, GatherBlockQuantized for the "
                   "embedding): int8 = 8 bits; int4 = 4 bits, the most sensitive weights at 8 within --bits-per-weight.")
@click.option("--opset", type=int, default=23, show_default=True,
              help="ONNX opset (18..23; the fused ops need 23).")
@click.option("--no-fused-ops", is_flag=True,
              help="Write attention and norms as plain ONNX ops (MatMul, Softmax, ...) instead of the "
                   "opset-23 Attention, RotaryEmbedding and RMSNormalization ops, for consumers that lack them.")
@click.option("--no-pack-matmuls", is_flag=True,
              help="Keep one MatMul per weight instead of one over q|k|v and one over gate|up "
                   "(packed initializers, then a Split), for tools that expect a weight per MatMul.")
@click.option("--block-size", type=int, default=32, show_default=True,
              help="int4/int8: weights per scale and zero point.")
@click.option("--accuracy-level", type=int, default=4, show_default=True,
              help="int4/int8: MatMulNBits accuracy level (4 = int8 compute on CPU).")
@click.option("--bits-per-weight", type=float, default=None,
              help="int4: size budget in bits per quantized weight, scales and zero points included; 4: all at 4 bits "
                   "(default: what llama.cpp's Q4_K_M takes for the same weights).")
@click.option("--no-quantize-embeddings", is_flag=True,
              help="int4/int8: keep the token-embedding table fp32 (for consumers without GatherBlockQuantized).")
@click.option("--round-to-nearest", is_flag=True,
              help="int4/int8: scales and zero points from each block's range instead of the error-minimising "
                   "search (for comparison).")
@click.option("--integer-zero-points", is_flag=True,
              help="int4: packed uint8 zero points instead of a float offset per block (the earlier recipe; "
                   "for comparison).")
@click.option("--scale-dtype", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="int4/int8: how the block scales are stored (fp16 is cast to fp32 in the graph, which onnxruntime "
                   "folds at load; fp32 costs 0.5 more bits per weight at block 32).")
@click.option("--target", type=click.Choice(["lmexport", TRANSFORMERSJS]), default="lmexport", show_default=True,
              help="Whose state-name conventions the graph IO follows: transformers.js names the context sums "
                   "its 'recurrent' state and adds the liquid_metal.mjs loader (docs/runtime.md).")
@click.option("--no-validate", is_flag=True, help="Skip the comparison with PyTorch (not recommended).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
def onnx(model_dir, out_dir, dtype, quantize, opset, no_fused_ops, no_pack_matmuls, block_size, accuracy_level,
         bits_per_weight, no_quantize_embeddings, round_to_nearest, integer_zero_points, scale_dtype, target, no_validate,
         overwrite):
    """Export a Liquid-Metal checkpoint to a stateful ONNX folder, validated against PyTorch.

    One graph serves prefill and decode; the folder's lmexport.json names every input
    and output. Validation (ONNX Runtime CPU, batch of 2 left-padded prompts, prefill and
    8 decode steps) prints a summary table; if a tolerance is exceeded nothing is written.

    \b
    Examples:
      lmexport onnx examples/liquid-metal-tiny -o out/onnx
      lmexport onnx examples/liquid-metal-tiny -o out/onnx-int4 --quantize int4
      lmexport onnx examples/liquid-metal-tiny -o out/onnx-tjs --target transformers.js
    """
    from lmexport.atomic import check_output_path
    from lmexport.modeling.precheck import precheck

    check_output_path(out_dir.absolute(), overwrite, directory=True, inputs=[model_dir])   # before importing torch
    precheck(model_dir)
    from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx

    options = OnnxExportOptions(dtype=dtype, quantize=quantize, opset=opset, fused_ops=not no_fused_ops,
                                pack_matmuls=not no_pack_matmuls,
                                block_size=block_size, accuracy_level=accuracy_level,
                                bits_per_weight=bits_per_weight, quantize_embeddings=not no_quantize_embeddings,
                                search=not round_to_nearest, int4_offsets=not integer_zero_points,
                                scale_dtype=scale_dtype, target=target,
                                validate=not no_validate)
    result = export_onnx(model_dir, out_dir, options, overwrite=overwrite)
    if result.report is not None:
        click.echo(result.report.table())
    else:
        click.echo("validation skipped (--no-validate)")
    data = result.manifest.files.get(result.manifest.data_file, {}).get("bytes", 0)
    click.echo(f"wrote {out_dir} ({options.variant}, opset {result.manifest.opset}, "
               f"{data / 1e6:,.1f} MB of weights)")
