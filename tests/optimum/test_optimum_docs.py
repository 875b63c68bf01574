"""docs/runtime.md's optimum example runs as written, on a real exported folder."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from optimum_helpers import PROMPTS, ROOT

from lmexport.runtime import Generator

DOC = ROOT / "docs" / "runtime.md"


def optimum_example() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Run it elsewhere"):]
    section = section[section.index("### optimum"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_docs_optimum_example_runs_and_prints_what_lmexport_generates(fp32, tok, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "onnx").symlink_to(fp32)              # the example's folder
    (tmp_path / "example.py").write_text(optimum_example(), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    gen = Generator.from_folder(fp32)
    prompts = [PROMPTS[0], PROMPTS[1]]
    greedy = tok.batch_decode([r.token_ids for r in gen.generate(prompts, max_new_tokens=32)],
                              skip_special_tokens=True)
    assert lines[0] == repr(greedy)
    [streamed] = gen.generate("class Point:", max_new_tokens=32)
    assert done.stdout.rstrip().endswith(tok.decode(streamed.token_ids, skip_special_tokens=True).rstrip())
