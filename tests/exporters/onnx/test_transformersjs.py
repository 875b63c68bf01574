"""transformers.js (Node, @huggingface/transformers with onnxruntime-node) runs folders of
the bundled model exported with ``--target transformers.js``: greedy tokens equal to
lmexport's runtime. Node and the npm packages come from scripts/setup_node.sh (which
scripts/test.sh runs); without them these tests skip, unless LMEXPORT_REQUIRE_NODE=1."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lmexport.exporters.onnx.transformersjs import SHIM_FILE, STATE_NAMES, write_shim
from lmexport.manifest import Manifest
from lmexport.runtime.tokenizer import TextTokenizer

from onnx_consumers import (NEW_TOKENS, PROMPTS, bos_folder, doc_example, exported, lmexport_generate_text,
                            lmexport_tokens, until_eos)

NODE_DIR = Path(__file__).resolve().parent / "node"
DRIVER = NODE_DIR / "generate.mjs"


@pytest.fixture(scope="module")
def node():
    """The node binary, once the npm packages of NODE_DIR are installed."""
    binary = shutil.which("node")
    if binary is None or not (NODE_DIR / "node_modules" / "@huggingface" / "transformers").is_dir():
        message = "node or the transformers.js packages are missing: run bash scripts/setup_node.sh"
        if os.environ.get("LMEXPORT_REQUIRE_NODE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def run_node(node, script: Path, *args, cwd: Path = NODE_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(script), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def transformersjs_generate(node, folder: Path, prompts, new_tokens: int = NEW_TOKENS) -> dict:
    done = run_node(node, DRIVER, folder, new_tokens, *prompts)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["tjs-fp32", "tjs-int4"])
# equal lengths, one prompt, and 8 + 6 tokens (the loader left-pads as lmexport generate does)
@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[:1], ("def read_file(path):", "def main(argv):")],
                         ids=["batch2", "single", "left-padded"])
def test_transformersjs_greedy_equals_lmexport_generate(node, name, prompts, tmp_path_factory):
    folder = exported(name, tmp_path_factory)
    tokenizer = TextTokenizer.from_folder(folder)
    want = lmexport_tokens(folder, prompts)
    assert all(len(row) == NEW_TOKENS for row in want)          # no EOS came: all 32 are compared
    got = transformersjs_generate(node, folder, prompts)
    encoded = [tokenizer.encode(p) for p in prompts]                      # the folder's BOS rule
    width, pad = max(map(len, encoded)), Manifest.read(folder).tokenizer["pad_token_id"]
    assert got["prompt_ids"] == [[pad] * (width - len(ids)) + ids for ids in encoded]
    assert got["new_ids"] == want


def test_transformersjs_applies_the_folders_bos_rule(node, tmp_path_factory):
    """A tokenizer whose post-processor adds BOS: the loader's ids are lmexport's, BOS first,
    and so are the greedy tokens (up to an EOS, where lmexport generate stops)."""
    folder = bos_folder(tmp_path_factory)
    tokenizer = TextTokenizer.from_folder(folder)
    got = transformersjs_generate(node, folder, PROMPTS[:1], 12)
    assert got["prompt_ids"] == [tokenizer.encode(PROMPTS[0])]
    assert got["prompt_ids"][0][0] == tokenizer.bos_token_id
    want = lmexport_tokens(folder, PROMPTS[:1], 12)
    assert until_eos(got["new_ids"][0], Manifest.read(folder).tokenizer["eos_token_ids"]) == want[0]


def test_target_changes_only_the_context_state_names(tmp_path_factory):
    """config.json is the true config; the graph IO differs from the default folder's only in
    the names STATE_NAMES gives; the folder carries the loader, as packaged."""
    default, target = exported("fp32", tmp_path_factory), exported("tjs-fp32", tmp_path_factory)
    config = json.loads((target / "config.json").read_text())
    assert config == json.loads((default / "config.json").read_text())
    assert config["model_type"] == "liquid_metal"
    a, b = Manifest.read(default), Manifest.read(target)
    renamed = {s.role for s, t in zip(a.inputs + a.outputs, b.inputs + b.outputs) if s.name != t.name}
    assert renamed == set(STATE_NAMES)
    assert [(s.role, s.layer, s.shape, s.dtype) for s in a.inputs + a.outputs] == \
           [(s.role, s.layer, s.shape, s.dtype) for s in b.inputs + b.outputs]
    assert SHIM_FILE in b.files and SHIM_FILE not in a.files
    packaged = write_shim(tmp_path_factory.mktemp("shim"))
    assert (target / SHIM_FILE).read_bytes() == packaged.read_bytes()


def test_default_names_are_not_carried_by_transformersjs(node, tmp_path_factory):
    """Why the target exists: with the default names transformers.js would carry
    present_context.N to past_key_values_context.N and feed the zero initial context again
    on every call: wrong tokens, no error from transformers.js. The loader refuses it."""
    default = exported("fp32", tmp_path_factory)
    folder = tmp_path_factory.mktemp("default-in-tjs")
    for path in default.iterdir():
        (folder / path.name).symlink_to(path)
    write_shim(folder)
    done = run_node(node, DRIVER, folder, 4, PROMPTS[0])
    assert done.returncode != 0
    assert "past_key_values_context.0" in done.stderr and "--target transformers.js" in done.stderr


def test_docs_example_prints_what_lmexport_generate_prints(node, tmp_path, tmp_path_factory):
    """docs/runtime.md's transformers.js example, run as written in a folder with the packages
    installed (node_modules) and the export at out/onnx-tjs."""
    (tmp_path / "node_modules").symlink_to((NODE_DIR / "node_modules").resolve())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "onnx-tjs").symlink_to(exported("tjs-fp32", tmp_path_factory))
    script = tmp_path / "generate.mjs"
    script.write_text(doc_example("transformers.js"), encoding="utf-8")
    done = run_node(node, script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == lmexport_generate_text(tmp_path, "out/onnx-tjs")
