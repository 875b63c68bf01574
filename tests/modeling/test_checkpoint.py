"""Loading checkpoint folders: single and sharded, and every malformed case."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmexport.modeling.checkpoint import load_model, read_checkpoint, save_checkpoint
from lmexport.errors import CheckpointError, ConfigError, InputError, UnsafeFileError

from conftest import tiny_model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_single_file_round_trip(model_dir):
    model, ckpt = load_model(model_dir)
    again, ckpt2 = load_model(model_dir)
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    assert torch.equal(_logits(model, ids), _logits(again, ids))
    assert ckpt.weights_hash() == ckpt2.weights_hash()
    assert (model_dir / "tokenizer.json") in ckpt.tokenizer_files()


def test_sharded_checkpoint_loads_the_same_model(tmp_path):
    model = tiny_model(seed=5)
    save_checkpoint(model, tmp_path / "single")
    save_checkpoint(model, tmp_path / "sharded", max_shard_bytes=40_000)
    shards = sorted((tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    a, ca = load_model(tmp_path / "single")
    b, cb = load_model(tmp_path / "sharded")
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    assert torch.equal(_logits(a, ids), _logits(b, ids))
    assert ca.weights_hash() == cb.weights_hash()


def test_aliases_load_and_config_keys_come_from_shapes(tmp_path):
    model = tiny_model(seed=1, token_mixing_kernel_size=4, se_reduction=8)
    folder = save_checkpoint(model, tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    renamed = {k.replace("token_mixing.conv.", "token_mixing.").replace(".se.", ".se_block."): v
               for k, v in tensors.items()}
    save_file(renamed, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    del config["token_mixing_kernel_size"], config["se_reduction"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded, ckpt = load_model(folder)
    assert ckpt.config.token_mixing_kernel_size == 4 and ckpt.config.se_reduction == 8
    ids = torch.randint(0, model.config.vocab_size, (1, 5))
    assert torch.equal(_logits(model, ids), _logits(loaded, ids))


def _edit_tensors(folder, fn):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path)


def _missing(t): t.pop("model.layers.1.se.fc2.bias")
def _extra(t): t["model.layers.0.mystery.weight"] = torch.zeros(2)
def _wrong_shape(t): t["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(3, 3)
def _several(t):
    _missing(t); _extra(t); _wrong_shape(t)


@pytest.mark.parametrize("edit, expected", [
    (_missing, ["missing tensor model.layers.1.se.fc2.bias"]),
    (_extra, ["unmapped tensor model.layers.0.mystery.weight"]),
    (_wrong_shape, ["model.layers.0.self_attn.k_proj.weight has shape (3, 3)"]),
    (_several, ["missing tensor model.layers.1.se.fc2.bias", "unmapped tensor model.layers.0.mystery.weight",
                "k_proj.weight has shape (3, 3)"]),
])
def test_malformed_tensors_raise_one_error_listing_all(model_dir, edit, expected):
    _edit_tensors(model_dir, edit)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(model_dir)
    for text in expected:
        assert text in str(info.value)
    assert len(info.value.problems) == len(expected)


def test_extra_known_tensor_is_reported(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="extra tensor model.layers.1"):
        read_checkpoint(model_dir)


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "vocab_size"])
def test_missing_config_key(model_dir, key):
    config = json.loads((model_dir / "config.json").read_text())
    del config[key]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=f"missing required key\\(s\\) {key}"):
        read_checkpoint(model_dir)


def test_corrupt_safetensors_file(model_dir):
    path = model_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        read_checkpoint(model_dir)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        read_checkpoint(tmp_path / "empty")


def test_other_architecture_and_unsupported_rope(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="'gpt2' model"):
        read_checkpoint(model_dir)
    (model_dir / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "yarn"}}))
    with pytest.raises(ConfigError, match="rope_scaling"):
        read_checkpoint(model_dir)


def test_pickle_only_checkpoint_is_refused_without_the_flag(tmp_path):
    model = tiny_model(seed=2)
    folder = save_checkpoint(model, tmp_path / "m")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(UnsafeFileError, match="only pickle weights"):
        read_checkpoint(folder)
    loaded, _ = load_model(folder, allow_pickle=True)      # then weights_only=True
    ids = torch.randint(0, model.config.vocab_size, (1, 4))
    assert torch.equal(_logits(model, ids), _logits(loaded, ids))


def test_index_naming_a_missing_shard_and_duplicates(tmp_path):
    model = tiny_model(seed=5)
    folder = save_checkpoint(model, tmp_path / "sharded", max_shard_bytes=40_000)
    shards = sorted(folder.glob("*.safetensors"))
    first = load_file(shards[0])
    extra_shard = folder / "dup.safetensors"
    save_file(first, extra_shard)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["dup.only"] = "dup.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="is stored twice"):
        read_checkpoint(folder)
    extra_shard.unlink()
    with pytest.raises(CheckpointError, match="missing dup.safetensors"):
        read_checkpoint(folder)


def test_plain_llama_checkpoint_points_to_convert(tmp_path):
    from lmexport.modeling.tiny import make_llama_folder
    folder = make_llama_folder(tmp_path / "llama")
    with pytest.raises(CheckpointError, match="lmexport convert"):
        read_checkpoint(folder)
