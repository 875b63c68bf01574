"""Fixtures for llama.cpp's own programs (llama-server, llama-cli, ...; ``lmexport llamacpp build``)."""
from __future__ import annotations

import os

import pytest


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
