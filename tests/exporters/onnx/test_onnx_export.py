"""lmexport onnx: exported folders run in ONNX Runtime and match the PyTorch reference.

Folders are exported once per module (one per model variant and precision) and shared
by the tests; every check runs the real files in onnxruntime, nothing is mocked.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import lmexport

from cli_helpers import run_cli
from lmexport.modeling.checkpoint import load_model
from lmexport.errors import ValidationError
from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
from lmexport.exporters.onnx.validate import validate_folder
from lmexport.runtime.batch import positions_from_mask
from lmexport.runtime.ort import Session
from lmexport.manifest import MANIFEST_FILE, Manifest, check_files, locate_tensor, stored_tensors
from lmexport.modeling.model import LAYER_MODULES
from lmexport.tensor_names import expected_tensors
from lmexport.modeling.tiny import make_model_folder

# model variants: config overrides of the tiny model (hidden 64, 2 layers, 4 heads / 2 kv heads)
MODELS = {
    "k3_gqa": {},
    "k2_tied": {"token_mixing_kernel_size": 2, "tie_word_embeddings": True},
    "k4_mha": {"token_mixing_kernel_size": 4, "num_key_value_heads": 4},
    "legacy": {"context_mode": "legacy"},
}
FP32 = list(MODELS)
PRECISIONS = {"fp16": {"dtype": "fp16"}, "int8": {"quantize": "int8"},
              "int4": {"quantize": "int4"}}
# the plain graph (no opset-23 fused ops), at the lowest supported opset
PLAIN = {"fused_ops": False, "opset": 18}
FUSED_OPS = {"Attention", "RotaryEmbedding", "RMSNormalization"}


class Exports:
    """Model folders and exported folders, made on first use and shared by the module."""

    def __init__(self, root):
        self.root = root
        self.models, self.folders = {}, {}

    def model_dir(self, name):
        if name not in self.models:
            self.models[name] = make_model_folder(self.root / f"model-{name}", seed=3, **MODELS[name])
        return self.models[name]

    def folder(self, name, precision="fp32"):
        key = (name, precision)
        if key not in self.folders:
            out = self.root / f"onnx-{name}-{precision}"
            if key == ("k3_gqa", "fp32"):     # the command end to end, once
                done = run_cli("onnx", self.model_dir(name), "-o", out)
                assert done.returncode == 0, done.stderr
                assert "PASSED" in done.stdout
            else:
                options = PLAIN if precision == "plain" else PRECISIONS.get(precision, {})
                export_onnx(self.model_dir(name), out, OnnxExportOptions(**options))
            self.folders[key] = out
        return self.folders[key]

    def reference(self, name):
        return load_model(self.model_dir(name))[0]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return Exports(tmp_path_factory.mktemp("onnx"))


def left_padded(batch, length, vocab, pad, seed=0):
    """Rows of lengths length, length//2+1, 1, ... left-padded to ``length``."""
    rng = np.random.default_rng(seed)
    lengths = [max(1, length // (2 ** r) + (1 if r else 0)) for r in range(batch)]
    lengths = [min(n, length) for n in lengths]
    ids = np.full((batch, length), pad, dtype=np.int64)
    mask = np.zeros((batch, length), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, length - n:] = rng.integers(0, vocab, n)
        mask[row, length - n:] = 1
    return ids, mask


def torch_presents(out):
    res = {}
    for i, (k, v) in enumerate(out.present_key_values):
        res[f"present.{i}.key"], res[f"present.{i}.value"] = k.numpy(), v.numpy()
    for i, t in enumerate(out.present_conv or []):
        res[f"present_conv.{i}"] = t.numpy()
    for i, t in enumerate(out.present_context or []):
        res[f"present_context.{i}"] = t.numpy()
    return res


# ---------------------------------------------------------------- fp32: exact within 1e-4

@pytest.mark.parametrize("name", FP32)
def test_fp32_matches_pytorch_chained(exports, name):
    """Batch 1 and 3, prompts of 1 and 17 tokens, 20 chained decode steps: logits and every
    present state within 1e-4 of PyTorch at every call."""
    folder, model = exports.folder(name), exports.reference(name)
    runner = Session(folder)
    c = model.config
    worst = 0.0
    for batch in (1, 3):
        for length in (1, 17):
            ids, mask = left_padded(batch, length, c.vocab_size, c.pad_token_id, seed=batch * 100 + length)
            state, ref_state, tokens = runner.zero_state(batch), {}, ids
            for step in range(21):
                pos = positions_from_mask(mask, tokens.shape[1])
                with torch.no_grad():
                    ref = model(torch.from_numpy(tokens), torch.from_numpy(mask), torch.from_numpy(pos), **ref_state)
                out = runner.run(tokens, mask, pos, state)
                valid = mask[:, -tokens.shape[1]:].astype(bool)
                worst = max(worst, float(np.abs(out["logits"][valid] - ref.logits.numpy()[valid]).max()))
                for key, value in torch_presents(ref).items():
                    keep = mask[:, None, :, None] if key.startswith("present.") else 1
                    assert out[key].shape == value.shape, key
                    diff = float(np.abs((out[key] - value) * keep).max())
                    assert diff < 1e-4, (name, batch, length, step, key, diff)
                state = runner.next_state(out)
                ref_state = {"past_key_values": ref.present_key_values, "past_conv": ref.present_conv,
                             "past_context": ref.present_context}
                tokens = ref.logits[:, -1].argmax(-1, keepdim=True).numpy()
                mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
    assert worst < 1e-4, (name, worst)


@pytest.mark.parametrize("name,graph", [("k3_gqa", "fp32"), ("k2_tied", "fp32"), ("k3_gqa", "plain")])
def test_streaming_chained_equals_one_call(exports, name, graph):
    """Streaming mode: a prompt fed as chunks (6, 5, then single tokens) gives the same
    logits as one call with the whole sequence; a batch of 2 continuing with several
    tokens after a past is the case onnxruntime's GroupQueryAttention refuses."""
    folder, model = exports.folder(name, graph), exports.reference(name)
    c = model.config
    runner = Session(folder)
    ids, mask = left_padded(2, 17, c.vocab_size, c.pad_token_id, seed=7)
    full = runner.run(ids, mask, positions_from_mask(mask, 17), runner.zero_state(2))["logits"]
    state, start, chunks = runner.zero_state(2), 0, []
    for size in (6, 5) + (1,) * 6:
        m = mask[:, :start + size]
        out = runner.run(ids[:, start:start + size], m, positions_from_mask(m, size), state)
        chunks.append(out["logits"])
        state, start = runner.next_state(out), start + size
    chained = np.concatenate(chunks, axis=1)
    valid = mask.astype(bool)
    assert np.abs(chained[valid] - full[valid]).max() < 1e-4


def test_probes_match_pytorch_intermediates(exports):
    """Every manifest probe, added as a graph output, equals PyTorch's return_intermediates."""
    folder, model = exports.folder("k3_gqa"), exports.reference("k3_gqa")
    manifest = Manifest.read(folder)
    c = model.config
    assert set(manifest.probes) == {f"layers.{i}.{m}" for i in range(c.num_hidden_layers) for m in LAYER_MODULES}
    runner = Session(folder, extra_outputs=tuple(manifest.probes.values()))
    ids, mask = left_padded(2, 9, c.vocab_size, c.pad_token_id, seed=5)
    pos = positions_from_mask(mask, 9)
    out = runner.run(ids, mask, pos, runner.zero_state(2))
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos), return_intermediates=True)
    valid = mask.astype(bool)
    for key, value_name in manifest.probes.items():
        got, want = out[value_name][valid], ref.intermediates[key].numpy()[valid]
        assert np.abs(got - want).max() < 1e-4, key
    assert sorted(os.listdir(folder)) == sorted([*manifest.files, MANIFEST_FILE])   # folder untouched


