"""The quality pass (``--logits``) for the lmexport rows: an ONNX folder on the torch-free runtime,
or the PyTorch reference (``--torch-dtype``), driven exactly as ``lmexport bench`` drives them.

    python benchmarks/worker_lmexport.py ARTIFACT --logits out.npy [--torch-dtype fp32] [--threads N]

The timing of these rows is ``lmexport bench`` itself; this worker only produces the next-token
logits that ``run.py`` compares with the fp32 PyTorch reference (``lmexport.bench.measure``).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lmexport.bench.measure import run_worker, worker_parser  # noqa: E402


def main() -> None:
    ap = worker_parser("artifact")
    ap.add_argument("--torch-dtype", default=None, help="Run the PyTorch reference in this dtype.")
    args = ap.parse_args()
    if args.torch_dtype:
        import torch

        from lmexport.bench.torch_side import open_stepper

        if args.threads:
            torch.set_num_threads(args.threads)

        def load():
            return open_stepper(args.artifact, args.torch_dtype, torch.device("cpu"))
        backend, variant, versions = "pytorch", args.torch_dtype, {"torch": torch.__version__}
    else:
        import onnxruntime as ort

        from lmexport.bench.onnx_side import OnnxStepper

        def load():
            stepper = OnnxStepper.open(args.artifact, device="cpu", threads=args.threads)
            return stepper, stepper.vocab_size
        backend, variant, versions = "onnxruntime", "onnx", {"onnxruntime": ort.__version__}
    run_worker(load, args, artifact=args.artifact, backend=backend, variant=variant, versions=versions)


if __name__ == "__main__":
    main()
