"""lmexport.json (lmexport/manifest.py, lmexport/manifest_schema.py): what a real export writes reads back
the same, and every damaged field is named, all of them in one error, before anything is built."""
from __future__ import annotations

import copy
import json

import pytest

from lmexport.errors import ArtifactError
from lmexport.manifest import MANIFEST_FILE, Manifest, check_files
from lmexport.manifest_schema import MAX_LAYERS, ROLES, manifest_problems
from lmexport.modeling.tiny import make_model_folder


@pytest.fixture(scope="module")
def exported(exports, tmp_path_factory):
    return exports("onnx", model=make_model_folder(tmp_path_factory.mktemp("manifest") / "model", seed=4))


def raw(folder) -> dict:
    return json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))


def test_a_real_manifest_reads_back_the_same_and_describes_its_graph(exported):
    data = raw(exported)
    assert manifest_problems(data) == []
    manifest = Manifest.read(exported)
    assert manifest.to_json() == Manifest.from_json(manifest.to_json()).to_json()
    assert {s.role for s in manifest.inputs + manifest.outputs} <= set(ROLES)
    # every state input names the output that feeds it, and that output exists
    outputs = {s.name for s in manifest.outputs}
    assert manifest.state_inputs() and all(s.present in outputs for s in manifest.state_inputs())
    assert manifest.output("logits") is not None and manifest.input("input_ids") is not None
    assert check_files(exported, manifest) == []


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(num_layers=MAX_LAYERS + 1), "num_layers"),
    (lambda d: d.update(mode="sideways"), "mode 'sideways' unknown"),
    (lambda d: d.update(dtype="fp8"), "dtype 'fp8' unknown"),
    (lambda d: d.update(model_file="../elsewhere/model.onnx"), "model_file"),
    (lambda d: d.update(fused_ops="yes"), "fused_ops 'yes' is not true or false"),
    (lambda d: d["inputs"][0].update(role="steering"), "role 'steering' unknown"),
    (lambda d: d["inputs"][0].update(shape=["batch_size", 1 << 40]), "out of range"),
], ids=["layers", "mode", "dtype", "model file", "flag", "role", "dimension"])
def test_each_damaged_field_is_named(exported, damage, message):
    data = raw(exported)
    damage(data)
    with pytest.raises(ArtifactError, match="is invalid") as err:
        Manifest.from_json(data)
    assert message in str(err.value)


def test_every_problem_is_reported_at_once(exported):
    data = copy.deepcopy(raw(exported))
    data.update(mode="sideways", dtype="fp8", fused_ops="yes")
    problems = manifest_problems(data)
    assert len(problems) >= 3
    with pytest.raises(ArtifactError) as err:
        Manifest.from_json(data)
    assert all(p in str(err.value) for p in problems[:3])


def test_not_a_manifest_at_all(exported, tmp_path):
    with pytest.raises(ArtifactError, match="must hold a JSON object"):
        Manifest.from_json([1, 2])
    with pytest.raises(ArtifactError, match="manifest"):
        Manifest.from_json({**raw(exported), "format_version": 999})
    with pytest.raises(ArtifactError, match="has no lmexport.json"):
        Manifest.read(tmp_path)
