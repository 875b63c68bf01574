"""lmexport gguf: every outtype writes, validates, reads back and computes what PyTorch computes."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader

from lmexport.formats import gguf as fmt
from lmexport.atomic import FREE_SPACE_OVERRIDE_ENV
from lmexport.modeling.checkpoint import load_model, read_checkpoint
from lmexport.errors import DiskSpaceError, InputError, OutputExistsError, ValidationError
from lmexport.exporters.gguf.write import GGUFOptions, export_gguf, parse_size, plan_tensors
from lmexport.exporters.gguf.validate import validate_gguf
from lmexport.exporters.gguf.reader import load_gguf_model, open_gguf, read_gguf_tensors
from lmexport.modeling.tiny import make_model_folder
from lmexport.compare.tolerances import TOLERANCES, check, gguf_preset

from gguf_helpers import logit_metrics, logits_of


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("gguf") / "tiny", seed=0)


@pytest.fixture(scope="module")
def reference(model_dir):
    model, ckpt = load_model(model_dir)
    return logits_of(model), ckpt


@pytest.mark.parametrize("outtype", list(fmt.OUTTYPES))
def test_outtype_round_trip_and_logits(outtype, model_dir, reference, tmp_path):
    ref_logits, ckpt = reference
    report = export_gguf(model_dir, tmp_path / f"m-{outtype}.gguf", GGUFOptions(outtype=outtype))
    assert report.paths == [tmp_path / f"m-{outtype}.gguf"] and report.paths[0].is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]       # no staging left over

    # every tensor's round trip within its type's bound (the validator checked; check the numbers too)
    for rt in report.validation.round_trip:
        assert rt.rel <= rt.bound + 1e-6, rt
    assert {rt.gguf_name for rt in report.validation.round_trip} == {p.ref.gguf_name for p in report.plan}

    # the types follow the rules: norms, biases, conv F32; the rest the outtype (or F16 fallback)
    g = open_gguf(report.paths[0])
    for p in report.plan:
        t = g.tensors[p.ref.gguf_name]
        if p.ref.entry.role in fmt.F32_ROLES:
            assert t.tensor_type == QT.F32
        else:
            assert t.tensor_type == (QT.F16 if p.fallback else fmt.OUTTYPES[outtype].qtype)
    assert g.value("general.file_type") == int(fmt.OUTTYPES[outtype].file_type)
    assert g.weights_hash == ckpt.weights_hash()

    model, config, metadata = load_gguf_model(report.paths[0])
    assert config == ckpt.config
    assert metadata["general.architecture"] == "liquidmetal"
    m = logit_metrics(ref_logits, logits_of(model))
    tol = TOLERANCES[gguf_preset(outtype)]
    assert check(m, tol) == [], (outtype, m)
    if outtype == "f32":
        assert m.max_abs <= 1e-5


def test_f32_tensors_read_back_exactly(model_dir, reference, tmp_path):
    _, ckpt = reference
    out = export_gguf(model_dir, tmp_path / "m.gguf", GGUFOptions(outtype="f32")).paths[0]
    config, tensors = read_gguf_tensors(out)
    assert tensors.keys() == ckpt.tensors.keys()
    for name, t in ckpt.tensors.items():
        np.testing.assert_array_equal(tensors[name], t.float().numpy(), err_msg=name)
    # the stored layout is GGUF's: Q permuted for RoPE, conv squeezed to [H, K]
    reader = GGUFReader(out)
    by_name = {t.name: t for t in reader.tensors}
    conv = by_name["blk.0.token_conv.weight"]
    assert list(reversed(conv.shape.tolist())) == [config.hidden_size, config.token_mixing_kernel_size]
    q = np.asarray(by_name["blk.0.attn_q.weight"].data)
    assert not np.array_equal(q, ckpt.tensors["model.layers.0.self_attn.q_proj.weight"].numpy())


def test_split_output_reads_back_as_one_model(model_dir, reference, tmp_path):
    ref_logits, ckpt = reference
    report = export_gguf(model_dir, tmp_path / "m.gguf", GGUFOptions(outtype="q8_0", split_max_size=parse_size("60K")))
    assert len(report.paths) >= 3
    assert [p.name for p in report.paths] == [f"m-{i:05d}-of-{len(report.paths):05d}.gguf"
                                              for i in range(1, len(report.paths) + 1)]
    assert all(p.stat().st_size <= 60_000 + 40_000 for p in report.paths)   # + metadata in the first
    assert not (tmp_path / "m.gguf").exists()
    for any_path in (tmp_path / "m.gguf", report.paths[0], report.paths[-1]):
        g = open_gguf(any_path)
        assert g.paths == report.paths and len(g.tensors) == len(report.plan)
    model, config, _ = load_gguf_model(tmp_path / "m.gguf")
    assert check(logit_metrics(ref_logits, logits_of(model)), TOLERANCES["gguf-q8_0"]) == []
    report.paths[1].unlink()
    with pytest.raises(InputError, match="incomplete"):
        open_gguf(report.paths[0])


def test_fallback_to_f16_is_logged(tmp_path, caplog):
    # hidden 48: rows of 48 are not a multiple of the 32-wide q4_0 blocks
    folder = make_model_folder(tmp_path / "h48", hidden_size=48, intermediate_size=96, num_attention_heads=4,
                               num_key_value_heads=2, se_reduction=3)
    with caplog.at_level(logging.WARNING, logger="lmexport.exporters.gguf.write"):
        report = export_gguf(folder, tmp_path / "h48.gguf", GGUFOptions(outtype="q4_0"))
    assert "blk.0.attn_q.weight" in report.fallbacks and "token_embd.weight" in report.fallbacks
    assert "blk.0.ffn_down.weight" not in report.fallbacks                     # rows of 96 = 3 blocks
    assert "not a multiple of the Q4_0 block size" in caplog.text
    g = open_gguf(report.paths[0])
    assert g.tensors["blk.0.attn_q.weight"].tensor_type == QT.F16
    assert g.tensors["blk.0.ffn_down.weight"].tensor_type == QT.Q4_0


def test_type_rules():
    q4 = fmt.OUTTYPES["q4_0"]
    assert fmt.choose_type((64, 64), "matrix", q4) == QT.Q4_0
    assert fmt.choose_type((64, 48), "matrix", q4) == QT.F16
    assert fmt.choose_type((64, 3), "conv", q4) == QT.F32
    assert fmt.choose_type((64,), "norm", fmt.OUTTYPES["bf16"]) == QT.F32
    assert fmt.choose_type((64, 48), "matrix", fmt.OUTTYPES["bf16"]) == QT.BF16
    # shapes no GGUF type can hold
    assert fmt.choose_type((0, 64), "matrix", q4) is None
    assert fmt.choose_type((2, 2, 2, 2, 32), "matrix", q4) is None


def test_a_shape_that_fits_nothing_is_a_clear_error(monkeypatch):
    import lmexport.tensor_names as tn
    from lmexport.config import LiquidMetalConfig

    config = LiquidMetalConfig.from_dict({"vocab_size": 64, "hidden_size": 64, "intermediate_size": 64,
                                         "num_hidden_layers": 1, "num_attention_heads": 4})
    odd = tn.TensorEntry("model.layers.{bid}.odd.weight", "blk.{bid}.odd.weight", "mlp", "matrix",
                         lambda c: (2, 2, 2, 2, 32))            # 5 dimensions: GGUF holds at most 4
    monkeypatch.setattr(tn, "TABLE", tn.TABLE + (odd,))
    with pytest.raises(InputError, match=r"no GGUF type fits 1 tensor\(s\).*blk\.0\.odd\.weight"):
        plan_tensors(config, "liquidmetal", "q4_0")


def test_parse_size():
    assert parse_size("500M") == 500_000_000 and parse_size("2G") == 2_000_000_000
    assert parse_size("1.5GB") == 1_500_000_000 and parse_size("4096") == 4096 and parse_size(None) == 0
    with pytest.raises(InputError):
        parse_size("lots")


def test_output_path_errors(model_dir, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="does not exist"):
        export_gguf(model_dir, tmp_path / "missing" / "m.gguf")
    (tmp_path / "m.gguf").write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        export_gguf(model_dir, tmp_path / "m.gguf")
    monkeypatch.setenv(FREE_SPACE_OVERRIDE_ENV, "1000")
    with pytest.raises(DiskSpaceError):
        export_gguf(model_dir, tmp_path / "m.gguf", overwrite=True)
    assert (tmp_path / "m.gguf").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_failed_validation_leaves_no_file(model_dir, tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"old")
    monkeypatch.setitem(fmt.WEIGHT_BOUNDS, QT.Q4_0, 1e-6)     # no q4_0 tensor can meet this
    with pytest.raises(ValidationError, match=r"blk\.0\.attn_q\.weight \(Q4_0\) round-trips"):
        export_gguf(model_dir, tmp_path / "m.gguf", GGUFOptions(outtype="q4_0"), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    assert (tmp_path / "m.gguf").read_bytes() == b"old"


def test_validator_catches_a_changed_tensor(model_dir, tmp_path):
    out = export_gguf(model_dir, tmp_path / "m.gguf", GGUFOptions(outtype="f16")).paths[0]
    ckpt = read_checkpoint(model_dir)
    reader = GGUFReader(out, "r+")
    t = next(t for t in reader.tensors if t.name == "blk.1.se_fc1.weight")
    t.data[0, :4] = np.float16(5.0)
    reader.data.flush()
    del reader
    with pytest.raises(ValidationError) as err:
        validate_gguf([out], ckpt, arch="liquidmetal", outtype="f16")
    assert any("blk.1.se_fc1.weight" in f for f in err.value.failures)
    assert len(err.value.failures) == 1
    with pytest.raises(ValidationError, match="file_type"):
        validate_gguf([out], ckpt, arch="liquidmetal", outtype="q8_0")


def test_tied_embeddings_write_no_output_tensor(tmp_path):
    folder = make_model_folder(tmp_path / "tied", tie_word_embeddings=True)
    report = export_gguf(folder, tmp_path / "tied.gguf", GGUFOptions(outtype="f32"))
    g = open_gguf(report.paths[0])
    assert "output.weight" not in g.tensors and "token_embd.weight" in g.tensors
    model, config, _ = load_gguf_model(report.paths[0])
    assert config.tie_word_embeddings
    ref, _ = load_model(folder)
    assert np.abs(logits_of(model) - logits_of(ref)).max() <= 1e-5


def test_legacy_mode_and_kernel_size_travel_in_metadata(tmp_path):
    folder = make_model_folder(tmp_path / "legacy", context_mode="legacy", token_mixing_kernel_size=5)
    report = export_gguf(folder, tmp_path / "legacy.gguf", GGUFOptions(outtype="f32"))
    g = open_gguf(report.paths[0])
    assert g.value("liquidmetal.context_mode") == "legacy"
    assert g.value("liquidmetal.token_mixing.kernel_size") == 5
    model, config, _ = load_gguf_model(report.paths[0])
    assert config.context_mode == "legacy" and config.token_mixing_kernel_size == 5
    ref, _ = load_model(folder)
    assert np.abs(logits_of(model) - logits_of(ref)).max() <= 1e-5


def test_liquid_metal_config_without_its_modules_counts_as_llama(tmp_path):
    import json

    from lmexport.modeling.tiny import make_llama_folder

    folder = make_llama_folder(tmp_path / "llama")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="liquid_metal", token_mixing_kernel_size=3, se_reduction=4)
    (folder / "config.json").write_text(json.dumps(config))
    for arch in ("auto", "llama"):
        report = export_gguf(folder, tmp_path / f"{arch}.gguf", GGUFOptions(outtype="f16", arch=arch))
        assert report.arch == "llama" and open_gguf(report.paths[0]).arch == "llama"
