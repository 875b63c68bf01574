"""Hostile input, round three (issue #27), through the real CLI: one table per class.

Like tests/test_cli_hostile.py, every row asserts the exit code, one clear error line, no
traceback, and that the test folder (the user's files) is byte for byte as it was, with
nothing left behind. Interrupts (class 1) are in tests/test_signals.py; hostile GGUFs
against llama.cpp's loader (class 6) in tests/runtime/llamacpp/test_hostile_gguf.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from test_cli_hostile import (Case, _sources, edit_json, export, manifest_with, model, run_case,  # noqa: F401
                              snapshot, snapshot_folder, source, text_file)
from test_cli_errors import run_cli


# ---------------------------------------------------------------- helpers

def linked_out(t: Path, name: str, folder: Path | None = None) -> Path:
    """``folder``'s ``name`` replaced by a link to an identical, valid copy outside the folder:
    only the link itself is wrong."""
    folder = folder or model(t)
    outside = t / "elsewhere"
    outside.mkdir(exist_ok=True)
    shutil.copy(folder / name, outside / name)
    (folder / name).unlink()
    (folder / name).symlink_to(outside / name)
    return folder


def linked_in(t: Path, name: str) -> Path:
    """``name`` a link to a copy in a subfolder of the same folder: allowed."""
    folder = model(t)
    (folder / "real").mkdir()
    shutil.move(folder / name, folder / "real" / name)
    (folder / name).symlink_to(Path("real", name))
    return folder


def added_file(t: Path, name: str, content: str) -> Path:
    folder = model(t)
    (folder / name).write_text(content)
    return folder


def int_weight(t: Path, dtype: str = "int32") -> Path:
    import torch

    folder = model(t)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = next(n for n in sorted(tensors) if n.endswith("mlp.down_proj.weight"))
    tensors[name] = (tensors[name] * 1e9).to(getattr(torch, dtype))
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


def foreign_tokenizer(folder: Path) -> Path:
    """The folder's tokenizer.json with every vocabulary id moved past the model's 384 rows."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    data["model"]["vocab"] = {k: v + 1000 for k, v in data["model"]["vocab"].items()}
    path.write_text(json.dumps(data))
    return folder


def io_item(data: dict, role: str, kind: str = "inputs") -> dict:
    return next(i for i in data[kind] if i["role"] == role)


def set_dim(role: str, index: int, value, kind: str = "inputs"):
    def edit(data):
        item = io_item(data, role, kind)
        item["shape"][index] = value
    return edit


def _gen(folder: Path, *extra) -> list:
    return ["generate", folder, "--prompt", "def", "--max-new-tokens", "4", *extra]


# ---------------------------------------------------------------- class 2: links out of the folder

LINK_CASES = [
    Case("special_tokens_map.json linked to a valid copy outside",
         lambda t: ["onnx", linked_out(t, "special_tokens_map.json", added_file(t, "special_tokens_map.json",
                                                                               '{"bos_token": "<s>"}')),
                    "-o", t / "out", "--no-validate"], 2, "special_tokens_map.json is a link to"),
    Case("generation_config.json linked outside",
         lambda t: ["onnx", linked_out(t, "generation_config.json", added_file(t, "generation_config.json",
                                                                              '{"max_new_tokens": 4}')),
                    "-o", t / "out", "--no-validate"], 2, "generation_config.json is a link to"),
    Case("chat_template.jinja linked outside",
         lambda t: ["gguf", linked_out(t, "chat_template.jinja", added_file(t, "chat_template.jinja",
                                                                           "{{ messages[0]['content'] }}")),
                    "-o", t / "o.gguf"], 2, "chat_template.jinja is a link to"),
    Case("tokenizer_config.json linked outside (perplexity)",
         lambda t: ["perplexity", linked_out(t, "tokenizer_config.json"), "--text", text_file(t)], 2,
         "tokenizer_config.json is a link to"),
    Case("tokenizer.json linked outside", lambda t: ["gguf", linked_out(t, "tokenizer.json"), "-o", t / "o.gguf"],
         2, "tokenizer.json is a link to"),
    Case("config.json linked outside", lambda t: ["gguf", linked_out(t, "config.json"), "-o", t / "o.gguf"], 2,
         "config.json is a link to"),
    Case("weights linked outside", lambda t: ["onnx", linked_out(t, "model.safetensors"), "-o", t / "out"], 2,
         "model.safetensors is a link to"),
    Case("export's tokenizer.json linked outside", lambda t: _gen(linked_out(t, "tokenizer.json", export(t))), 2,
         "tokenizer.json is a link to"),
    Case("export's weights linked outside", lambda t: _gen(linked_out(t, "model.onnx.data", export(t))), 2,
         "model.onnx.data is a link to"),
    Case("parity on a model folder with a link out",
         lambda t: ["parity", linked_out(t, "tokenizer_config.json"), export(t), "--steps", "1"], 2,
         "tokenizer_config.json is a link to"),
]


