"""lmexport executorch: .pte programs run in executorch.runtime and match the PyTorch reference.

Programs are exported once per module and shared: the bundled model through the command (fp32,
8da4w), a one-layer tiny model built in-process through the library (fp32, 8da4w). Every check
loads the real .pte in executorch.runtime; nothing is mocked.

Skipped when executorch is not installed, unless LMEXPORT_REQUIRE_EXECUTORCH=1 (scripts/test.sh
installs it and sets that).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cli_helpers import run_cli
from llm_runner import llm_runner_text
from conftest import BUNDLED

try:
    import executorch.runtime  # noqa: F401
except ImportError:
    if os.environ.get("LMEXPORT_REQUIRE_EXECUTORCH") == "1":
        raise
    pytest.skip("executorch is not installed (pip install 'lmexport[executorch]')", allow_module_level=True)

from lmexport.exporters.executorch import sidecar
from lmexport.exporters.executorch.engine import ExecutorchEngine
from lmexport.exporters.executorch.export import ExecutorchExportOptions, export_executorch
from lmexport.modeling.checkpoint import load_model
from lmexport.modeling.tiny import make_model_folder
from lmexport.parity.run import run_parity

PROMPT_IDS = [1, 40, 7, 300, 12, 99, 5, 61, 250, 8, 17]


class Programs:
    """Exported programs, made on first use and shared by the module."""

    def __init__(self, root):
        self.root = root
        self.made = {}

    def bundled(self, quantize="none"):
        key = ("bundled", quantize)
        if key not in self.made:
            out = self.root / f"bundled-{quantize}.pte"
            r = run_cli("executorch", BUNDLED, "-o", out, "--quantize", quantize, "--max-context", 320)
            assert r.returncode == 0, r.stderr[-2000:]
            assert "validated in executorch.runtime" in r.stdout
            self.made[key] = out
        return self.made[key]

    def tiny_dir(self):
        if "tiny_dir" not in self.made:
            self.made["tiny_dir"] = make_model_folder(self.root / "tiny-model", seed=5, num_hidden_layers=1)
        return self.made["tiny_dir"]

    def tiny(self, quantize="none"):
        key = ("tiny", quantize)
        if key not in self.made:
            out = self.root / "tiny" / f"tiny-{quantize}.pte"   # its own tokenizer.json beside it
            out.parent.mkdir(exist_ok=True)
            options = ExecutorchExportOptions(quantize=quantize, max_context=64, decode_steps=3)
            result = export_executorch(self.tiny_dir(), out, options)
            assert result.report is not None and not np.isnan(result.report.max_abs)
            self.made[key] = out
        return self.made[key]


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    return Programs(tmp_path_factory.mktemp("executorch"))


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


# ---------------------------------------------------------------- the files

def test_bundled_fp32_files_and_sidecar(programs):
    pte = programs.bundled()
    meta = sidecar.read(pte)
    folder = pte.parent
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert meta["format"] == sidecar.FORMAT and meta["max_context"] == 320
    assert meta["quantization"] == {"method": "none"} and meta["tolerance_preset"] == "fp32"
    assert meta["files"][pte.name]["bytes"] == pte.stat().st_size
    assert [s["name"] for s in meta["inputs"]] == ["tokens", "input_pos"]
    roles = {(s["role"], s["layer"]): s for s in meta["state"]}
    assert len(roles) == 4 * 4                                         # key, value, conv, context per layer
    assert roles["conv", 0]["init"] == "zeros" and roles["key", 0]["init"] == "none"
    assert meta["constant_methods"]["get_max_seq_len"] == 319
    assert meta["new_sequence"] == "input_pos = 0"


def test_chat_template_file_ships_beside_the_pte(programs, tmp_path):
    """A checkpoint whose chat template is chat_template.jinja (transformers 5's layout, SmolLM2's) gets it
    beside the .pte, listed in the sidecar, so `generate --chat` on the .pte renders the same template."""
    model = make_model_folder(tmp_path / "jinja-model", seed=5, num_hidden_layers=1)
    config = json.loads((model / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").write_text(template)
    out = tmp_path / "pte" / "model.pte"
    out.parent.mkdir()
    export_executorch(model, out, ExecutorchExportOptions(max_context=64, decode_steps=2))
    assert (out.parent / "chat_template.jinja").read_text() == template
    assert "chat_template.jinja" in sidecar.read(out)["tokenizer"]["files"]
    done = run_cli("generate", out, "--chat", "--prompt", "hello", "--max-new-tokens", 4)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()


def test_constant_methods_are_what_the_llm_runner_reads(programs):
    with ExecutorchEngine(programs.bundled()) as eng:
        assert eng.constant("get_max_seq_len") == 319
        assert eng.constant("get_max_context_len") == 320
        assert eng.constant("get_vocab_size") == 4096
        assert eng.constant("get_bos_id") == 1
        assert eng.constant("use_kv_cache") is True
        assert eng.constant("enable_dynamic_shape") is True
        eos = eng.constant("get_eos_ids")
        assert (eos if isinstance(eos, list) else [eos]) == [2]


def test_initial_state_is_serialized_as_zeros(programs):
    """The conv and context buffers carry their zero initial value in the file; the KV caches do not."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(programs.tiny().read_bytes())
    plan = pte.program.execution_plan[0]
    initialized = [v.val for v in plan.values
                   if getattr(v.val, "allocation_info", None) is not None and getattr(v.val, "data_buffer_idx", 0) > 0]
    config = load_model(programs.tiny_dir())[0].config
    shapes = sorted(tuple(t.sizes) for t in initialized)
    assert shapes == sorted([(1, config.hidden_size, config.conv_state_width), (1, 3, config.hidden_size)])
    for t in initialized:
        data = bytes(pte.mutable_data[t.data_buffer_idx].storage)
        assert len(data) >= 4 * int(np.prod(t.sizes)) and not any(data)


