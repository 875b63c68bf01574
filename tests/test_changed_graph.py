"""Changed is not damaged (issue #13): a graph passed through the onnx package or onnxruntime's
transformer optimizer still generates and passes parity (with a warning); a folder that cannot be
run (truncated data, an IO contract the graph no longer has) is exit 2 with the reason; lost probe
values degrade localisation with a clear message."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
from lmexport.manifest import Manifest
from lmexport.modeling.tiny import make_model_folder
from lmexport.parity.run import run_parity

from test_cli_errors import assert_one_clear_line, run_cli


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("changed")
    model = make_model_folder(root / "model", seed=3)
    export_onnx(model, root / "onnx", OnnxExportOptions(validate=False))
    return model, root / "onnx"


def _rewrite(src: Path, dst: Path, edit=None) -> Path:
    """``src`` re-saved by the onnx package (onnx.load + onnx.save with external data), after ``edit``."""
    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    if edit is not None:
        edit(model)
    (dst / "model.onnx.data").unlink()
    onnx.save(model, str(dst / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    return dst


def _resaved_in_place(src: Path, dst: Path) -> Path:
    """What users do: load and save over the same files (onnx appends the weights to the old data file)."""
    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    onnx.save(model, str(dst / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    return dst


def _optimized(src: Path, dst: Path) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    shutil.copytree(src, dst)
    optimized = optimize_model(str(dst / "model.onnx"), model_type="gpt2", num_heads=0, hidden_size=0, opt_level=1)
    (dst / "model.onnx.data").unlink()
    optimized.save_model_to_file(str(dst / "model.onnx"), use_external_data_format=True)
    return dst


@pytest.mark.parametrize("change", [_resaved_in_place, _optimized], ids=["onnx re-save", "ort optimizer"])
def test_changed_graph_generates_and_passes_parity(change, exported, tmp_path):
    model, onnx_dir = exported
    folder = change(onnx_dir, tmp_path / "changed")
    manifest = Manifest.read(folder)
    assert (folder / "model.onnx").stat().st_size != manifest.files["model.onnx"]["bytes"] or \
        (folder / "model.onnx.data").stat().st_size != manifest.files["model.onnx.data"]["bytes"]
    want = run_cli("generate", onnx_dir, "--prompt", "def", "--max-new-tokens", "8")
    done = run_cli("generate", folder, "--prompt", "def", "--max-new-tokens", "8")
    assert done.returncode == 0, done.stderr
    assert done.stdout == want.stdout
    assert "differ(s) from the export recorded in lmexport.json" in done.stderr
    done = run_cli("parity", model, folder, "--steps", "4")
    assert done.returncode == 0, done.stderr
    assert "PASS" in done.stdout and "Traceback" not in done.stderr


def _truncate(folder: Path) -> Path:
    data = folder / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    return folder


def _rename_input(model) -> None:
    for node in model.graph.node:
        node.input[:] = ["mask_renamed" if i == "attention_mask" else i for i in node.input]
    next(i for i in model.graph.input if i.name == "attention_mask").name = "mask_renamed"


def _drop_output(model) -> None:
    gone = next(o for o in model.graph.output if o.name == "present_conv.1")
    model.graph.output.remove(gone)


@pytest.mark.parametrize("damage, message", [
    (lambda f: _truncate(_rewrite(f, f.parent / "t")), "ONNX Runtime cannot load"),
    (lambda f: _rewrite(f, f.parent / "t", _rename_input),
     "no longer has the inputs and outputs lmexport.json describes"),
    (lambda f: _rewrite(f, f.parent / "t", _drop_output), "output present_conv.1 is gone"),
    (lambda f: (_rewrite(f, f.parent / "t"), (f.parent / "t" / "model.onnx").unlink())[0], "model.onnx is missing"),
], ids=["re-saved then truncated", "renamed input", "dropped state output", "missing graph"])
@pytest.mark.parametrize("command", ["generate", "parity"])
def test_folder_that_cannot_run_is_exit_2(command, damage, message, exported, tmp_path):
    model, onnx_dir = exported
    work = tmp_path / "w"
    shutil.copytree(onnx_dir, work)
    folder = damage(work)
    argv = ["generate", folder, "--prompt", "def"] if command == "generate" else ["parity", model, folder]
    assert_one_clear_line(run_cli(*argv), 2, message)


def _break_layer_1(model) -> None:
    """Scale one layer-1 weight (so parity fails) and rename the probe values of layers 1.. (an optimizer's renames)."""
    target = next(t for t in model.graph.initializer if "layers.1" in t.name and "mlp.down_proj" in t.name)
    target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) * 3.0, target.name))


def _rename_values(model, names: set[str]) -> None:
    renamed = {n: n + "/renamed" for n in names}
    for node in model.graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]


@pytest.mark.parametrize("which", ["some", "all"])
def test_lost_probes_degrade_localisation_with_a_message(which, exported, tmp_path, caplog):
    model, onnx_dir = exported
    probes = Manifest.read(onnx_dir).probes
    lost = {v for k, v in probes.items() if which == "all" or not k.startswith("layers.0.")}
    folder = _rewrite(onnx_dir, tmp_path / "opt", lambda m: (_break_layer_1(m), _rename_values(m, lost)))
    with caplog.at_level(logging.WARNING):
        report = run_parity(model, folder, steps=2)
    assert not report.passed
    text = caplog.text
    if which == "all":
        assert report.divergence is None and "cannot localise the divergence" in text
    else:
        assert f"{len(lost)} of {len(probes)} probe values" in text
        assert all(set(row) <= {"layer"} for row in report.per_layer[1:])      # layer 1 is not compared
        assert np.isfinite(report.overall.max_abs)
