"""One benchmark row for a GGUF file on llama.cpp (the patched llama-cpp-python of this checkout's
environment: ``lmexport llamacpp build``, which runs plain ``llama`` GGUFs and ``liquidmetal`` ones).

    python benchmarks/worker_llamacpp.py MODEL.gguf --out row.json --variant q4_0 [...]

llama.cpp at its best, as its own tools run it: flash attention on (llama-bench and llama-cli turn
it on where the backend supports it; llama-cpp-python's default is off), the K/V cache in F16,
``--threads`` for prompt and decode alike (llama-bench uses the physical cores), a batch as large as
the prompt. ``Llama.eval`` runs a call (prefill or one decode token) on llama.cpp's own KV cache;
the greedy token is the argmax of the call's last logits, read from llama.cpp's own buffer
(``llama_get_logits``: llama-cpp-python 0.3.36 no longer copies them into ``Llama.scores`` unless
``logits_all``, which would make llama.cpp compute every position's logits). The same measurement protocol as
``lmexport bench`` drives it (``lmexport/bench/protocol.py``). llama-cpp-python's high-level API
holds one sequence, so batch must be 1.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_cli import run_worker, worker_parser  # noqa: E402


class LlamaCppStepper:
    def __init__(self, llm):
        self.llm = llm
        self.n_vocab = int(llm.n_vocab())

    def reset(self, batch: int) -> None:
        if batch != 1:
            raise SystemExit("llama-cpp-python's Llama runs one sequence: batch must be 1")
        self.llm.reset()

    def step(self, ids, mask, positions):
        """The last position's logits [1, vocab] (the benchmark protocol takes the argmax)."""
        self.llm.eval([int(t) for t in ids[0]])
        last = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,))
        return np.array(last, dtype=np.float32)[None, :]


def main() -> None:
    ap = worker_parser("gguf")
    ap.add_argument("--variant", required=True)
    ap.add_argument("--flash-attn", choices=["on", "off"], default="on")
    args = ap.parse_args()
    if args.batch != 1:
        raise SystemExit("llama-cpp-python's Llama runs one sequence: batch must be 1")

    import llama_cpp

    from lmexport.bench.protocol import QUALITY_NEXT_TOKENS, QUALITY_PROMPT_TOKENS

    def load():
        kwargs = {"n_threads": args.threads, "n_threads_batch": args.threads} if args.threads else {}
        n_ctx = max(args.prompt_tokens + args.new_tokens, QUALITY_PROMPT_TOKENS + QUALITY_NEXT_TOKENS) + 16
        llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=n_ctx, n_batch=max(512, args.prompt_tokens),
                              n_ubatch=max(512, args.prompt_tokens), flash_attn=args.flash_attn == "on",
                              logits_all=False, verbose=False, **kwargs)
        stepper = LlamaCppStepper(llm)
        return stepper, stepper.n_vocab

    run_worker(load, args, artifact=args.gguf, backend="llama.cpp", variant=args.variant,
               versions={"llama-cpp-python": llama_cpp.__version__, "flash_attn": args.flash_attn})


if __name__ == "__main__":
    main()