# ---------------------------------------------------------------- fp16 / int8 / int4

@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_reduced_precision_within_bounds(exports, precision):
    folder, model = exports.folder("k3_gqa", precision), exports.reference("k3_gqa")
    report = validate_folder(folder, model, precision, decode_steps=10, lengths=(17, 9, 3), seed=11)
    assert report.passed, report.table()
    manifest = Manifest.read(folder)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    if precision == "int4":
        assert manifest.quantization["method"] == "int4" and "MatMulNBits" in ops
        bits = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
        assert bits == {4, 8}                                   # the most sensitive weights at 8 bits
        q = manifest.quantization
        assert q["bits_per_weight"] <= q["budget_bits_per_weight"] and set(q["bits"].values()) == {4, 8}
    if precision == "int8":
        assert manifest.quantization["method"] == "int8"
        bits = {a.i for n in graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")
                for a in n.attribute if a.name == "bits"}
        assert bits == {8} and "GatherBlockQuantized" in ops
        assert not ops & {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulInteger"}
    if precision == "fp16":
        assert manifest.dtype == "fp16"
        assert manifest.input("context").dtype == "float32"
        assert {s.dtype for s in manifest.inputs if s.role in ("key", "value", "conv")} == {"float16"}


def test_fp16_keeps_fragile_parts_fp32(exports):
    """Every Sigmoid of the gates and the RMS statistics run in float32 (the fused graph's
    RMSNormalization inputs are float32), and Attention's mask is boolean, so no float32
    minimum is cast to fp16 -inf. (Attention's softmax precision is the op's: onnxruntime's
    CUDA kernels reject ``softmax_precision``; see exporters/onnx/fused.py.)"""
    folder = exports.folder("k3_gqa", "fp16")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(folder / "model.onnx"), load_external_data=False))
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    fp32 = onnx.TensorProto.FLOAT
    checked = 0
    for node in model.graph.node:
        if node.op_type in ("RMSNormalization", "Softmax", "ReduceMean") or (
                node.op_type == "Sigmoid" and "/mlp/" not in node.name):
            assert types.get(node.input[0]) == fp32, (node.name, types.get(node.input[0]))
            checked += 1
        if node.op_type == "Attention":
            assert "softmax_precision" not in {a.name for a in node.attribute}, node.name
            assert types.get(node.input[3]) == onnx.TensorProto.BOOL, node.name
            checked += 1
    assert checked >= 2 * (3 + 2 + 1) + 1       # per layer 3 gates, 2 norms, attention; final norm
    weights = {t.name: t.data_type for t in model.graph.initializer}
    up = locate_tensor(Manifest.read(folder).initializers, "model.layers.0.mlp.up_proj.weight")[0]   # gate|up pack
    assert weights[up] == onnx.TensorProto.FLOAT16


