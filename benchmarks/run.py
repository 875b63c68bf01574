"""lmexport against PyTorch, optimum-onnx and llama.cpp, in one run, with the bandwidth bound.

    python benchmarks/run.py                       # TinyLlama-1.1B shape, every row
    python benchmarks/run.py --shape small --rounds 1 --repeats 1 --new-tokens 8   # try it

Builds (or reuses, from ``benchmarks/.work/``) a random TinyLlama-1.1B-shaped Llama,
its Liquid-Metal conversion, the ONNX, optimum-onnx and GGUF exports and two virtual
environments (``prepare.py``); measures the read bandwidth; then runs every row in its
own subprocess with a timeout, ``--rounds`` times, alternating rows (the order rotates
each round), so drift on the machine hits every row alike. Writes
``benchmarks/RESULTS.md`` and ``benchmarks/results.json``. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prepare  # noqa: E402
import report  # noqa: E402
import weights  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lmexport.compare.metrics import distribution_agreement  # noqa: E402

log = logging.getLogger("bench")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GGUF_LABELS = {
    "llama-f16": "llama.cpp f16 (plain Llama, lmexport gguf)",
    "llama-q8_0": "llama.cpp q8_0 (plain Llama, lmexport gguf)",
    "llama-q4_0": "llama.cpp q4_0 (plain Llama, lmexport gguf)",
    "llama-q4_k_m": "llama.cpp Q4_K_M (plain Llama, llama.cpp's converter + quantizer)",
    "liquid-q4_0": "llama.cpp liquidmetal q4_0 (lmexport gguf)",
    "liquid-q4_k_m": "llama.cpp liquidmetal Q4_K_M (lmexport gguf, llama.cpp's quantizer)",
}
ALL_ROWS = ("pytorch-fp32", "pytorch-bf16", *(f"onnx-{v}" for v in prepare.ONNX_VARIANTS), "onnx-int4-4k-pages",
            "optimum-fp32", *(f"llamacpp-{g}" for g in prepare.GGUF_FILES),
            *(f"executorch-{v}" for v in prepare.PTE_VARIANTS))
PROFILED = ("int4", "int4-nopack", "int4-b128")     # ONNX variants --profile looks inside
ONNX_LABELS = {"fp32-plain": "fp32, plain ops (before fusion)", "int4-plain": "int4, plain ops (before fusion)",
               "int4-b128": "int4, block 128", "int4-nopack": "int4, one MatMul per weight (before packing)",
               "int4-rtn": "int4, round-to-nearest, all 4 bits"}
PTE_LABELS = {"fp32": "lmexport ExecuTorch fp32 (XNNPACK, executorch.runtime)",
              "8da4w": "lmexport ExecuTorch 8da4w (XNNPACK, executorch.runtime)"}
# Off by default (each is a question answered once, see RESULTS.md history): fp16, the plain-op graphs,
# bf16 PyTorch, the plain Llama in f16, the fp32 ExecuTorch program (the phone's program is the 8da4w one).
DEFAULT_ROWS = tuple(r for r in ALL_ROWS if r not in ("onnx-fp16", "onnx-fp32-plain", "onnx-int4-plain",
                                                      "pytorch-bf16", "llamacpp-llama-f16", "executorch-fp32"))
# `lmexport bench` on an ONNX folder asks for huge pages itself (lmexport/runtime/hugepages.py);
# this row turns that off, so the same run shows the before and after.
SMALL_PAGES_ENV = {"LMEXPORT_HUGE_PAGES": "0"}
REFERENCE = "pytorch-fp32"        # the quality column's reference


@dataclass
class Row:
    key: str
    label: str
    artifact: Path
    command: Callable[[Path], list[str]]        # json output file -> argv
    weight_bytes: Callable[[], int]
    needs: str | None = None                    # build step this row depends on
    quality: Callable[[Path], list[str]] | None = None   # logits .npy -> argv of the quality pass
    env: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    bytes_per_token: int | None = None
    quality_result: dict | None = None


def workload_args(args) -> list[str]:
    return ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
            "--batch", str(args.batch), "--repeats", str(args.repeats), "--threads", str(args.threads)]


def make_rows(args, work: prepare.Work) -> list[Row]:
    lm = prepare.lmexport_exe()
    wl = workload_args(args)
    th = ["--threads", str(args.threads)]
    lm_worker = [sys.executable, str(HERE / "worker_lmexport.py")]
    rows = []
    for dt, size in (("fp32", 4), ("bf16", 2)):
        rows.append(Row(f"pytorch-{dt}", f"PyTorch eager {dt} (Liquid-Metal reference)", work.liquid,
                        lambda out, dt=dt: [lm, "bench", str(work.liquid), "--device", "cpu", "--torch-dtype", dt,
                                            "--json", *wl],
                        lambda size=size: weights.safetensors_bytes(work.liquid, size), needs="liquid",
                        quality=lambda npy, dt=dt: [*lm_worker, str(work.liquid), "--torch-dtype", dt,
                                                    "--logits", str(npy), *th]))
    for v in prepare.ONNX_VARIANTS:
        path = work.onnx(v)
        rows.append(Row(f"onnx-{v}", f"lmexport ONNX {ONNX_LABELS.get(v, v)}", path,
                        lambda out, path=path: [lm, "bench", str(path), "--device", "cpu", "--json", *wl],
                        lambda path=path: weights.onnx_bytes(path / "model.onnx"), needs=f"onnx-{v}",
                        quality=lambda npy, path=path: [*lm_worker, str(path), "--logits", str(npy), *th]))
    int4 = work.onnx("int4")
    rows.append(Row("onnx-int4-4k-pages", "lmexport ONNX int4, 4 KiB pages (LMEXPORT_HUGE_PAGES=0)", int4,
                    lambda out: [lm, "bench", str(int4), "--device", "cpu", "--json", *wl],
                    lambda: weights.onnx_bytes(int4 / "model.onnx"), needs="onnx-int4", env=SMALL_PAGES_ENV))
    rows.append(Row("optimum-fp32", "optimum-onnx fp32 (plain Llama)", work.optimum,
                    lambda out: [str(work.python(work.venv_optimum)), str(HERE / "worker_optimum.py"),
                                 str(work.optimum), "--out", str(out), *wl],
                    lambda: weights.onnx_bytes(work.optimum / "model.onnx"), needs="optimum-fp32",
                    quality=lambda npy: [str(work.python(work.venv_optimum)), str(HERE / "worker_optimum.py"),
                                         str(work.optimum), "--logits", str(npy), *th]))
    for name, (_, _, outtype) in prepare.GGUF_FILES.items():
        path = work.gguf(name)
        worker = [sys.executable, str(HERE / "worker_llamacpp.py"), str(path), "--variant", outtype]
        rows.append(Row(f"llamacpp-{name}", GGUF_LABELS[name], path,
                        lambda out, worker=worker: [*worker, "--out", str(out), *wl],
                        lambda path=path: weights.gguf_bytes(path), needs=f"gguf-{name}",
                        quality=lambda npy, worker=worker: [*worker, "--logits", str(npy), *th]))
    for v in prepare.PTE_VARIANTS:
        path = work.pte(v)
        rows.append(Row(f"executorch-{v}", PTE_LABELS[v], path,
                        lambda out, path=path: [lm, "bench", str(path), "--json", *wl],
                        lambda path=path: weights.pte_bytes(path), needs=f"pte-{v}",
                        quality=lambda npy, path=path: [*lm_worker, str(path), "--logits", str(npy), *th]))
    wanted = set(args.rows)
    return [r for r in rows if r.key in wanted]


def run_row(row: Row, out_dir: Path, round_no: int, timeout: float) -> None:
    out = out_dir / f"{row.key}.round{round_no}.json"
    out.unlink(missing_ok=True)
    err_log = out_dir / f"{row.key}.round{round_no}.log"
    cmd = row.command(out)
    log.info("round %d  %-15s %s", round_no, row.key, " ".join(cmd[:3]))
    t0 = time.perf_counter()
    try:
        with open(err_log, "w") as err:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, timeout=timeout, cwd=ROOT,
                                  text=True, env={**os.environ, **row.env})
    except subprocess.TimeoutExpired:
        row.failures.append(f"round {round_no}: timed out after {timeout:.0f} s")
        log.error("%s: timed out", row.key)
        return
    if proc.returncode:
        tail = " | ".join(err_log.read_text(errors="replace").strip().splitlines()[-2:])[-400:]
        row.failures.append(f"round {round_no}: exit {proc.returncode}: {tail}")
        log.error("%s failed: %s", row.key, tail)
        return
    text = out.read_text() if out.exists() else proc.stdout
    try:
        result = json.loads(text)
    except json.JSONDecodeError:
        row.failures.append(f"round {round_no}: no JSON result")
        return
    out.write_text(json.dumps(result, indent=2) + "\n")
    row.runs.append(result)
    log.info("%-15s decode %.2f tokens/s, prefill %.0f ms (%.0f s)", row.key,
             result["decode_tokens_per_s"]["median"], result["prefill_ms"]["median"], time.perf_counter() - t0)


def run_quality(row: Row, out_dir: Path, reference: np.ndarray | None, timeout: float) -> np.ndarray | None:
    """The row's quality pass (next-token logits on fixed ids); its KL from ``reference`` into the row."""
    npy = out_dir / f"{row.key}.logits.npy"
    npy.unlink(missing_ok=True)
    log.info("quality %-15s", row.key)
    try:
        subprocess.run(row.quality(npy), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout,
                       cwd=ROOT, check=True, env={**os.environ, **row.env})
        logits = np.load(npy)
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        row.failures.append(f"quality pass: {exc} {detail.decode(errors='replace')[-300:]}".strip())
        return None
    if reference is not None:
        row.quality_result = distribution_agreement(reference, logits)
    return logits


