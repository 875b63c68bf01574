"""Bad input through the real CLI: one table row per case, each asserting the message,
the exit code and the state of the output path (issue: clear failures that lose nothing)."""
from __future__ import annotations

import json
import os
import signal
import time
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmexport.modeling.checkpoint import save_checkpoint
from lmexport.modeling.tiny import make_model_folder, write_tokenizer_files, make_tokenizer

from conftest import tiny_model
from cli_helpers import run_cli


@dataclass
class Case:
    name: str
    setup: Callable[[Path], list]      # tmp_path -> argv (after "lmexport")
    code: int
    message: str                       # substring of the single stderr line
    output: str | None = None          # path (relative to tmp) that must not exist afterwards
    env: dict | None = None
    keep: str | None = None            # path whose previous content must be intact


def _model(tmp: Path) -> Path:
    return make_model_folder(tmp / "model", seed=0)


def _edit_config(tmp, **changes):
    folder = _model(tmp)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _truncated(tmp):
    folder = _model(tmp)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    return folder


def _sharded(tmp, mutate):
    model = tiny_model(seed=1, vocab_size=384)
    folder = save_checkpoint(model, tmp / "model", max_shard_bytes=40_000)
    write_tokenizer_files(make_tokenizer(), folder)
    mutate(folder)
    return folder


def _drop_shard(folder):
    sorted(folder.glob("model-*.safetensors"))[1].unlink()


def _duplicate_across_shards(folder):
    shards = sorted(folder.glob("model-*.safetensors"))
    first = load_file(shards[0])
    name = next(iter(first))
    second = load_file(shards[1])
    second[name] = first[name]
    save_file(second, shards[1])


def _wrong_shape(tmp):
    folder = _model(tmp)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(7, 64)
    save_file(tensors, folder / "model.safetensors")
    return folder


