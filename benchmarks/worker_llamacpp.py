"""One benchmark row for a GGUF file on llama.cpp, run inside the llama-cpp-python environment.

    python benchmarks/worker_llamacpp.py MODEL.gguf --out row.json --variant q4_0 [...]

``Llama.eval`` runs a call (prefill or one decode token) on llama.cpp's own KV
cache; the greedy token is the argmax of the last row of ``Llama.scores``. The
same measurement protocol as ``lmexport bench`` drives it
(``lmexport/bench/measure.py``, imported from this checkout: it needs only numpy).
llama-cpp-python's high-level API holds one sequence, so batch must be 1.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lmexport.bench.measure import run_worker, worker_parser  # noqa: E402


class LlamaCppStepper:
    def __init__(self, llm):
        self.llm = llm

    def reset(self, batch: int) -> None:
        if batch != 1:
            raise SystemExit("llama-cpp-python's Llama runs one sequence: batch must be 1")
        self.llm.reset()

    def step(self, ids, mask, positions):
        self.llm.eval([int(t) for t in ids[0]])
        return np.array([int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))], dtype=np.int64)


def main() -> None:
    ap = worker_parser("gguf")
    ap.add_argument("--variant", required=True)
    args = ap.parse_args()
    if args.batch != 1:
        raise SystemExit("llama-cpp-python's Llama runs one sequence: batch must be 1")

    import llama_cpp

    def load():
        kwargs = {"n_threads": args.threads, "n_threads_batch": args.threads} if args.threads else {}
        llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=args.prompt_tokens + args.new_tokens + 16,
                              n_batch=max(512, args.prompt_tokens), logits_all=False, verbose=False, **kwargs)
        return LlamaCppStepper(llm), int(llm.n_vocab())

    run_worker(load, args, artifact=args.gguf, backend="llama.cpp", variant=args.variant,
               versions={"llama-cpp-python": llama_cpp.__version__})


if __name__ == "__main__":
    main()
