"""Tiny Liquid-Metal models built in-process: for tests, examples and smoke runs.

``make_tokenizer`` trains a small byte-level BPE tokenizer with ``tokenizers`` on
text given here (no download); ``make_model_folder`` writes a complete
Hugging Face-style folder (config, safetensors, tokenizer) with random weights.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
SAMPLE_TEXT = (
    "def add(a, b):\n    return a + b\n\n"
    "The quick brown fox jumps over the lazy dog. Liquid metal flows through the pipe.\n"
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n"
    "Return the sum of the numbers. Raise ValueError if the list is empty.\n"
)


def make_tokenizer(vocab_size: int = 384, text: str = SAMPLE_TEXT) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text] * 4, trainer=trainer)
    return tok


def write_tokenizer_files(tok: Tokenizer, folder: Path, chat_template: str | None = CHAT_TEMPLATE, *,
                          add_bos: bool = False) -> None:
    """tokenizer.json and tokenizer_config.json that agree on the BOS rule: with ``add_bos`` the
    post-processor prepends ``<s>`` and the config says ``add_bos_token: true``; without, neither does
    (the tiny models, like examples/train_tiny.py's, are trained on text without BOS)."""
    folder = Path(folder)
    if add_bos:
        bos = SPECIAL_TOKENS[1]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": add_bos, "add_eos_token": False,
              "model_max_length": 2048}
    if chat_template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def tiny_config_dict(vocab_size: int, **overrides) -> dict:
    cfg = {"model_type": "liquid_metal", "vocab_size": vocab_size, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
           "pad_token_id": 3, "token_mixing_kernel_size": 3, "se_reduction": 4, "context_mode": "streaming"}
    cfg.update(overrides)
    return cfg


def make_model_folder(folder: str | Path, *, seed: int = 0, overwrite: bool = False,
                      vocab_size: int = 384, **config_overrides) -> Path:
    """A complete random Liquid-Metal checkpoint folder (needs the export extra: torch)."""
    from lmexport.modeling.checkpoint import save_checkpoint
    from lmexport.config import LiquidMetalConfig
    from lmexport.modeling.model import LiquidMetalForCausalLM, init_random
    import torch

    tok = make_tokenizer(vocab_size)
    config = LiquidMetalConfig.from_dict(tiny_config_dict(tok.get_vocab_size(), **config_overrides))
    torch.manual_seed(seed)
    model = init_random(LiquidMetalForCausalLM(config), seed=seed)
    folder = Path(folder)
    save_checkpoint(model, folder, overwrite=overwrite)
    write_tokenizer_files(tok, folder)
    return folder


def make_llama_folder(folder: str | Path, *, seed: int = 0, vocab_size: int = 384, **config_overrides) -> Path:
    """A plain Hugging Face Llama checkpoint (transformers' own writer) with a tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(vocab_size)
    cfg = tiny_config_dict(tok.get_vocab_size(), **config_overrides)
    for key in ("token_mixing_kernel_size", "se_reduction", "context_mode"):
        cfg.pop(key)
    cfg["model_type"] = "llama"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "model_type"}))
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer_files(tok, folder)
    return folder
