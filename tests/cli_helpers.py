"""Running the lmexport CLI from tests, as a user's shell would: a subprocess of this interpreter."""
from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args, env: dict | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """``python -m lmexport.cli ARGS`` with text output captured, offline (HF_HUB_OFFLINE=1); ``env`` adds
    variables to this process's environment; other keywords go to ``subprocess.run`` (``input=`` for stdin).
    The one way tests run the CLI."""
    return subprocess.run([sys.executable, "-m", "lmexport.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=timeout, **kw)
