import os

import pytest


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
    from lmexport.runtime.llamacpp.engine import LlamaCppUnavailable, require_patched

    try:
        return require_patched()
    except LlamaCppUnavailable as exc:
        pytest.skip(f"patched llama-cpp-python not installed ({exc}); build failed: {reason}")