@pytest.mark.parametrize("case", LINK_CASES, ids=lambda c: c.name)
def test_every_folder_file_must_resolve_inside_the_folder(case, tmp_path):
    run_case(case, tmp_path)


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "model.safetensors"])
def test_links_that_stay_inside_the_folder_are_fine(name, tmp_path):
    done = run_cli("gguf", linked_in(tmp_path, name), "-o", tmp_path / "o.gguf")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o.gguf").stat().st_size > 0


def test_a_cache_snapshot_still_exports_to_gguf(tmp_path):
    done = run_cli("gguf", snapshot_folder(tmp_path), "-o", tmp_path / "o.gguf")
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- class 3: wrong verdicts

VERDICT_CASES = [
    Case("I32 weight through onnx", lambda t: ["onnx", int_weight(t), "-o", t / "out"], 2,
         "mlp.down_proj.weight is stored as I32, not a floating-point type"),
    Case("I32 weight through gguf", lambda t: ["gguf", int_weight(t), "-o", t / "o.gguf"], 2,
         "mlp.down_proj.weight is stored as I32, not a floating-point type"),
    Case("I64 weight through parity", lambda t: ["parity", int_weight(t, "int64"), export(t), "--steps", "1"], 2,
         "is stored as I64"),
    Case("bool weight through convert-free perplexity",
         lambda t: ["perplexity", int_weight(t, "bool"), "--text", text_file(t)], 2, "is stored as BOOL"),
    Case("lmexport.json context edited to 10^6: the folder's 256 wins",
         lambda t: ["generate", manifest_with(t, lambda d: d["source"]["config"].update(
             max_position_embeddings=10**6)), "--prompt", "def", "--max-new-tokens", "1000"], 2,
         "leaves no room in the model's context of 256 tokens"),
]


@pytest.mark.parametrize("case", VERDICT_CASES, ids=lambda c: c.name)
def test_verdicts_name_the_real_problem(case, tmp_path):
    run_case(case, tmp_path)


def test_an_edited_context_is_bounded_with_a_message(tmp_path):
    folder = manifest_with(tmp_path, lambda d: d["source"]["config"].update(max_position_embeddings=10**6))
    done = run_cli("generate", folder, "--prompt", "def", "--max-new-tokens", "8", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert "lmexport.json says a context of 1000000 tokens" in done.stderr and "using 256" in done.stderr


# ---------------------------------------------------------------- class 4: tracebacks

TRACEBACK_CASES = [
    Case("conv state of another kernel size", lambda t: _gen(manifest_with(t, set_dim("conv", -1, 7))), 2,
         "has shape"),
    Case("key state of another head size", lambda t: _gen(manifest_with(t, set_dim("key", -1, 17))), 2,
         "has shape"),
    Case("value state with a named axis the graph fixes",
         lambda t: _gen(manifest_with(t, set_dim("value", 1, "batch_size"))), 2, "has shape"),
    Case("logits of another vocabulary", lambda t: _gen(manifest_with(t, set_dim("logits", -1, 500, "outputs"))),
         2, "has shape"),
    Case("perplexity: an export's tokenizer past the vocabulary",
         lambda t: ["perplexity", foreign_tokenizer(export(t)), "--text", text_file(t)], 2,
         "but the model has a vocabulary of 384 tokens"),
    Case("perplexity: a model folder's tokenizer past the vocabulary",
         lambda t: ["perplexity", foreign_tokenizer(model(t)), "--text", text_file(t)], 2,
         "but the model has a vocabulary of 384 tokens"),
    Case("perplexity: --tokenizer of another model",
         lambda t: ["perplexity", export(t), "--tokenizer", foreign_tokenizer(model(t, "other")) / "tokenizer.json",
                    "--text", text_file(t)], 2, "the tokenizer is not this model's"),
]


@pytest.mark.parametrize("case", TRACEBACK_CASES, ids=lambda c: c.name)
def test_disagreements_are_one_line_not_a_traceback(case, tmp_path):
    run_case(case, tmp_path)


# ---------------------------------------------------------------- class 5: unclear messages

LONG = "a" * 250 + ".json"          # 255 bytes: a legal name whose temporary would not be


MESSAGE_CASES = [
    Case("chat: a 1 MB message is the context's problem, not the template's",
         lambda t: ["chat", export(t), "--max-new-tokens", "2"], 2, "the model's context is 256 (send a shorter",
         stdin=("word " * 200_000 + "\n").encode()),
    Case("chat: context full, then /reset works", lambda t: ["chat", export(t), "--max-new-tokens", "200"], 2,
         "(type /reset to start a new chat", stdin=b"hello\nhello again, and again\n/reset\nhi\n"),
    Case("parity --json name over NAME_MAX",
         lambda t: ["parity", model(t), export(t), "--steps", "1", "--json", t / ("a" * 256)], 2,
         "file names are limited to 255"),
    Case("--tokenizer a file not named tokenizer.json",
         lambda t: ["perplexity", (e := export(t)), "--tokenizer", e / "config.json", "--text", text_file(t)], 2,
         "is a file not named tokenizer.json; --tokenizer takes a folder"),
    Case("--tokenizer a file that does not exist",
         lambda t: ["perplexity", export(t), "--tokenizer", t / "nothing.json", "--text", text_file(t)], 2,
         "does not exist"),
]


@pytest.mark.parametrize("case", MESSAGE_CASES, ids=lambda c: c.name)
def test_messages_say_what_is_wrong(case, tmp_path):
    run_case(case, tmp_path)


def test_chat_goes_on_after_a_refused_turn(tmp_path):
    folder = export(tmp_path)
    done = subprocess.run([sys.executable, "-m", "lmexport.cli", "chat", str(folder), "--max-new-tokens", "200"],
                          input="hello\nhello again\n/reset\nhi\n", capture_output=True, text=True)
    assert done.returncode == 2
    assert "> /reset" in done.stdout and "> hi" in done.stdout
    assert done.stdout.split("> hi", 1)[1].strip(), "no reply after /reset"
    assert "drop --chat" not in done.stderr and "template" not in done.stderr


@pytest.mark.parametrize("command", ["gguf", "parity"])
def test_a_legal_255_byte_output_name_works(command, tmp_path):
    target = tmp_path / ("a" * 250 + (".gguf" if command == "gguf" else ".json"))
    argv = (["gguf", model(tmp_path), "-o", target] if command == "gguf" else
            ["parity", model(tmp_path), export(tmp_path), "--steps", "1", "--json", target])
    done = run_cli(*argv)
    assert done.returncode == 0, done.stderr
    assert target.stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if ".lmexport-" in p.name]


