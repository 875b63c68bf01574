from __future__ import annotations

import json
import logging
from pathlib import Path

import click

log = logging.getLogger("lmexport.bench")


@click.command("bench")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt-tokens", default=128, show_default=True, help="Tokens in each prompt (the prefill).")
@click.option("--new-tokens", default=64, show_default=True, help="Decode calls timed after each prefill.")
@click.option("--batch", default=1, show_default=True, help="Sequences per call.")
@click.option("--repeats", default=5, show_default=True, help="Timed passes after one warm-up pass.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True,
              help="Where to run: cuda needs onnxruntime-gpu (ONNX), a CUDA build of llama.cpp (GGUF) or a CUDA "
                   "torch build (PyTorch).")
@click.option("--threads", type=int, default=None,
              help="Threads (ORT intra_op_num_threads, llama.cpp n_threads, torch.set_num_threads); default: the "
                   "library's.")
@click.option("--torch-dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="PyTorch model folders only: the dtype of weights and compute [default: fp32].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def bench(artifact, prompt_tokens, new_tokens, batch, repeats, device, threads, torch_dtype, as_json):
    """Benchmark an exported ONNX folder, a GGUF file (llama.cpp) or a PyTorch model folder.

    Reports load time, prefill latency, decode tokens/s (median, min and max over
    the timed repeats, after one warm-up pass) and the process's peak RSS. Decode
    feeds back the state of each call; the prefix is never recomputed. Prompts are
    fixed pseudo-random token ids; the next token is the greedy one.

    \b
    Examples:
      lmexport bench out/onnx-int4
      lmexport bench out/model-q4_k_m.gguf --threads 2
      lmexport bench examples/liquid-metal-tiny --torch-dtype bf16 --json
    """
    from lmexport.bench import Workload, run_bench
    from lmexport.cli import huge_pages_for
    from lmexport.engine import artifact_kind

    if artifact_kind(artifact) == "onnx":
        huge_pages_for(artifact)

    workload = Workload(prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch=batch, repeats=repeats)
    result = run_bench(artifact, workload, device=device, threads=threads, torch_dtype=torch_dtype,
                       progress=log.info)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    r = result
    click.echo(f"{r.artifact}: {r.backend} {r.variant} on {r.device}"
               + (f", {r.threads} threads" if r.threads else ""))
    click.echo(f"  workload      batch {r.batch}, prompt {r.prompt_tokens} tokens, {r.new_tokens} new tokens, "
               f"{r.repeats} repeats after a warm-up")
    click.echo(f"  load          {r.load_s:.2f} s")
    click.echo(f"  prefill       {r.prefill_ms.median:.1f} ms median "
               f"[{r.prefill_ms.min:.1f} .. {r.prefill_ms.max:.1f}]  ({r.prefill_tokens_per_s:.1f} tokens/s)")
    d = r.decode_tokens_per_s
    click.echo(f"  decode        {d.median:.2f} tokens/s median [{d.min:.2f} .. {d.max:.2f}], "
               f"spread {d.spread_pct:.1f}%  ({r.decode_ms_per_step.median:.2f} ms per step)")
    click.echo(f"  peak RSS      {r.peak_rss_mb:.0f} MiB ({r.rss_after_load_mb:.0f} MiB after load)")