def _bin_only(tmp):
    folder = _model(tmp)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def _existing_output(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("precious")
    return _model(tmp)


CONVERT_CASES = [
    Case("missing folder", lambda t: ["convert", t / "nope", "-o", t / "out"], 2, "does not exist", "out"),
    Case("folder without config.json", lambda t: (t / "empty").mkdir() or ["convert", t / "empty", "-o", t / "out"],
         2, "has no config.json", "out"),
    Case("config of another architecture",
         lambda t: ["convert", _edit_config(t, model_type="mistral"), "-o", t / "out"], 2,
         "'mistral' model, not a Liquid-Metal or Llama one", "out"),
]

EXPORT_INPUT_CASES = [
    Case("truncated safetensors", lambda t: [_truncated(t)], 2, "not a readable safetensors file"),
    Case("shard index naming a missing shard", lambda t: [_sharded(t, _drop_shard)], 2, "missing model-00002"),
    Case("tensor of wrong shape", lambda t: [_wrong_shape(t)], 2,
         "model.layers.1.mlp.up_proj.weight has shape (7, 64)"),
    Case("duplicate tensor across shards", lambda t: [_sharded(t, _duplicate_across_shards)], 2, "is stored twice"),
    Case(".bin-only checkpoint", lambda t: [_bin_only(t)], 2, "only pickle weights"),
    Case("unsupported rope scaling", lambda t: [_edit_config(t, rope_scaling={"rope_type": "yarn", "factor": 4})],
         2, "rope_scaling"),
    Case("unsupported kernel size", lambda t: [_edit_config(t, token_mixing_kernel_size=40)], 2,
         "token_mixing_kernel_size must be an integer in 2..16"),
]


def assert_one_clear_line(done, code, message):
    assert done.returncode == code, done.stderr
    lines = [l for l in done.stderr.splitlines() if l.strip() and not l.startswith(("Writing", "\r"))]
    errors = [l for l in lines if l.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert message in errors[0], errors[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("case", CONVERT_CASES, ids=lambda c: c.name)
def test_convert_bad_input(case, tmp_path):
    done = run_cli(*case.setup(tmp_path), env=case.env)
    assert_one_clear_line(done, case.code, case.message)
    if case.output:
        assert not (tmp_path / case.output).exists()


WRITERS = {"onnx": lambda t: ["-o", t / "out"], "gguf": lambda t: ["-o", t / "out.gguf"]}


@pytest.mark.parametrize("command", sorted(WRITERS))
@pytest.mark.parametrize("case", EXPORT_INPUT_CASES, ids=lambda c: c.name)
def test_export_bad_model_input(case, command, tmp_path):
    argv = [command, *case.setup(tmp_path), *WRITERS[command](tmp_path)]
    done = run_cli(*argv)
    assert_one_clear_line(done, case.code, case.message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.gguf").exists()
    assert not [p for p in tmp_path.iterdir() if "lmexport-tmp" in p.name]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("errs") / "model", seed=0)


def _previous_output(tmp_path, command):
    """An existing output at the target, with content that must survive."""
    target = WRITERS[command](tmp_path)[1]
    if command == "onnx":
        target.mkdir()
        (target / "keep.txt").write_text("precious")
        return target, lambda: (target / "keep.txt").read_text() == "precious"
    target.write_bytes(b"precious")
    return target, lambda: target.read_bytes() == b"precious"


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_existing_output_is_kept_without_overwrite(command, model_folder, tmp_path):
    target, intact = _previous_output(tmp_path, command)
    done = run_cli(command, model_folder, *WRITERS[command](tmp_path))
    assert_one_clear_line(done, 2, "already exists (pass --overwrite to replace it)")
    assert intact()


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_output_folder_not_writable(command, model_folder, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    argv = [command, model_folder, "-o", locked / ("out.gguf" if command == "gguf" else "out")]
    # Drop root's permission override so the folder's mode applies (tests run as root in CI).
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    done = subprocess.run([*prefix, sys.executable, "-m", "lmexport.cli", *map(str, argv)],
                          capture_output=True, text=True)
    assert_one_clear_line(done, 2, "is not writable")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_not_enough_disk_space(command, model_folder, tmp_path):
    done = run_cli(command, model_folder, *WRITERS[command](tmp_path),
                   env={"LMEXPORT_FREE_SPACE_OVERRIDE": "1000"})
    assert_one_clear_line(done, 2, "not enough disk space")
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.fixture(scope="module")
def big_model_folder(tmp_path_factory):
    """Large enough that writing it takes a moment, so an interrupt lands mid-write."""
    return make_model_folder(tmp_path_factory.mktemp("big") / "model", seed=0, hidden_size=512,
                             intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
                             num_key_value_heads=4)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", sorted(WRITERS))
def test_interrupt_mid_write_leaves_previous_output_intact(command, sig, big_model_folder, tmp_path):
    target, intact = _previous_output(tmp_path, command)
    proc = subprocess.Popen([sys.executable, "-m", "lmexport.cli", command, str(big_model_folder),
                             "-o", str(target), "--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(f".{target.name}") for p in tmp_path.iterdir()):
            break   # a temporary output beside the target: the write is under way
        time.sleep(0.02)
    assert proc.poll() is None, "the export finished before it could be interrupted"
    time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert intact()
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.fixture(scope="module")
def onnx_export(model_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "onnx"
    done = run_cli("onnx", model_folder, "-o", out, "--no-validate")
    assert done.returncode == 0, done.stderr
    return out


def _copy(folder, tmp_path):
    import shutil
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _edit_manifest(folder, **changes):
    manifest = json.loads((folder / "lmexport.json").read_text())
    manifest.update(changes)
    (folder / "lmexport.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "lmexport.json").unlink(), "has no lmexport.json"),
    (lambda f: _edit_manifest(f, num_layers=10**9), "num_layers 1000000000 out of range"),
    (lambda f: _edit_manifest(f, inputs=[{"name": "input_ids", "dtype": "int64", "role": "input_ids",
                                          "shape": ["batch_size", 1 << 40]}]), "out of range"),
    (lambda f: (f / "model.onnx.data").write_bytes(b"\0" * 100), "model.onnx.data has 100 bytes"),
], ids=["missing manifest", "edited layer count", "edited dimension", "truncated data"])
@pytest.mark.parametrize("command", ["generate", "parity"])
def test_damaged_onnx_folder(command, damage, message, onnx_export, model_folder, tmp_path):
    folder = _copy(onnx_export, tmp_path)
    damage(folder)
    argv = ["generate", folder, "--prompt", "def"] if command == "generate" else ["parity", model_folder, folder]
    assert_one_clear_line(run_cli(*argv), 2, message)


def test_gguf_of_another_architecture_and_corrupted_header_given_to_parity(model_folder, tmp_path):
    from lmexport.modeling.tiny import make_llama_folder
    llama = make_llama_folder(tmp_path / "llama")
    done = run_cli("gguf", llama, "-o", tmp_path / "llama.gguf", "--arch", "llama")
    assert done.returncode == 0, done.stderr
    assert_one_clear_line(run_cli("parity", model_folder, tmp_path / "llama.gguf"), 2,
                          "is a 'llama' GGUF, not a Liquid-Metal")
    good = tmp_path / "good.gguf"
    assert run_cli("gguf", model_folder, "-o", good).returncode == 0
    data = bytearray(good.read_bytes())
    data[8:16] = (10**12).to_bytes(8, "little")              # tensor count far out of range
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    done = run_cli("parity", model_folder, tmp_path / "bad.gguf")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "bad.gguf" in done.stderr


def test_prompt_file_not_utf8_and_prompt_longer_than_context(model_folder, onnx_export, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"caf\xe9\n")
    assert_one_clear_line(run_cli("parity", model_folder, onnx_export, "--prompts", prompts), 2, "not UTF-8")
    assert_one_clear_line(run_cli("generate", onnx_export, "--prompt", "word " * 400), 2,
                          "exceeds the model's context of 256")
