"""``lmexport executorch``: a Liquid-Metal checkpoint -> an ExecuTorch program (.pte) for XNNPACK.

Model in, file out, options in ``ExecutorchExportOptions``. Written beside each other, all or
nothing (``atomic_outputs``)::

    model.pte               the program: forward(tokens, input_pos) -> logits, state in mutable
                            buffers (program.py), XNNPACK-delegated, plus the constant methods
                            ExecuTorch's LLM runner reads (CONSTANT_METHODS)
    model.lmexport.json     the sidecar: IO, state buffers, quantisation, tokenizer, source (sidecar.py)
    tokenizer.json,         the checkpoint's tokenizer, resolved as for ONNX (the BOS/EOS rule stated),
    tokenizer_config.json,  and its other tokenizer files (chat_template.jinja, generation_config.json, ...);
    ...                     kept when the same bytes are already there (two variants of one model
                            share them), refused without --overwrite when different

The export is validated in ``executorch.runtime`` against PyTorch (a prefill and decode steps,
``lmexport.compare``) before anything is renamed into place. See docs/executorch.md.
"""
from __future__ import annotations

import copy
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lmexport.atomic import atomic_outputs, check_output_path
from lmexport.errors import ExportError, InputError, ValidationError

from lmexport.exporters.executorch import sidecar
from lmexport.exporters.executorch.program import INIT_PATTERNS, ExecutorchDecoder
from lmexport.exporters.executorch.quant import EMBEDDING_BITS, HEAD_BITS

log = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "8da4w")
GROUP_SIZES = (32, 64, 128, 256)


@dataclass(frozen=True)
class ExecutorchExportOptions:
    quantize: str = "none"            # "none" (fp32) | "8da4w"
    group_size: int = 32              # 8da4w: weights per int4 scale
    embedding_bits: int = 8           # 8da4w: 8 (int8 rows) | 32 (fp32 table)
    head_bits: int = 8                # 8da4w: lm_head as 8 (int8 per row, 8da8w) | 4 (8da4w like the rest)
    max_context: int | None = None    # KV cache length (default: the config's, at most DEFAULT_MAX_CONTEXT)
    validate: bool = True
    decode_steps: int = 4             # validation: decode steps after the prefill

    def __post_init__(self) -> None:
        problems = []
        if self.quantize not in QUANTIZATIONS:
            problems.append(f"quantize {self.quantize!r} is not one of {', '.join(QUANTIZATIONS)}")
        if self.group_size not in GROUP_SIZES:
            problems.append(f"group size {self.group_size} is not one of {', '.join(map(str, GROUP_SIZES))}")
        if self.embedding_bits not in EMBEDDING_BITS:
            problems.append(f"embedding bits {self.embedding_bits} is not one of {', '.join(map(str, EMBEDDING_BITS))}")
        if self.head_bits not in HEAD_BITS:
            problems.append(f"head bits {self.head_bits} is not one of {', '.join(map(str, HEAD_BITS))}")
        if self.max_context is not None and self.max_context < 2:
            problems.append(f"max context {self.max_context} is below 2 tokens")
        if self.decode_steps < 1:
            problems.append("validation needs at least one decode step")
        if problems:
            raise InputError("; ".join(problems))

    @property
    def variant(self) -> str:
        return "fp32" if self.quantize == "none" else self.quantize

    @property
    def preset(self) -> str:
        """The tolerance preset the variant is held to (lmexport.compare.tolerances)."""
        return sidecar.PRESETS[self.variant]

    def quantization(self) -> dict:
        if self.quantize == "none":
            return {"method": "none"}
        return {"method": "8da4w", "linear": {"weight_bits": 4, "group_size": self.group_size,
                                             "activations": "int8, dynamic per token",
                                             "scales": "searched per group, bf16 (XNNPACK's storage)",
                                             "offsets": "one fp32 per group, times the group's input sum",
                                             "tensor": "torchao IntxUnpackedToInt8Tensor"},
                "lm_head": ({"weight_bits": 8, "scales": "one fp32 per output row, symmetric",
                             "activations": "int8, dynamic per token"} if self.head_bits == 8
                            else {"weight_bits": 4, "as": "linear"}),
                "embedding": {"bits": self.embedding_bits,
                              "scheme": "int8 rows, one fp32 scale per row" if self.embedding_bits == 8 else "fp32"}}


