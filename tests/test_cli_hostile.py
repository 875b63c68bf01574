"""Hostile input, round two (issue #17), through the real CLI: one table per class of failure.

Every row asserts the exit code, one clear error line, no traceback, and that the whole
test folder (the user's files: models, exports, links, bystanders) is byte for byte as it
was, with nothing left behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
from lmexport.modeling.checkpoint import save_checkpoint
from lmexport.modeling.tiny import make_llama_folder, make_model_folder, make_tokenizer, write_tokenizer_files

from conftest import tiny_model
from test_cli_errors import assert_one_clear_line, run_cli


@dataclass
class Case:
    name: str
    setup: Callable[[Path], list]        # tmp_path -> argv (after "lmexport")
    code: int
    message: str                         # substring of the one error line
    stdin: bytes | None = None


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's sha256, a link's target, a folder's mark."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_case(case: Case, tmp_path: Path):
    argv = case.setup(tmp_path)
    before = snapshot(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lmexport.cli", *map(str, argv)], capture_output=True,
                          input=case.stdin, env=env)
    done.stderr = done.stderr.decode("utf-8", "replace")
    assert_one_clear_line(done, case.code, case.message)
    assert snapshot(tmp_path) == before, "the command changed the user's files or left something behind"


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A model folder and its ONNX export (no validation), built once and copied per case."""
    root = tmp_path_factory.mktemp("hostile")
    model = make_model_folder(root / "model", seed=0)
    export_onnx(model, root / "onnx", OnnxExportOptions(validate=False))
    return root


SOURCE = Path("/nonexistent")      # the module's source folder, set by the autouse fixture below


@pytest.fixture(autouse=True)
def _sources(source):
    global SOURCE
    SOURCE = source


def model(t: Path, name: str = "model") -> Path:
    return Path(shutil.copytree(SOURCE / "model", t / name, symlinks=True))


def export(t: Path) -> Path:
    return Path(shutil.copytree(SOURCE / "onnx", t / "onnx"))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def config_with(t: Path, **changes) -> Path:
    folder = model(t)
    edit_json(folder / "config.json", **changes)
    return folder


def raw_config(t: Path, text: str) -> Path:
    folder = model(t)
    (folder / "config.json").write_text(text)
    return folder


def manifest_with(t: Path, edit: Callable[[dict], None]) -> Path:
    folder = export(t)
    data = json.loads((folder / "lmexport.json").read_text())
    edit(data)
    (folder / "lmexport.json").write_text(json.dumps(data))
    return folder


def state(data: dict, **changes) -> None:
    item = next(i for i in data["inputs"] if i["role"] == "conv")
    item.update(changes)


def role_input(data: dict, which: str, **changes) -> None:
    next(i for i in data["inputs"] if i["role"] == which).update(changes)


def with_file(folder: Path, name: str, content: bytes) -> Path:
    (folder / name).write_bytes(content)
    return folder


def text_file(t: Path) -> Path:
    path = t / "text.txt"
    path.write_text("def add(a, b):\n    return a + b\n" * 4)
    return path


def llama_with_link(t: Path, name: str, target: Path) -> Path:
    folder = make_llama_folder(t / "llama")
    (folder / name).symlink_to(target)
    return folder


def deep_json(depth: int = 200_000) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def snapshot_folder(t: Path) -> Path:
    """A Hugging Face cache layout: snapshots/<rev>/ holds links into ../../blobs/."""
    repo = t / "hub" / "models--x--tiny"
    src = SOURCE / "model"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        blob = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, repo / "blobs" / blob)
        (snap / f.name).symlink_to(Path("..", "..", "blobs", blob))
    return snap


def blob_of(snap: Path, name: str) -> Path:
    return (snap / name).resolve()


