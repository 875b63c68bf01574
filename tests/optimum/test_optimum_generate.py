"""transformers' generate() on an lmexport folder through optimum-onnx, against lmexport's own
runtime and the PyTorch reference. Real optimum, real ONNX Runtime, real exported files."""
from __future__ import annotations

import pytest
import torch
from transformers import TextStreamer, pipeline, set_seed

from lmexport.errors import ArtifactError, GenerationError, InputError
from lmexport.manifest import Manifest
from lmexport.optimum import ORTModelForLiquidMetal, OnnxState, config_from_manifest, load_tokenizer
from lmexport.runtime import Generator
from optimum_helpers import BUNDLED, PROMPTS, lmexport_tokens, new_tokens


def test_the_tokenizer_encodes_as_lmexport_generate_does(tok, fp32):
    gen = Generator.from_folder(fp32)
    enc = tok(list(PROMPTS), padding=True)
    assert set(enc) == {"input_ids", "attention_mask"}
    for row, mask, prompt in zip(enc["input_ids"], enc["attention_mask"], PROMPTS):
        ids = gen.encode_prompt(prompt)
        assert row[len(row) - len(ids):] == ids and sum(mask) == len(ids)          # padding on the left
        assert set(row[:len(row) - len(ids)]) <= {gen.pad_token_id}
    chat = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    assert chat == gen.encode_prompt("hello", chat=True)            # both encode it without special tokens


@pytest.mark.parametrize("variant", ["fp32", "int4", "legacy"])
def test_greedy_equals_lmexport_generate_for_32_tokens(folders, variant):
    model = ORTModelForLiquidMetal.from_pretrained(folders[variant])
    tok = load_tokenizer(folders[variant])
    gen = Generator.from_folder(folders[variant])
    roles = {s.role for s in model.manifest.state_inputs()}
    assert roles == ({"key", "value"} if variant == "legacy" else {"key", "value", "conv", "context"})
    full = 0
    for prompt in PROMPTS:
        assert tok(prompt)["input_ids"] == gen.encode_prompt(prompt)      # same BOS and ids
        [got] = new_tokens(model, tok, [prompt], max_new_tokens=32, do_sample=False)
        assert got == lmexport_tokens(gen, prompt, 32), prompt
        full += len(got) == 32
    assert full >= 2      # most prompts run all 32 steps (no early EOS)


def test_left_padded_batch_equals_each_prompt_alone(model, tok, fp32):
    prompts = [PROMPTS[2], PROMPTS[1]]                    # 13 and 3 tokens: the second is left-padded
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert enc["attention_mask"][1, 0] == 0 and enc["attention_mask"][0].all()
    batch = new_tokens(model, tok, prompts, max_new_tokens=24, do_sample=False)
    gen = Generator.from_folder(fp32)
    for prompt, row in zip(prompts, batch):
        assert row == new_tokens(model, tok, [prompt], max_new_tokens=24, do_sample=False)[0]
        assert row == lmexport_tokens(gen, prompt, 24)


def test_sampling_with_a_seed_is_reproducible(model, tok):
    kw = dict(max_new_tokens=24, do_sample=True, temperature=0.9, top_k=50, top_p=0.95)

    def sample(seed):
        set_seed(seed)
        return new_tokens(model, tok, PROMPTS[:2], **kw)

    a, b, c = sample(7), sample(7), sample(8)
    greedy = new_tokens(model, tok, PROMPTS[:2], max_new_tokens=24, do_sample=False)
    assert a == b
    assert a != c or a != greedy
    assert all(0 <= t < model.config.vocab_size for row in a for t in row)


