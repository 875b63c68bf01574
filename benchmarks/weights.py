"""Bytes of weights one decode token reads, per format: the numerator of the bandwidth bound.

A decode step reads every weight matrix once (batch 1) and one row of the token
embedding, so the count is every stored weight except the embedding table (a
tied lm_head is a MatMul and is counted). Read from the files that are run, so
quantisation scales, zero points and any tensors a quantiser kept in float are
counted as they are stored.
"""
from __future__ import annotations

import json
from pathlib import Path

from lmexport.tensor_names import EMBEDDING

ONNX_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2, 21: 1, 22: 1}
GATHER_OPS = {"Gather", "GatherBlockQuantized"}
EMBEDDING_NAMES = (EMBEDDING.name,)
GGUF_EMBEDDING = EMBEDDING.gguf


def safetensors_bytes(folder: Path, bytes_per_param: int | None = None) -> int:
    """A checkpoint folder's weights read per token; ``bytes_per_param`` recasts (bf16: 2)."""
    from safetensors import safe_open

    total = 0
    tied = json.loads((folder / "config.json").read_text()).get("tie_word_embeddings", False)
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "np") as f:
            for name in f.keys():
                if name in EMBEDDING_NAMES and not tied:
                    continue
                sl = f.get_slice(name)
                numel = 1
                for d in sl.get_shape():
                    numel *= d
                size = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}.get(sl.get_dtype(), 4)
                total += numel * (bytes_per_param or size)
    return total


def onnx_bytes(model_file: Path) -> int:
    """Initializers of an ONNX model, except those only gathered from (the embedding)."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    total = 0
    for init in graph.initializer:
        ops = consumers.get(init.name, set())
        if ops and ops <= GATHER_OPS:
            continue
        total += _initializer_bytes(init)
    return total


def _initializer_bytes(init) -> int:
    for entry in init.external_data:
        if entry.key == "length":
            return int(entry.value)
    if init.raw_data:
        return len(init.raw_data)
    numel = 1
    for d in init.dims:
        numel *= d
    return numel * ONNX_ELEM_BYTES.get(init.data_type, 4)


def gguf_bytes(path: Path) -> int:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != GGUF_EMBEDDING)


def pte_bytes(path: Path) -> int:
    """An ExecuTorch program: the file less its embedding table (the sidecar says how it is stored:
    int8 rows with an fp32 scale each, or fp32). The KV cache is planned at load, not stored."""
    from lmexport.exporters.executorch import sidecar

    meta = sidecar.read(path)
    config = meta["source"]["config"]
    vocab, hidden = int(config["vocab_size"]), int(config["hidden_size"])
    bits = (meta.get("quantization", {}).get("embedding") or {}).get("bits", 32)
    table = vocab * hidden + vocab * 4 if bits == 8 else vocab * hidden * 4
    return path.stat().st_size - table


def main() -> None:  # python benchmarks/weights.py PATH...: print bytes per token of each
    import sys

    for arg in sys.argv[1:]:
        p = Path(arg)
        if p.suffix == ".gguf":
            n = gguf_bytes(p)
        elif p.suffix == ".onnx":
            n = onnx_bytes(p)
        elif p.suffix == ".pte":
            n = pte_bytes(p)
        else:
            n = safetensors_bytes(p)
        print(f"{n / 1e9:.3f} GB  {p}")


if __name__ == "__main__":
    main()