DEFAULT_MAX_CONTEXT = 2048    # a phone's KV cache: 30 layers of SmolLM2 at 2048 tokens is 47 MB


def context_length(config, options: ExecutorchExportOptions) -> int:
    if options.max_context is None:
        return min(config.max_position_embeddings, DEFAULT_MAX_CONTEXT)
    if options.max_context > config.max_position_embeddings:
        raise InputError(f"--max-context {options.max_context} exceeds the model's context of "
                         f"{config.max_position_embeddings} tokens", hint="use a smaller --max-context")
    return options.max_context


@dataclass
class ExecutorchExportResult:
    path: Path
    sidecar: Path
    meta: dict
    report: object | None = None      # lmexport.compare.metrics.StepMetrics of the validation


def sidecar_path(pte: Path) -> Path:
    return sidecar.sidecar_path(pte)


def export_executorch(model_dir: str | Path, output: str | Path,
                      options: ExecutorchExportOptions = ExecutorchExportOptions(), *,
                      overwrite: bool = False) -> ExecutorchExportResult:
    """Read the checkpoint, write the .pte, its sidecar and tokenizer, validate in executorch.runtime."""
    from lmexport.modeling.checkpoint import load_model
    from lmexport.modeling.folder_files import verify_files
    from lmexport.modeling.tokenizer import has_tokenizer, resolve_tokenizer, ship_tokenizer_files

    output = Path(output)
    if output.suffix != ".pte":
        raise InputError(f"{output} does not end in .pte", hint="name the output file e.g. model.pte")
    side = sidecar_path(output)
    for target in (output, side):
        check_output_path(target.absolute(), overwrite, directory=False, inputs=[model_dir])
    model, ckpt = load_model(model_dir)
    config = model.config
    if not config.streaming:
        raise InputError(f"{model_dir} uses the legacy context mode, which has no state to carry between calls",
                         hint="the ExecuTorch export supports streaming checkpoints (ARCHITECTURE.md)")
    max_context = context_length(config, options)
    tokenizer = resolve_tokenizer(ckpt.path) if has_tokenizer(ckpt.path) else None
    verify_files(ckpt.tokenizer_files())                  # a bad chat template fails here, not after lowering
    program = build_program(model, options, max_context)
    with tempfile.TemporaryDirectory(prefix=".lmexport-tok-", dir=output.absolute().parent) as staged:
        token_files = ship_tokenizer_files(Path(staged), tokenizer, ckpt.tokenizer_files())
        token_targets = [(f, output.absolute().parent / f.name) for f in token_files]
        token_targets = [(f, t) for f, t in token_targets if not (t.is_file() and t.read_bytes() == f.read_bytes())]
        targets = [output, side] + [t for _, t in token_targets]
        with atomic_outputs(targets, overwrite=overwrite, inputs=[model_dir],
                            needed_bytes=len(program.buffer) + (1 << 20)) as tmps:
            tmps[0].write_bytes(program.buffer)
            meta = sidecar.build(config, options, max_context, program_file=output.name,
                                 program_bytes=tmps[0], weights_hash=ckpt.weights_hash(),
                                 tokenizer=tokenizer, tokenizer_files=[f.name for f in token_files],
                                 constant_methods=constant_methods(config, max_context))
            tmps[1].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            for (src, _), tmp in zip(token_targets, tmps[2:]):
                tmp.write_bytes(src.read_bytes())
            report = None
            if options.validate:
                report = _validate(model, ckpt, tmps[0], meta, options)
    return ExecutorchExportResult(output, side, meta, report)


