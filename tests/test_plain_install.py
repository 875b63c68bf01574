"""The laptop install, for real: a fresh venv with `pip install .` and no extras.

torch and transformers are absent there (not merely blocked), the runtime commands
run on an exported folder, and every export-side command says in one line which
extra to install. The venv is built offline from the wheels scripts/plain_wheels.sh
downloaded (the test command runs it; the fixture runs it if they are missing).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmexport.cli import COMMANDS
from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
from lmexport.runtime import Generator
from conftest import BUNDLED, ROOT

WHEELS = Path(os.environ.get("LMEXPORT_CACHE", Path.home() / ".cache" / "lmexport")) / "wheels-plain"
NOT_COPIED = shutil.ignore_patterns(".git", ".venv*", "out", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                    "node_modules", ".work", ".pytest_cache")


def _run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """(bin dir, env) of a fresh venv holding only `pip install .`."""
    if not WHEELS.is_dir() or not any(WHEELS.glob("onnxruntime-*.whl")):
        done = _run(["bash", str(ROOT / "scripts" / "plain_wheels.sh")])
        assert done.returncode == 0, done.stderr[-2000:]
    base = tmp_path_factory.mktemp("plain")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=NOT_COPIED)          # build from a copy: the checkout stays clean
    venv = base / "venv"
    done = _run([sys.executable, "-m", "venv", str(venv)])
    assert done.returncode == 0, done.stderr
    done = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 "--no-index", "--find-links", str(WHEELS), str(src)])
    assert done.returncode == 0, done.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1")
    return venv / "bin", env


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain-export") / "onnx"
    export_onnx(BUNDLED, out, OnnxExportOptions(validate=False))
    return out


@pytest.mark.parametrize("module", ["torch", "transformers", "onnx", "safetensors"])
def test_the_plain_venv_has_no_export_stack(plain, module):
    bin_dir, env = plain
    done = _run([str(bin_dir / "python"), "-c", f"import {module}"], env=env, cwd="/")
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


def test_help_of_the_cli_and_of_every_command(plain):
    bin_dir, env = plain
    done = _run([str(bin_dir / "lmexport"), "--help"], env=env, cwd="/")
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert name in done.stdout
        sub = _run([str(bin_dir / "lmexport"), name, "--help"], env=env, cwd="/")
        assert sub.returncode == 0, (name, sub.stderr)
        assert "Usage: lmexport " + name in sub.stdout


def test_generate_in_the_plain_venv_equals_the_full_install(plain, folder):
    bin_dir, env = plain
    done = _run([str(bin_dir / "lmexport"), "generate", str(folder), "--prompt", "def read_file(path):",
                 "--max-new-tokens", "16"], env=env, cwd="/")
    assert done.returncode == 0, done.stderr
    expected = Generator.from_folder(folder).generate(["def read_file(path):"], max_new_tokens=16)[0].text
    assert expected.strip() and expected in done.stdout


def test_chat_in_the_plain_venv(plain, folder):
    bin_dir, env = plain
    done = _run([str(bin_dir / "lmexport"), "chat", str(folder), "--max-new-tokens", "8"],
                input="import os\n", env=env, cwd="/")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [
    ["onnx", str(BUNDLED), "-o", "{out}"],
    ["gguf", str(BUNDLED), "-o", "{out}.gguf"],
    ["convert", str(BUNDLED), "-o", "{out}"],
    ["parity", str(BUNDLED), "{folder}"],
    ["perplexity", str(BUNDLED), "--text", str(BUNDLED / "heldout.txt")],
])
def test_export_side_commands_name_the_extra_in_one_line(plain, folder, tmp_path, args):
    bin_dir, env = plain
    out = tmp_path / "out"
    argv = [a.format(out=out, folder=folder) for a in args]
    done = _run([str(bin_dir / "lmexport"), *argv], env=env, cwd="/")
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "pip install" in lines[0] and "lmexport[export]" in lines[0]
    assert not list(tmp_path.iterdir()), "nothing is written"
