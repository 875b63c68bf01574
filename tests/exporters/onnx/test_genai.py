"""onnxruntime-genai runs exported folders of the bundled model: genai_config.json read back,
greedy tokens and logits equal to lmexport's runtime, the state correct when genai aliases
a layer's past and present state. The real package (test extra), nothing mocked."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_genai as og
import pytest

from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
from lmexport.exporters.onnx.genai import GENAI_CONFIG_FILE, genai_config, layer_template
from lmexport.errors import ExportError
from lmexport.manifest import IOSpec, Manifest
from lmexport.modeling.tiny import make_model_folder
from lmexport.runtime.batch import positions_from_mask
from lmexport.runtime.ort import Session
from lmexport.runtime.tokenizer import TextTokenizer

from onnx_consumers import (NEW_TOKENS, PROMPTS, VARIANTS, bos_folder, doc_example, exported,
                            lmexport_generate_text, lmexport_tokens)

# genai binds these states' past and present to one buffer (CPU); keys/values grow per call
ALIASED_ROLES = ("conv", "context")
# tiny random models (config overrides, export options): the variants the bundled folders do not cover
TINY_VARIANTS = {"legacy": ({"context_mode": "legacy"}, {}), "fp16": ({}, {"dtype": "fp16"}),
                 "int8": ({}, {"quantize": "int8"}), "plain-opset18": ({}, {"fused_ops": False, "opset": 18})}


def genai_greedy(folder, prompt_ids: list[list[int]], new_tokens: int):
    """Greedy tokens and, per step, the logits each token was chosen from."""
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids[0]) + new_tokens, do_sample=False,
                              batch_size=len(prompt_ids))
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompt_ids, dtype=np.int32))
    tokens, logits = [], []
    for _ in range(new_tokens):         # genai 0.18's is_done() stays false at max_length
        logits.append(generator.get_logits()[:, -1].copy())      # what the next token is chosen from
        generator.generate_next_token()
        tokens.append(generator.get_next_tokens().astype(np.int64))
    return np.stack(tokens, axis=1).tolist(), np.stack(logits, axis=1)


def lmexport_greedy(folder, prompt_ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy tokens from lmexport's session (raw ids: tiny models have toy tokenizers)."""
    session = Session(folder)
    ids = np.array(prompt_ids, dtype=np.int64)
    mask, state, out = np.ones_like(ids), session.zero_state(len(ids)), []
    for _ in range(new_tokens):
        logits, state = session.step(ids, mask, positions_from_mask(mask, ids.shape[1]), state)
        ids = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        out.append(ids[:, 0])
        mask = np.concatenate([mask, np.ones_like(ids)], axis=1)
    return np.stack(out, axis=1).tolist()


def lmexport_logits(folder, prompt_ids: list[list[int]], tokens: list[list[int]]) -> np.ndarray:
    """lmexport's session fed the prompt and then ``tokens``: the logits before each token."""
    session = Session(folder)
    ids = np.array(prompt_ids, dtype=np.int64)
    mask, state, out = np.ones_like(ids), session.zero_state(len(ids)), []
    for step in range(len(tokens[0])):
        logits, state = session.step(ids, mask, positions_from_mask(mask, ids.shape[1]), state)
        out.append(logits[:, -1])
        ids = np.array([[row[step]] for row in tokens], dtype=np.int64)
        mask = np.concatenate([mask, np.ones_like(ids)], axis=1)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_genai_config_names_the_graph_io(name, tmp_path_factory):
    folder = exported(name, tmp_path_factory)
    config = json.loads((folder / GENAI_CONFIG_FILE).read_text())
    manifest = Manifest.read(folder)
    assert config == genai_config(manifest)
    graph = onnx.load(str(folder / manifest.model_file), load_external_data=False).graph
    graph_in, graph_out = {v.name for v in graph.input}, {v.name for v in graph.output}
    decoder = config["model"]["decoder"]
    assert decoder["filename"] == manifest.model_file
    named_in, named_out = set(), set()
    for names, io, named in ((decoder["inputs"], graph_in, named_in), (decoder["outputs"], graph_out, named_out)):
        for key, value in names.items():
            found = {value % i for i in range(manifest.num_layers)} if "%d" in value else {value}
            assert found <= io, (key, found - io)
            named |= found
    assert named_in == graph_in and named_out == graph_out      # every graph input and output, once
    assert set(decoder["inputs"]) >= {"past_conv_names", "past_recurrent_names"}
    assert config["search"]["past_present_share_buffer"] is False


