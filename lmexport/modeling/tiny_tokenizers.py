"""Tokenizer folders of each family lmexport supports, trained in-process on small text (no download).

For the tokenizer-equality tests: every folder is read by transformers, by
lmexport's loader and (through a ``--arch llama`` GGUF) by llama.cpp, and all
three must give the same ids. ``write_tokenizer_folders(root)`` writes them all:

==================  ========================================================================
``gpt2-nobos``      byte-level BPE (GPT-2 pre-tokenizer); no post-processor; tokenizer_config
                    has a ``bos_token`` but no ``add_bos_token`` (the runtime used to add BOS)
``gpt2-bos``        the same with a post-processor that prepends ``<s>``, add_bos_token true
``llama3-bpe``      Llama 3 style: Split on Llama 3's regex, ByteLevel without regex, BPE with
                    ignore_merges; BOS by post-processor
``smollm-digits``   SmolLM style: single digits split, then GPT-2's ByteLevel
``sp-model``        SentencePiece BPE (Llama options: byte fallback, split digits, identity
                    normalisation, dummy prefix) as ``tokenizer.model``, LlamaTokenizer, add BOS
``sp-model-nobos``  the same with add_bos_token false
``sp-json``         ``sp-model`` as transformers saves it: tokenizer.json only (no .model)
==================  ========================================================================
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmexport.modeling.tiny import CHAT_TEMPLATE, SAMPLE_TEXT, SPECIAL_TOKENS, make_tokenizer, write_tokenizer_files

# Llama 3's Split regex, as its tokenizer.json writes it (the same constant the GGUF side identifies).
from lmexport.formats.gguf import LLAMA3_REGEX  # noqa: E402

TRAIN_TEXT = SAMPLE_TEXT + ("café naïve Ångström   spaces  and\ttabs 2024 12345 東京 🙂\n"
                            "    indented = [1, 2, 3]  # comment\n")
# What the equality tests tokenize: code, accents, CJK, emoji, runs of spaces, digits.
MIXED_TEXTS = (
    "def f(x):\n    return x  +  1.25e3  # café naïve Ångström\n\n\t東京 🙂🚀  12345678 "
    "don't   CAPS 'll\r\n end",
    "   leading spaces, trailing   ",
    "class Point:\n\tdef __init__(self, x=0, y=-1):\n\t\tself.x, self.y = x, y  # 点 ✓\n",
    "9876543210 0.5 1e-9 ½ ² ١٢٣",
    "émoji 👩‍💻 and ZWJ, ß, İ, ﬁ ligature; Ελληνικά; русский; 한국어; हिन्दी",
    "",
)
FAMILIES = ("gpt2-nobos", "gpt2-bos", "llama3-bpe", "smollm-digits", "sp-model", "sp-model-nobos", "sp-json")


def byte_level_bpe(pre, *, ignore_merges: bool = False, vocab_size: int = 384) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>", ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TRAIN_TEXT] * 4, trainer=trainer)
    return tok


def _sentencepiece_model(vocab_size: int = 400) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAIN_TEXT.splitlines() * 20), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", hard_vocab_limit=False, byte_fallback=True, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1)
    return buf.getvalue()


def _sentencepiece_folder(folder: Path, model: bytes, add_bos: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model)
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": add_bos, "add_eos_token": False, "chat_template": CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def write_tokenizer_folder(family: str, folder: str | Path) -> Path:
    """One tokenizer folder of ``family`` (see the module docstring)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if family in ("gpt2-nobos", "gpt2-bos"):
        write_tokenizer_files(make_tokenizer(text=TRAIN_TEXT), folder, add_bos=family == "gpt2-bos")
        if family == "gpt2-nobos":     # the bug's folder: a bos_token, no add_bos_token
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            del config["add_bos_token"], config["add_eos_token"]
            (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    elif family == "llama3-bpe":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), "isolated"),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        write_tokenizer_files(byte_level_bpe(pre, ignore_merges=True), folder, add_bos=True)
    elif family == "smollm-digits":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
        write_tokenizer_files(byte_level_bpe(pre), folder, add_bos=False)
    elif family in ("sp-model", "sp-model-nobos"):
        _sentencepiece_folder(folder, _sentencepiece_model(), add_bos=family == "sp-model")
    elif family == "sp-json":
        from transformers import AutoTokenizer

        source = folder / ".sp-model"
        _sentencepiece_folder(source, _sentencepiece_model(), add_bos=True)
        AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(folder))
        shutil.rmtree(source)
    else:
        raise ValueError(f"unknown tokenizer family {family!r}; known: {', '.join(FAMILIES)}")
    return folder


def write_tokenizer_folders(root: str | Path) -> dict[str, Path]:
    return {family: write_tokenizer_folder(family, Path(root) / family) for family in FAMILIES}


def llama_folder_with_tokenizer(tokenizer_dir: str | Path, folder: str | Path, *, seed: int = 0) -> Path:
    """A tiny random Hugging Face Llama checkpoint (transformers' writer) around ``tokenizer_dir``'s files,
    its embedding as long as the tokenizer's vocabulary; for ``lmexport gguf --arch llama``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmexport.modeling.checkpoint import TOKENIZER_FILES
    from lmexport.modeling.tokenizer import checkpoint_tokenizer

    tokenizer_dir, folder = Path(tokenizer_dir), Path(folder)
    tok = checkpoint_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=(tok.eos_token_ids or [None])[0],
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, folder / name)
    return folder
