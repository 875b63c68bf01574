"""Runtime pieces that need no exported model: sampling, stop strings, streaming
detokenisation, the tokenizer's BOS and chat template, the device choice.

Tokenizers are real ``tokenizers`` files written here; one copies the TinyLlama
layout (SentencePiece BPE with byte fallback, a decoder that strips the first space).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

from lmexport.errors import ArtifactError, ChatTemplateError, DeviceError, GenerationError
from lmexport.runtime.generator import Generation, RowProgress, held_back
from lmexport.runtime.sampling import SamplingParams, apply_repetition_penalty, choose, filter_top_k_top_p
from lmexport.runtime.ort import choose_providers
from lmexport.runtime.tokenizer import TextTokenizer
from lmexport.modeling.tiny import make_tokenizer, write_tokenizer_files


def sentencepiece_folder(folder, chat_template=None):
    """A TinyLlama-shaped tokenizer: '▁' for spaces, <0xNN> byte tokens, Strip(' ', 1, 0) decoder."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{i:02X}>": 3 + i for i in range(256)})
    for c in "▁abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
    merges = [("▁", "w"), ("o", "r"), ("▁w", "or"), ("l", "d"), ("▁wor", "ld")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])   # as TinyLlama's
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}
    if chat_template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return TextTokenizer.from_folder(folder)


def stream_tokens(tokenizer, prompt, tokens, stops=(), eos=frozenset()):
    gen = Generation(prompt)
    row = RowProgress(gen, tokenizer, tokenizer.encode(prompt), stops)
    pieces = []
    for t in tokens:
        pieces.append(row.update(set(eos), t))
        if row.done:
            break
    pieces.append(row.finish())
    return gen, [p for p in pieces if p]


# ------------------------------------------------------------ detokenisation and stop strings
def test_streamed_text_keeps_the_first_space_and_waits_for_whole_characters(tmp_path):
    tok = sentencepiece_folder(tmp_path)
    new = tok.encode("world é", add_special_tokens=False)            # ▁world ▁ <0xC3> <0xA9>
    assert tok.decode(new) == "world é"                  # what decoding the new tokens alone loses
    gen, pieces = stream_tokens(tok, "Hello", new)
    assert gen.text == " world é" and "".join(pieces) == gen.text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces == [" world", " ", "é"]                # é waits for its second byte


def test_stop_string_is_never_released_even_across_a_split_character(tmp_path):
    tok = sentencepiece_folder(tmp_path)
    new = tok.encode("world é world", add_special_tokens=False)
    gen, pieces = stream_tokens(tok, "Hello", new, stops=["d é"])
    assert gen.finish_reason == "stop" and gen.text == " worl"
    assert "".join(pieces) == " worl"


def test_eos_ends_the_row_and_is_not_text(tmp_path):
    tok = sentencepiece_folder(tmp_path)
    new = tok.encode("world</s> world", add_special_tokens=False)
    gen, pieces = stream_tokens(tok, "Hello", new, eos={2})
    assert gen.finish_reason == "eos" and gen.text == " world" and 2 not in gen.token_ids


@pytest.mark.parametrize("text, stops, held", [
    ("abc", ["cde"], 1), ("abcd", ["cde"], 2), ("abc", ["xyz"], 0), ("ab", ["b", "abz"], 2), ("", ["ab"], 0)])
def test_held_back_is_the_longest_stop_prefix_at_the_end(text, stops, held):
    assert held_back(text, stops) == held


def test_byte_level_rows_release_only_complete_characters(tmp_path):
    write_tokenizer_files(make_tokenizer(), tmp_path)
    tok = TextTokenizer.from_folder(tmp_path)
    new = tok.encode(" naïve ☃ end", add_special_tokens=False)
    gen, pieces = stream_tokens(tok, "a", new, stops=["end"])
    assert gen.text == " naïve ☃ " and "".join(pieces) == gen.text
    assert all("\ufffd" not in p for p in pieces)