def _validate(model, ckpt, pte: Path, meta: dict, options: ExecutorchExportOptions):
    """The comparison core's loop (lmexport.compare) on the ONNX validator's left-padded random batch:
    a prefill and ``decode_steps`` greedy steps, the program in executorch.runtime against PyTorch."""
    from lmexport.compare.loop import compare_calls
    from lmexport.compare.metrics import overall
    from lmexport.compare.tolerances import check, get_tolerance
    from lmexport.exporters.executorch.engine import ExecutorchEngine
    from lmexport.exporters.onnx.validate import validation_batch
    from lmexport.modeling.engine import TorchEngine

    c = model.config
    tol = get_tolerance(options.preset)
    ids, mask = validation_batch(c.vocab_size, c.pad_token_id if c.pad_token_id is not None else 0)
    with ExecutorchEngine(pte, meta=meta) as engine:
        per_call, _ = compare_calls(TorchEngine(ckpt.path, model=model), engine, ids, mask, options.decode_steps)
    metrics = overall(per_call)
    failures = check(metrics, tol)
    if failures:
        raise ValidationError(f"the ExecuTorch program does not match PyTorch ({options.preset} tolerances); "
                              "nothing was written", failures,
                              hint="rerun with --debug, or --no-validate to keep the file anyway")
    return metrics


# ---------------------------------------------------------------- the program

def _progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        log.info("quantized %d/%d linears", done, total)


def max_seq_len(max_context: int) -> int:
    """The most tokens one call takes: one less than the cache, as ExecuTorch's llama export bounds it
    (torch.export refuses the sequence axis reaching the cache length itself)."""
    return max_context - 1


def constant_methods(config, max_context: int) -> dict:
    """What ExecuTorch's LLM runner reads from the program (extension/llm/runner/constants.h)."""
    eos = config.eos_token_ids
    out = {"get_max_seq_len": max_seq_len(max_context), "get_max_context_len": max_context,
           "get_vocab_size": config.vocab_size, "get_n_layers": config.num_hidden_layers,
           "use_kv_cache": True, "use_sdpa_with_kv_cache": True, "enable_dynamic_shape": True}
    if config.bos_token_id is not None:
        out["get_bos_id"] = config.bos_token_id
    if eos:
        out["get_eos_ids"] = list(eos)
    return out


def example_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    # 3 tokens: more than 1 so torch.export keeps the sequence axis symbolic
    return torch.tensor([[1, 2, 3]], dtype=torch.int64), torch.tensor([0], dtype=torch.int64)


def build_program(model, options: ExecutorchExportOptions, max_context: int):
    """Trace, (quantize,) lower to XNNPACK and serialize: an ExecutorchProgramManager (``.buffer``)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass
    from torch.export import Dim

    from lmexport.exporters.onnx.graph import quiet

    view = copy.deepcopy(model).float().eval()
    for p in view.parameters():
        p.requires_grad_(False)
    skipped: list[str] = []
    if options.quantize == "8da4w":
        from lmexport.exporters.executorch.quant import quantize_8da4w
        log.info("quantizing linears to 8da4w (group %d)", options.group_size)
        skipped = quantize_8da4w(view, options.group_size, options.embedding_bits, options.head_bits,
                                 progress=_progress)
        if skipped:
            log.info("%d linear(s) narrower than a group stay fp32 (%s ...)", len(skipped), skipped[0])
    wrapper = ExecutorchDecoder(view, max_context).eval()
    seq = Dim("sequence_length", min=1, max=max_seq_len(max_context))
    log.info("tracing with torch.export (max context %d)", max_context)
    try:
        with torch.no_grad(), quiet("torch.export", "torch._export", "torch.fx", "executorch", "torchao"):
            exported = torch.export.export(wrapper, example_inputs(), dynamic_shapes=({1: seq}, {}), strict=False)
            log.info("lowering %d layers to XNNPACK (the longest step, in ExecuTorch's partitioner: "
                     "10-30 s a layer on a 2-core machine)", model.config.num_hidden_layers)
            edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()],
                                               compile_config=EdgeCompileConfig(_check_ir_validity=False),
                                               constant_methods=constant_methods(model.config, max_context))
            log.info("serializing the program")
            return edge.to_executorch(ExecutorchBackendConfig(
                passes=[InitializedMutableBufferPass(list(INIT_PATTERNS))],
                sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
                do_quant_fusion_and_const_prop=True))
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:  # torch.export / exir raise many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the ExecuTorch export failed: {first}", hint="rerun with --debug for the trace") from exc
