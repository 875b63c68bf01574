"""The ONNX Runtime runtime against the PyTorch reference, on real exported folders."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lmexport.modeling.checkpoint import load_model
from lmexport.errors import DeviceError, GenerationError
from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
from lmexport.runtime import ChatSession, Generator
from lmexport.modeling.tiny import make_model_folder
from conftest import ROOT

BUNDLED = ROOT / "examples" / "liquid-metal-tiny"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (model folder, ONNX folder) for the bundled model and tiny random ones."""
    root = tmp_path_factory.mktemp("runtime")
    out = {}
    for name, overrides in {"k2": dict(token_mixing_kernel_size=2), "k4-tied": dict(token_mixing_kernel_size=4,
                            tie_word_embeddings=True), "legacy": dict(context_mode="legacy")}.items():
        model = make_model_folder(root / name, seed=3, **overrides)
        export_onnx(model, root / f"{name}-onnx", OnnxExportOptions(validate=False))
        out[name] = (model, root / f"{name}-onnx")
    export_onnx(BUNDLED, root / "bundled-onnx", OnnxExportOptions(validate=False))
    out["bundled"] = (BUNDLED, root / "bundled-onnx")
    return out


def torch_greedy(model_dir: Path, ids: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding with the PyTorch reference, feeding its state back."""
    model, _ = load_model(model_dir)
    x = torch.tensor([ids])
    out = model(x)
    tokens = []
    with torch.no_grad():
        for _ in range(new_tokens):
            nxt = int(out.logits[0, -1].argmax())
            tokens.append(nxt)
            total = len(ids) + len(tokens)
            out = model(torch.tensor([[nxt]]), torch.ones(1, total, dtype=torch.long),
                        past_key_values=out.present_key_values, past_conv=out.present_conv,
                        past_context=out.present_context)
    return tokens


@pytest.mark.parametrize("name", ["bundled", "k2", "k4-tied", "legacy"])
def test_greedy_matches_pytorch_for_32_tokens(exported, name):
    model_dir, folder = exported[name]
    gen = Generator.from_folder(folder)
    gen.eos_token_ids = set()          # run all 32 steps
    prompt = "def read_file(path):"
    [result] = gen.generate(prompt, max_new_tokens=32)
    want = torch_greedy(model_dir, gen.encode_prompt(prompt), 32)
    assert result.token_ids == want
    assert result.finish_reason == "length" and len(result.token_ids) == 32


def test_exported_bundled_folder_encodes_like_transformers_on_the_checkpoint(exported):
    """The runtime (no transformers) on the ONNX folder gives AutoTokenizer(checkpoint)'s ids."""
    from transformers import AutoTokenizer

    from lmexport.manifest import Manifest
    from lmexport.modeling.tiny_tokenizers import MIXED_TEXTS

    model_dir, folder = exported["bundled"]
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    gen = Generator.from_folder(folder)
    for text in MIXED_TEXTS:
        assert gen.tokenizer.encode(text) == hf(text).input_ids
    assert gen.encode_prompt("def f") == hf("def f").input_ids and not gen.tokenizer.add_bos
    tok = Manifest.read(folder).tokenizer
    assert tok["add_bos_token"] is False and tok["resolved_by"].startswith("transformers ")


def test_batch_of_three_prompts_equals_each_alone(exported):
    gen = Generator.from_folder(exported["bundled"][1])
    prompts = ["import os\nimport sys\n\ndef main(argv):", "The", "class Point:\n    def __init__(self"]
    batched = gen.generate(prompts, max_new_tokens=20)
    for prompt, result in zip(prompts, batched):
        [alone] = gen.generate(prompt, max_new_tokens=20)
        assert result.token_ids == alone.token_ids and result.text == alone.text


def test_sampling_is_reproducible_with_a_seed(exported):
    gen = Generator.from_folder(exported["bundled"][1])
    kw = dict(max_new_tokens=24, temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.1)
    a = gen.generate("def ", seed=7, **kw)[0]
    b = gen.generate("def ", seed=7, **kw)[0]
    c = gen.generate("def ", seed=8, **kw)[0]
    greedy = gen.generate("def ", max_new_tokens=24)[0]
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids or a.token_ids != greedy.token_ids
    # each row samples from its own seeded generator: a batch gives every prompt its sample alone
    batch = gen.generate(["import os\n", "def "], seed=7, **kw)
    assert batch[1].token_ids == a.token_ids
    assert batch[0].token_ids == gen.generate("import os\n", seed=7, **kw)[0].token_ids


def test_eos_and_stop_strings_end_generation(exported):
    gen = Generator.from_folder(exported["bundled"][1])
    gen.eos_token_ids = set()
    [free] = gen.generate("def read_file(path):", max_new_tokens=24)
    gen.eos_token_ids = {free.token_ids[5]}
    [eos] = gen.generate("def read_file(path):", max_new_tokens=24)
    first = free.token_ids.index(free.token_ids[5])
    assert eos.finish_reason == "eos" and eos.token_ids == free.token_ids[:first]
    stop = free.text[len(free.text) // 2:len(free.text) // 2 + 3]
    [stopped] = gen.generate("def read_file(path):", max_new_tokens=24, stop=[stop])
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[:free.text.index(stop)]


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.8, seed=3), dict(stop=["path", "\n\n"])])
def test_streaming_yields_the_same_text(exported, kw):
    gen = Generator.from_folder(exported["bundled"][1])
    prompts = ["def read_file(path):", "for line in"]
    streamed = ["", ""]
    for piece in gen.stream(prompts, max_new_tokens=24, **kw):
        streamed[piece.index] += piece.text
    assert streamed == [r.text for r in gen.generate(prompts, max_new_tokens=24, **kw)]