# ---------------------------------------------------------------- fused and plain graphs

def _op_counts(folder):
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return Counter(n.op_type for n in graph.node)


def test_default_graph_uses_fused_ops(exports):
    """The default export writes attention, RoPE and the RMS statistics as opset-23 ops
    (no GQA Expand, no Softmax, no Pow/ReduceMean chains) and records it."""
    folder, c = exports.folder("k3_gqa"), exports.reference("k3_gqa").config
    ops, manifest = _op_counts(folder), Manifest.read(folder)
    n = c.num_hidden_layers
    assert ops["Attention"] == n and ops["RotaryEmbedding"] == 2 * n and ops["RMSNormalization"] == 2 * n + 1
    assert not ops.keys() & {"Softmax", "Expand", "ReduceMean", "Pow"}
    assert manifest.opset == 23 and manifest.fused_ops


def test_plain_graph_has_no_fused_ops(exports):
    """--no-fused-ops at opset 18: only standard ops that predate opset 23; same numbers."""
    folder, model = exports.folder("k3_gqa", "plain"), exports.reference("k3_gqa")
    ops, manifest = _op_counts(folder), Manifest.read(folder)
    assert not ops.keys() & FUSED_OPS
    assert ops["Softmax"] == model.config.num_hidden_layers
    assert manifest.opset == 18 and not manifest.fused_ops
    report = validate_folder(folder, model, "fp32", decode_steps=4, lengths=(9, 3), seed=2)
    assert report.passed, report.table()
    fused = sum(_op_counts(exports.folder("k3_gqa")).values())
    assert fused < 0.7 * sum(ops.values()), (fused, sum(ops.values()))