def test_layer_template_is_checked_against_every_layer():
    specs = [IOSpec(f"past_{i}.conv{i}0", "float32", (1,), "conv", i, "zeros", "x") for i in range(3)]
    with pytest.raises(ExportError, match="one layer template"):
        layer_template(specs, 3)
    ok = [IOSpec(f"s10.{i}%", "float32", (1,), "conv", i, "zeros", "x") for i in range(12)]
    assert layer_template(ok, 12) == "s10.%d%%"
    with pytest.raises(ExportError, match="once for each"):
        layer_template(ok[:11], 12)


@pytest.mark.parametrize("which", ["bundled", "bos"])
def test_genai_tokenizer_gives_lmexport_ids_when_asked_for_special_tokens(which, tmp_path_factory):
    """genai's tokenizer applies the folder's BOS rule (tokenizer.json's post-processor) only
    after update_options(add_special_tokens="true"); then its ids are lmexport's. The bundled
    tokenizer adds no BOS, the tiny ``bos`` one does."""
    folder = exported("fp32", tmp_path_factory) if which == "bundled" else bos_folder(tmp_path_factory)
    ours = TextTokenizer.from_folder(folder)
    assert all((ours.encode(p)[0] == ours.bos_token_id) == (which == "bos") for p in PROMPTS)
    tokenizer = og.Tokenizer(og.Model(str(folder)))
    plain = [list(map(int, tokenizer.encode(p))) for p in PROMPTS]
    assert plain == [ours.encode(p, add_special_tokens=False) for p in PROMPTS]      # genai's default
    tokenizer.update_options(add_special_tokens="true")
    assert [list(map(int, tokenizer.encode(p))) for p in PROMPTS] == [ours.encode(p) for p in PROMPTS]


@pytest.mark.parametrize("name", ["fp32", "int4", "plain", "tjs-fp32"])
def test_genai_greedy_equals_lmexport_generate(name, tmp_path_factory):
    """Batch of two equal-length prompts, 32 greedy tokens each: token for token equal,
    and the logits each token was chosen from equal to lmexport's session's."""
    folder = exported(name, tmp_path_factory)
    tokenizer = TextTokenizer.from_folder(folder)
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    assert len({len(ids) for ids in prompt_ids}) == 1
    want = lmexport_tokens(folder)
    assert all(len(row) == NEW_TOKENS for row in want)          # no EOS came: all 32 are compared
    got, logits = genai_greedy(folder, prompt_ids, NEW_TOKENS)
    assert got == want
    ref = lmexport_logits(folder, prompt_ids, got)
    assert np.abs(logits - ref).max() <= 1e-5, np.abs(logits - ref).max()


@pytest.mark.parametrize("name", ["fp32", "int4", "plain"])
def test_state_stays_correct_when_present_aliases_past(name, tmp_path_factory):
    """What genai does on the CPU: each conv/context present output written into the buffer
    of its past input. Logits and state equal those of separate buffers, bit for bit."""
    folder = exported(name, tmp_path_factory)
    session = Session(folder)
    runner, outputs = session.session, session.output_names
    prompt = np.array([TextTokenizer.from_folder(folder).encode(p) for p in PROMPTS], dtype=np.int64)

    def run(alias: bool, steps: int = 6):
        ids, mask = prompt, np.ones_like(prompt)
        state = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in session.zero_state(len(ids)).items()}
        shared = {s.present: s.name for s in session.states if alias and s.role in ALIASED_ROLES}
        seen = []
        for _ in range(steps):
            binding = runner.io_binding()
            for role, value in (("input_ids", ids), ("attention_mask", mask),
                                ("position_ids", positions_from_mask(mask, ids.shape[1]))):
                binding.bind_cpu_input(session.manifest.input(role).name, value)
            for name_, value in state.items():
                binding.bind_ortvalue_input(name_, value)
            for out in outputs:
                if out in shared:
                    binding.bind_ortvalue_output(out, state[shared[out]])
                else:
                    binding.bind_output(out, "cpu")
            runner.run_with_iobinding(binding)
            result = dict(zip(outputs, binding.get_outputs()))
            for out, past in shared.items():          # written in place, not into a new buffer
                assert result[out].data_ptr() == state[past].data_ptr()
            logits = result[session.logits_name].numpy()
            seen.append(logits[:, -1].copy())
            # an aliased state stays in its buffer (the returned OrtValue only borrows it)
            state = {s.name: state[s.name] if s.present in shared else result[s.present] for s in session.states}
            ids = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones_like(ids)], axis=1)
        return np.stack(seen), {k: v.numpy().copy() for k, v in state.items()}

    separate, separate_state = run(alias=False)
    aliased, aliased_state = run(alias=True)
    assert any(s.role in ALIASED_ROLES for s in session.states)
    np.testing.assert_array_equal(aliased, separate)
    for name_ in separate_state:
        np.testing.assert_array_equal(aliased_state[name_], separate_state[name_])


