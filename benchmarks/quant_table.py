"""The README's quantisation table: every export of three models, scored and timed in one run.

Models: ``bundled`` (examples/liquid-metal-tiny, its heldout.txt), ``smollm2`` (SmolLM2-135M-Instruct
through ``lmexport convert``, examples/smollm2/heldout.txt) and ``medium`` (the random mid-size model of
benchmarks/prepare.py; random weights have no meaningful perplexity, so it is scored on seeded random
token ids by KL only). Each row is made through the CLI (``lmexport onnx/gguf/executorch ... --overwrite``)
and scored by one function over the engine layer (``score`` below, run in a subprocess per artifact so its
memory is returned): each window one prefill from an empty state, the NLL and the KL from PyTorch fp32's
log-probs on the same positions (saved once per model). GGUFs are scored in the patched llama.cpp.
Decode speed: ``lmexport bench ARTIFACT --threads 2 --json``, one at a time, OMP_WAIT_POLICY unset.

    python benchmarks/quant_table.py [--models bundled smollm2 medium] [--rows ...] [--no-bench]
        [--no-pte] [--reuse] [--work DIR] [--write-readme [README]]

Writes WORK/quant-table.md and WORK/quant-table.json; progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clitools import ROOT, export, lmexport, replace_block, run, size_mb  # noqa: E402  (benchmarks/ is not a package)

BEGIN, END = "<!-- quant-table:begin -->", "<!-- quant-table:end -->"
WINDOW, STRIDE = 256, 128
RANDOM_WINDOWS, RANDOM_SEED = 4, 0
# row -> (command, options); "gguf" rows are `lmexport gguf --outtype`, scored with --engine llama.cpp
ROWS = {
    "pytorch": (None, []),
    "onnx-fp32": ("onnx", []),
    "onnx-int8": ("onnx", ["--quantize", "int8"]),
    "onnx-int4": ("onnx", ["--quantize", "int4"]),
    "onnx-int4-uint8": ("onnx", ["--quantize", "int4", "--integer-zero-points", "--no-validate"]),
    "onnx-int4-rtn": ("onnx", ["--quantize", "int4", "--round-to-nearest", "--bits-per-weight", "4",
                               "--integer-zero-points", "--no-validate"]),
    "q8_0.gguf": ("gguf", ["--outtype", "q8_0"]),
    "q4_0.gguf": ("gguf", ["--outtype", "q4_0"]),
    "q4_1.gguf": ("gguf", ["--outtype", "q4_1"]),
    "q4_k_m.gguf": ("gguf", ["--outtype", "q4_k_m"]),
    "8da4w.pte": ("executorch", ["--quantize", "8da4w", "--max-context", "512"]),
}
LABELS = {
    "pytorch": "PyTorch fp32 (the reference)",
    "onnx-fp32": "ONNX fp32",
    "onnx-int8": "ONNX int8 (`--quantize int8`)",
    "onnx-int4": "ONNX int4 (`--quantize int4`, the default recipe)",
    "onnx-int4-uint8": "ONNX int4, uint8 zero points (`--integer-zero-points`)",
    "onnx-int4-rtn": "ONNX int4, round-to-nearest, all 4 bits",
    "q8_0.gguf": "GGUF q8_0, llama.cpp",
    "q4_0.gguf": "GGUF q4_0, llama.cpp",
    "q4_1.gguf": "GGUF q4_1, llama.cpp",
    "q4_k_m.gguf": "GGUF Q4_K_M, llama.cpp",
    "8da4w.pte": "ExecuTorch 8da4w (`.pte`, XNNPACK)",
}
MODELS = ("bundled", "smollm2", "medium")


def log(msg: str) -> None:
    print(f"[quant-table] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ scoring (one subprocess per artifact)
def spans(model: dict) -> list[tuple[list[int], int]]:
    """(window ids, first scored position) for every window of a model's token stream or random ids."""
    if model["text"] is None:
        import numpy as np
        rng = np.random.default_rng(RANDOM_SEED)
        return [(rng.integers(0, model["vocab"], WINDOW).tolist(), 1) for _ in range(RANDOM_WINDOWS)]
    from lmexport.modeling.tokenizer import folder_tokenizer
    from lmexport.perplexity import windows
    ids = folder_tokenizer(Path(model["tokenizer"])).encode(Path(model["text"]).read_text(encoding="utf-8"))
    return [(ids[w.start:w.end], w.first_target) for w in windows(len(ids), WINDOW, STRIDE)]


