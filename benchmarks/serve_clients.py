"""Throughput of N parallel clients against `lmexport serve` (llama-server), in one run.

    python benchmarks/serve_clients.py MODEL.gguf [--clients 1 2 4] [--tokens 64] [--threads 2]

Starts llama-server with --parallel max(clients) on 127.0.0.1 (a free port), then for each N sends N
different completion requests at once (greedy, --tokens each, `cache_prompt` off) and prints the
wall time and the generated tokens per second summed over the clients; 1 client is the baseline.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["def add(a, b):", "import os\n", "class Stack:\n    def", "for i in range(", "def read_file(path):",
           "# sort a list\n", "while True:\n", "def main():\n"]


def main() -> None:
    from lmexport.runtime.llamacpp.server import LlamaServer, ServeOptions

    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    def one(server, prompt):
        body = json.dumps({"prompt": prompt, "n_predict": args.tokens, "temperature": 0, "cache_prompt": False,
                           "ignore_eos": True}).encode()
        req = urllib.request.Request(server.base_url + "/completion", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())["tokens_predicted"]

    with LlamaServer(args.gguf, ServeOptions(port=0, parallel=max(args.clients), threads=args.threads)) as server:
        one(server, PROMPTS[0])                                  # warm up
        base = None
        print("| clients | wall s | tokens | tokens/s (all clients) | vs 1 client |\n|---|---|---|---|---|")
        for n in args.clients:
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                got = list(pool.map(lambda p: one(server, p), (PROMPTS * 4)[:n]))
            dt = time.perf_counter() - t0
            rate = sum(got) / dt
            base = base or rate
            print(f"| {n} | {dt:.2f} | {sum(got)} | {rate:.1f} | {rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
