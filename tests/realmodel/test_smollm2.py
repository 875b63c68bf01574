"""A real pretrained model end to end: SmolLM2-135M-Instruct (30 layers, GQA 9/3, tied
embeddings, byte-level BPE of 49,152 tokens, a chat template), through the CLI.

Real behaviour, not only plumbing: the converted model predicts what transformers'
original predicts, the ONNX folder continues text as PyTorch does, the chat answer
names Paris, every export passes its own validation and ``lmexport parity`` with
default settings, and a damaged weight still fails the fp32 validation. The README's
perplexity table is ``benchmarks/quant_table.py``'s, its parity, chat and speed tables
``examples/smollm2/measure.py``'s.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from lmexport.manifest import Manifest
from smollm2_exports import HELDOUT, QUESTION, RealModel, lmexport, make_exports

pytestmark = pytest.mark.slow
TOP1_TOKENS = 512          # the held-out text's first tokens, one forward pass per model


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> RealModel:
    if os.environ.get("LMEXPORT_SKIP_REAL_MODEL"):
        pytest.skip("LMEXPORT_SKIP_REAL_MODEL is set")
    return make_exports(tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="module")
def converted_model(smollm2):
    from lmexport.modeling.checkpoint import load_model
    return load_model(smollm2.converted)[0]


@pytest.fixture(scope="module")
def heldout_ids(smollm2):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(smollm2.original / "tokenizer.json"))
    return tok.encode(HELDOUT.read_text(encoding="utf-8"), add_special_tokens=False).ids


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


@pytest.fixture(scope="module")
def original_logits(smollm2, heldout_ids):
    """transformers' LlamaForCausalLM of the original folder on the text's first tokens: [T, V]."""
    from transformers import LlamaForCausalLM

    original = LlamaForCausalLM.from_pretrained(smollm2.original, dtype=torch.float32).eval()
    with torch.no_grad():
        return original(input_ids=torch.tensor([heldout_ids[:TOP1_TOKENS]])).logits[0]


def test_convert_predicts_what_transformers_predicts(smollm2, converted_model, heldout_ids, original_logits):
    with torch.no_grad():
        got = converted_model(torch.tensor([heldout_ids[:TOP1_TOKENS]])).logits[0]
    assert _agreement(original_logits, got) >= 0.95
    assert "largest |logit difference| vs the original" in smollm2.outputs["convert"].stdout


def test_fp32_onnx_export_validates_with_default_settings(smollm2):
    done = smollm2.outputs["onnx-fp32"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED" in done.stdout and "120 state outputs compared" in done.stdout


def test_int4_holds_the_q4_1_grid_of_the_layers(smollm2):
    """The fixture's weights are a dequantised Q4_1 GGUF: int4's float offsets hold every layer's
    4-bit blocks (no layer needs 8 bits, whose rounding would only add error); the tied
    embedding and head, which are not on a 4-bit grid, take the budget's 8 bits (their 4-bit form adds the most KL)."""
    q = Manifest.read(smollm2.artifact("onnx-int4")).quantization
    layers = json.loads((smollm2.converted / "config.json").read_text())["num_hidden_layers"]
    grid = {f"model.layers.{i}.{m}.weight" for i in range(layers)
            for m in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}
    assert set(q["float_offsets"]) == grid          # the rest (embedding, all-zero Liquid-Metal gates) uint8
    assert {n for n, b in q["bits"].items() if b == 8} == {"model.embed_tokens.weight"}
    assert q["bits_per_weight"] <= q["budget_bits_per_weight"] and q["scale_dtype"] == "fp16"


@pytest.mark.parametrize("name", ["onnx-int8", "onnx-int4"])
def test_quantized_onnx_exports_validate_with_default_settings(smollm2, name):
    """8-bit weight blocks, 4-bit blocks with float offsets, the quantised embedding (issue 23):
    the default int8 and int4 exports pass their presets; the tied head is stored once."""
    done = smollm2.outputs[name]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED" in done.stdout and "120 state outputs compared" in done.stdout
    manifest = Manifest.read(smollm2.artifact(name))
    assert manifest.quantization["embedding"] == "GatherBlockQuantized"
    assert manifest.quantization["tied_lm_head"] == "stored once"


