"""Fixtures for lmexport.optimum: the bundled model exported once per session, loaded by the
real optimum-onnx and transformers (these tests run in .venv-optimum: scripts/setup_optimum.sh).

The main suite does not collect this folder (pyproject's norecursedirs); scripts/test.sh
runs it in its own environment with ``--confcutdir tests/optimum``, so tests/conftest.py
(written for the main environment) is not loaded here.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch: see tests/conftest.py

from pathlib import Path

import pytest
import torch
from optimum_helpers import BUNDLED



@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    """variant -> ONNX folder: the bundled model in fp32 and int4 (weight-only MatMulNBits), and
    a tiny random legacy-mode model (keys and values only: no conv or context state)."""
    from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
    from lmexport.modeling.tiny import make_model_folder

    root = tmp_path_factory.mktemp("optimum")
    legacy = make_model_folder(root / "legacy-model", seed=3, context_mode="legacy")
    out = {}
    for variant, (model_dir, options) in {"fp32": (BUNDLED, OnnxExportOptions(validate=False)),
                                          "int4": (BUNDLED, OnnxExportOptions(quantize="int4", validate=False)),
                                          "legacy": (legacy, OnnxExportOptions(validate=False))}.items():
        export_onnx(model_dir, root / variant, options)
        out[variant] = root / variant
    return out


@pytest.fixture(scope="session")
def fp32(folders) -> Path:
    return folders["fp32"]


@pytest.fixture(scope="session")
def model(fp32):
    from lmexport.optimum import ORTModelForLiquidMetal

    return ORTModelForLiquidMetal.from_pretrained(fp32)


@pytest.fixture(scope="session")
def tok(fp32):
    from lmexport.optimum import load_tokenizer

    return load_tokenizer(fp32)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield
