"""The quantisation recipe (exporters/onnx/quant.py, blockquant.py), pinned on real files.

* the per-block search beats round-to-nearest on matrices with planted outlier columns,
  and what MatMulNBits / GatherBlockQuantized compute in onnxruntime is what the
  dequantisation says;
* 4-bit weights with a float offset per block hold a q4_1-style grid (w = d*q + m, any m)
  exactly through MatMulNBits + blocksums(x) @ offsets in onnxruntime, where integer zero
  points cannot;
* scales are stored in fp16 and cast to fp32 in the graph, which computes the same with the
  Cast folded by onnxruntime or not; the 8-bit upgrades go where the 4-bit form adds the most KL
  per byte, and that KL (a Fisher estimate) is what PyTorch measures;
* a tied model's lm_head is stored once (read back with onnx);
* a damaged quantised folder (a perturbed weight, a zeroed state) fails validation.
"""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cli_helpers import run_cli
from conftest import BUNDLED, tiny_config, tiny_model
from lmexport.exporters.onnx.blockquant import importance, quantize_blocks, weighted_error
from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
from lmexport.exporters.onnx.bitplan import Site, plan_bits, site_bytes
from lmexport.exporters.onnx.quant import MS_DOMAIN, quantize
from lmexport.exporters.onnx.validate import validate_folder
from lmexport.manifest import Manifest
from lmexport.modeling.checkpoint import load_model
from lmexport.modeling.tiny import make_model_folder
from lmexport.tensor_names import EMBEDDING, LM_HEAD


def outlier_matrix(n=256, k=512, seed=0) -> np.ndarray:
    """[N, K] Gaussian weights with a few input columns 30x larger (the outlier features
    of real LLM weights), and some blocks skewed to one side (needs a zero point)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
    w[:, rng.choice(k, 6, replace=False)] *= 30
    w[: n // 4, :32] += 0.05
    return w


@pytest.mark.parametrize("bits,margin", [(4, 0.8), (8, 0.9)])
def test_search_beats_round_to_nearest_with_outliers(bits, margin):
    w = outlier_matrix()
    searched = quantize_blocks(w, bits, 32, "uint")
    rtn = quantize_blocks(w, bits, 32, "uint", search=False)
    e_s, e_r = weighted_error(w, searched), weighted_error(w, rtn)
    assert e_s < margin * e_r, (e_s, e_r)
    # and in plain squared error of the whole matrix (what the output sees without calibration)
    assert np.sum((searched.dequantize() - w) ** 2) < np.sum((rtn.dequantize() - w) ** 2)
    assert searched.q.max() <= (1 << bits) - 1 and searched.zeros.dtype == np.uint8


def test_search_recovers_an_asymmetric_grid():
    """A block already on a 4-bit grid with an integer zero point comes back exactly."""
    rng = np.random.default_rng(1)
    q = rng.integers(0, 16, (64, 128))
    q[:, ::32] = 0
    q[:, 1::32] = 15                                            # every block spans the full range
    z = rng.integers(0, 16, (64, 4))
    s = rng.uniform(0.01, 0.1, (64, 4)).astype(np.float32)
    w = ((q.reshape(64, 4, 32) - z[..., None]) * s[..., None]).reshape(64, 128).astype(np.float32)
    got = quantize_blocks(w, 4, 32, "uint")
    assert np.allclose(got.dequantize(), w, atol=1e-6)


def test_importance_weights_change_the_choice():
    w = outlier_matrix(seed=2)
    act = np.ones(w.shape[1], np.float32)
    act[3::8] = 100.0                                             # calibration: these inputs matter
    weighted = quantize_blocks(w, 4, 32, "uint", weights=importance(w, act))
    plain = quantize_blocks(w, 4, 32, "uint")
    err = lambda q: np.sum((q.dequantize()[:, 3::8] - w[:, 3::8]) ** 2)     # noqa: E731
    assert err(weighted) < 0.95 * err(plain)                       # measured 0.91


def _run_op(op: str, q, feed: np.ndarray) -> np.ndarray:
    n, nb, block = q.q.shape
    inits = [numpy_helper.from_array(q.packed_q(), "B"), numpy_helper.from_array(q.scales, "S"),
             numpy_helper.from_array(q.packed_zeros(), "Z")]
    if op == "MatMulNBits":
        nodes = [helper.make_node(op, ["X", "B", "S", "Z"], ["Y"], domain=MS_DOMAIN, K=q.k, N=n,
                                  bits=q.bits, block_size=block, accuracy_level=0)]
        x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, q.k])
    else:
        inits.append(numpy_helper.from_array(np.array([n, nb * block * q.bits // 8], np.int64), "shape"))
        nodes = [helper.make_node("Reshape", ["B", "shape"], ["rows"]),
                 helper.make_node(op, ["rows", "X", "S", "Z"], ["Y"], domain=MS_DOMAIN, gather_axis=0,
                                  quantize_axis=1, block_size=block, bits=q.bits)]
        x = helper.make_tensor_value_info("X", TensorProto.INT64, [None])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS_DOMAIN, 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": feed})[0]


@pytest.mark.parametrize("bits,k", [(4, 160), (8, 160), (4, 176)])
def test_onnxruntime_reads_the_layout(bits, k):
    """MatMulNBits and GatherBlockQuantized over the same initializers compute x @ deq^T and deq[ids];
    K=176: MatMulNBits' partial last block (padded in B, K says where the matrix ends)."""
    w = outlier_matrix(n=96, k=k)
    q = quantize_blocks(w, bits, 32, "uint")
    deq = q.dequantize()
    assert deq.shape == w.shape and np.abs(deq - w).max() < np.abs(w).max() / (1 << bits)
    x = np.random.default_rng(3).standard_normal((5, k)).astype(np.float32)
    assert np.allclose(_run_op("MatMulNBits", q, x), x @ deq.T, rtol=1e-4, atol=1e-4)
    if k % 32:
        return                                                    # the Gather reads whole rows only
    ids = np.array([0, 7, 95, 7], np.int64)
    assert np.array_equal(_run_op("GatherBlockQuantized", q, ids), deq[ids])