# ---------------------------------------------------------------- full disks (a small tmpfs of our own)

def _can_mount() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt || "
                               "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs unshare -rm (user and mount namespaces)")


def run_on_small_disk(disk: Path, size: str, argv: list, *, fill: bool = False, env=None):
    """Run the CLI with ``disk`` a fresh tmpfs of ``size`` (in a private mount namespace); returns the
    process and the disk's entries afterwards."""
    disk.mkdir()
    args = " ".join(f"'{a}'" for a in map(str, argv))
    fill_cmd = f"dd if=/dev/zero of='{disk}/filler' bs=4k 2>/dev/null; " if fill else ""
    script = (f"mount -t tmpfs -o size={size} tmpfs '{disk}' && {fill_cmd}"
              f"'{sys.executable}' -m lmexport.cli {args}; rc=$?; echo; echo \"LEFT:$(ls -A '{disk}')\"; exit $rc")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    left = done.stdout.rsplit("LEFT:", 1)[1].split()
    return done, left


@needs_mount
@pytest.mark.parametrize("command", ["gguf", "onnx"])
def test_a_disk_that_fills_up_says_so(command, tmp_path):
    folder = model(tmp_path)
    before = snapshot(folder)
    target = tmp_path / "disk" / ("o.gguf" if command == "gguf" else "out")
    extra = ["--outtype", "f32"] if command == "gguf" else ["--no-validate"]
    # the up-front space check is told there is room, so the disk fills up during the write
    done, left = run_on_small_disk(tmp_path / "disk", "256k", [command, folder, "-o", target, *extra],
                                   env={"LMEXPORT_FREE_SPACE_OVERRIDE": str(10**12)})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert f"no space left on device at {target.parent}: free" in errors[0], errors[0]
    assert "requested and" not in done.stderr and "Traceback" not in done.stderr
    assert left == [] and snapshot(folder) == before


@needs_mount
def test_parity_json_on_a_full_disk_fails_before_the_verdict(tmp_path):
    report = tmp_path / "disk" / "report.json"
    done, left = run_on_small_disk(tmp_path / "disk", "64k", ["parity", model(tmp_path), export(tmp_path), "--steps",
                                                              "1", "--json", report], fill=True)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert "no space left on device at" in errors[0] and ".lmexport-" not in errors[0], errors[0]
    assert "PASS" not in done.stdout
    assert left == ["filler"]
