"""The PyTorch reference model (lmexport.modeling) behind transformers' generation, for tests.

A minimal ``PreTrainedModel`` that runs ``LiquidMetalForCausalLM`` with its explicit state
and reorders that state for beam search itself, so transformers' beam search over
PyTorch logits can be compared with the same search over ONNX Runtime logits. Written
independently of ``lmexport.optimum.OnnxState`` on purpose: it shares no state code.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from lmexport.modeling.checkpoint import load_model
from lmexport.optimum import LiquidMetalHFConfig


class TorchPast(NamedTuple):
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    conv: list[torch.Tensor] | None
    context: list[torch.Tensor] | None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv[0][0].shape[2]


class TorchReference(PreTrainedModel, GenerationMixin):
    config_class = LiquidMetalHFConfig
    main_input_name = "input_ids"

    def __init__(self, config: LiquidMetalHFConfig, model_dir: Path):
        super().__init__(config)
        self.inner, _ = load_model(model_dir)
        self.inner.eval()
        self.generation_config = GenerationConfig.from_model_config(config)

    def forward(self, input_ids, attention_mask=None, past_key_values: TorchPast | None = None, use_cache=None,
                **kwargs):   # no position_ids parameter: the model derives them from the mask (pads at 0)
        past = past_key_values or TorchPast(None, None, None)
        with torch.no_grad():
            out = self.inner(input_ids, attention_mask, past_key_values=past.kv, past_conv=past.conv,
                             past_context=past.context)
        return CausalLMOutputWithPast(logits=out.logits, past_key_values=TorchPast(
            out.present_key_values, out.present_conv, out.present_context))

    def _prepare_cache_for_generation(self, *args, **kwargs):
        return None   # the first forward starts from the model's own zero state

    @staticmethod
    def _reorder_cache(past: TorchPast, beam_idx: torch.Tensor) -> TorchPast:
        pick = lambda t: t.index_select(0, beam_idx)  # noqa: E731
        return TorchPast([(pick(k), pick(v)) for k, v in past.kv],
                         None if past.conv is None else [pick(c) for c in past.conv],
                         None if past.context is None else [pick(c) for c in past.context])
