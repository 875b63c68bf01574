"""The transformers config of an exported folder, from its lmexport.json.

transformers has no ``liquid_metal`` model type, so ``AutoConfig`` (and optimum's
``from_pretrained``, which calls it) cannot read the folder's ``config.json``. This
module gives the type a plain ``PretrainedConfig`` subclass and registers it with
``AutoConfig`` through transformers' own extension point (``AutoConfig.register``);
``config_from_manifest`` builds it from the source config recorded in lmexport.json.
"""
from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

from lmexport.manifest import Manifest
from lmexport.config import MODEL_TYPE


class LiquidMetalHFConfig(PretrainedConfig):
    """The source ``config.json`` as attributes (hidden_size, num_hidden_layers, ...).

    Nothing here computes: the graph has the architecture, lmexport.json its inputs
    and outputs. generate() reads the special token ids and ``use_cache``."""

    model_type = MODEL_TYPE


def config_from_manifest(manifest: Manifest) -> LiquidMetalHFConfig:
    source = {k: v for k, v in manifest.config.items() if k != "model_type"}
    tokens = manifest.tokenizer
    for key, value in (("bos_token_id", tokens.get("bos_token_id")), ("pad_token_id", tokens.get("pad_token_id")),
                       ("eos_token_id", tokens.get("eos_token_ids"))):
        if value is not None:     # lmexport.json's ids are the ones the runtime uses
            source[key] = value[0] if isinstance(value, list) and len(value) == 1 else value
    source.setdefault("use_cache", True)
    return LiquidMetalHFConfig(**source)


AutoConfig.register(MODEL_TYPE, LiquidMetalHFConfig, exist_ok=True)
