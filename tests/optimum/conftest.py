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
    """variant -> ONNX folder of the bundled model: fp32 and int4 (weight-only MatMulNBits)."""
    from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx

    root = tmp_path_factory.mktemp("optimum")
    out = {}
    for variant, options in {"fp32": OnnxExportOptions(validate=False),
                             "int4": OnnxExportOptions(quantize="int4", validate=False)}.items():
        export_onnx(BUNDLED, root / variant, options)
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