def score(artifact: Path, engine: str, model: dict, reference: Path) -> dict:
    """NLL and mean KL from the reference log-probs (written first, by the PyTorch row) over the windows."""
    import numpy as np

    from lmexport.compare.metrics import kl_divergence, log_softmax, nll_sum
    from lmexport.perplexity import aggregate
    from lmexport.perplexity.scoring import open_engine

    eng, kind, _ = open_engine(artifact, engine=engine)
    windows = spans(model)
    ref = None if not reference.exists() else np.load(reference)
    nll, n, kl_sum, logps = 0.0, 0, 0.0, []
    for i, (ids, first) in enumerate(windows):
        x = np.asarray([ids], dtype=np.int64)
        eng.reset(1)
        logits = eng.step(x, np.ones_like(x), np.arange(x.shape[1], dtype=np.int64)[None])[0, first - 1:-1]
        nll += nll_sum(logits, ids[first:])
        n += len(ids) - first
        if ref is None:
            logps.append(log_softmax(logits).astype(np.float32))
        else:
            r = ref[f"w{i}"]
            v = min(r.shape[-1], logits.shape[-1])       # a GGUF may pad its vocabulary
            kl_sum += float(kl_divergence(r[:, :v], np.asarray(logits)[:, :v]).sum())
    if ref is None:
        np.savez(reference, **{f"w{i}": lp for i, lp in enumerate(logps)})
    return {"kind": kind, "nll_sum": nll, "n_targets": n, "perplexity": aggregate(nll, n),
            "kl_mean": 0.0 if ref is None else kl_sum / n, "windows": len(windows)}


def score_in_subprocess(artifact: Path, engine: str, model: dict, reference: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--score-worker", json.dumps(
        {"artifact": str(artifact), "engine": engine, "model": model, "reference": str(reference),
         "out": str(out)})], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(f"scoring {artifact} failed:\n{done.stdout}{done.stderr}")
    return json.loads(out.read_text())


# ------------------------------------------------------------------ models
def prepare_model(name: str, work: Path, args) -> dict:
    """{folder, text, tokenizer, vocab} of one model, built (cached) where it must be."""
    if name == "bundled":
        folder = ROOT / "examples" / "liquid-metal-tiny"
        return {"folder": str(folder), "text": str(folder / "heldout.txt"), "tokenizer": str(folder),
                "text_name": "examples/liquid-metal-tiny/heldout.txt"}
    if name == "smollm2":
        lm = args.smollm2_dir or work / "smollm2-lm"
        if not lm.exists():
            original = subprocess.run([sys.executable, ROOT / "scripts" / "fetch_smollm2.py"], check=True,
                                      capture_output=True, text=True).stdout.strip().splitlines()[-1]
            lmexport("convert", original, "-o", lm, "--overwrite")
        return {"folder": str(lm), "text": str(ROOT / "examples" / "smollm2" / "heldout.txt"), "tokenizer": str(lm),
                "text_name": "examples/smollm2/heldout.txt"}
    import prepare                              # benchmarks/prepare.py: the random model, cached
    bench_work = prepare.Work(ROOT / "benchmarks" / ".work", "medium")
    failed = prepare.prepare_models(bench_work, "medium", [], [], with_optimum=False, validate=False, timeout=3600)
    if failed:
        raise SystemExit(f"building the medium model failed: {failed}")
    return {"folder": str(bench_work.liquid), "text": None, "tokenizer": None,
            "vocab": prepare.SHAPES["medium"]["vocab_size"],
            "text_name": f"{RANDOM_WINDOWS} windows of {WINDOW} random token ids (seed {RANDOM_SEED})"}


