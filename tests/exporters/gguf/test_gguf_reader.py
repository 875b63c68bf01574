"""Reading GGUF files back (lmexport.exporters.gguf.reader): checks before allocation, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from lmexport.errors import ArtifactError
from lmexport.exporters.gguf.write import GGUFOptions, export_gguf
from lmexport.exporters.gguf.reader import load_gguf_model, open_gguf
from lmexport.modeling.tiny import make_llama_folder, make_model_folder


@pytest.fixture(scope="module")
def f32_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    folder = make_model_folder(root / "tiny", seed=0)
    return export_gguf(folder, root / "m.gguf", GGUFOptions(outtype="f32")).paths[0]


def _copy_with(src, dst, edit):
    data = bytearray(src.read_bytes())
    edit(data)
    dst.write_bytes(bytes(data))
    return dst


def test_header_is_checked_before_parsing(f32_file, tmp_path):
    bad_magic = _copy_with(f32_file, tmp_path / "magic.gguf", lambda d: d.__setitem__(slice(0, 4), b"GGUG"))
    with pytest.raises(ArtifactError, match="not a GGUF file"):
        open_gguf(bad_magic)
    huge = _copy_with(f32_file, tmp_path / "huge.gguf",
                      lambda d: d.__setitem__(slice(8, 16), (1 << 40).to_bytes(8, "little")))
    with pytest.raises(ArtifactError, match="beyond lmexport's limits"):
        open_gguf(huge)
    short = _copy_with(f32_file, tmp_path / "short.gguf", lambda d: d.__delitem__(slice(2000, None)))
    with pytest.raises(ArtifactError, match="not a readable GGUF file"):
        open_gguf(short)
    with pytest.raises(ArtifactError, match="does not exist"):
        open_gguf(tmp_path / "absent.gguf")


def _rewrite(src, dst, *, arch=None, edits=None, drop_tensor=None):
    """A copy of ``src`` with changed metadata or one tensor dropped (written with GGUFWriter)."""
    reader = GGUFReader(src)
    arch = arch or reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = (edits or {}).get(key, f.contents())
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, f.types[0], sub_type=sub)
    for t in reader.tensors:
        if t.name != drop_tensor:
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def test_out_of_range_metadata_is_refused_before_tensors_are_read(f32_file, tmp_path):
    path = _rewrite(f32_file, tmp_path / "layers.gguf", edits={"liquidmetal.block_count": 100000})
    with pytest.raises(ArtifactError, match=r"liquidmetal\.block_count=100000 is out of range"):
        load_gguf_model(path)
    path = _rewrite(f32_file, tmp_path / "arch.gguf", arch="qwen2")
    with pytest.raises(ArtifactError, match="'qwen2' GGUF"):
        load_gguf_model(path)


def test_missing_tensor_and_wrong_shape_are_listed(f32_file, tmp_path):
    path = _rewrite(f32_file, tmp_path / "drop.gguf", drop_tensor="blk.1.se_fc2.bias")
    with pytest.raises(ArtifactError, match=r"missing tensor blk\.1\.se_fc2\.bias"):
        load_gguf_model(path)
    path = _rewrite(f32_file, tmp_path / "shape.gguf", edits={"liquidmetal.feed_forward_length": 96})
    with pytest.raises(ArtifactError, match=r"blk\.0\.ffn_gate\.weight has shape \(128, 64\), the config implies \(96, 64\)"):
        load_gguf_model(path)


def test_llama_gguf_has_tensors_but_no_liquid_metal_model(tmp_path):
    folder = make_llama_folder(tmp_path / "llama")
    out = export_gguf(folder, tmp_path / "llama.gguf", GGUFOptions(outtype="f32")).paths[0]
    g = open_gguf(out)
    assert g.arch == "llama" and g.config().model_type == "llama"
    assert sum(1 for _ in g.iter_tensors()) == len(g.tensors)
    with pytest.raises(ArtifactError, match="without the Liquid-Metal modules"):
        load_gguf_model(out)