def test_prompt_longer_than_the_context(exported):
    gen = Generator.from_folder(exported["k2"][1])
    long_prompt = "def add(a, b): " * 200
    with pytest.raises(GenerationError, match="exceeds the model's context of 256"):
        gen.generate(long_prompt, max_new_tokens=8)
    [result] = gen.generate(long_prompt, max_new_tokens=8, truncate=True)
    assert result.prompt_tokens == 256 - 8 and len(result.token_ids) <= 8
    done = subprocess.run([sys.executable, "-m", "lmexport.cli", "generate", str(exported["k2"][1]),
                           "--prompt", long_prompt], capture_output=True, text=True)
    assert done.returncode == 2 and "--truncate" in done.stderr and "Traceback" not in done.stderr


def test_cuda_request_without_cuda_is_a_clear_error(exported):
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the error path needs one without it")
    with pytest.raises(DeviceError, match="no CUDAExecutionProvider"):
        Generator.from_folder(exported["k2"][1], device="cuda")
    assert Generator.from_folder(exported["k2"][1], device="auto").device == "cpu"


def greedy_from_scratch(gen: Generator, ids: list[int], n: int) -> list[int]:
    """Greedy tokens after ``ids`` fed in one call from a zero state (stops after EOS)."""
    session = gen.engine.session
    state = session.zero_state(1)
    mask = np.ones((1, len(ids)), dtype=np.int64)
    logits, state = session.step(np.asarray([ids]), mask, np.arange(len(ids))[None], state)
    tokens = []
    for _ in range(n):
        t = int(logits[0, -1].argmax())
        tokens.append(t)
        if t in gen.eos_token_ids:
            break
        mask = np.ones((1, len(ids) + len(tokens)), dtype=np.int64)
        logits, state = session.step(np.asarray([[t]]), mask, np.asarray([[mask.shape[1] - 1]]), state)
    return tokens


