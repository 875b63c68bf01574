"""The liquidmetal GGUF against the plain Llama of the same shape and type, with llama.cpp's own llama-bench.

    python benchmarks/llamacpp_bench.py --shape medium --type q4_0 [--threads 2] [--rounds 5]
    python benchmarks/llamacpp_bench.py --llama A.gguf --liquid B.gguf

Both files are measured in one run on one machine, alternately (llama, liquid, llama, ...) so that
the load of a shared machine hits both alike; each round is one llama-bench call per file
(``-p PROMPT -n GEN -r 1``, flash attention and threads as given, llama-bench's defaults otherwise).
Prints prefill (pp) and decode (tg) tokens/s, medians over the rounds, and the ratios liquid/llama
with the targets of issue 25 (decode >= 0.85x, prefill time <= 1.3x). ``--json`` writes them.
The GGUFs of ``--shape`` come from ``benchmarks/prepare.py`` (``benchmarks/.work/<shape>/gguf``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_once(exe: Path, gguf: Path, prompt: int, gen: int, threads: int, flash_attn: str) -> dict[str, float]:
    cmd = [str(exe), "-m", str(gguf), "-p", str(prompt), "-n", str(gen), "-t", str(threads), "-r", "1",
           "-fa", flash_attn, "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"llama-bench failed on {gguf}: {proc.stderr.strip().splitlines()[-1:]}")
    out = {}
    for row in json.loads(proc.stdout):
        kind = "pp" if row["n_prompt"] > 0 else "tg"
        out[kind] = float(row["avg_ts"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="medium")
    ap.add_argument("--type", default="q4_0", help="GGUF type of benchmarks/.work/<shape>/gguf/{llama,liquid}-TYPE.gguf")
    ap.add_argument("--llama", type=Path)
    ap.add_argument("--liquid", type=Path)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--flash-attn", default="on", choices=["on", "off", "auto"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from lmexport.runtime.llamacpp.tools import require_tool

    exe = require_tool("llama-bench")
    gguf_dir = ROOT / "benchmarks" / ".work" / args.shape / "gguf"
    files = {"llama": args.llama or gguf_dir / f"llama-{args.type}.gguf",
             "liquid": args.liquid or gguf_dir / f"liquid-{args.type}.gguf"}
    for name, path in files.items():
        if not path.is_file():
            raise SystemExit(f"{path} is missing: python benchmarks/prepare.py (shape {args.shape}) or --{name}")
    runs: dict[str, dict[str, list[float]]] = {n: {"pp": [], "tg": []} for n in files}
    for r in range(args.rounds):
        for name, path in files.items():
            got = bench_once(exe, path, args.prompt, args.gen, args.threads, args.flash_attn)
            for k, v in got.items():
                runs[name][k].append(v)
            print(f"round {r + 1}/{args.rounds} {name}: pp{args.prompt} {got['pp']:.1f} t/s, "
                  f"tg{args.gen} {got['tg']:.1f} t/s", flush=True)
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in runs.items()}
    decode = med["liquid"]["tg"] / med["llama"]["tg"]
    prefill_time = med["llama"]["pp"] / med["liquid"]["pp"]
    print(f"\n| file | pp{args.prompt} t/s | tg{args.gen} t/s |\n|---|---|---|")
    for name in files:
        print(f"| {files[name].name} | {med[name]['pp']:.1f} | {med[name]['tg']:.1f} |")
    print(f"\nliquidmetal decode = {decode:.3f}x plain Llama (target >= 0.85: {'met' if decode >= 0.85 else 'missed'})")
    print(f"liquidmetal prefill time = {prefill_time:.3f}x plain Llama (target <= 1.3: "
          f"{'met' if prefill_time <= 1.3 else 'missed'})")
    if args.json:
        args.json.write_text(json.dumps({"files": {k: str(v) for k, v in files.items()}, "runs": runs, "median": med,
                                         "decode_ratio": decode, "prefill_time_ratio": prefill_time,
                                         "threads": args.threads, "prompt": args.prompt, "gen": args.gen,
                                         "flash_attn": args.flash_attn}, indent=2) + "\n")


if __name__ == "__main__":
    main()