# ---------------------------------------------------------------- numbers

def test_bundled_fp32_parity_prefill_and_decode(programs):
    report = run_parity(BUNDLED, programs.bundled(), steps=4, batch_size=2)
    assert report.passed, report.failures
    assert report.engine == "executorch" and report.preset == "fp32"
    assert report.overall.rel < 1e-5 and min(report.greedy_match) == 4


def test_bundled_8da4w_within_its_preset(programs):
    fp32, q = programs.bundled(), programs.bundled("8da4w")
    assert q.stat().st_size < 0.4 * fp32.stat().st_size
    meta = sidecar.read(q)
    assert meta["quantization"]["method"] == "8da4w" and meta["quantization"]["linear"]["group_size"] == 32
    assert meta["quantization"]["lm_head"]["weight_bits"] == 8         # the default --head-bits
    report = run_parity(BUNDLED, q, steps=4, batch_size=3)
    assert report.preset == "8da4w"
    assert report.passed, report.failures
    assert report.overall.max_abs > 1e-3          # it is quantized, not the fp32 program again


def test_state_is_carried_between_calls(programs):
    """A prompt fed in two calls (and one token at a time) gives the logits of one call."""
    model, _ = load_model(BUNDLED)
    want = torch_logits(model, PROMPT_IDS)
    with ExecutorchEngine(programs.bundled()) as eng:
        one = eng.logits_for(PROMPT_IDS, 0)
        first = eng.logits_for(PROMPT_IDS[:6], 0)
        rest = eng.logits_for(PROMPT_IDS[6:], 6)
        steps = [eng.logits_for(PROMPT_IDS[:1], 0)] + [eng.logits_for([t], i + 1) for i, t in enumerate(PROMPT_IDS[1:])]
    np.testing.assert_allclose(one, want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.concatenate([first, rest]), one, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.concatenate(steps), one, atol=1e-5, rtol=0)