@pytest.mark.parametrize("eos", ["config", "forced"])
def test_chat_keeps_state_between_turns(exported, eos):
    gen = Generator.from_folder(exported["bundled"][1])
    if eos == "forced":   # the greedy reply's second token ends each turn: replies end with EOS
        [free] = gen.generate(gen.tokenizer.apply_chat_template([{"role": "user", "content": "hello"}]),
                              max_new_tokens=4)
        gen.eos_token_ids = {free.token_ids[1]}
    chat = ChatSession(gen, max_new_tokens=12)
    calls = []
    step = gen.engine.step
    gen.engine.step = lambda ids, mask, pos: calls.append((ids.shape[1], mask.shape[1])) or step(ids, mask, pos)
    for message in ["hello", "tell me about lists", "and dicts?"]:
        before = list(chat.fed)
        calls.clear()
        reply = "".join(chat.send(message))
        new = len(chat.fed) - len(before)
        # the earlier turns were not fed again: the first call feeds only this turn's prompt
        assert calls[0][1] - calls[0][0] == len(before)
        assert chat.fed[:len(before)] == before and chat.rebuilds == 0
        # the state (OrtValues) holds exactly the fed tokens (keys: [1, kv_heads, past, head_dim])
        key = next(v for name, v in gen.engine.state.items() if name.endswith(".key"))
        assert key.shape()[2] == len(chat.fed)
        # and the reply is what a fresh run over the same tokens gives
        prompt_len = calls[0][0]
        reply_ids = chat.fed[len(before) + prompt_len:]
        assert greedy_from_scratch(gen, chat.fed[:len(before) + prompt_len], 12) == reply_ids
        assert reply == gen.tokenizer.decode([t for t in reply_ids if t not in gen.eos_token_ids])
        if eos == "forced":
            assert reply_ids[-1] in gen.eos_token_ids
        assert new > prompt_len
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 3


def test_chat_cli_through_stdin(exported):
    folder = exported["bundled"][1]
    done = subprocess.run([sys.executable, "-m", "lmexport.cli", "chat", str(folder), "--max-new-tokens", "8"],
                          input="hello\n\nwhat is a dict?\n/exit\nnever read\n", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    chat = ChatSession(Generator.from_folder(folder), max_new_tokens=8)
    # the turns as llama-cli shows them: "> message", the reply, a blank line
    want = "".join(f"> {m}\n" + "".join(chat.send(m)) + "\n\n" for m in ["hello", "what is a dict?"])
    assert done.stdout == want and len(chat.messages) == 4


def test_generate_cli_streams_the_api_text_and_prints_stats(exported):
    folder = exported["bundled"][1]
    done = subprocess.run([sys.executable, "-m", "lmexport.cli", "generate", str(folder), "--prompt", "def read(",
                           "--max-new-tokens", "16", "--stop", "return", "--stats"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    [r] = Generator.from_folder(folder).generate("def read(", max_new_tokens=16, stop=["return"])
    assert done.stdout == "def read(" + r.text + "\n"
    assert "tokens/s on cpu" in done.stderr and "[running on cpu]" in done.stderr
    batch = subprocess.run([sys.executable, "-m", "lmexport.cli", "generate", str(folder), "--prompt", "import",
                            "--prompt", "class A:", "--max-new-tokens", "6"], capture_output=True, text=True)
    assert batch.returncode == 0 and batch.stdout.count("--- [") == 2, batch.stderr


BLOCK_TORCH = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
""")


def test_runtime_runs_with_torch_and_transformers_unimportable(exported):
    folder = exported["bundled"][1]
    script = BLOCK_TORCH + textwrap.dedent(f"""
        from lmexport.runtime import Generator
        [r] = Generator.from_folder({str(folder)!r}).generate("def f(x):", max_new_tokens=8)
        assert len(r.token_ids) == 8, r
        from lmexport.cli import main
        main(["generate", {str(folder)!r}, "--prompt", "import", "--max-new-tokens", "4"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "torch" not in done.stderr


def test_the_python_example_in_docs_runs(exported, capsys):
    doc = (ROOT / "docs" / "runtime.md").read_text(encoding="utf-8")
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"out/onnx"' in example
    exec(example.replace('"out/onnx"', repr(str(exported["bundled"][1]))), {})
    assert "tokens/s" in capsys.readouterr().out
