"""Packed MatMuls (exporters/onnx/pack.py): q|k|v and gate|up each run as one MatMul.

Folders are exported once per module, packed (the default) and with --no-pack-matmuls;
every check reads the real files back (onnx.load, onnxruntime) and compares numbers.
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cli_helpers import run_cli
from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
from lmexport.exporters.onnx.quant import canonical_of
from lmexport.exporters.onnx.validate import validate_folder
from lmexport.manifest import Manifest, locate_tensor, stored_tensors
from lmexport.modeling.checkpoint import load_model
from lmexport.modeling.tiny import make_model_folder
from lmexport.runtime.batch import positions_from_mask
from lmexport.runtime.ort import Session
from lmexport.tensor_names import PACKS, PackRef, expected_tensors, unpack_columns

VARIANTS = {"fp32": {}, "fp16": {"dtype": "fp16"}, "int8": {"quantize": "int8"},
            "int4": {"quantize": "int4", "bits_per_weight": 4}}      # every weight at 4 bits
# the op that runs a weight matrix in each variant
WEIGHT_OP = {"fp32": "MatMul", "fp16": "MatMul", "int8": "MatMulNBits", "int4": "MatMulNBits"}


class Folders:
    def __init__(self, root):
        self.root = root
        self.model_dir = make_model_folder(root / "model", seed=3)
        self.model = load_model(self.model_dir)[0]
        self.done = {}

    def get(self, variant: str, packed: bool = True):
        key = (variant, packed)
        if key not in self.done:
            out = self.root / f"onnx-{variant}-{'packed' if packed else 'unpacked'}"
            if variant == "fp32":           # the command end to end, both ways
                done = run_cli("onnx", self.model_dir, "-o", out, *(() if packed else ("--no-pack-matmuls",)))
                assert done.returncode == 0, done.stderr
                assert "PASSED" in done.stdout
            else:
                export_onnx(self.model_dir, out, OnnxExportOptions(pack_matmuls=packed, **VARIANTS[variant]))
            self.done[key] = out
        return self.done[key]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return Folders(tmp_path_factory.mktemp("pack"))


def _graph(folder, data=False):
    return onnx.load(str(folder / "model.onnx"), load_external_data=data).graph


def _ops(folder) -> Counter:
    return Counter(n.op_type for n in _graph(folder).node)


def _packs(config) -> list[PackRef]:
    return [PackRef(p, bid) for bid in range(config.num_hidden_layers) for p in PACKS]


# ---------------------------------------------------------------- the graph

def test_packed_fp32_graph_has_one_matmul_per_pack(folders):
    """3 fewer MatMuls per layer (q|k|v: 2, gate|up: 1); each packed initializer (named by
    tensor_names.PACKS) feeds one MatMul whose output one Split cuts into the members'
    widths; no member initializer is left; the packed bytes are the members' W^T side by side."""
    packed, unpacked, model = folders.get("fp32"), folders.get("fp32", packed=False), folders.model
    c = model.config
    saved = sum(len(p.members) - 1 for p in PACKS)
    assert saved == 3
    assert _ops(unpacked)["MatMul"] - _ops(packed)["MatMul"] == saved * c.num_hidden_layers
    assert _ops(packed)["Split"] - _ops(unpacked)["Split"] == len(PACKS) * c.num_hidden_layers
    graph = _graph(packed, data=True)
    inits = {t.name: t for t in graph.initializer}
    params = dict(model.named_parameters())
    for ref in _packs(c):
        assert not {m.name for m in ref.members} & set(inits)
        users = [n for n in graph.node if ref.name in n.input]
        assert [(n.op_type, list(n.input).index(ref.name)) for n in users] == [("MatMul", 1)]
        split = [n for n in graph.node if users[0].output[0] in n.input]
        assert [n.op_type for n in split] == ["Split"] and len(split[0].output) == len(ref.members)
        widths = numpy_helper.to_array(inits[split[0].input[1]])
        assert list(widths) == [end - first for _, first, end in ref.columns(c)]
        stored = numpy_helper.to_array(inits[ref.name])
        assert stored.shape == ref.shape(c)
        for name, w in unpack_columns(ref, stored, c).items():
            assert np.array_equal(w, params[name].detach().numpy().T), name
    # the unpacked graph holds the members as before
    assert all(m.name in {t.name for t in _graph(unpacked).initializer} for r in _packs(c) for m in r.members)


