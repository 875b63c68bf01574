"""Export benchmark, not run in CI: a TinyLlama-1.1B-shaped Liquid-Metal model with random
weights (hidden 2048, 22 layers, 32 heads / 4 kv heads, intermediate 5632, vocab 32000),
exported to ONNX as fp32 and as int4, each in its own child process so that its peak RSS
(``os.wait4``'s ru_maxrss) is its own. Validation stays on, as a user would run it.

    python benchmarks/export_1b.py --work /path/with/20GB [--variants fp32 int4]
    python benchmarks/export_1b.py --work /tmp/b --layers 2   # a quick smoke run

Target (issue 3): completes on a 24 GB, 2-core machine with peak RSS under 2.5x the fp32
weight size. Prints one JSON line per variant and a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
         "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
         "token_mixing_kernel_size": 3, "se_reduction": 16}
VARIANTS = {"fp32": {}, "fp16": {"dtype": "fp16"}, "int8": {"quantize": "int8"}, "int4": {"quantize": "int4"}}


def make_model(folder: Path, layers: int) -> None:
    import torch

    from lmexport.modeling.checkpoint import save_checkpoint
    from lmexport.config import LiquidMetalConfig
    from lmexport.modeling.model import LiquidMetalForCausalLM, init_random
    from lmexport.modeling.tiny import tiny_config_dict

    shape = {k: v for k, v in SHAPE.items() if k != "vocab_size"}
    cfg = tiny_config_dict(SHAPE["vocab_size"], **{**shape, "num_hidden_layers": layers})
    torch.manual_seed(0)
    model = init_random(LiquidMetalForCausalLM(LiquidMetalConfig.from_dict(cfg)), seed=0)
    save_checkpoint(model, folder, max_shard_bytes=2 << 30)


def export(model_dir: Path, out: Path, variant: str) -> None:
    import logging

    from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx

    logging.basicConfig(level=logging.INFO, format="  [child] %(message)s")
    result = export_onnx(model_dir, out, OnnxExportOptions(**VARIANTS[variant]), overwrite=True)
    print(result.report.table() if result.report else "not validated", file=sys.stderr)


def run_child(args: list[str]) -> tuple[float, int, int]:
    """(seconds, peak RSS bytes, exit code) of ``python this_script args``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args])
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the model and the exports")
    ap.add_argument("--variants", nargs="+", default=["fp32", "int4"], choices=list(VARIANTS))
    ap.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    ap.add_argument("--child", nargs=3, metavar=("ACTION", "MODEL_DIR", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        action, model_dir, out = args.child
        if action == "make":
            make_model(Path(out), int(model_dir))
        else:
            export(Path(model_dir), Path(out), action)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.work / f"liquid-metal-1.1b-{args.layers}l"
    if not model_dir.exists():
        secs, rss, code = run_child(["--work", str(args.work), "--child", "make", str(args.layers), str(model_dir)])
        print(f"random checkpoint written in {secs:.0f} s (peak RSS {rss / 2**30:.2f} GiB)")
        if code:
            sys.exit(code)
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    results = []
    for variant in args.variants:
        out = args.work / f"onnx-{variant}"
        secs, rss, code = run_child(["--work", str(args.work), "--child", variant, str(model_dir), str(out)])
        row = {"variant": variant, "layers": args.layers, "seconds": round(secs, 1),
               "peak_rss_gib": round(rss / 2**30, 2), "fp32_weights_gib": round(weights / 2**30, 2),
               "rss_over_weights": round(rss / weights, 2), "exit_code": code,
               "folder_gib": round(dir_bytes(out) / 2**30, 2) if out.exists() else None}
        print(json.dumps(row), flush=True)
        results.append(row)
    ok = all(r["exit_code"] == 0 and r["rss_over_weights"] < 2.5 for r in results)
    print("target (peak RSS < 2.5x fp32 weights, exit 0):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