def sharded(t: Path, rename: Callable[[str], str]) -> Path:
    folder = save_checkpoint(tiny_model(seed=1, vocab_size=384), t / "model", max_shard_bytes=40_000)
    write_tokenizer_files(make_tokenizer(), folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    other = save_checkpoint(tiny_model(seed=9, vocab_size=384), t / "elsewhere", max_shard_bytes=40_000)
    del other
    index["weight_map"] = {k: rename(v) if v == first else v for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def link_to_host_file(t: Path, name: str, content: bytes) -> Path:
    folder = model(t)
    host = t / "host-secret"
    host.write_bytes(content)
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(host)
    return folder


def graph_data_elsewhere(t: Path) -> Path:
    """An export whose graph reads its weights from another folder's data file."""
    import onnx

    folder = export(t)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = str(Path("..", "..", SOURCE.name, "onnx", "model.onnx.data"))
    onnx.save(graph, str(folder / "model.onnx"))
    return folder


def nan_export(t: Path) -> Path:
    folder = export(t)
    data = folder / "model.onnx.data"
    n = data.stat().st_size
    data.write_bytes(np.full(n // 4, np.nan, dtype=np.float32).tobytes() + b"\0" * (n % 4))
    return folder


def mkdir_with_files(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("precious")
    return path


# ---------------------------------------------------------------- class 1: data destroyed

DESTROY_CASES = [
    Case("onnx output is its input", lambda t: ["onnx", model(t), "-o", t / "model", "--overwrite"], 2,
         "is the input"),
    Case("gguf output inside its input",
         lambda t: ["gguf", model(t), "-o", t / "model" / "model.safetensors", "--overwrite"], 2, "lies inside the input"),
    Case("convert output is its input",
         lambda t: ["convert", make_llama_folder(t / "llama"), "-o", t / "llama", "--overwrite"], 2, "is the input"),
    Case("onnx output contains its input",
         lambda t: ["onnx", model(t / "parent"), "-o", t / "parent", "--overwrite"] if (t / "parent").mkdir() is None
         else [], 2, "contains the input"),
    Case("gguf over a folder of the user's files",
         lambda t: ["gguf", model(t), "-o", mkdir_with_files(t / "dir"), "--overwrite"], 2, "is a folder"),
    Case("onnx over a file", lambda t: ["onnx", model(t), "-o", t / "file", "--overwrite"]
         if (t / "file").write_text("precious") else [], 2, "is a file"),
    Case("dangling link as output",
         lambda t: ["gguf", model(t), "-o", t / "link.gguf"] if (t / "link.gguf").symlink_to(t / "nowhere") is None
         else [], 2, "already exists as a link to nothing"),
    Case("gguf over a blob of a cache snapshot",
         lambda t: ["gguf", (s := snapshot_folder(t)), "-o", blob_of(s, "model.safetensors"), "--overwrite"], 2,
         "is the input"),
    Case("parity report over the model's config",
         lambda t: ["parity", (m := model(t)), export(t), "--json", m / "config.json", "--overwrite"], 2,
         "lies inside the input"),
]


@pytest.mark.parametrize("case", DESTROY_CASES, ids=lambda c: c.name)
def test_outputs_never_destroy_data(case, tmp_path):
    run_case(case, tmp_path)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """Large enough that the export takes a moment, so something can happen while it runs."""
    return make_model_folder(tmp_path_factory.mktemp("big") / "model", seed=0, hidden_size=512,
                             intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
                             num_key_value_heads=4)


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmexport.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_temporary(proc: subprocess.Popen, folder: Path, prefix: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(prefix) and ".lmexport-" in p.name for p in folder.iterdir()):
            return
        time.sleep(0.02)
    raise AssertionError("the export finished before its temporary output appeared")


def test_a_file_that_appears_during_the_export_is_kept(big_model, tmp_path):
    target = tmp_path / "out.gguf"
    proc = _start("gguf", big_model, "-o", target)
    _wait_for_temporary(proc, tmp_path, ".out.gguf")
    target.write_bytes(b"the user's file")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "appeared while the export ran; it was kept" in err and "Traceback" not in err
    assert target.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def test_of_two_exports_to_one_new_path_one_fails(big_model, tmp_path):
    target = tmp_path / "out.gguf"
    procs = [_start("gguf", big_model, "-o", target) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    # which check refuses the second depends on timing: the rename (both were writing) or the start
    assert any("appeared while the export ran" in err or "already exists" in err for _, err in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


@pytest.mark.parametrize("command", ["gguf", "onnx"])
def test_temporaries_of_a_killed_export_are_swept_by_the_next(command, big_model, tmp_path):
    target = tmp_path / ("out.gguf" if command == "gguf" else "out")
    extra = ["--no-validate"] if command == "onnx" else []
    proc = _start(command, big_model, "-o", target, *extra)
    _wait_for_temporary(proc, tmp_path, f".{target.name}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    left = [p.name for p in tmp_path.iterdir()]
    assert left and all(".lmexport-" in name for name in left), left
    done = run_cli(command, make_model_folder(tmp_path / "small", seed=1), "-o", target, *extra)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, "small"])


# ---------------------------------------------------------------- class 2: reading outside the folder

OUTSIDE_CASES = [
    Case("shard index entry climbing out", lambda t: ["gguf", sharded(t, lambda n: f"../elsewhere/{n}"), "-o",
                                                      t / "out.gguf"], 2, "points outside the folder"),
    Case("shard index entry absolute", lambda t: ["onnx", sharded(t, lambda n: str(t / "elsewhere" / n)), "-o",
                                                  t / "out"], 2, "is an absolute path"),
    Case("tokenizer_config.json linked to a host file",
         lambda t: ["onnx", link_to_host_file(t, "tokenizer_config.json", b"root:x:0:0:root:/root:/bin/sh\n"),
                    "-o", t / "out", "--no-validate"], 2, "tokenizer_config.json is a link to"),
    Case("tokenizer.model linked to a host file",
         lambda t: ["convert", llama_with_link(t, "tokenizer.model", Path(sys.executable).resolve()), "-o", t / "out"],
         2, "tokenizer.model is a link to"),
    Case("special_tokens_map.json linked to a JSON list",
         lambda t: ["onnx", link_to_host_file(t, "special_tokens_map.json", b"[1, 2, 3]"), "-o", t / "out",
                    "--no-validate"], 2, "special_tokens_map.json is a link to"),
    Case("graph naming weights outside the folder",
         lambda t: ["generate", graph_data_elsewhere(t), "--prompt", "a"], 2, "escapes model directory"),
    Case("lmexport.json model file absolute",
         lambda t: ["generate", manifest_with(t, lambda d: d.update(model_file=str(SOURCE / "onnx" / "model.onnx"))),
                    "--prompt", "a"], 2, "is an absolute path"),
    Case("lmexport.json model file climbing out",
         lambda t: ["generate", manifest_with(t, lambda d: d.update(model_file="../onnx2/model.onnx")),
                    "--prompt", "a"], 2, "points outside the folder"),
]


@pytest.mark.parametrize("case", OUTSIDE_CASES, ids=lambda c: c.name)
def test_nothing_is_read_from_outside_the_folder(case, tmp_path):
    run_case(case, tmp_path)


def test_a_cache_snapshot_of_links_exports_and_publishes_real_files(tmp_path):
    snap = snapshot_folder(tmp_path)
    done = run_cli("onnx", snap, "-o", tmp_path / "out", "--no-validate")
    assert done.returncode == 0, done.stderr
    published = {p.name: p for p in (tmp_path / "out").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(published)
    assert not any(p.is_symlink() for p in published.values())
    from tokenizers import Tokenizer           # written from the linked file (with the BOS rule stated)
    want = Tokenizer.from_file(str(snap / "tokenizer.json")).get_vocab()
    assert Tokenizer.from_file(str(published["tokenizer.json"])).get_vocab() == want


# ---------------------------------------------------------------- class 3: unbounded work

LIMIT_CASES = [
    Case("generate --threads 100000", lambda t: ["generate", export(t), "--prompt", "a", "--threads", "100000"], 2,
         "this machine has"),
    Case("bench --threads 100000", lambda t: ["bench", export(t), "--threads", "100000"], 2, "this machine has"),
    Case("bench --batch 1000000", lambda t: ["bench", export(t), "--batch", "1000000", "--prompt-tokens", "64"], 2,
         "GB of memory"),
    Case("bench --prompt-tokens 100000", lambda t: ["bench", export(t), "--prompt-tokens", "100000"], 2,
         "exceed the model's context of 256"),
    Case("bench --repeats 10**6", lambda t: ["bench", export(t), "--repeats", "1000000"], 2, "more than 1000"),
    Case("parity --steps past the context", lambda t: ["parity", model(t), export(t), "--steps", "300"], 2,
         "leaves no room for a prompt"),
]


@pytest.mark.parametrize("case", LIMIT_CASES, ids=lambda c: c.name)
def test_work_is_bounded_by_the_machine_and_the_model(case, tmp_path):
    run_case(case, tmp_path)


# ---------------------------------------------------------------- class 4: tracebacks

def _gen(folder: Path, *extra) -> list:
    return ["generate", folder, "--prompt", "def", "--max-new-tokens", "4", *extra]


TRACEBACK_CASES = [
    Case("manifest state shape a string", lambda t: _gen(manifest_with(t, lambda d: state(d, shape="abc"))), 2,
         "is not a list of 1 to 8 dimensions"),
    Case("manifest state shape with a prompt axis",
         lambda t: _gen(manifest_with(t, lambda d: state(d, shape=["batch_size", 64, "sequence_length"]))), 2,
         "axis name 'sequence_length' unknown here"),
    Case("manifest state of a terabyte",
         lambda t: _gen(manifest_with(t, lambda d: state(d, shape=["batch_size", 1 << 20, 1 << 20]))), 2,
         "too large"),
    Case("manifest state name a number", lambda t: _gen(manifest_with(t, lambda d: state(d, name=7))), 2,
         "is not a name"),
    Case("manifest axis name unknown",
         lambda t: _gen(manifest_with(t, lambda d: role_input(d, "input_ids", shape=["batch_size", "tokens"]))), 2,
         "axis name 'tokens' unknown"),
    Case("manifest without input_ids",
         lambda t: _gen(manifest_with(t, lambda d: role_input(d, "input_ids", **{
             "role": "conv", "layer": 0, "init": "zeros", "present": "present_conv.0"}))), 2,
         "needs exactly one input_ids"),
    Case("manifest opset a string", lambda t: _gen(manifest_with(t, lambda d: d.update(opset="23"))), 2,
         "opset '23' is not an opset number"),
    Case("manifest pad id past the vocabulary",
         lambda t: _gen(manifest_with(t, lambda d: d["tokenizer"].update(pad_token_id=10**6))), 2,
         "pad_token_id 1000000 is not a token id"),
    Case("manifest config NaN eps",
         lambda t: _gen(manifest_with(t, lambda d: d["source"]["config"].update(rms_norm_eps=float("nan")))), 2,
         "rms_norm_eps must be a finite number"),
    Case("manifest nested 200,000 deep", lambda t: _gen(with_file(export(t), "lmexport.json", deep_json().encode())), 2,
         "nested too deeply"),
    Case("--temperature nan", lambda t: _gen(export(t), "--temperature", "nan"), 2,
         "temperature must be a finite number"),
    Case("--repetition-penalty inf", lambda t: _gen(export(t), "--repetition-penalty", "inf"), 2,
         "repetition penalty must be a finite number"),
    Case("--seed -1", lambda t: _gen(export(t), "--seed", "-1"), 2, "seed must be an integer"),
    Case("prompt not UTF-8", lambda t: ["generate", export(t), "--prompt", os.fsdecode(b"caf\xe9")], 2,
         "the prompt is not valid UTF-8"),
    Case("--stop not UTF-8", lambda t: _gen(export(t), "--stop", os.fsdecode(b"\xff")), 2,
         "a --stop string is not valid UTF-8"),
    Case("chat stdin not UTF-8", lambda t: ["chat", export(t), "--max-new-tokens", "2"], 2,
         "line 2 of the input is not UTF-8", stdin=b"hello\ncaf\xe9\n"),
    Case("config rope_scaling a string", lambda t: ["gguf", config_with(t, rope_scaling="linear"), "-o",
                                                    t / "o.gguf"], 2, "rope_scaling must be an object or null"),
    Case("config numbers as strings",
         lambda t: ["onnx", config_with(t, hidden_size="64", rope_theta="1e4"), "-o", t / "out"], 2,
         "hidden_size must be an integer in 1..131072, got '64'; rope_theta must be a finite number"),
    Case("config nested 200,000 deep", lambda t: ["gguf", raw_config(t, deep_json()), "-o", t / "o.gguf"], 2,
         "nested too deeply"),
    Case("perplexity on a config nested 200,000 deep",
         lambda t: ["perplexity", raw_config(t, deep_json()), "--text", text_file(t)], 2, "nested too deeply"),
    Case("perplexity with a tokenizer.json that is not one",
         lambda t: ["perplexity", with_file(export(t), "tokenizer.json", b"{}"), "--text", text_file(t)], 2,
         "cannot be read as a tokenizer"),
    Case("config not UTF-8", lambda t: ["gguf", with_file(model(t), "config.json", b'{"a": "\xff"}'), "-o",
                                        t / "o.gguf"], 2, "is not UTF-8"),
]


@pytest.mark.parametrize("case", TRACEBACK_CASES, ids=lambda c: c.name)
def test_hostile_values_are_one_line_not_a_traceback(case, tmp_path):
    run_case(case, tmp_path)


# ---------------------------------------------------------------- class 5: wrong verdicts

VERDICT_CASES = [
    Case("NaN eps is bad input, not a mismatch",
         lambda t: ["onnx", config_with(t, rms_norm_eps=float("nan")), "-o", t / "out"], 2,
         "rms_norm_eps must be a finite number above 0, got nan"),
    Case("negative rope_theta", lambda t: ["onnx", config_with(t, rope_theta=-1), "-o", t / "out"], 2,
         "rope_theta must be a finite number above 0, got -1"),
    Case("tie_word_embeddings a string", lambda t: ["gguf", config_with(t, tie_word_embeddings="false"), "-o",
                                                    t / "o.gguf"], 2, "tie_word_embeddings must be true or false"),
    Case("negative context", lambda t: ["gguf", config_with(t, max_position_embeddings=-5), "-o", t / "o.gguf"], 2,
         "max_position_embeddings must be an integer"),
    Case("several problems in one line",
         lambda t: ["gguf", config_with(t, rope_theta=-1, tie_word_embeddings=1, pad_token_id=9999), "-o",
                    t / "o.gguf"], 2, "rope_theta must be a finite number above 0, got -1; tie_word_embeddings"),
    Case("convert --gate-bias nan", lambda t: ["convert", make_llama_folder(t / "llama"), "-o", t / "out",
                                               "--gate-bias", "nan"], 2, "--gate-bias must be a finite number"),
    Case("generate on a NaN artifact", lambda t: _gen(nan_export(t)), 1, "NaN or infinite logit"),
    Case("perplexity on a NaN artifact",
         lambda t: ["perplexity", nan_export(t), "--text", text_file(t)], 1,
         "NaN or infinite logits"),
]


@pytest.mark.parametrize("case", VERDICT_CASES, ids=lambda c: c.name)
def test_verdicts_name_the_real_problem(case, tmp_path):
    run_case(case, tmp_path)