@pytest.mark.parametrize("variant", ["fp16", "int8", "int4"])
def test_packed_variants_run_fewer_weight_ops(folders, variant):
    """fp16, int8 and int4 (MatMulNBits): the export (validated against
    PyTorch with the variant's own preset) runs 3 fewer weight ops per layer than the
    weight matrices it stores, and its packed initializers carry the pack names."""
    folder, c = folders.get(variant), folders.model.config
    matrices = [r for r in expected_tensors(c) if r.entry.role == "matrix"]
    tied = 1 if c.tie_word_embeddings else 0
    assert _ops(folder)[WEIGHT_OP[variant]] == len(matrices) + tied - 3 * c.num_hidden_layers
    names = {t.name for t in _graph(folder).initializer}
    for ref in _packs(c):
        assert any(canonical_of(n) is not None and canonical_of(n)[0] == ref.name for n in names), ref.name


def test_int4_packed_matches_unpacked_blocks_and_passes_validation(folders):
    """int4: MatMulNBits fewer by 3 per layer; the packed 4-bit blocks and scales are the
    members' own (blocks run along the input axis, so packing changes no block), and the
    folder passes the int4 preset against PyTorch."""
    packed, unpacked, model = folders.get("int4"), folders.get("int4", packed=False), folders.model
    c = model.config
    assert _ops(unpacked)["MatMulNBits"] - _ops(packed)["MatMulNBits"] == 3 * c.num_hidden_layers
    got = {t.name: numpy_helper.to_array(t) for t in _graph(packed, data=True).initializer}
    old = {t.name: numpy_helper.to_array(t) for t in _graph(unpacked, data=True).initializer}
    for ref in _packs(c):
        suffixes = [x for x in ("_Q4", "_scales", "_zero_points", "_offsets") if ref.name + x in got]
        assert {"_Q4", "_scales", "_zero_points"} <= set(suffixes), suffixes     # + "_offsets" where they pay
        for suffix in suffixes:
            if suffix == "_offsets":          # [blocks, out]: the members side by side along the output axis
                members = [old[m.name + suffix] for m in ref.members]
                assert np.array_equal(got[ref.name + suffix], np.concatenate(members, axis=1))
                continue
            members = [old[m.name + suffix].reshape(m.shape(c)[0], -1) for m in ref.members]
            assert np.array_equal(got[ref.name + suffix].reshape(ref.shape(c)[1], -1), np.concatenate(members))
    report = validate_folder(packed, model, "int4", decode_steps=4, lengths=(9, 3), seed=2)
    assert report.passed, report.table()


# ---------------------------------------------------------------- numbers

def _logits_chained(folder, config, steps=4):
    runner = Session(folder)
    rng = np.random.default_rng(11)
    ids = rng.integers(4, config.vocab_size, (2, 9))
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    out, state, tokens, got = None, runner.zero_state(2), ids, []
    for _ in range(steps + 1):
        out = runner.run(tokens, mask, positions_from_mask(mask, tokens.shape[1]), state)
        got.append(out["logits"][:, -1])
        state = runner.next_state(out)
        tokens = out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((2, 1), dtype=np.int64)], axis=1)
    return np.stack(got)


def test_packed_logits_equal_unpacked_and_pytorch(folders):
    """fp32: the packed graph's logits over a prefill and 4 decode steps equal the unpacked
    graph's to 1e-5 (relative to the largest logit), and both pass the fp32 preset."""
    packed, unpacked, model = folders.get("fp32"), folders.get("fp32", packed=False), folders.model
    a, b = _logits_chained(packed, model.config), _logits_chained(unpacked, model.config)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    for folder in (packed, unpacked):
        report = validate_folder(folder, model, "fp32", decode_steps=4, lengths=(9, 3), seed=2)
        assert report.passed, report.table()


