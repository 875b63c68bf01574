"""The one name table: one-to-one, covering every parameter, with invertible layouts."""
import numpy as np
import pytest

from lmexport.tensor_names import (LAYOUTS, PACKS, TABLE, PackRef, expected_tensors, from_gguf_layout,
                                   gguf_layout_shape, iter_aliases, lookup, lookup_gguf, lookup_pack, pack_columns,
                                   rope_permute, rope_unpermute, to_gguf_layout, unpack_columns)

from conftest import tiny_config, tiny_model


@pytest.mark.parametrize("tied", [False, True])
def test_table_covers_every_parameter_exactly(tied):
    model = tiny_model(tie_word_embeddings=tied)
    params = {n for n, _ in model.named_parameters()}
    refs = expected_tensors(model.config)
    assert {r.name for r in refs} == params
    shapes = dict(model.named_parameters())
    assert all(tuple(shapes[r.name].shape) == r.shape(model.config) for r in refs)


def test_names_are_one_to_one_in_every_namespace():
    refs = expected_tensors(tiny_config(num_hidden_layers=3))
    for attr in ("name", "gguf_name", "onnx_name"):
        names = [getattr(r, attr) for r in refs]
        assert len(names) == len(set(names)), attr
    assert all(len(r.gguf_name.encode()) < 64 for r in refs)
    for r in refs:
        assert lookup(r.name) == r
        assert lookup_gguf(r.gguf_name) == r


def test_aliases_map_to_their_canonical_entry_and_do_not_collide():
    canonical = {e.name for e in TABLE}
    aliases = list(iter_aliases())
    assert len({a for a, _ in aliases}) == len(aliases)
    for alias, target in aliases:
        assert alias not in canonical
        assert lookup(alias.format(bid=5)).name == target.format(bid=5)
    assert lookup("model.layers.0.self_attn.rotary_emb.inv_freq") is None


def test_llama_subset_is_the_plain_llama_tensor_set():
    config = tiny_config()
    llama = {r.entry.module for r in expected_tensors(config, llama_only=True)}
    assert llama == {"embedding", "norm_in", "attention", "norm_post", "mlp", "final_norm", "lm_head"}


def test_layout_transforms_invert():
    rng = np.random.default_rng(0)
    config = tiny_config(num_attention_heads=4, num_key_value_heads=2)
    for ref in expected_tensors(config):
        w = rng.standard_normal(ref.shape(config)).astype(np.float32)
        back = from_gguf_layout(ref, to_gguf_layout(ref, w, config), config)
        assert back.shape == w.shape and np.array_equal(back, w), ref.name
    q = rng.standard_normal((8, 3))
    assert not np.array_equal(rope_permute(q, 2), q)
    assert np.array_equal(rope_unpermute(rope_permute(q, 2), 2), q)
    c = rng.standard_normal((5, 1, 3))
    squeeze = LAYOUTS["conv_squeeze"]
    assert squeeze.forward(c, config).shape == (5, 3) == squeeze.shape(c.shape)
    assert np.array_equal(squeeze.inverse(squeeze.forward(c, config), config), c)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_inverts_and_states_its_shape(name):
    layout = LAYOUTS[name]
    config = tiny_config(num_attention_heads=4, num_key_value_heads=2)
    refs = [r for r in expected_tensors(config) if r.entry.gguf_layout == name]
    assert refs, f"layout {name} is used by no tensor"
    rng = np.random.default_rng(1)
    for ref in refs:
        w = rng.standard_normal(ref.shape(config)).astype(np.float32)
        stored = layout.forward(w, config)
        assert stored.shape == layout.shape(w.shape) == gguf_layout_shape(ref, config)
        assert np.array_equal(layout.inverse(stored, config), w)


def test_every_layout_named_in_the_table_exists():
    assert {e.gguf_layout for e in TABLE if e.gguf_layout} <= set(LAYOUTS)


def test_packs_are_matrices_of_one_input_with_names_of_their_own():
    """Each pack: two or more per-layer matrices of one module and one input size, each in
    at most one pack; its name is no tensor's name or alias and maps back to itself."""
    config = tiny_config(num_attention_heads=4, num_key_value_heads=2)
    taken = {e.name for e in TABLE} | {a for e in TABLE for a in e.aliases}
    members = [m.name for p in PACKS for m in p.members]
    assert len(members) == len(set(members))
    assert len({p.name for p in PACKS}) == len(PACKS)
    for pack in PACKS:
        assert pack.name not in taken and "{bid}" in pack.name
        assert len(pack.members) >= 2
        assert {m.role for m in pack.members} == {"matrix"} and {m.module for m in pack.members} == {pack.module}
        ref = PackRef(pack, 3)
        assert lookup_pack(ref.name) == ref and lookup(ref.name) is None
        assert len({m.shape(config)[1] for m in ref.members}) == 1
    assert lookup_pack("model.layers.3.self_attn.q_proj.weight") is None


@pytest.mark.parametrize("pack", PACKS, ids=lambda p: p.name)
def test_pack_columns_invert(pack):
    config = tiny_config(num_attention_heads=4, num_key_value_heads=2)
    ref = PackRef(pack, 1)
    rng = np.random.default_rng(2)
    stored = [rng.standard_normal(m.shape(config)).astype(np.float32).T for m in ref.members]   # [in, out]
    packed = pack_columns(ref, stored)
    assert packed.shape == ref.shape(config)
    back = unpack_columns(ref, packed, config)
    assert list(back) == [m.name for m in ref.members]
    assert all(np.array_equal(back[m.name], w) for m, w in zip(ref.members, stored))
    with pytest.raises(ValueError):
        pack_columns(ref, stored[:1])