def aggregate(row: Row) -> dict | None:
    if not row.runs:
        return None
    def pool(key):
        values = [v for r in row.runs for v in r[key]["values"]]
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
    first = row.runs[0]
    return {"decode_tokens_per_s": pool("decode_tokens_per_s"), "prefill_ms": pool("prefill_ms"),
            "load_s": statistics.median(r["load_s"] for r in row.runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in row.runs),
            "huge_mapped_mb": max((r.get("huge_mapped_mb") or 0.0) for r in row.runs),
            "versions": first.get("versions", {}), "rounds": len(row.runs)}


def measure_bandwidth(args, pages: str) -> dict:
    cmd = [sys.executable, str(HERE / "bandwidth.py"), "--mib", str(args.bandwidth_mib), "--threads",
           str(args.threads), "--pages", pages]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(proc.stdout)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(prepare.SHAPES), default="1b")
    ap.add_argument("--work", type=Path, default=HERE / ".work", help="Cache of models, exports and venvs.")
    ap.add_argument("--rows", nargs="+", choices=ALL_ROWS, default=list(DEFAULT_ROWS),
                    help="Rows to run (onnx-fp16 is off by default: see README).")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="Timed repeats per row per round.")
    ap.add_argument("--rounds", type=int, default=2, help="Alternating rounds over all rows.")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--row-timeout", type=float, default=900.0, help="Seconds one row may take per round.")
    ap.add_argument("--build-timeout", type=float, default=3600.0, help="Seconds one build step may take.")
    ap.add_argument("--validate-exports", action="store_true",
                    help="Let lmexport onnx compare each export with PyTorch (slow at 1.1B; off: --no-validate).")
    ap.add_argument("--bandwidth-mib", type=int, default=1024)
    ap.add_argument("--profile", action="store_true",
                    help="Profile ONNX decode steps with ORT's profiler (" + ", ".join(PROFILED) + ").")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--prepare-only", action="store_true", help="Build and cache everything, measure nothing.")
    ap.add_argument("--no-quality", action="store_true", help="Skip the quality pass (KL from fp32 PyTorch).")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.time()
    work = prepare.Work(args.work.resolve(), args.shape)
    work.root.mkdir(parents=True, exist_ok=True)
    rows_wanted = set(args.rows)
    failed = prepare.prepare_envs(work, optimum="optimum-fp32" in rows_wanted,
                                  llamacpp=any(r.startswith("llamacpp") for r in rows_wanted),
                                  timeout=args.build_timeout)
    onnx_variants = [r.split("-", 1)[1] for r in args.rows if r.startswith("onnx-") and r != "onnx-int4-4k-pages"]
    if "onnx-int4-4k-pages" in rows_wanted and "int4" not in onnx_variants:
        onnx_variants.append("int4")
    gguf_names = [r.split("-", 1)[1] for r in args.rows if r.startswith("llamacpp-")]
    if "llamacpp-build" in failed:
        failed.update({f"gguf-{g}": failed["llamacpp-build"] for g in gguf_names
                       if prepare.GGUF_FILES[g][1] == "llama.cpp" or prepare.GGUF_FILES[g][2].endswith("_k_m")})
        gguf_names = [g for g in gguf_names if f"gguf-{g}" not in failed]
    pte_variants = [r.split("-", 1)[1] for r in args.rows if r.startswith("executorch-")]
    failed.update(prepare.prepare_models(work, args.shape, onnx_variants, gguf_names,
                                         pte_variants=pte_variants, with_optimum="optimum-fp32" in rows_wanted,
                                         validate=args.validate_exports, timeout=args.build_timeout))
    prepared = time.time()
    log.info("prepared in %.0f s", prepared - started)
    if args.prepare_only:
        for k, v in failed.items():
            log.error("%s: %s", k, v)
        return

    out_dir = work.root / "results"
    out_dir.mkdir(exist_ok=True)
    rows = make_rows(args, work)
    for row in rows:
        blockers = [failed[k] for k in (row.needs, "venv-optimum" if row.key.startswith("optimum") else None,
                                        "llamacpp-build" if row.key.startswith("llamacpp") else None) if k in failed]
        if blockers:
            row.failures.append(f"not built: {blockers[0]}")
        elif not row.artifact.exists():
            row.failures.append(f"{row.artifact} is missing")
        else:
            row.bytes_per_token = row.weight_bytes()
    runnable = [r for r in rows if not r.failures]

    bandwidth = [measure_bandwidth(args, pages) for pages in ("small", "huge")]
    log.info("read bandwidth %.1f GB/s (4 KiB pages), %.1f GB/s (huge pages)",
             bandwidth[0]["bytes_per_s"] / 1e9, bandwidth[1]["bytes_per_s"] / 1e9)
    for round_no in range(args.rounds):
        shift = round_no % max(1, len(runnable))
        for row in runnable[shift:] + runnable[:shift]:
            run_row(row, out_dir, round_no, args.row_timeout)
    bandwidth += [measure_bandwidth(args, pages) for pages in ("small", "huge")]

    if not args.no_quality:
        by_key = {r.key: r for r in runnable}
        ref_row = by_key.get(REFERENCE)
        reference = run_quality(ref_row, out_dir, None, args.row_timeout) if ref_row else None
        for row in runnable:
            if row.quality and row is not ref_row and reference is not None:
                run_quality(row, out_dir, reference, args.row_timeout)
        if ref_row and reference is not None:
            ref_row.quality_result = distribution_agreement(reference, reference)

    profiles = {}
    for variant in PROFILED if args.profile else ():
        if not work.onnx(variant).exists():
            continue
        try:
            proc = subprocess.run([sys.executable, str(HERE / "profile_onnx.py"), str(work.onnx(variant)),
                                   "--prompt-tokens", str(args.prompt_tokens), "--threads", str(args.threads),
                                   "--json"], capture_output=True, text=True, timeout=args.row_timeout, check=True)
            profiles[f"onnx-{variant}"] = json.loads(proc.stdout)
        except (subprocess.SubprocessError, json.JSONDecodeError) as exc:
            profiles[f"onnx-{variant}"] = {"error": str(exc)[-300:]}

    finished = time.time()
    summary = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "shape": args.shape, "dims": prepare.SHAPES[args.shape],
        "workload": {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "batch": args.batch,
                     "repeats_per_round": args.repeats, "rounds": args.rounds, "threads": args.threads},
        "bandwidth": bandwidth,
        "bound_bytes_per_s": {pages: max(b["bytes_per_s"] for b in bandwidth if b["pages"] == pages)
                              for pages in ("small", "huge")},
        "rows": [{"key": r.key, "label": r.label, "bytes_per_token": r.bytes_per_token, "env": r.env,
                  "result": aggregate(r), "quality": r.quality_result, "failures": r.failures} for r in rows],
        "previous": report.previous_ratios(args.results.with_name("results.json")),
        "build_failures": failed, "profiles": profiles,
        "timing": {"prepare_s": prepared - started, "measure_s": finished - prepared,
                   "total_s": finished - started},
        "machine": report.machine(), "versions": report.versions(),
    }
    report.add_ratios(summary)
    (args.results.with_name("results.json")).write_text(json.dumps(summary, indent=2) + "\n")
    args.results.write_text(report.render(summary))
    log.info("wrote %s in %.0f s total", args.results, finished - started)


if __name__ == "__main__":
    main()