def measure_model(name: str, rows: list[str], args) -> dict:
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    model = prepare_model(name, args.work, args)
    folder = Path(model["folder"])
    reference = work / "pytorch-logprobs.npz"
    results: dict = {"model": model, "rows": {}}
    for row in ["pytorch", *[r for r in rows if r != "pytorch"]]:
        command, extra = ROWS[row]
        target = folder if command is None else work / row
        r: dict = {"label": LABELS[row]}
        if command is not None:
            if name == "medium" and command in ("onnx", "executorch") and "--no-validate" not in extra:
                # random weights: the ONNX validation takes minutes, and near-uniform logits make the
                # 8da4w .pte's top-1 agreement a coin toss (0.565 against the preset's 0.6); KL scores it
                extra = [*extra, "--no-validate"]
            log(f"{name}: export {row}")
            export(command, folder, target, extra, args.reuse)
            r["size_mb"] = size_mb(target)
        if row == "pytorch" and reference.exists() and not args.reuse:
            reference.unlink()
        log(f"{name}: score {row}")
        r["score"] = score_in_subprocess(target, "llama.cpp" if row.endswith(".gguf") else "auto", model,
                                         reference, work / f"score-{row}.json")
        results["rows"][row] = r
    if not args.no_bench:
        for row, r in results["rows"].items():       # one at a time, after the rest, OMP_WAIT_POLICY unset
            target = folder if row == "pytorch" else work / row
            log(f"{name}: bench {row}")
            done = run("bench", target, "--threads", 2, "--device", "cpu", "--json", alone=True)
            if done.returncode:                      # e.g. a kind bench does not run: an empty cell, said why
                r["bench_error"] = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                log(f"{name}: bench {row} failed: {r['bench_error']}")
            else:
                r["bench"] = json.loads(done.stdout)
    return results


# ------------------------------------------------------------------ output
TITLES = {"bundled": "Bundled model (`examples/liquid-metal-tiny`)",
          "smollm2": "SmolLM2-135M-Instruct (`lmexport convert`)",
          "medium": "Mid-size random model (`benchmarks/prepare.py` medium shape)"}


def render(results: dict) -> str:
    lines = [f"Measured by `python benchmarks/quant_table.py` on {results['machine']}. Each window is one prefill "
             f"from an empty state; perplexity over windows of {WINDOW} with stride {STRIDE}; mean KL(PyTorch fp32 "
             "|| row) over the same scored positions, in nats; size: model.onnx + model.onnx.data, the GGUF or the "
             ".pte file; decode: `lmexport bench ARTIFACT --threads 2` (prompt 128, 64 new tokens, median). GGUFs "
             "are made by `lmexport gguf --outtype` and run in the patched llama.cpp.", ""]
    for name, res in results["models"].items():
        text = res["model"]["text"] is not None
        rows = res["rows"]
        ref = rows["pytorch"]["score"]
        bench = any("bench" in r for r in rows.values())
        lines += [f"#### {TITLES[name]}", "",
                  f"Scored on {res['model']['text_name']} ({ref['n_targets']:,} scored tokens in {ref['windows']} "
                  "windows).", ""]
        head = ((["perplexity", "vs PyTorch"] if text else []) + ["mean KL", "size MB"]
                + (["decode tok/s"] if bench else []))
        lines += ["| artifact | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
        for row, r in rows.items():
            s = r["score"]
            cells = []
            if text:
                cells += [f"{s['perplexity']:.4f}",
                          "" if row == "pytorch" else f"{(s['perplexity'] / ref['perplexity'] - 1) * 100:+.2f}%"]
            cells += ["" if row == "pytorch" else f"{s['kl_mean']:.2g}",
                      f"{r['size_mb']:.1f}" if "size_mb" in r else ""]
            if bench:
                cells.append(f"{r['bench']['decode_tokens_per_s']['median']:.1f}" if "bench" in r
                             else "n/a" if "bench_error" in r else "")
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--score-worker":
        job = json.loads(sys.argv[2])
        out = score(Path(job["artifact"]), job["engine"], job["model"], Path(job["reference"]))
        Path(job["out"]).write_text(json.dumps(out), encoding="utf-8")
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--no-bench", action="store_true", help="skip the decode speed column")
    ap.add_argument("--no-pte", action="store_true", help="skip the ExecuTorch rows (SmolLM2's takes ~10 min)")
    ap.add_argument("--reuse", action="store_true", help="keep exports (and PyTorch's log-probs) already in --work")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "quant-table")
    ap.add_argument("--smollm2-dir", type=Path, help="an already converted SmolLM2 folder (skips convert)")
    ap.add_argument("--write-readme", nargs="?", const=ROOT / "README.md", type=Path, metavar="README",
                    help=f"replace the {BEGIN} block of README (default: the repository's README.md)")
    args = ap.parse_args()
    rows = [r for r in args.rows if not (args.no_pte and r.endswith(".pte"))]
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
               "window": WINDOW, "stride": STRIDE, "models": {}}
    for name in args.models:
        results["models"][name] = measure_model(name, rows, args)
    (args.work / "quant-table.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    md = render(results)
    (args.work / "quant-table.md").write_text(md, encoding="utf-8")
    if args.write_readme:
        replace_block(args.write_readme, BEGIN, END, md)
    print(md)


if __name__ == "__main__":
    main()