def test_fused_modules_compute_the_reference(exports):
    """The fused modules' eager forward (half rotary tables, boolean mask, 2-D depthwise
    conv, the custom ops) equals the model's own modules: left-padded batch, a past, then
    a chunk of 3 tokens."""
    from lmexport.exporters.onnx.graph import export_copy

    model = exports.reference("k2_tied")
    fused = export_copy(model, torch.float32, fused=True)
    # per layer: attention, two adaptive norms, token mixing; plus the final norm
    assert sum("Fused" in type(m).__name__ for m in fused.modules()) == 4 * model.config.num_hidden_layers + 1
    c = model.config
    ids, mask = left_padded(2, 8, c.vocab_size, c.pad_token_id, seed=4)
    with torch.no_grad():
        states = []
        for net in (model, fused):
            first = net(torch.from_numpy(ids[:, :5]), torch.from_numpy(mask[:, :5]))
            second = net(torch.from_numpy(ids[:, 5:]), torch.from_numpy(mask),
                         past_key_values=first.present_key_values, past_conv=first.present_conv,
                         past_context=first.present_context)
            states.append((first.logits, second.logits, second.present_key_values[-1][0]))
    valid = [torch.from_numpy(mask[:, :5]).bool(), torch.from_numpy(mask[:, 5:]).bool()]
    for i in range(2):
        assert (states[0][i] - states[1][i])[valid[i]].abs().max() < 1e-5
    assert (states[0][2] - states[1][2]).abs().max() < 1e-5


def test_cli_fused_ops_need_opset_23(exports, tmp_path):
    done = run_cli("onnx", exports.model_dir("k3_gqa"), "-o", tmp_path / "out", "--opset", 18)
    _assert_one_line(done, "fused attention and norm ops need opset 23 (got 18); pass --no-fused-ops")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the folder itself

@pytest.mark.parametrize("name,precision", [("k3_gqa", "fp32"), ("k2_tied", "fp32"), ("legacy", "fp32"),
                                            ("k3_gqa", "int4")])
def test_folder_is_what_the_manifest_says(exports, name, precision):
    folder = exports.folder(name, precision)
    manifest = Manifest.read(folder)
    check_files(folder, manifest, hashes=True)
    assert sorted(os.listdir(folder)) == sorted([*manifest.files, MANIFEST_FILE])
    assert {"model.onnx", "model.onnx.data", "config.json", "tokenizer.json"} <= set(manifest.files)
    onnx.checker.check_model(str(folder / "model.onnx"))
    model, ckpt = load_model(exports.model_dir(name))
    assert manifest.weights_hash == ckpt.weights_hash()
    assert manifest.mode == model.config.context_mode
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 64
    # the graph's IO is the manifest's, in order, with the declared axes
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for values, specs in ((proto.graph.input, manifest.inputs), (proto.graph.output, manifest.outputs)):
        assert [v.name for v in values] == [s.name for s in specs]
        for v, s in zip(values, specs):
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            assert dims == list(s.shape), s.name
    roles = {s.role for s in manifest.inputs}
    assert ({"conv", "context"} <= roles) == (name != "legacy")
    # every canonical tensor is in model.onnx.data under its name, at the stated offset
    assert {r.name for r in expected_tensors(model.config)} <= stored_tensors(manifest.initializers)
    assert all(info["file"] == "model.onnx.data" for info in manifest.initializers.values())
    info = manifest.initializers["model.layers.1.token_mixing.conv.weight"]
    with open(folder / "model.onnx.data", "rb") as f:
        f.seek(info["offset"])
        raw = np.frombuffer(f.read(info["length"]), dtype=np.float32)
    assert np.array_equal(raw, model.model.layers[1].token_mixing.conv.weight.detach().numpy().ravel())
    if precision == "fp32":          # up_proj is stored in the gate|up pack, as its output columns
        name, info, (first, end) = locate_tensor(manifest.initializers, "model.layers.1.mlp.up_proj.weight")
        assert info["layout"].startswith("transposed") and name == info["pack"]
        up = model.model.layers[1].mlp.up_proj.weight.detach().numpy()          # [out, in]
        with open(folder / "model.onnx.data", "rb") as f:
            f.seek(info["offset"])
            raw = np.frombuffer(f.read(info["length"]), dtype=np.float32).reshape(up.shape[1], -1)
        assert np.array_equal(raw[:, first:end], up.T)
    names = [n.name for n in proto.graph.node]
    assert any(n.startswith("/model/layers.1/self_attn/") for n in names)
    assert len(set(names)) == len(names)
    # named from the exporter's scopes, then its per-node metadata (stack traces with local paths) dropped
    assert not [n.name for n in proto.graph.node if n.metadata_props]
    assert str(Path(lmexport.__file__).parent).encode() not in (folder / "model.onnx").read_bytes()


