"""RESULTS.md from one run's summary: machine, versions, command, the table, the targets."""
from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "pytorch-fp32"
INT4 = "onnx-int4"                   # the default int4 export
Q4_K_M = "llamacpp-llama-q4_k_m"     # the 4-bit file users download, made by llama.cpp's own tools
# (description, numerator row, measure, denominator row or "bound" or None, minimum); measures:
#   "decode": numerator decode / denominator decode; "bound": numerator decode / its bound;
#   "prefill": denominator prefill ms / numerator prefill ms (>= 1: the numerator is no slower);
#   "kl": denominator KL / numerator KL (>= 1: the numerator is no further from fp32).
TARGETS = [
    ("#16 lmexport int4 decode >= 1.3x llama.cpp Q4_K_M", INT4, "decode", Q4_K_M, 1.3),
    ("#16 lmexport int4 decode >= 0.8 of its bound", INT4, "bound", None, 0.8),
    ("#16 lmexport int4 prefill-128 no slower than llama.cpp Q4_K_M", INT4, "prefill", Q4_K_M, 1.0),
    ("#16 lmexport int4 KL from fp32 no worse than llama.cpp Q4_K_M", INT4, "kl", Q4_K_M, 1.0),
    ("#14 llama.cpp liquidmetal q4_0 decode >= 0.85x plain Llama q4_0", "llamacpp-liquid-q4_0", "decode",
     "llamacpp-llama-q4_0", 0.85),
    ("#14 llama.cpp liquidmetal q4_0 prefill within 1.3x plain Llama q4_0", "llamacpp-liquid-q4_0", "prefill",
     "llamacpp-llama-q4_0", 1 / 1.3),
    ("#14 llama.cpp liquidmetal Q4_K_M decode >= 0.85x plain Llama Q4_K_M", "llamacpp-liquid-q4_k_m", "decode",
     Q4_K_M, 0.85),
    ("#8 lmexport ONNX fp32 decode >= 1.0x optimum-onnx fp32", "onnx-fp32", "decode", "optimum-fp32", 1.0),
    ("#8 lmexport ONNX int8 decode >= 4x PyTorch eager fp32", "onnx-int8", "decode", BASELINE, 4.0),
]
# Rows whose speed must not fall behind the previous run's (compared as x PyTorch fp32 of each run).
NO_SLOWER = ("onnx-fp32", "onnx-int8")
# A change and the row without it, or one engine over another, measured in the same run: (description, after, before)
BEFORE_AFTER = [
    ("int4: q|k|v and gate|up packed / one MatMul per weight (`--no-pack-matmuls`)", "onnx-int4", "onnx-int4-nopack"),
    ("int4: huge pages (the CLI's default) / 4 KiB pages (`LMEXPORT_HUGE_PAGES=0`)", "onnx-int4",
     "onnx-int4-4k-pages"),
    ("int4: block 128 / block 32 (default)", "onnx-int4-b128", "onnx-int4"),
    ("int4: round-to-nearest, all 4 bits / default", "onnx-int4-rtn", "onnx-int4"),
    ("fp32: fused ops / plain ops (`--no-fused-ops --opset 18`)", "onnx-fp32", "onnx-fp32-plain"),
    ("int4: fused ops / plain ops (`--no-fused-ops --opset 18`)", "onnx-int4", "onnx-int4-plain"),
    # one model on the phone's engine against the laptop's two (issue 28: no target, measured)
    ("ExecuTorch 8da4w (XNNPACK) / lmexport ONNX int4", "executorch-8da4w", "onnx-int4"),
    ("ExecuTorch 8da4w (XNNPACK) / llama.cpp liquidmetal Q4_K_M", "executorch-8da4w", "llamacpp-liquid-q4_k_m"),
]
HUGE_SHARE = 0.5   # a row whose weights are at least this much in huge pages is bounded by that bandwidth


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": None, "memory_gib": None,
            "kernel": platform.release()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu"] = fields.get("Model name", info["cpu"])
        info["cores"] = int(fields.get("CPU(s)", 0)) or None
        flags = fields.get("Flags", "").split()
        info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
                                   "amx_int8") if f in flags]
        info["family_model"] = f"family {fields.get('CPU family', '?')} model {fields.get('Model', '?')}"
        info["threads_per_core"] = fields.get("Thread(s) per core")
        info["hypervisor"] = fields.get("Hypervisor vendor")
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("lmexport", "torch", "onnxruntime", "onnx", "transformers", "numpy", "gguf"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    try:
        out["lmexport_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def previous_ratios(path: Path) -> dict[str, dict]:
    """Each row's decode rate over PyTorch fp32's, from the results.json a previous run left (if any)."""
    import json

    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for r in old.get("rows", []):
        if r.get("vs_pytorch_fp32") is not None:
            out[r["key"]] = {"vs_pytorch_fp32": r["vs_pytorch_fp32"],
                             "commit": old.get("versions", {}).get("lmexport_commit")}
    return out


def _decode(res: dict) -> float:
    return res["decode_tokens_per_s"]["median"]


def add_ratios(summary: dict) -> None:
    """Each row's bound (bandwidth of the page size its weights sat in / bytes per token x batch),
    its ratios to PyTorch fp32 and to the bound, the targets and the no-slower checks."""
    bws = summary["bound_bytes_per_s"]
    batch = summary["workload"]["batch"]
    rows = {r["key"]: r for r in summary["rows"]}
    base = rows.get(BASELINE, {}).get("result")
    for r in summary["rows"]:
        res = r["result"]
        huge = (res or {}).get("huge_mapped_mb") or 0.0
        share = min(1.0, huge * (1 << 20) / r["bytes_per_token"]) if r["bytes_per_token"] and res else None
        r["huge_share"] = share
        r["pages"] = "huge" if share is not None and share >= HUGE_SHARE else "small"
        bw = bws[r["pages"]]
        r["bound_tokens_per_s"] = bw * batch / r["bytes_per_token"] if r["bytes_per_token"] else None
        if res is None:
            r["vs_pytorch_fp32"] = r["vs_bound"] = None
            continue
        r["vs_pytorch_fp32"] = _decode(res) / _decode(base) if base else None
        r["vs_bound"] = _decode(res) / r["bound_tokens_per_s"] if r["bound_tokens_per_s"] else None
    summary["targets"] = []
    for text, num, measure, den, minimum in TARGETS:
        n, d = rows.get(num, {}), rows.get(den, {}) if den else {}
        ratio = None
        if n.get("result"):
            if measure == "bound":
                ratio = n["vs_bound"]
            elif measure == "decode" and d.get("result"):
                ratio = _decode(n["result"]) / _decode(d["result"])
            elif measure == "prefill" and d.get("result"):
                ratio = d["result"]["prefill_ms"]["median"] / n["result"]["prefill_ms"]["median"]
            elif measure == "kl" and n.get("quality") and d.get("quality") and n["quality"]["kl"] > 0:
                ratio = d["quality"]["kl"] / n["quality"]["kl"]
        summary["targets"].append({"target": text, "ratio": ratio, "minimum": minimum,
                                   "met": None if ratio is None else ratio >= minimum})
    summary["no_slower"] = []
    for key in NO_SLOWER:
        now, then = rows.get(key, {}).get("vs_pytorch_fp32"), summary.get("previous", {}).get(key)
        if now is not None and then:
            summary["no_slower"].append({"row": key, "now": now, "previous": then["vs_pytorch_fp32"],
                                         "commit": then.get("commit")})
    summary["before_after"] = []
    for text, after, before in BEFORE_AFTER:
        a, b = rows.get(after, {}), rows.get(before, {})
        if a.get("result") and b.get("result"):
            qa, qb = a.get("quality"), b.get("quality")
            summary["before_after"].append({
                "what": text, "decode": _decode(a["result"]) / _decode(b["result"]),
                "prefill": b["result"]["prefill_ms"]["median"] / a["result"]["prefill_ms"]["median"],
                "load": a["result"]["load_s"] / b["result"]["load_s"] if b["result"]["load_s"] else None,
                "kl": qa["kl"] / qb["kl"] if qa and qb and qb["kl"] else None})


def _f(x, fmt="{:.2f}", none="–"):
    return none if x is None else fmt.format(x)


def render(s: dict) -> str:
    w, m, v = s["workload"], s["machine"], s["versions"]
    bw = s["bandwidth"]
    isa = ", ".join(m.get("isa") or []) or "?"
    lines = [
        "# Benchmark results",
        "",
        "Generated by `benchmarks/run.py` (see `benchmarks/README.md` for what each row means);"
        " rerunning it rewrites this file.",
        "",
        "## Setup",
        "",
        f"- **Command**: `{s['command']}`",
        f"- **Model**: random weights, shape `{s['shape']}`: " + ", ".join(f"{k} {x}" for k, x in s["dims"].items()),
        f"- **Workload**: batch {w['batch']}, prompt {w['prompt_tokens']} tokens, {w['new_tokens']} decode calls "
        f"of one token; {w['repeats_per_round']} timed repeats per row per round after a warm-up, "
        f"{w['rounds']} alternating rounds (row order rotated each round); {w['threads']} threads for every row",
        f"- **Machine**: CPU `{m.get('cpu')}` ({m.get('family_model', '?')}; {isa}), {m.get('cores')} cores "
        f"({m.get('threads_per_core') or '?'} thread(s) per core), {m.get('memory_gib')} GiB memory, "
        f"Linux {m.get('kernel')}" + (f", {m['hypervisor']} VM" if m.get("hypervisor") else ""),
        "- **Versions**: " + ", ".join(f"{k} {x}" for k, x in v.items()) + _row_versions(s),
        f"- **Read bandwidth** (numpy sum over {bw[0]['array_mib']} MiB, best of {bw[0]['repeats']}, "
        "4 KiB pages and transparent huge pages; before and after the rows): "
        + "; ".join(f"{'4 KiB' if b['pages'] == 'small' else 'huge'} pages ({b['huge_fraction'] * 100:.0f}% huge) "
                    f"{b['single_thread_bytes_per_s'] / 1e9:.1f} GB/s 1 thread, "
                    f"{b['multi_thread_bytes_per_s'] / 1e9:.1f} GB/s {b['threads']} threads" for b in bw)
        + f". Bounds use the best: {s['bound_bytes_per_s']['small'] / 1e9:.1f} GB/s (4 KiB) and "
          f"{s['bound_bytes_per_s']['huge'] / 1e9:.1f} GB/s (huge)",
        f"- **Wall time**: {s['timing']['prepare_s'] / 60:.1f} min building or reusing the cache, "
        f"{s['timing']['measure_s'] / 60:.1f} min measuring",
        "",
        "## Decode, prefill and quality",
        "",
        "Decode tokens/s: median [min – max] over every timed repeat of every round. Bound: the read "
        "bandwidth of the page size the row's weights sat in (huge pages: the share of the weights mapped "
        "with 2 MiB pages at the end of the row) ÷ bytes of weights read per token (every stored weight "
        "except the embedding table). KL: mean KL(fp32 PyTorch ‖ row) of the next-token distribution over "
        "fixed positions (teacher-forced prompts, `lmexport/bench/protocol.py`), nats; top-1: how often the "
        "row's argmax is the reference's.",
        "",
        "| row | weights / token | decode tokens/s | × PyTorch fp32 | huge pages | bound tokens/s | × bound | "
        f"prefill ms ({w['prompt_tokens']} tok) | KL from fp32 | top-1 | load s | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        res, q = r["result"], r.get("quality")
        gb = _f(r["bytes_per_token"] and r["bytes_per_token"] / 1e9, "{:.2f} GB")
        kl = _f(q and q["kl"], "{:.2e}") if q else "–"
        top1 = _f(q and q["top1"] * 100, "{:.1f}%") if q else "–"
        if res is None:
            lines.append(f"| {r['label']} | {gb} | **failed** | | | {_f(r['bound_tokens_per_s'])} | | | {kl} | "
                         f"{top1} | | |")
            continue
        d, pf = res["decode_tokens_per_s"], res["prefill_ms"]
        lines.append(
            f"| {r['label']} | {gb} | {d['median']:.2f} [{d['min']:.2f} – {d['max']:.2f}] | "
            f"{_f(r['vs_pytorch_fp32'])} | {_f(r.get('huge_share') and r['huge_share'] * 100, '{:.0f}%', '0%')} | "
            f"{_f(r['bound_tokens_per_s'])} | {_f(r['vs_bound'])} | {pf['median']:.0f} | {kl} | {top1} | "
            f"{res['load_s']:.1f} | {res['peak_rss_mb'] / 1024:.2f} GiB |")
    failures = [(r["label"], f) for r in s["rows"] for f in r["failures"]]
    if failures:
        lines += ["", "### Failures", ""]
        lines += [f"- {label}: {text}" for label, text in failures]
    lines += ["", "## Targets", "",
              "Ratios of medians from the table above (prefill: the other row's ms over this row's, so ≥ 1 "
              "means no slower; KL: the other row's KL over this row's, so ≥ 1 means no worse).", "",
              "| target | measured | met |", "|---|---:|:---:|"]
    for t in s["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {_f(t['ratio'], '{:.2f}x')} | {met} |")
    if s.get("no_slower"):
        lines += ["", "## No slower than the previous run", "",
                  "Decode × PyTorch fp32 of each run (the same-run baseline cancels the machine's drift).", "",
                  "| row | this run | previous run | met |", "|---|---:|---:|:---:|"]
        for n in s["no_slower"]:
            ok = "yes" if n["now"] >= 0.95 * n["previous"] else "**no**"
            lines.append(f"| {n['row']} | {n['now']:.2f}x | {n['previous']:.2f}x (commit {n['commit']}) | {ok} |")
    if s.get("before_after"):
        lines += ["", "## Before and after, same run", "",
                  "A change over the row without it (or one engine over another), from the medians above: decode "
                  "rate ratio, prefill speed-up "
                  "(before ms / after ms), load time ratio (after s / before s) and KL ratio (after / before; "
                  "below 1 is closer to fp32).", "",
                  "| change | decode | prefill | load time | KL |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {f['what']} | {f['decode']:.2f}x | {f['prefill']:.2f}x | {_f(f['load'], '{:.2f}x')} | "
                  f"{_f(f['kl'], '{:.2f}x')} |" for f in s["before_after"]]
    for key, prof in (s.get("profiles") or {}).items():
        if "ops" not in prof:
            lines += ["", f"Profiling {key} failed: {prof.get('error')}"]
            continue
        nodes = sum(op["nodes_per_step"] for op in prof["ops"])
        lines += ["", f"## Where a `{key}` decode step spends its time", "",
                  f"ORT profiler, {prof['steps']} decode steps after a {prof['prompt_tokens']}-token prefill: "
                  f"{prof['wall_ms_per_step']:.1f} ms per step under the profiler, "
                  f"{prof['node_ms_per_step']:.1f} ms in {nodes:.0f} nodes, "
                  f"{prof['overhead_ms_per_step']:.1f} ms outside them.", ""]
        lines += _op_table(prof["ops"])
        if prof.get("prefill"):
            pre = prof["prefill"]
            lines += ["", f"The {prof['prompt_tokens']}-token prefill of `{key}`: {pre['run_ms']:.0f} ms under "
                      f"the profiler, {pre['node_ms']:.0f} ms in nodes.", ""]
            lines += _op_table(pre["ops"])
    return "\n".join(lines) + "\n"


def _op_table(ops: list[dict]) -> list[str]:
    out = ["| op type | share | ms / call | nodes / call |", "|---|---:|---:|---:|"]
    for op in ops[:8]:
        out.append(f"| {op['op_type']} | {op['share'] * 100:.1f}% | {op['ms_per_step']:.2f} | "
                   f"{op['nodes_per_step']:.0f} |")
    return out


def _row_versions(s: dict) -> str:
    extra = {}
    for r in s["rows"]:
        res = r["result"]
        if res and r["key"].startswith("optimum"):
            for k, x in res["versions"].items():
                extra.setdefault(f"{k} (optimum venv)", x)
        elif res and r["key"].startswith("llamacpp"):
            for k, x in res["versions"].items():
                extra.setdefault("llama-cpp-python (patched, lmexport llamacpp build)" if k == "llama-cpp-python"
                                 else f"llama.cpp {k}", x)
    return "".join(f", {k} {x}" for k, x in extra.items())