def q4_1_grid(n: int, k: int, seed: int) -> np.ndarray:
    """[N, K] weights on a q4_1 grid: per block of 32, w = d*q + m with q in 0..15 and a real m
    (SmolLM2-135M's checkpoint, dequantised from a Q4_1 GGUF, is such a matrix)."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, (n, k // 32, 32))
    q[..., 0], q[..., 1] = 0, 15
    d = rng.uniform(0.005, 0.05, (n, k // 32, 1)).astype(np.float16).astype(np.float32)   # fp16, as q4_1 stores
    m = (-d * rng.uniform(3.3, 11.7, (n, k // 32, 1))).astype(np.float16).astype(np.float32)  # m/d not an integer
    return (d * q + m).reshape(n, k).astype(np.float32)


def test_float_offsets_hold_a_q4_1_grid_and_integer_zero_points_do_not():
    w = q4_1_grid(64, 128, seed=4)
    exact = quantize_blocks(w, 4, 32, "float")
    assert np.abs(exact.dequantize() - w).max() < 1e-6 * np.abs(w).max()
    rounded = quantize_blocks(w, 4, 32, "uint")
    assert np.abs(rounded.dequantize() - w).max() > 1e-3 * np.abs(w).max()


def _one_input_two_matmuls(tmp_path, k: int, n: int, seed: int):
    """x [B, T, K] read by two MatMuls (as q|k|v and gate|up read one normed input), weights on a q4_1 grid."""
    ws = [q4_1_grid(n, k, seed), q4_1_grid(n // 2, k, seed + 1)]
    inits = [numpy_helper.from_array(np.ascontiguousarray(w.T), f"model.layers.0.mlp.{name}.weight")
             for w, name in zip(ws, ("gate_proj", "up_proj"))]
    nodes = [helper.make_node("MatMul", ["x", t.name], [f"y{i}"], name=f"mm{i}") for i, t in enumerate(inits)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, k])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(2)],
                              inits)
    src = tmp_path / "src.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(src))
    return src, ws


@pytest.mark.parametrize("offsets", [True, False])
def test_offsets_encoding_runs_exactly_in_onnxruntime(tmp_path, offsets):
    """The rewrite itself (quant.quantize on a two-MatMul graph): with offsets, onnxruntime's result is
    x @ W^T to float rounding, one block-sum MatMul shared by both readers; uint8 zero points miss."""
    src, ws = _one_input_two_matmuls(tmp_path, k=96, n=48, seed=6)
    dst = tmp_path / "q.onnx"
    options = OnnxExportOptions(quantize="int4", bits_per_weight=4.0, accuracy_level=0, int4_offsets=offsets,
                                quantize_embeddings=False)
    details = quantize(src, dst, options, "q.onnx.data", config=None)
    proto = onnx.load(str(dst))
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("MatMulNBits") == 2 and details["bits"] and set(details["bits"].values()) == {4}
    x = np.random.default_rng(7).standard_normal((2, 5, 96)).astype(np.float32)
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    worst = max(float(np.abs(y - x @ w.T).max() / np.abs(x @ w.T).max()) for y, w in zip(got, ws))
    if offsets:
        assert ops.count("MatMul") == 3 and ops.count("Add") == 2        # one shared block sum, two offsets
        assert details["zero_points"] == {"float offsets": 2, "uint8": 0}
        assert worst < 1e-5, worst                 # fp16 scales and minimums, as q4_1's: held exactly
    else:
        assert ops.count("MatMul") == 0 and details["zero_points"] == {"float offsets": 0, "uint8": 2}
        assert worst > 1e-2, worst


@pytest.mark.parametrize("zero", ["uint", "float"])
def test_fp16_scales_cost_an_ulp_and_are_what_is_stored(zero):
    w = outlier_matrix(seed=5)
    half = quantize_blocks(w, 4, 32, zero, scale_dtype=np.float16)
    full = quantize_blocks(w, 4, 32, zero)
    assert np.array_equal(half.scales.astype(np.float16).astype(np.float32), half.scales)
    assert not np.array_equal(full.scales.astype(np.float16).astype(np.float32), full.scales)
    assert weighted_error(w, half) < 1.01 * weighted_error(w, full)          # codes rounded again for it
    assert half.q.max() <= 15 and half.zeros.dtype == full.zeros.dtype


@pytest.mark.parametrize("scale_dtype", ["fp16", "fp32"])
def test_scale_dtype_is_stored_and_runs_folded_or_not(tmp_path, scale_dtype):
    """fp16 scales sit in the file as fp16 behind a Cast; onnxruntime computes the same with its graph
    optimisations (which fold the Cast) on and off, and what fp32 scales compute to fp16 rounding."""
    rng = np.random.default_rng(8)
    ws = [rng.standard_normal((48, 96)).astype(np.float32) * 0.02 for _ in range(2)]
    inits = [numpy_helper.from_array(np.ascontiguousarray(w.T), f"model.layers.0.mlp.{name}.weight")
             for w, name in zip(ws, ("gate_proj", "up_proj"))]
    nodes = [helper.make_node("MatMul", ["x", t.name], [f"y{i}"], name=f"mm{i}") for i, t in enumerate(inits)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 96])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(2)],
                              inits)
    src, dst = tmp_path / "src.onnx", tmp_path / "q.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(src))
    options = OnnxExportOptions(quantize="int8", accuracy_level=0, scale_dtype=scale_dtype, quantize_embeddings=False)
    details = quantize(src, dst, options, "q.onnx.data", config=None)
    proto = onnx.load(str(dst))
    scales = {t.name: t.data_type for t in proto.graph.initializer if t.name.endswith("_scales")}
    want = TensorProto.FLOAT16 if scale_dtype == "fp16" else TensorProto.FLOAT
    assert len(scales) == 2 and set(scales.values()) == {want}
    assert [n.op_type for n in proto.graph.node].count("Cast") == (2 if scale_dtype == "fp16" else 0)
    assert details["bits_per_weight"] == (8.75 if scale_dtype == "fp16" else 9.25)   # 8 + scale/32 + zero/32
    x = rng.standard_normal((3, 96)).astype(np.float32)
    runs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        runs.append(ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"]).run(None, {"x": x}))
    for a, b, w in zip(*runs, ws):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6)
        assert np.abs(a - x @ w.T).max() < 2e-2 * np.abs(x @ w.T).max()


def _site(name: str, n: int, k: int) -> Site:
    return Site(name, np.zeros((n, k), np.float32), [], [], [name])


def test_upgrades_follow_the_kl_per_extra_byte():
    """8 bits go to the sites whose 4-bit form adds the most KL per extra byte, within the budget; the head
    (a tied embedding here) has no rule of its own, and a site whose 4-bit form is exact stays at 4."""
    head = _site(EMBEDDING.name, 256, 64)
    head.drop.append(LM_HEAD.name)
    layers = [_site(f"model.layers.{i}.mlp.down_proj.weight", 64, 128) for i in range(3)]
    sites = [head, *layers]
    sensitivity = {head.name: 0.001, layers[0].name: 0.05, layers[1].name: 0.0, layers[2].name: 0.02}
    four = sum(site_bytes(s, 4, 32) for s in sites)
    numel = sum(s.numel for s in sites)
    extra = {s.name: site_bytes(s, 8, 32) - site_bytes(s, 4, 32) for s in sites}
    budget = (four + extra[layers[0].name] + extra[layers[2].name]) * 8 / numel
    assert plan_bits(sites, 32, budget, sensitivity) == {
        head.name: 4, layers[0].name: 8, layers[1].name: 4, layers[2].name: 8}
    everything = (four + sum(extra.values())) * 8 / numel
    assert plan_bits(sites, 32, everything, sensitivity)[layers[1].name] == 4      # exact at 4 bits
    assert plan_bits(sites, 32, four * 8 / numel, sensitivity) == {s.name: 4 for s in sites}


def test_sensitivity_is_the_kl_each_weight_adds():
    """measure_sensitivity's Fisher estimate against the KL really measured in PyTorch with one weight
    at a time replaced by its 4-bit form, on other token ids: within 2x wherever the KL is not negligible,
    and the same weight first."""
    import torch

    from lmexport.exporters.onnx.bitplan import measure_sensitivity

    model = tiny_model(seed=0)
    config = tiny_config()
    params = dict(model.named_parameters())
    names = [n for n in params if n.endswith("proj.weight") or n == LM_HEAD.name]
    sites = [Site(n, params[n].detach().numpy().copy(), [], [], [n]) for n in names]
    four = {s.name: quantize_blocks(s.matrix, 4, 32, "uint") for s in sites}
    grad_before = {n: p.requires_grad for n, p in params.items()}
    estimate = measure_sensitivity(model, sites, config, four)
    assert {n: p.requires_grad for n, p in params.items()} == grad_before      # the model is left as it was
    assert all(p.grad is None for p in params.values())

    ids = torch.from_numpy(np.random.default_rng(7).integers(0, config.vocab_size, (4, 64)))

    def log_probs():
        with torch.no_grad():
            out = model(ids, torch.ones_like(ids), torch.arange(64)[None].expand(4, 64).contiguous())
        return torch.log_softmax(out.logits, -1)

    reference = log_probs()
    real = {}
    for site in sites:
        with torch.no_grad():
            params[site.name].copy_(torch.from_numpy(four[site.name].dequantize()))
        real[site.name] = float((reference.exp() * (reference - log_probs())).sum(-1).mean())
        with torch.no_grad():
            params[site.name].copy_(torch.from_numpy(site.matrix))
    top = max(real.values())
    for name, kl in real.items():
        if kl > 0.01 * top:
            assert 0.5 < estimate[name] / kl < 2, (name, estimate[name], kl)
    assert max(estimate, key=estimate.get) == max(real, key=real.get)


def test_a_shared_table_counts_both_gradients_as_pytorch_tying_does():
    """One stored table for an embedding and an equal head that PyTorch keeps as two parameters: its
    estimate is the tied model's, whose one parameter accumulates both gradients (summed, then squared)."""
    import torch

    from lmexport.exporters.onnx.bitplan import measure_sensitivity

    estimates = []
    for tie in (False, True):
        model = tiny_model(seed=0, tie_word_embeddings=tie)
        params = dict(model.named_parameters())
        if not tie:
            with torch.no_grad():
                params[LM_HEAD.name].copy_(params[EMBEDDING.name])
        table = Site(EMBEDDING.name, params[EMBEDDING.name].detach().numpy().copy(), [], [],
                     [EMBEDDING.name, LM_HEAD.name])
        four = {table.name: quantize_blocks(table.matrix, 4, 32, "uint")}
        estimates.append(measure_sensitivity(model, [table], tiny_config(tie_word_embeddings=tie), four)[table.name])
    untied, tied = estimates
    assert tied > 0 and untied == pytest.approx(tied, rel=1e-3)