# ------------------------------------------------------------ sampling
def test_greedy_and_top_k_1_take_the_argmax():
    logits = np.array([[0.1, 3.0, -1.0], [2.0, 0.5, 1.9]], dtype=np.float32)
    rngs = [np.random.default_rng(0), np.random.default_rng(0)]
    assert choose(logits, SamplingParams(), rngs, [set(), set()]).tolist() == [1, 0]
    for _ in range(20):
        picked = choose(logits, SamplingParams(temperature=5.0, top_k=1), rngs, [set(), set()])
        assert picked.tolist() == [1, 0]


def test_top_k_top_p_keep_the_smallest_set_reaching_p():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    np.testing.assert_allclose(filter_top_k_top_p(probs, 0, 0.8), [0, 0.625, 0, 0.375])
    np.testing.assert_allclose(filter_top_k_top_p(probs, 0, 0.81), [0, 0.5, 0.15, 0.3] / np.float64(0.95))
    np.testing.assert_allclose(filter_top_k_top_p(probs, 2, 1.0), [0, 0.625, 0, 0.375])
    np.testing.assert_allclose(filter_top_k_top_p(probs, 0, 0.1), [0, 1, 0, 0])     # at least one token


def test_repetition_penalty_follows_the_ctrl_convention():
    logits = np.array([[2.0, -2.0, 1.0]])
    out = apply_repetition_penalty(logits, [{0, 1}], 2.0)
    np.testing.assert_allclose(out, [[1.0, -4.0, 1.0]])
    assert logits[0, 0] == 2.0                           # the input is not modified


def test_sampling_is_seeded_and_follows_the_distribution():
    logits = np.log(np.array([[0.7, 0.3]]))
    params = SamplingParams(temperature=1.0, seed=11)

    def draws(seed):
        rng = [np.random.default_rng(seed)]
        return [int(choose(logits, params, rng, [set()])[0]) for _ in range(2000)]

    a = draws(11)
    assert a == draws(11) and a != draws(12)
    assert abs(a.count(0) / len(a) - 0.7) < 0.05


def test_bad_sampling_parameters_are_reported_together():
    with pytest.raises(GenerationError) as err:
        SamplingParams(temperature=-1, top_k=-2, top_p=0, repetition_penalty=0)
    assert all(word in str(err.value) for word in ("temperature", "top-k", "top-p", "repetition"))


# ------------------------------------------------------------ device choice
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
CPU = ["CPUExecutionProvider"]


@pytest.mark.parametrize("device, available, want", [
    ("cpu", CUDA, CPU), ("auto", CUDA, CUDA), ("auto", CPU, CPU), ("cuda", CUDA, CUDA)])
def test_provider_choice(device, available, want):
    assert choose_providers(device, available) == want


@pytest.mark.parametrize("device, match", [("cuda", "no CUDAExecutionProvider"), ("gpu", "unknown device")])
def test_provider_choice_errors(device, match):
    with pytest.raises(DeviceError, match=match):
        choose_providers(device, CPU)


# ------------------------------------------------------------ tokenizer: BOS and chat template
def test_bos_comes_from_the_post_processor_and_a_template_writes_its_own(tmp_path):
    template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    tok = sentencepiece_folder(tmp_path, chat_template=template)
    assert tok.add_bos and not tok.add_eos
    assert tok.encode("world")[0] == 1 and tok.encode("world", add_special_tokens=False)[0] != 1
    rendered = tok.apply_chat_template([{"role": "user", "content": "world"}])
    assert rendered.startswith("<s>[user]")
    assert tok.encode(rendered, add_special_tokens=False)[:2] == [1, tok.encode("[", add_special_tokens=False)[0]]


def test_chat_template_runs_in_a_sandbox(tmp_path):
    tok = sentencepiece_folder(tmp_path, chat_template="{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ArtifactError, match="chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_can_reject_a_conversation(tmp_path):
    tok = sentencepiece_folder(tmp_path, chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_from_a_jinja_file_and_its_absence(tmp_path):
    tok = sentencepiece_folder(tmp_path / "a")
    with pytest.raises(GenerationError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
    (tmp_path / "a" / "chat_template.jinja").write_text("{% for m in messages %}<{{ m['content'] }}>{% endfor %}")
    assert TextTokenizer.from_folder(tmp_path / "a").apply_chat_template([{"role": "user", "content": "x"}]) == "<x>"