def test_reset_and_fresh_load_give_the_same_logits(programs):
    pte = programs.tiny()
    model, _ = load_model(programs.tiny_dir())
    ids = [i % model.config.vocab_size for i in PROMPT_IDS]
    with ExecutorchEngine(pte) as eng:
        fresh = eng.logits_for(ids, 0)
        eng.logits_for([5, 6, 7], len(ids))                  # move the state on
        again = eng.logits_for(ids, 0)                       # input_pos 0: a new sequence
    with ExecutorchEngine(pte) as eng:
        reloaded = eng.logits_for(ids, 0)
    np.testing.assert_allclose(fresh, torch_logits(model, ids), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(again, fresh)
    np.testing.assert_array_equal(reloaded, fresh)


def test_tiny_8da4w_runs_and_stays_close(programs):
    model, _ = load_model(programs.tiny_dir())
    ids = [i % model.config.vocab_size for i in PROMPT_IDS]
    with ExecutorchEngine(programs.tiny("8da4w")) as eng:
        got = eng.logits_for(ids, 0)
        step = eng.logits_for([4], len(ids))
    want = torch_logits(model, ids + [4])
    assert np.isfinite(got).all() and np.isfinite(step).all()
    cos = (got * want[:-1]).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want[:-1], axis=-1)
    assert cos.min() > 0.95
    assert not np.allclose(got, want[:-1], atol=1e-4)


def test_generate_and_perplexity_commands_on_a_pte(programs):
    pte = programs.bundled()
    r = run_cli("generate", pte, "--prompt", "def read_file(path):", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.startswith("def read_file(path):") and len(r.stdout) > len("def read_file(path):") + 2
    text = BUNDLED / "heldout.txt"
    got = run_cli("perplexity", pte, "--text", text, "--max-tokens", 300, "--window", 128, "--stride", 64, "--json")
    want = run_cli("perplexity", BUNDLED, "--text", text, "--max-tokens", 300, "--window", 128, "--stride", 64,
                   "--json")
    assert got.returncode == 0 and want.returncode == 0, got.stderr[-1500:] + want.stderr[-1500:]
    g, w = json.loads(got.stdout), json.loads(want.stdout)
    assert g["kind"] == "pte" and g["n_targets"] == w["n_targets"] == 299
    assert abs(g["perplexity"] / w["perplexity"] - 1) < 1e-4


@pytest.mark.parametrize("quantize", ["none", "8da4w"])
def test_executorchs_llm_runner_generates_what_lmexport_generate_does(programs, quantize, tmp_path):
    """The program runs in ExecuTorch's runner (its constant methods, the prompt in one call, then one
    token per call) and gives lmexport generate's greedy text, token for token."""
    pte = programs.bundled(quantize)
    prompt = "def read_file(path):"
    ours = run_cli("generate", pte, "--prompt", prompt, "--max-new-tokens", "24")
    assert ours.returncode == 0, ours.stderr[-1500:]
    theirs = llm_runner_text(pte, prompt, 24, tmp_path / "runner.txt")
    assert len(theirs) > 8
    assert ours.stdout.rstrip("\n") == prompt + theirs.rstrip("\n")


# ---------------------------------------------------------------- bad input

def test_bad_input_is_one_line_and_exit_2(programs, tmp_path):
    missing = run_cli("executorch", tmp_path / "nope", "-o", tmp_path / "x.pte")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
    not_pte = run_cli("executorch", BUNDLED, "-o", tmp_path / "x.onnx")
    assert not_pte.returncode == 2 and ".pte" in not_pte.stderr
    existing = programs.bundled()
    before = existing.stat().st_mtime_ns
    again = run_cli("executorch", BUNDLED, "-o", existing)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert existing.stat().st_mtime_ns == before
    no_sidecar = tmp_path / "lonely.pte"
    no_sidecar.write_bytes(existing.read_bytes())
    r = run_cli("generate", no_sidecar, "--prompt", "x")
    assert r.returncode == 2 and "lonely.lmexport.json is missing" in r.stderr


def test_bench_runs_a_pte_within_its_cache(programs):
    """lmexport bench on a .pte: the workload checked against the program's KV cache (--max-context 320)."""
    pte = programs.bundled("8da4w")
    r = run_cli("bench", pte, "--prompt-tokens", 16, "--new-tokens", 8, "--repeats", 1, "--threads", 1, "--json")
    assert r.returncode == 0, r.stderr[-1500:]
    result = json.loads(r.stdout)
    assert result["decode_tokens_per_s"]["median"] > 0 and result["prefill_ms"]["median"] > 0
    too_long = run_cli("bench", pte, "--prompt-tokens", 300, "--new-tokens", 64, "--threads", 1)
    assert too_long.returncode == 2 and "context of 320 tokens" in too_long.stderr
    assert "Traceback" not in too_long.stderr
