import os
from pathlib import Path

# On a shared 2-core machine, OpenMP threads that spin while waiting slow torch
# down 10-30x when another process is busy; passive waiting avoids it. Must be
# set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from lmexport.config import LiquidMetalConfig
from lmexport.modeling.model import LiquidMetalForCausalLM, init_random
from lmexport.modeling.tiny import make_model_folder, tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]          # the repository
BUNDLED = ROOT / "examples" / "liquid-metal-tiny"  # the bundled trained model


def tiny_config(**overrides) -> LiquidMetalConfig:
    return LiquidMetalConfig.from_dict(tiny_config_dict(overrides.pop("vocab_size", 97), **overrides))


def tiny_model(seed: int = 0, **overrides) -> LiquidMetalForCausalLM:
    return init_random(LiquidMetalForCausalLM(tiny_config(**overrides)), seed=seed).eval()


@pytest.fixture
def model_dir(tmp_path):
    """A random tiny Liquid-Metal checkpoint folder with a tokenizer."""
    return make_model_folder(tmp_path / "tiny-model", seed=0)


@pytest.fixture
def one_thread():
    """Score on one thread: on a busy shared machine a spinning 2-thread pool runs ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def patched_llamacpp():
    """The patched llama_cpp module, built here if needed (installed from the wheel cache when it has
    this build; scripts/test.sh builds it before pytest). Skipped only when it cannot be built here."""
    from lmexport.runtime.llamacpp import build as b

    reason = None
    if not b.is_built() and os.environ.get("LMEXPORT_NO_LLAMACPP_BUILD") != "1":
        try:
            b.build(progress=lambda line: print("[llamacpp build]", line, flush=True))
        except b.BuildError as exc:
            reason = str(exc)
    from lmexport.runtime.llamacpp.install import LlamaCppUnavailable, require_patched

    try:
        return require_patched()
    except LlamaCppUnavailable as exc:
        pytest.skip(f"patched llama-cpp-python not installed ({exc}); build failed: {reason}")


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """A session-wide factory of real exports, each made once: ``exports("onnx")`` (the bundled model as
    an fp32 ONNX folder), ``exports("gguf", outtype="f32")``, ``exports("onnx", model=folder, quantize="int4")``.
    Tests must not change what it returns (copy first)."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("exports")

    def get(kind: str, model: Path = BUNDLED, **options) -> Path:
        key = (kind, str(model), tuple(sorted(options.items())))
        if key not in cache:
            out = root / f"{len(cache)}-{Path(model).name}-{kind}"
            if kind == "onnx":
                from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
                export_onnx(model, out, OnnxExportOptions(**{"validate": False, **options}))
            elif kind == "gguf":
                from lmexport.exporters.gguf.write import GGUFOptions, export_gguf
                out = out.with_suffix(".gguf")
                export_gguf(model, out, GGUFOptions(**options))
            else:
                raise ValueError(f"unknown export kind {kind!r}")
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture(scope="session")
def llamacpp_tools(patched_llamacpp):
    """{name: path} of llama.cpp's programs, built here if needed (from the wheel cache when it holds
    them). Skipped when they cannot be built here, unless LMEXPORT_REQUIRE_LLAMACPP_TOOLS=1 (set by
    scripts/test.sh, which builds them before pytest): then a missing program is a failure."""
    from lmexport.errors import LmexportError
    from lmexport.runtime.llamacpp import build as b
    from lmexport.runtime.llamacpp import tools

    reason = None
    missing = [t for t in tools.TOOLS if tools.find_tool(t) is None]
    if missing and os.environ.get("LMEXPORT_NO_LLAMACPP_BUILD") != "1" and not os.environ.get("LMEXPORT_LLAMACPP_TOOLS"):
        try:
            b.build(progress=lambda line: print("[llamacpp build]", line, flush=True))
        except LmexportError as exc:
            reason = str(exc)
        missing = [t for t in tools.TOOLS if tools.find_tool(t) is None]
    if missing:
        message = f"llama.cpp's programs are not installed ({', '.join(missing)}); build: {reason}"
        if os.environ.get("LMEXPORT_REQUIRE_LLAMACPP_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return {t: tools.find_tool(t) for t in tools.TOOLS}
