"""examples/train_tiny.py: corpus split, schedule, and a smoke run that learns and repeats exactly."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from lmexport.modeling.checkpoint import load_model, weights_hash
from lmexport.perplexity import perplexity_torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_tiny.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("train_tiny", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_tiny", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


train_tiny = _load_script()


def _smoke(out: Path, seed: int = 0) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--no-progress", "--seed", str(seed),
                           "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "model"
    return out, _smoke(out)


def test_corpus_split_is_fixed_and_disjoint():
    a = train_tiny.build_corpus(200_000)
    b = train_tiny.build_corpus(200_000)
    assert a.train_files == b.train_files and a.files_sha256 == b.files_sha256
    assert not set(a.train_files) & set(train_tiny.HELDOUT_MODULES)
    assert not any(part in train_tiny.EXCLUDED_DIRS for f in a.train_files for part in f.split("/")[:-1])
    assert 10_000 < len(a.heldout_text) <= train_tiny.HELDOUT_MAX_BYTES
    assert a.heldout_text.startswith(Path(a.stdlib, train_tiny.HELDOUT_MODULES[0]).read_text()[:200])


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    lrs = [train_tiny.lr_at(s, 200, 1.0) for s in range(200)]
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))


def test_smoke_run_reduces_the_loss_and_writes_a_loadable_folder(smoke_run):
    out, m = smoke_run
    torch.set_num_threads(1)  # a spinning 2-thread pool crawls on a busy machine; conftest resets it
    history = m["train_loss_history"]
    assert len(history) == m["steps"] == train_tiny.PRESETS["smoke"].steps
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < first - 0.5, f"loss went from {first:.3f} to {last:.3f}"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "README.md", "heldout.txt", "loss_curve.png"):
        assert (out / name).is_file(), name
    model, _ = load_model(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = tok.encode((out / "heldout.txt").read_text(encoding="utf-8")).ids
    ppl = perplexity_torch(model, ids, m["perplexity_window"], m["perplexity_stride"])
    assert ppl == pytest.approx(m["heldout_perplexity"], rel=1e-4)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"{m['heldout_perplexity']:.4f}" in card and "PSF" in card and m["python_version"] in card


def test_same_seed_same_model(smoke_run, tmp_path):
    out, m = smoke_run
    again = _smoke(tmp_path / "again")
    assert again["train_loss_history"] == m["train_loss_history"]
    assert weights_hash(load_model(out)[1].tensors) == weights_hash(load_model(tmp_path / "again")[1].tensors)
