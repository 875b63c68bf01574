"""One benchmark row for an optimum-onnx export, run inside the optimum virtual environment.

    python benchmarks/worker_optimum.py ONNX_DIR --out row.json [--prompt-tokens ...]

The folder is what ``optimum-cli export onnx --task text-generation-with-past`` wrote
for the plain Llama. It is loaded with ``ORTModelForCausalLM`` (CPU provider, no IO
binding) and driven call by call with its own past_key_values, through the same
measurement protocol as ``lmexport bench`` (``lmexport/bench/protocol.py``, imported
from this checkout: it needs only numpy).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_cli import run_worker, worker_parser  # noqa: E402


class OptimumStepper:
    def __init__(self, model):
        import torch

        self.torch = torch
        self.model = model
        self.past = None

    def reset(self, batch: int) -> None:
        self.past = None

    def step(self, ids, mask, positions):
        """The last position's logits [batch, vocab] (the benchmark protocol takes the argmax)."""
        t = self.torch
        with t.inference_mode():
            out = self.model(input_ids=t.from_numpy(ids), attention_mask=t.from_numpy(mask),
                             position_ids=t.from_numpy(positions), past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[:, -1, :].float().numpy()


def main() -> None:
    args = worker_parser("onnx_dir").parse_args()

    import onnxruntime as ort
    import torch
    import transformers

    torch.set_num_threads(args.threads or torch.get_num_threads())

    def load():
        from optimum.onnxruntime import ORTModelForCausalLM

        options = ort.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
        model = ORTModelForCausalLM.from_pretrained(args.onnx_dir, provider="CPUExecutionProvider",
                                                    session_options=options, use_cache=True,
                                                    use_io_binding=False)
        return OptimumStepper(model), int(model.config.vocab_size)

    from importlib.metadata import version

    versions = {"optimum-onnx": version("optimum-onnx"), "optimum": version("optimum"),
                "onnxruntime": ort.__version__, "transformers": transformers.__version__,
                "torch": torch.__version__}
    run_worker(load, args, artifact=args.onnx_dir, backend="optimum-onnx", variant="fp32", versions=versions)


if __name__ == "__main__":
    main()
