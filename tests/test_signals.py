"""Hostile input, round three (issue #27), class 1: an interrupt is never lost.

Every writing command, interrupted at every point of its atomic write, either leaves the
previous output byte for byte as it was or publishes the complete new one, exits 130 with
one line that says which, and leaves nothing behind. The moment is stubbed
(LMEXPORT_TEST_INTERRUPT_AT makes the command send itself SIGINT at a named point, or
from a ``__del__`` where Python swallows the KeyboardInterrupt, the way the real Ctrl-C was
lost); the result is not: each row reads the real output back. A last test sends real
SIGINTs from outside at a sweep of delays.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmexport.interrupts import TEST_POINT_ENV
from lmexport.modeling.tiny import make_model_folder

from test_cli_hostile import snapshot


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    return make_model_folder(root / "old", seed=0), make_model_folder(root / "new", seed=1)


def cli(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmexport.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, **kw)


@dataclass
class Command:
    name: str
    argv: callable          # (model folder, output path) -> argv
    output: str


COMMANDS = [
    Command("gguf", lambda m, o: ["gguf", m, "-o", o, "--outtype", "f32", "--overwrite"], "out.gguf"),
    Command("onnx", lambda m, o: ["onnx", m, "-o", o, "--no-validate", "--overwrite"], "out"),
]
# (point, published?): before the commit an interrupt keeps the old output; one that arrives
# while the old output is moved aside waits for the rename; one after it changes nothing.
POINTS = [("writing", False), ("writing:del", False), ("commit:del", False), ("aside", True),
          ("published:del", True)]


def tree_digest(path: Path) -> dict[str, str]:
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return snapshot(path)


@pytest.fixture(scope="module")
def outputs(models, tmp_path_factory):
    """Each command's output of the old and the new model, written without interruption."""
    root = tmp_path_factory.mktemp("references")
    out = {}
    for command in COMMANDS:
        for which, model in zip(("old", "new"), models):
            target = root / which / command.output
            target.parent.mkdir(exist_ok=True)
            done = cli(*command.argv(model, target))
            assert done.returncode == 0, done.stderr
            out[command.name, which] = target
    return out


def assert_interrupted(done, published: bool, target: Path):
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    want = f"interrupted after {target} was written completely" if published else \
        "interrupted: nothing was written to the output path"
    assert last == want, done.stderr


@pytest.mark.parametrize("point,published", POINTS, ids=[p for p, _ in POINTS])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_an_interrupt_at_any_point_keeps_or_completes_the_output(command, point, published, models, outputs,
                                                                  tmp_path):
    import shutil

    target = tmp_path / command.output
    old = outputs[command.name, "old"]
    (shutil.copytree if old.is_dir() else shutil.copy)(old, target)
    done = cli(*command.argv(models[1], target), env={TEST_POINT_ENV: point})
    assert_interrupted(done, published, target)
    want = outputs[command.name, "new" if published else "old"]
    assert tree_digest(target) == tree_digest(want)
    assert sorted(p.name for p in tmp_path.iterdir()) == [command.output], "something was left behind"


@pytest.mark.parametrize("point,published", [("writing:del", False), ("aside", True)])
def test_parity_report_is_kept_or_complete(point, published, models, outputs, tmp_path):
    """parity --json --overwrite over a previous report: kept, or replaced by the whole new report."""
    report = tmp_path / "report.json"
    report.write_text('{"previous": true}\n')
    done = cli("parity", models[0], outputs["gguf", "old"], "--steps", "2", "--json", report, "--overwrite",
               env={TEST_POINT_ENV: point})
    assert_interrupted(done, published, report)
    if published:
        import json
        assert json.loads(report.read_text())["passed"] is True
    else:
        assert report.read_text() == '{"previous": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_sigterm_is_an_interrupt_too(models, outputs, tmp_path):
    target = tmp_path / "out.gguf"
    target.write_bytes(b"previous")
    proc = subprocess.Popen([sys.executable, "-m", "lmexport.cli", "gguf", str(models[1]), "-o", str(target),
                             "--overwrite"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, TEST_POINT_ENV: "none"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(".lmexport-" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def test_real_ctrl_c_at_a_sweep_of_moments(models, outputs, tmp_path):
    """Real SIGINTs from outside, from the start of the process to its end: never a third outcome."""
    old, new = outputs["gguf", "old"], outputs["gguf", "new"]
    start = time.monotonic()
    done = cli("gguf", models[1], "-o", tmp_path / "timing.gguf", "--outtype", "f32")
    duration = time.monotonic() - start
    (tmp_path / "timing.gguf").unlink()
    target = tmp_path / "out.gguf"
    outcomes = []
    for i in range(6):
        target.write_bytes(old.read_bytes())
        proc = subprocess.Popen([sys.executable, "-m", "lmexport.cli", "gguf", str(models[1]), "-o", str(target),
                                 "--outtype", "f32", "--overwrite"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True)
        time.sleep(duration * (0.3 + 0.7 * i / 6))
        sent = proc.poll() is None
        if sent:
            proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
        got = hashlib.sha256(target.read_bytes()).hexdigest()
        assert got in (hashlib.sha256(old.read_bytes()).hexdigest(), hashlib.sha256(new.read_bytes()).hexdigest())
        if proc.returncode == 0:
            assert got == hashlib.sha256(new.read_bytes()).hexdigest()
        else:
            assert proc.returncode == 130 and sent, err
            assert "Traceback" not in err and "Exception ignored" not in err, err
            completed = "written completely" in err
            assert got == hashlib.sha256((new if completed else old).read_bytes()).hexdigest(), err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"], err
        outcomes.append(proc.returncode)
    assert 130 in outcomes, f"no run was interrupted (export takes {duration:.1f} s): {outcomes}"
    assert done.returncode == 0