def test_corrupted_weight_fails_validation(exports, tmp_path):
    """The validator sees a damaged layer-1 weight (what the parity tool will do on purpose)."""
    import shutil
    folder = tmp_path / "damaged"
    shutil.copytree(exports.folder("k3_gqa"), folder)
    info = Manifest.read(folder).initializers["model.layers.1.mlp.down_proj.weight"]
    with open(folder / "model.onnx.data", "r+b") as f:
        f.seek(info["offset"])
        f.write(np.full(info["length"] // 4, 0.5, dtype=np.float32).tobytes())
    report = validate_folder(folder, exports.reference("k3_gqa"), "fp32", decode_steps=2)
    assert not report.passed
    assert any(f.startswith("logits") for f in report.failures)
    assert any("present.1." not in f and "present.0." not in f for f in report.failures)


def test_failed_validation_leaves_nothing(exports, tmp_path):
    """An fp16 export held to the fp32 bounds fails: a typed error, and no OUT_DIR."""
    out = tmp_path / "out"
    with pytest.raises(ValidationError) as info:
        export_onnx(exports.model_dir("k3_gqa"), out, OnnxExportOptions(dtype="fp16", tolerance="fp32"))
    assert "nothing was written" in str(info.value)
    assert "logits" in str(info.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "lmexport" in p.name]


# ---------------------------------------------------------------- bad input, through the CLI

def _assert_one_line(done, message):
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_cli_missing_model(tmp_path):
    done = run_cli("onnx", tmp_path / "nope", "-o", tmp_path / "out")
    _assert_one_line(done, "does not exist")
    assert not (tmp_path / "out").exists()


def test_cli_output_exists(exports, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    done = run_cli("onnx", exports.model_dir("k3_gqa"), "-o", tmp_path / "out")
    _assert_one_line(done, "already exists")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("opset", [17, 99])
def test_cli_unsupported_opset(exports, tmp_path, opset):
    done = run_cli("onnx", exports.model_dir("k3_gqa"), "-o", tmp_path / "out", "--opset", opset)
    _assert_one_line(done, f"opset {opset} is not supported (supported: 18..23)")
    assert not (tmp_path / "out").exists()


def test_nan_outputs_always_fail():
    from lmexport.exporters.onnx.validate import StateStats, ValidationReport
    from lmexport.compare.tolerances import get_tolerance

    for preset in ("fp32", "int4"):
        report = ValidationReport(preset, get_tolerance(preset), calls=1)
        ref = np.zeros((2, 5))
        report.add_logits(ref, np.full((2, 5), np.nan))
        report.states["present_conv.0"] = StateStats()
        report.states["present_conv.0"].add(np.ones((1, 4, 2)), np.full((1, 4, 2), np.nan))
        report.finish()
        assert any("NaN" in f and f.startswith("logits") for f in report.failures), report.failures
        assert any("present_conv.0" in f and "NaN" in f for f in report.failures), report.failures