@pytest.mark.parametrize("name", ["onnx-int8", "onnx-int4"])
def test_damaged_quantized_folder_fails_validation(smollm2, converted_model, tmp_path, name):
    """A quantised folder is still checked: one mid-stack matrix's scales quadrupled is caught."""
    from lmexport.exporters.onnx.validate import validate_folder

    folder = tmp_path / "damaged"
    shutil.copytree(smollm2.artifact(name), folder)
    info = Manifest.read(folder).initializers["model.layers.15.mlp.down_proj.weight_scales"]
    data = np.memmap(folder / info["file"], dtype=np.uint8, mode="r+", offset=info["offset"], shape=(info["length"],))
    data.view(np.float16)[:] *= 4                   # the scales are stored in fp16
    data.flush()
    del data
    report = validate_folder(folder, converted_model, name.removeprefix("onnx-"), decode_steps=2)
    assert not report.passed
    assert any(f.startswith("logits") for f in report.failures), report.failures


@pytest.mark.parametrize("name", ["f16.gguf", "q8_0.gguf", "llama-q8_0.gguf"])
def test_gguf_export_validates(smollm2, name):
    done = smollm2.outputs[name]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated" in done.stdout


def test_pte_export_validates_in_executorch_runtime(smollm2):
    """The fp32 ExecuTorch program, run in executorch.runtime at export against PyTorch (prefill and
    decode steps, the fp32 preset), with its sidecar and the tokenizer beside it."""
    done = smollm2.outputs["model.pte"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated in executorch.runtime" in done.stdout + done.stderr
    assert "(fp32 preset)" in done.stdout + done.stderr
    sidecar = json.loads((smollm2.work / "model.lmexport.json").read_text())
    assert sidecar["program_file"] == "model.pte" and sidecar["max_context"] == 512
    assert sidecar["tolerance_preset"] == "fp32" and sidecar["outputs"][0]["shape"][-1] == 49152
    assert (smollm2.work / "tokenizer.json").is_file()


@pytest.mark.parametrize("name", ["onnx-fp32", "f16.gguf", "q8_0.gguf", "model.pte"])
def test_parity_passes_with_default_settings(smollm2, name):
    done = lmexport("parity", smollm2.converted, smollm2.artifact(name), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout


def test_llama_gguf_of_the_original_reads_back_in_transformers(smollm2, heldout_ids, original_logits):
    """The --arch llama file, loaded by another consumer, predicts what the original does."""
    from transformers import LlamaForCausalLM

    path = smollm2.artifact("llama-q8_0.gguf")
    back = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    n = 256                                   # causal: the first n rows of the original's logits
    with torch.no_grad():
        assert _agreement(original_logits[:n], back(input_ids=torch.tensor([heldout_ids[:n]])).logits[0]) >= 0.9


def test_corrupted_weight_still_fails_fp32_validation(smollm2, converted_model, tmp_path):
    """Relative bounds are not loose ones: 1% noise on one mid-stack matrix is caught."""
    from lmexport.exporters.onnx.validate import validate_folder

    folder = tmp_path / "damaged"
    shutil.copytree(smollm2.artifact("onnx-fp32"), folder)
    info = Manifest.read(folder).initializers["model.layers.15.mlp.down_proj.weight"]
    data = np.memmap(folder / info["file"], dtype=np.uint8, mode="r+", offset=info["offset"], shape=(info["length"],))
    values = data.view(np.float32)
    noise = np.random.default_rng(0).standard_normal(values.shape).astype(np.float32)
    values += noise * 0.01 * float(values.std())
    data.flush()
    del data, values
    report = validate_folder(folder, converted_model, "fp32", decode_steps=2)
    assert not report.passed
    assert any(f.startswith("logits") for f in report.failures), report.failures
    assert any(f.startswith("present.16.") or f.startswith("present_context.15") for f in report.failures), \
        report.failures
    assert not any(f.startswith("present.14.") for f in report.failures)   # layers before it are intact


def test_onnx_greedy_continuation_equals_pytorch(smollm2, converted_model):
    from lmexport.runtime import Generator

    prompt, new = "The library opened at nine, and", 24
    gen = Generator.from_folder(smollm2.artifact("onnx-fp32"))
    ids = gen.tokenizer.encode(prompt)
    tokens, x = [], torch.tensor([ids])
    with torch.no_grad():
        out = converted_model(x)
        for _ in range(new):
            tokens.append(int(out.logits[0, -1].argmax()))
            mask = torch.ones(1, len(ids) + len(tokens), dtype=torch.long)
            out = converted_model(torch.tensor([[tokens[-1]]]), mask, past_key_values=out.present_key_values,
                                  past_conv=out.present_conv, past_context=out.present_context)
    if set(tokens) & set(gen.eos_token_ids):
        tokens = tokens[:min(tokens.index(e) for e in gen.eos_token_ids if e in tokens)]
    done = lmexport("generate", smollm2.artifact("onnx-fp32"), "--prompt", prompt, "--max-new-tokens", new)
    assert done.stdout == prompt + gen.tokenizer.decode(tokens) + "\n"


def test_executorchs_llm_runner_generates_what_lmexport_generate_does(smollm2, tmp_path):
    """SmolLM2's fp32 program in ExecuTorch's own C++ TextLLMRunner with the tokenizer.json beside it
    (the HF tokenizer of pytorch-tokenizers, as on a phone): lmexport generate's greedy text."""
    from llm_runner import llm_runner_text

    pte = smollm2.artifact("model.pte")
    prompt = "The capital of France is"
    ours = lmexport("generate", pte, "--prompt", prompt, "--max-new-tokens", 16)
    theirs = llm_runner_text(pte, prompt, 16, tmp_path / "runner.txt")
    assert len(theirs.strip()) > 8
    assert ours.stdout.rstrip("\n") == prompt + theirs.rstrip("\n")


@pytest.mark.parametrize("name", ["onnx-fp32", "onnx-int4", "model.pte"])
def test_chat_answer_names_paris_and_is_printed_alone(smollm2, name):
    done = lmexport("generate", smollm2.artifact(name), "--chat", "--prompt", QUESTION, "--max-new-tokens", 24)
    answer = done.stdout.strip()
    assert "Paris" in answer, answer
    assert QUESTION not in done.stdout               # the answer, not the question glued to it


def test_chat_shows_the_turns(smollm2):
    """Piped input: "> message", the reply, a blank line (llama-cli's and ollama's layout)."""
    done = lmexport("chat", smollm2.artifact("onnx-fp32"), "--max-new-tokens", 24, input=f"{QUESTION}\n")
    turn, reply, rest = done.stdout.split("\n", 2)
    assert turn == f"> {QUESTION}"
    assert "Paris" in reply and rest == "\n"


def test_perplexity_fp32_equals_pytorch_and_int4_stays_close(smollm2, heldout_ids):
    """A subset of the README table (benchmarks/quant_table.py makes all of it)."""
    from lmexport.perplexity import perplexity
    from lmexport.engine import open_artifact
    from lmexport.perplexity import engine_scorer

    ids = heldout_ids[:384]
    torch_ppl = perplexity(engine_scorer(open_artifact(smollm2.converted)), ids, 256, 128).perplexity
    fp32 = perplexity(engine_scorer(open_artifact(smollm2.artifact("onnx-fp32"))), ids, 256, 128).perplexity
    int4 = perplexity(engine_scorer(open_artifact(smollm2.artifact("onnx-int4"))), ids, 256, 128).perplexity
    assert 2 < torch_ppl < 40                        # an English model on English text
    assert abs(fp32 / torch_ppl - 1) < 1e-3
    assert 0 < int4 / torch_ppl - 1 < 0.05           # +1.33% on the whole text (Q4_K_M: +7.08%)