# ---------------------------------------------------------------- manifest and option

def test_option_is_recorded_and_packs_mapped_in_the_manifest(folders):
    packed, unpacked, c = folders.get("fp32"), folders.get("fp32", packed=False), folders.model.config
    on, off = Manifest.read(packed), Manifest.read(unpacked)
    assert on.pack_matmuls is True and off.pack_matmuls is False
    want = {r.name for r in expected_tensors(c)}
    assert stored_tensors(on.initializers) == want == stored_tensors(off.initializers)
    ref = _packs(c)[0]
    info = on.initializers[ref.name]
    assert info["pack"] == ref.name and "tensor" not in info
    assert info["members"] == [{"tensor": m.name, "out": [a, b]} for m, a, b in ref.columns(c)]
    assert info["length"] == 4 * ref.shape(c)[0] * ref.shape(c)[1]
    with open(packed / "model.onnx.data", "rb") as f:
        f.seek(info["offset"])
        raw = np.frombuffer(f.read(info["length"]), dtype=np.float32).reshape(ref.shape(c))
    q = dict(folders.model.named_parameters())[ref.members[0].name].detach().numpy()
    assert np.array_equal(unpack_columns(ref, raw, c)[ref.members[0].name], q.T)
    k = ref.members[1]
    assert locate_tensor(on.initializers, k.name) == (ref.name, info, tuple(ref.columns(c)[1][1:]))
    assert locate_tensor(off.initializers, k.name)[::2] == (k.name, None)


def test_canonical_of_reads_packed_names():
    ref = PackRef(PACKS[1], 4)
    assert canonical_of(ref.name) == (ref.name, None)
    assert canonical_of(ref.name + "_Q4")[0] == ref.name
    assert canonical_of(ref.name + "_zero_points")[0] == ref.name
    assert canonical_of("model.layers.4.mlp.gate_up.weight") is None


# ---------------------------------------------------------------- the pass leaves what it cannot pack

def test_pass_leaves_a_pack_alone_when_a_member_is_missing_or_reads_another_input(folders, caplog):
    """On the unpacked graph: layer 0's k_proj renamed (a member not found) and layer 1's up
    MatMul rewired to another input: those two packs stay as they are, logged at debug;
    the others are made."""
    import onnx_ir as ir

    from lmexport.exporters.onnx.pack import pack_matmuls

    c = folders.model.config
    model = ir.load(folders.get("fp32", packed=False) / "model.onnx")
    k = model.graph.initializers["model.layers.0.self_attn.k_proj.weight"]
    model.graph.initializers.pop(k.name)
    k.name = "renamed.k"
    model.graph.register_initializer(k)
    up = next(n for n in model.graph if n.op_type == "MatMul"
              and n.inputs[1].name == "model.layers.1.mlp.up_proj.weight")
    gate = next(n for n in model.graph if n.op_type == "MatMul"
                and n.inputs[1].name == "model.layers.1.mlp.gate_proj.weight")
    other = next(n for n in model.graph if n.op_type == "MatMul"
                 and n.inputs[1].name == "model.layers.1.self_attn.o_proj.weight").inputs[0]
    assert up.inputs[0] is gate.inputs[0]
    up.replace_input_with(0, other)
    with caplog.at_level(logging.DEBUG, logger="lmexport.exporters.onnx.pack"):
        made = pack_matmuls(model, c.num_hidden_layers)
    skipped = {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.1.mlp.gate_up_proj.weight"}
    assert set(made) == {r.name for r in _packs(c)} - skipped
    text = caplog.text
    assert "not packing model.layers.0.self_attn.qkv_proj.weight" in text and "k_proj" in text
    assert "not packing model.layers.1.mlp.gate_up_proj.weight: its MatMuls read different inputs" in text
    assert "model.layers.1.mlp.up_proj.weight" in model.graph.initializers