# ---------------------------------------------------------------- exported folders

@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    model_dir = make_model_folder(root / "model", seed=3, tie_word_embeddings=True)
    out = root / "int4"
    export_onnx(model_dir, out, OnnxExportOptions(quantize="int4"))
    return model_dir, out


def test_tied_head_is_stored_once(tied):
    model_dir, folder = tied
    proto = onnx.load(str(folder / "model.onnx"))                 # with its data
    inits = {t.name: t for t in proto.graph.initializer}
    assert not [n for n in inits if n.startswith(LM_HEAD.name)]
    assert EMBEDDING.name not in inits                           # no fp32 copy either
    blocks = [n for n in inits if n in (EMBEDDING.name + "_Q4", EMBEDDING.name + "_Q8")]
    assert len(blocks) == 1
    gather = [n for n in proto.graph.node if n.op_type == "GatherBlockQuantized"]
    head = [n for n in proto.graph.node if n.op_type == "MatMulNBits" and n.input[1] == blocks[0]]
    assert len(gather) == 1 and len(head) == 1
    reshape = next(n for n in proto.graph.node if n.output[0] == gather[0].input[0])
    assert reshape.op_type == "Reshape" and reshape.input[0] == blocks[0]
    assert gather[0].input[2:] == head[0].input[2:4]              # the same scales and zero points
    # the one copy dequantises to the checkpoint's table within the 4/8-bit grid
    model = load_model(model_dir)[0]
    table = model.model.embed_tokens.weight.detach().numpy()
    bits = next(a.i for a in head[0].attribute if a.name == "bits")
    q = numpy_helper.to_array(inits[blocks[0]])
    cast = next(n for n in proto.graph.node if n.output[0] == head[0].input[2])   # fp16, cast to fp32
    scales = numpy_helper.to_array(inits[cast.input[0]])
    assert cast.op_type == "Cast" and scales.dtype == np.float16
    assert q.shape == (table.shape[0], table.shape[1] // 32, 32 * bits // 8) and scales.shape == q.shape[:2]
    manifest = Manifest.read(folder)
    assert manifest.quantization["tied_lm_head"] == "stored once"
    assert manifest.quantization["embedding"] == "GatherBlockQuantized"
    # the data file holds no more than one quantised table's bytes for the embedding and head
    table_bytes = sum(len(inits[n].raw_data) for n in inits if n.startswith(EMBEDDING.name))
    assert table_bytes <= table.size * 10 / 8 + 64


def test_tied_int4_validates(tied):
    model_dir, folder = tied
    report = validate_folder(folder, load_model(model_dir)[0], "int4", decode_steps=4, lengths=(9, 3), seed=5)
    assert report.passed, report.table()


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant8")
    model_dir = make_model_folder(root / "model", seed=3)
    out = root / "int8"
    export_onnx(model_dir, out, OnnxExportOptions(quantize="int8"))
    return model_dir, out


@pytest.mark.parametrize("variant", ["int4", "int8"])
def test_perturbed_quantized_weight_fails_validation(tied, int8_folder, tmp_path, variant):
    model_dir, source = tied if variant == "int4" else int8_folder
    folder = tmp_path / "damaged"
    shutil.copytree(source, folder)
    inits = Manifest.read(folder).initializers
    info = inits["model.layers.1.mlp.down_proj.weight_scales"]
    with open(folder / "model.onnx.data", "r+b") as f:          # every block's scale 0.5 (as the fp32 test)
        f.seek(info["offset"])
        f.write(np.full(info["length"] // 4, 0.5, np.float32).tobytes())
    report = validate_folder(folder, load_model(model_dir)[0], variant, decode_steps=2)
    assert not report.passed
    assert any(f.startswith("logits") for f in report.failures), report.failures


@pytest.mark.parametrize("variant", ["int4", "int8"])
def test_zeroed_state_fails_validation(tied, int8_folder, tmp_path, variant):
    """A graph whose present_conv.1 output is multiplied by 0 (a state lost) fails on that state."""
    model_dir, source = tied if variant == "int4" else int8_folder
    folder = tmp_path / "zeroed"
    shutil.copytree(source, folder)
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    target = "present_conv.1"
    producer = next(n for n in proto.graph.node if target in n.output)
    producer.output[list(producer.output).index(target)] = target + "_before"
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "zero_scalar"))
    proto.graph.node.append(helper.make_node("Mul", [target + "_before", "zero_scalar"], [target]))
    onnx.save_model(proto, str(folder / "model.onnx"))
    report = validate_folder(folder, load_model(model_dir)[0], variant, decode_steps=2)
    assert any(f.startswith(target) for f in report.failures), report.failures


def test_int4_only_options_refuse_other_variants(tmp_path):
    """--integer-zero-points and --bits-per-weight belong to int4: elsewhere one line, exit 2, nothing written."""
    for extra in (["--quantize", "int8", "--integer-zero-points"], ["--integer-zero-points"],
                  ["--quantize", "int8", "--bits-per-weight", "6"]):
        out = tmp_path / "out"
        done = run_cli("onnx", BUNDLED, "-o", out, *extra)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and "int4" in lines[0], done.stderr
        assert not out.exists()