def test_genai_does_not_mask_left_padding_and_encode_batch_pads_right(tmp_path_factory):
    """What docs/runtime.md says genai cannot do: prompts of 7 and 5 tokens in one batch.
    Left-padded with pad_token_id by the caller, the pads are read as tokens (genai masks
    only trailing pads), so the short row's tokens are not lmexport's; the long row's are.
    genai's own encode_batch pads on the right. If this starts failing, genai learned
    left padding: update the docs."""
    folder = exported("fp32", tmp_path_factory)
    prompts = ("def read_file(path):", "def main(argv):")
    tokenizer = TextTokenizer.from_folder(folder)
    encoded = [tokenizer.encode(p) for p in prompts]
    width = max(map(len, encoded))
    assert len(encoded[1]) < width == len(encoded[0])
    pad = Manifest.read(folder).tokenizer["pad_token_id"]
    want = lmexport_tokens(folder, prompts)
    got, _ = genai_greedy(folder, [[pad] * (width - len(ids)) + ids for ids in encoded], NEW_TOKENS)
    assert got[0] == want[0]
    assert got[1] != want[1]
    og_tokenizer = og.Tokenizer(og.Model(str(folder)))
    og_tokenizer.update_options(add_special_tokens="true")
    batch = og_tokenizer.encode_batch(list(prompts)).as_numpy().tolist()
    assert batch[1] == encoded[1] + [pad] * (width - len(encoded[1]))


def test_docs_example_prints_what_lmexport_generate_prints(tmp_path, tmp_path_factory):
    """docs/runtime.md's genai example, run as written against out/onnx."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "onnx").symlink_to(exported("fp32", tmp_path_factory))
    script = tmp_path / "genai_example.py"
    script.write_text(doc_example("genai"), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == lmexport_generate_text(tmp_path, "out/onnx")


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_genai_runs_every_variant(variant, tmp_path):
    """Legacy mode (keys/values only), fp16, int8, the plain graph at opset 18: genai_config.json
    read back, 12 greedy tokens equal to lmexport's session's for a batch of two."""
    overrides, options = TINY_VARIANTS[variant]
    model = make_model_folder(tmp_path / "model", seed=3, **overrides)
    folder = tmp_path / "onnx"
    export_onnx(model, folder, OnnxExportOptions(validate=False, **options))
    manifest = Manifest.read(folder)
    config = json.loads((folder / GENAI_CONFIG_FILE).read_text())
    assert config == genai_config(manifest)
    assert ("past_conv_names" in config["model"]["decoder"]["inputs"]) == (variant != "legacy")
    vocab, pad = manifest.config["vocab_size"], manifest.tokenizer["pad_token_id"]
    ids = [t for t in np.random.default_rng(0).integers(0, vocab, 40).tolist() if t != pad][:14]
    prompt_ids = [ids[:7], ids[7:]]                          # no pad id: genai masks that id
    got, _ = genai_greedy(folder, prompt_ids, 12)
    assert got == lmexport_greedy(folder, prompt_ids, 12)
