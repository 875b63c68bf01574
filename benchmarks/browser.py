"""Load time and greedy decode tokens/s of `--target transformers.js` folders in three runtimes,
in one run: lmexport's Python runtime (the baseline), transformers.js on Node (onnxruntime-node)
and the browser page examples/web/ in headless Chromium (onnxruntime-web, WebAssembly).

    python benchmarks/browser.py out/onnx-tjs [more folders] [--new-tokens 128] [--browser-threads 1 2]

Needs scripts/setup_node.sh (node, transformers.js, puppeteer-core) and Debian's chromium.
Decode tokens/s: (new tokens - 1) over the time from the first new token to the last (the
browser and Node through generate()'s streamer; lmexport as `--stats` reports it). Load: the
runtime's open call (Generator.from_folder; the loader's loadLiquidMetal: tokenizer, graph,
weights fetched over loopback in the browser, session). Prints a markdown table with each
decode speed as a ratio of lmexport's, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "tests" / "exporters" / "onnx" / "node"
SERVE = ROOT / "examples" / "web" / "serve.py"
PROMPT = "def read_file(path):"


def lmexport_python(folder: Path, new_tokens: int) -> dict:
    from lmexport.runtime import Generator

    started = time.perf_counter()
    gen = Generator.from_folder(folder, threads=1)
    load = time.perf_counter() - started
    result = gen.generate([PROMPT], max_new_tokens=new_tokens)[0]
    return {"load_seconds": load, "new_tokens": len(result.token_ids),
            "decode_tokens_per_s": gen.last_stats.decode_tokens_per_s}


def node(folder: Path, new_tokens: int) -> dict:
    done = subprocess.run(["node", "bench.mjs", str(folder.resolve()), str(new_tokens), PROMPT, "1"], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def chromium(folder: Path, new_tokens: int, threads: int) -> dict:
    server = subprocess.Popen([sys.executable, str(SERVE), "--model", str(folder), "--port", "0", "--quiet"],
                              stdout=subprocess.PIPE, text=True)
    try:
        select.select([server.stdout], [], [], 30)
        url = server.stdout.readline().split()[1]
        steps = [{"mode": "complete", "prompt": PROMPT, "max_new_tokens": new_tokens}]
        done = subprocess.run(["node", "browser.mjs", f"{url}?threads={threads}", json.dumps(steps)], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=900,
                              env={**os.environ, "LMEXPORT_BROWSER_TIMEOUT_S": "400"})
        page = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=10)
    if page["state"] != "ready":
        raise SystemExit(f"{folder}: the page says {page['status']}")
    turn = page["turns"][0]
    return {"load_seconds": page["load"]["seconds"], "new_tokens": len(turn["reply_ids"]),
            "decode_tokens_per_s": turn["decode_tokens_per_s"], "threads": page["load"]["threads"],
            "cross_origin_isolated": page["load"]["cross_origin_isolated"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--browser-threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rows = []
    for folder in args.folders:
        base = lmexport_python(folder, args.new_tokens)
        rows.append((folder, "lmexport (Python, onnxruntime CPU), 1 thread", base))
        rows.append((folder, "transformers.js on Node (onnxruntime-node), 1 thread", node(folder, args.new_tokens)))
        for threads in args.browser_threads:
            rows.append((folder, f"Chromium, onnxruntime-web wasm, {threads} thread(s)",
                         chromium(folder, args.new_tokens, threads)))
        for row in rows[-2 - len(args.browser_threads):]:
            row[2]["ratio"] = row[2]["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    print("| folder | runtime | load s | new tokens | decode tokens/s | vs lmexport |")
    print("|---|---|---|---|---|---|")
    for folder, runtime, r in rows:
        print(f"| {folder.name} | {runtime} | {r['load_seconds']:.2f} | {r['new_tokens']} | "
              f"{r['decode_tokens_per_s']:.1f} | {r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
