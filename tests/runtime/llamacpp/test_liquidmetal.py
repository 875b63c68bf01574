"""llama.cpp (patched through ``lmexport llamacpp build``) runs the liquidmetal GGUF as PyTorch does.

The session fixture builds the patched llama-cpp-python with ``build()`` when the installed one
is not this build (minutes once, then a stamp check), so CI really runs these. They are skipped
only when no patched build is installed and none can be built here (no compiler, no network);
``LMEXPORT_NO_LLAMACPP_BUILD=1`` turns the build off.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from lmexport.modeling.checkpoint import load_model
from lmexport.exporters.gguf.write import GGUFOptions, export_gguf
from lmexport.modeling.tiny import make_model_folder
from lmexport.compare.tolerances import TOLERANCES, check

from gguf_helpers import logit_metrics

REPO = Path(__file__).resolve().parents[3]
BUNDLED = REPO / "examples" / "liquid-metal-tiny"
DECODE_STEPS = 16
PROMPT_LEN = 24

# tiny random models: kernel sizes 2..4, tied and untied heads, GQA 2:1 and 4:1, SE reductions that do
# not divide the hidden size 64 (64 // 5 = 12, 64 // 6 = 10)
TINY = {
    "k2-untied-se5": dict(token_mixing_kernel_size=2, se_reduction=5),
    "k3-tied": dict(token_mixing_kernel_size=3, tie_word_embeddings=True),
    "k4-gqa4-se6": dict(token_mixing_kernel_size=4, num_key_value_heads=1, se_reduction=6),
    # rows of 256: llama.cpp's K-quants apply (with H = 64 or 128 every matrix falls back to q5_0/q8_0)
    "h256": dict(hidden_size=256, intermediate_size=512, se_reduction=8, tie_word_embeddings=True),
}
MODELS = ["bundled", *TINY]


@pytest.fixture(scope="session")
def llamacpp(patched_llamacpp):
    return patched_llamacpp


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamacpp-models")
    out = {"bundled": BUNDLED}
    for i, (name, overrides) in enumerate(TINY.items()):
        out[name] = make_model_folder(root / name, seed=10 + i, **overrides)
    return out


@pytest.fixture(scope="session")
def gguf_files(folders, tmp_path_factory):
    """(model, outtype) -> GGUF path, written on first use."""
    root = tmp_path_factory.mktemp("llamacpp-gguf")
    cache: dict[tuple[str, str], Path] = {}

    def get(model: str, outtype: str) -> Path:
        key = (model, outtype)
        if key not in cache:
            path = root / f"{model}-{outtype}.gguf"
            if outtype in ("q4_k_m", "q5_k_m", "q6_k"):
                from lmexport.runtime.llamacpp.quantize import quantize

                quantize(get(model, "f32"), path, outtype)
            else:
                export_gguf(folders[model], path, GGUFOptions(outtype=outtype))
            cache[key] = path
        return cache[key]

    return get


@pytest.fixture(scope="session")
def torch_models(folders):
    cache = {}

    def get(model: str):
        if model not in cache:
            cache[model] = load_model(folders[model])[0].eval()
        return cache[model]

    return get


def prompt_ids(model, n: int = PROMPT_LEN, seed: int = 3) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(4, model.config.vocab_size, (n - 1,), generator=g).tolist()


def torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def engine(llamacpp, path: Path, **kw):
    from lmexport.runtime.llamacpp.engine import LlamaCppEngine

    kw.setdefault("n_ctx", 128)
    kw.setdefault("n_threads", 2)
    return LlamaCppEngine(path, **kw)


@pytest.mark.parametrize("model", MODELS)
def test_f32_prompt_and_greedy_decode_match_pytorch(model, llamacpp, gguf_files, torch_models):
    ref_model = torch_models(model)
    ids = prompt_ids(ref_model)
    with engine(llamacpp, gguf_files(model, "f32"), f32_kv=True) as eng:
        new, got = eng.greedy(ids, DECODE_STEPS)
    ref = torch_logits(ref_model, ids + new)
    scale = float(np.abs(ref).max())
    diff = np.abs(got - ref)
    prompt_rel = float(diff[:len(ids)].max()) / scale
    decode_rel = float(diff[len(ids):].max()) / scale
    print(f"{model}: prompt max|diff|/max|logit| = {prompt_rel:.2e}, decode = {decode_rel:.2e}")
    assert prompt_rel <= 1e-4 and decode_rel <= 1e-4
    # the greedy path llama.cpp took is the one PyTorch takes
    assert new == ref[len(ids) - 1:-1].argmax(-1).tolist()


@pytest.mark.parametrize("model", ["bundled", "k2-untied-se5", "k4-gqa4-se6"])
def test_ubatch_splits_give_the_same_logits(model, llamacpp, gguf_files, torch_models):
    ids = prompt_ids(torch_models(model), n=30)
    with engine(llamacpp, gguf_files(model, "f32"), f32_kv=True) as eng:
        whole = eng.logits(ids)
        by7 = eng.logits(ids, n_ubatch=7)
        by_token = eng.logits(ids, chunk=1)
        calls_of_5 = eng.logits(ids, n_ubatch=3, chunk=5)
    for name, other in (("ubatch 7", by7), ("token by token", by_token), ("ubatch 3, calls of 5", calls_of_5)):
        d = float(np.abs(other - whole).max())
        print(f"{model}: one ubatch vs {name}: max|diff| = {d:.2e}")
        assert d <= 1e-5, name


@pytest.mark.parametrize("interleave", [True, False])
def test_two_sequences_in_one_context_equal_each_alone(interleave, llamacpp, gguf_files, torch_models):
    ref_model = torch_models("bundled")
    a, b = prompt_ids(ref_model, 20, seed=5), prompt_ids(ref_model, 13, seed=6)
    with engine(llamacpp, gguf_files("bundled", "f32"), f32_kv=True) as eng:
        alone = {0: eng.logits(a), 1: eng.logits(b)}
        together = eng.logits_multi({0: a, 1: b}, interleave=interleave)
        together_small = eng.logits_multi({0: a, 1: b}, n_ubatch=4, interleave=interleave)
    for s in (0, 1):
        d1 = float(np.abs(together[s] - alone[s]).max())
        d2 = float(np.abs(together_small[s] - alone[s]).max())
        print(f"seq {s}: together vs alone max|diff| = {d1:.2e} (n_ubatch 4: {d2:.2e})")
        assert d1 <= 1e-5 and d2 <= 1e-5
    ref = torch_logits(ref_model, a)
    assert float(np.abs(together[0] - ref).max()) <= 1e-4 * float(np.abs(ref).max())


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"])
@pytest.mark.parametrize("model", ["bundled", "k3-tied", "h256"])
def test_quantized_files_stay_within_their_presets(model, outtype, llamacpp, gguf_files, torch_models):
    ref_model = torch_models(model)
    ids = prompt_ids(ref_model, n=48, seed=7)
    with engine(llamacpp, gguf_files(model, outtype)) as eng:     # llama.cpp defaults: f16 KV cache
        got = eng.logits(ids)
    m = logit_metrics(torch_logits(ref_model, ids), got)
    kinds = sorted({t.tensor_type.name for t in GGUFReader(gguf_files(model, outtype)).tensors})
    print(f"{model} {outtype}: top1 {m.top1:.3f}, KL {m.kl_mean:.2e}, cosine min {m.cosine_min:.5f} ({kinds})")
    tol = TOLERANCES[f"gguf-{outtype}"]
    assert check(m, tol) == []


def test_generation_streams_greedy_text_and_honours_options(llamacpp, gguf_files, torch_models):
    ref_model = torch_models("bundled")
    with engine(llamacpp, gguf_files("bundled", "f32"), f32_kv=True) as eng:
        ids = eng.tokenize("def add(a, b):")
        greedy_ids = list(eng.generate_ids(ids, max_tokens=8))
        expected, _ = eng.greedy(ids, 8)
        assert greedy_ids == expected
        # PyTorch agrees on the greedy continuation
        ref = torch_logits(ref_model, ids + expected)
        assert expected == ref[len(ids) - 1:-1].argmax(-1).tolist()

        text = "".join(eng.generate("def add(a, b):", max_tokens=8))
        assert text == eng.detokenize(expected)[:len(text)] and text
        pieces = list(eng.generate("def add(a, b):", max_tokens=24, temperature=0.8, top_k=20, top_p=0.9,
                                   repeat_penalty=1.1, seed=123))
        again = list(eng.generate("def add(a, b):", max_tokens=24, temperature=0.8, top_k=20, top_p=0.9,
                                  repeat_penalty=1.1, seed=123))
        assert "".join(pieces) == "".join(again)             # seeded sampling repeats
        stop_at = text[len(text) // 2:][:2] or text[:1]
        stopped = "".join(eng.generate("def add(a, b):", max_tokens=8, stop=[stop_at]))
        assert stop_at not in stopped and text.startswith(stopped)


def test_legacy_gguf_is_refused_with_a_clear_message(llamacpp, tmp_path):
    from lmexport.errors import ArtifactError

    folder = make_model_folder(tmp_path / "legacy", seed=1, context_mode="legacy")
    path = export_gguf(folder, tmp_path / "legacy.gguf", GGUFOptions(outtype="f32")).paths[0]
    with pytest.raises(ArtifactError, match="context_mode 'legacy' is not supported"):
        engine(llamacpp, path)


def test_unpatched_library_is_reported(monkeypatch, llamacpp):
    from lmexport.runtime.llamacpp import engine as e
    from lmexport.runtime.llamacpp import install

    monkeypatch.setattr(install, "is_patched", lambda *_: False)
    with pytest.raises(e.LlamaCppUnavailable, match="lmexport llamacpp build"):
        e.LlamaCppEngine(BUNDLED / "config.json")


def test_parallel_decode_one_token_per_sequence_per_batch(llamacpp, gguf_files, torch_models):
    """Two sequences decoding side by side (one token of each per llama_batch, the server's pattern):
    n_seq_tokens = 1, n_seqs = 2 ubatches, each sequence's state kept apart."""
    ref_model = torch_models("k4-gqa4-se6")
    a, b = prompt_ids(ref_model, 11, seed=8), prompt_ids(ref_model, 6, seed=9)
    steps = 6
    with engine(llamacpp, gguf_files("k4-gqa4-se6", "f32"), f32_kv=True) as eng:
        ctx = eng._context(eng.options.n_ubatch, 2)
        eng.llama_cpp.llama_memory_clear(eng.llama_cpp.llama_get_memory(ctx), True)
        eng._decode(ctx, [(t, p, 0) for p, t in enumerate(a)] + [(t, p, 1) for p, t in enumerate(b)])
        rows = eng._rows(ctx, len(a) + len(b))
        last = {0: rows[len(a) - 1], 1: rows[-1]}
        seqs = {0: list(a), 1: list(b)}
        got = {0: [rows[:len(a)]], 1: [rows[len(a):]]}
        for _ in range(steps):
            nxt = {s: int(last[s].argmax()) for s in (0, 1)}
            eng._decode(ctx, [(nxt[s], len(seqs[s]), s) for s in (0, 1)])
            step_rows = eng._rows(ctx, 2)
            for s in (0, 1):
                seqs[s].append(nxt[s])
                got[s].append(step_rows[s:s + 1])
                last[s] = step_rows[s]
    for s in (0, 1):
        ref = torch_logits(ref_model, seqs[s])
        mine = np.concatenate(got[s])
        rel = float(np.abs(mine - ref).max()) / float(np.abs(ref).max())
        print(f"parallel decode seq {s}: max|diff|/max|logit| = {rel:.2e}")
        assert rel <= 1e-4


def test_prompt_longer_than_n_batch_and_input_errors(llamacpp, gguf_files, torch_models):
    from lmexport.errors import InputError

    ref_model = torch_models("k2-untied-se5")
    ids = prompt_ids(ref_model, 70, seed=11)
    with engine(llamacpp, gguf_files("k2-untied-se5", "f32"), f32_kv=True, n_batch=16, n_ubatch=8) as eng:
        got = eng.logits(ids)                                   # 5 llama_decode calls of <= 16 tokens
        ref = torch_logits(ref_model, ids)
        assert float(np.abs(got - ref).max()) <= 1e-4 * float(np.abs(ref).max())
        with pytest.raises(InputError, match="out of range"):
            eng.logits([1, eng.n_vocab])
        with pytest.raises(InputError, match="do not fit"):
            eng.logits(list(range(4, 200)))
        with pytest.raises(InputError, match="temperature"):
            next(eng.generate("x", temperature=-1))


def test_saved_state_restores_conv_window_and_running_sums(llamacpp, gguf_files):
    """llama-cpp-python's save_state/load_state carries the recurrent rows (conv window, sums, count)."""
    llm = llamacpp.Llama(str(gguf_files("bundled", "f32")), n_ctx=128, logits_all=True, type_k=0, type_v=0,
                         verbose=False)
    try:
        a, b = list(range(10, 30)), list(range(40, 50))
        llm.eval(a)
        state = llm.save_state()
        llm.eval(b)
        first = llm.scores[20:30].copy()
        llm.load_state(state)
        llm.eval(b)
        again = llm.scores[20:30].copy()
        llm.reset()
        llm.eval(a + b)
        whole = llm.scores[20:30].copy()
    finally:
        llm.close()
    print(f"state restore: {np.abs(first - again).max():.2e}, vs one call {np.abs(first - whole).max():.2e}")
    assert np.abs(first - again).max() == 0
    assert np.abs(first - whole).max() <= 1e-5
