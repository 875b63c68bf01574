"""The quality pass (``--logits``) for the lmexport rows: an ONNX folder on the torch-free runtime,
or the PyTorch reference (``--torch-dtype``), opened by ``lmexport.engine.open_artifact`` and driven
exactly as ``lmexport bench`` drives them.

    python benchmarks/worker_lmexport.py ARTIFACT --logits out.npy [--torch-dtype fp32] [--threads N]

The timing of these rows is ``lmexport bench`` itself; this worker only produces the next-token
logits that ``run.py`` compares with the fp32 PyTorch reference (``lmexport.compare.metrics``).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_cli import run_worker, worker_parser  # noqa: E402


def main() -> None:
    from lmexport.engine import open_artifact

    ap = worker_parser("artifact")
    ap.add_argument("--torch-dtype", default=None, help="Run the PyTorch reference in this dtype.")
    args = ap.parse_args()
    options = {"dtype": args.torch_dtype} if args.torch_dtype else {}
    opened = []

    def load():
        engine = open_artifact(args.artifact, device="cpu", threads=args.threads, **options)
        opened.append(engine)
        return engine, engine.info.vocab_size

    engine, _ = load()
    opened.clear()
    info = engine.info
    run_worker(lambda: (engine, info.vocab_size), args, artifact=args.artifact, backend=info.engine,
               variant=info.variant if args.torch_dtype else "onnx", versions=info.versions)


if __name__ == "__main__":
    main()