def test_beam_search_of_2_equals_beam_search_on_the_pytorch_model(model, tok):
    from torch_reference import TorchReference

    reference = TorchReference(config_from_manifest(model.manifest), BUNDLED)   # optimum's config says onnxruntime
    enc = tok([PROMPTS[0], PROMPTS[1]], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=20, num_beams=2, num_return_sequences=2, do_sample=False,
              output_scores=True, return_dict_in_generate=True)
    ort_out = model.generate(**enc, **kw)
    torch_out = reference.generate(**enc, **kw)
    assert ort_out.sequences.shape[0] == 4
    assert torch.equal(ort_out.sequences, torch_out.sequences)
    torch.testing.assert_close(ort_out.sequences_scores, torch_out.sequences_scores, atol=1e-4, rtol=0)
    assert torch.equal(ort_out.sequences, model.generate(**enc, **kw).sequences)     # and again
    # the best beams are not the greedy sequences: the search reordered the state on its way
    # (with the state left unreordered, the sequences differ from PyTorch's)
    greedy = model.generate(**enc, max_new_tokens=20, do_sample=False)
    assert not torch.equal(ort_out.sequences[::2], greedy)


def test_text_streamer_prints_the_decoded_text(model, tok, capsys):
    enc = tok(PROMPTS[0], return_tensors="pt")
    capsys.readouterr()
    out = model.generate(**enc, max_new_tokens=24, do_sample=False, streamer=TextStreamer(tok, skip_prompt=True))
    printed = capsys.readouterr().out
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert printed.strip() == text.strip() and len(text.strip()) > 10


def test_state_is_every_state_input_of_the_manifest(model, tok):
    enc = tok(PROMPTS[0], return_tensors="pt")
    out = model(**enc)
    state = out.past_key_values
    assert isinstance(state, OnnxState)
    assert set(state.tensors) == {s.name for s in model.manifest.state_inputs()}
    assert {s.role for s in state.specs} == {"key", "value", "conv", "context"}
    assert state.get_seq_length() == enc["input_ids"].shape[1] and state.batch_size == 1
    # one call over prompt + token equals the prompt's call then the token's call on its state
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    step = model(input_ids=nxt, attention_mask=torch.ones(1, enc["input_ids"].shape[1] + 1, dtype=torch.long),
                 past_key_values=state)
    whole = model(input_ids=torch.cat([enc["input_ids"], nxt], 1))
    torch.testing.assert_close(step.logits[:, -1], whole.logits[:, -1], atol=1e-4, rtol=0)
    with pytest.raises(GenerationError, match="attention_mask has shape"):
        model(input_ids=nxt, attention_mask=torch.ones(1, 2, dtype=torch.long), past_key_values=state)
    with pytest.raises(GenerationError, match="exceed the model's context of 512"):
        model(input_ids=torch.ones(1, 513, dtype=torch.long))


def test_save_pretrained_writes_a_folder_that_loads_again(model, tok, tmp_path):
    model.save_pretrained(tmp_path / "copy")
    again = ORTModelForLiquidMetal.from_pretrained(tmp_path / "copy")
    enc = tok(PROMPTS[1], return_tensors="pt")
    assert torch.equal(again.generate(**enc, max_new_tokens=8, do_sample=False),
                       model.generate(**enc, max_new_tokens=8, do_sample=False))


def test_text_generation_pipeline_gives_the_greedy_text(model, tok):
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    [result] = generator(PROMPTS[0], max_new_tokens=16, do_sample=False, return_full_text=False)
    enc = tok(PROMPTS[0], return_tensors="pt")
    ids = model.generate(**enc, max_new_tokens=16, do_sample=False)[0, enc["input_ids"].shape[1]:]
    assert result["generated_text"] == tok.decode(ids, skip_special_tokens=True)


def test_optimums_own_class_cannot_feed_the_folder(fp32, tok):
    """Why the subclass exists: the parent carries only .key/.value inputs."""
    from optimum.onnxruntime import ORTModelForCausalLM

    parent = ORTModelForCausalLM.from_pretrained(fp32)     # loads: lmexport.optimum registered the config
    with pytest.raises(ValueError, match="is required by model but not provided") as failed:
        parent.generate(**tok(PROMPTS[0], return_tensors="pt"), max_new_tokens=2)
    not_kv = [s.name for s in Manifest.read(fp32).state_inputs() if s.role in ("conv", "context")]
    assert str(failed.value).split()[1] in not_kv


def test_a_folder_without_lmexport_json_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="lmexport.json"):
        ORTModelForLiquidMetal.from_pretrained(tmp_path)
    with pytest.raises(InputError, match="lmexport onnx"):
        ORTModelForLiquidMetal.from_pretrained(tmp_path, export=True)
