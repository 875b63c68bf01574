"""Plain Llama -> Liquid-Metal conversion (``lmexport convert``).

The Llama tensors are kept as they are; the three new modules start near identity
(ARCHITECTURE.md, "Checkpoints"):

* token mixing: the tap on the current token is 1, every other tap and the bias 0,
  so the convolution passes its input through exactly;
* adaptive norms: gate weight 0 and gate bias ``gate_bias`` (default 8.0), so every
  gate is sigmoid(8) = 0.99966 whatever the context — saturated open, yet still
  trainable (a larger bias gives a smaller distance and a flatter gradient);
* SE: fc1 zero, fc2 weight zero and fc2 bias ``gate_bias``: the same constant gate.

The converted model therefore scales each norm output and each MLP output by
sigmoid(gate_bias); the resulting logit distance is measured against
transformers' ``LlamaForCausalLM`` on a probe prompt and reported.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmexport.atomic import check_output_path
from lmexport.errors import InputError
from lmexport.modeling.folder_files import verify_files
from lmexport.modeling.checkpoint import Checkpoint, build_model, read_checkpoint, save_checkpoint
from lmexport.config import LiquidMetalConfig
from lmexport.modeling.model import LiquidMetalForCausalLM
from lmexport.tensor_names import LM_HEAD, TOKEN_CONV, expected_tensors

log = logging.getLogger(__name__)
MAX_GATE_BIAS = 100.0
PROBE_TEXT = "The Liquid-Metal decoder mixes tokens, then attends to them."


@dataclass(frozen=True)
class ConvertOptions:
    kernel_size: int = 3
    se_reduction: int = 16
    context_mode: str = "streaming"
    gate_bias: float = 8.0

    def __post_init__(self) -> None:
        bias = self.gate_bias
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias) \
                or abs(bias) > MAX_GATE_BIAS:
            raise InputError(f"--gate-bias must be a finite number in -{MAX_GATE_BIAS:g}..{MAX_GATE_BIAS:g}, "
                             f"got {bias!r}", hint="the default 8.0 holds the gates open")


@dataclass(frozen=True)
class ConvertReport:
    max_abs_logit_diff: float
    probe_tokens: int
    gate: float


def identity_module_tensors(config: LiquidMetalConfig, gate_bias: float) -> dict[str, torch.Tensor]:
    """The new modules' tensors, at (near) identity, for every layer."""
    out = {}
    k = config.token_mixing_kernel_size
    current_tap = k - 1 if config.streaming else k // 2   # the tap that sees token t itself
    for ref in expected_tensors(config):
        if ref.entry.llama:
            continue
        shape = ref.shape(config)
        t = torch.zeros(shape)
        if ref.entry is TOKEN_CONV:
            t[:, 0, current_tap] = 1.0
        elif ref.entry.sigmoid_bias:
            t.fill_(gate_bias)
        out[ref.name] = t
    return out


def convert_tensors(llama_tensors: dict[str, torch.Tensor], config: LiquidMetalConfig,
                    gate_bias: float) -> LiquidMetalForCausalLM:
    tensors = {n: t.float() for n, t in llama_tensors.items()}
    tensors.update(identity_module_tensors(config, gate_bias))
    return build_model(config, tensors)


def liquid_config_from_llama(raw: dict, options: ConvertOptions) -> LiquidMetalConfig:
    raw = {k: v for k, v in raw.items() if k not in ("auto_map",)}
    raw.update(model_type="liquid_metal", token_mixing_kernel_size=options.kernel_size,
               se_reduction=options.se_reduction, context_mode=options.context_mode)
    return LiquidMetalConfig.from_dict(raw)


def hf_llama_reference(config: LiquidMetalConfig, tensors: dict[str, torch.Tensor]):
    """transformers' LlamaForCausalLM with the same weights: the oracle we did not write."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim, max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_word_embeddings, attention_bias=False, mlp_bias=False)
    hf_config.rope_parameters = {"rope_type": "default", "rope_theta": config.rope_theta}
    model = LlamaForCausalLM(hf_config)
    state = {n: t.float() for n, t in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == LM_HEAD.name)]
    if missing or unexpected:
        raise RuntimeError(f"transformers Llama did not take the weights: missing {missing}, extra {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def probe_ids(folder: Path, vocab_size: int) -> torch.Tensor:
    from lmexport.modeling.tokenizer import checkpoint_tokenizer, has_tokenizer

    if has_tokenizer(folder):
        ids = [i for i in checkpoint_tokenizer(folder).encode(PROBE_TEXT) if i < vocab_size]
        if ids:
            return torch.tensor([ids])
    return (torch.arange(16) * 7919 % vocab_size).unsqueeze(0)


def measure_distance(ckpt: Checkpoint, converted: LiquidMetalForCausalLM, gate_bias: float) -> ConvertReport:
    ids = probe_ids(ckpt.path, converted.config.vocab_size)
    reference = hf_llama_reference(converted.config, ckpt.tensors)
    with torch.no_grad():
        want = reference(input_ids=ids).logits.float()
        got = converted(ids).logits
    diff = float((want - got).abs().max())
    return ConvertReport(diff, ids.shape[1], float(torch.sigmoid(torch.tensor(gate_bias))))


def convert(llama_dir: str | Path, out_dir: str | Path, options: ConvertOptions = ConvertOptions(),
            *, overwrite: bool = False, allow_pickle: bool = False) -> ConvertReport:
    """Convert a plain Llama folder into a Liquid-Metal folder and report the logit distance."""
    check_output_path(Path(out_dir).absolute(), overwrite, directory=True, inputs=[llama_dir])
    ckpt = read_checkpoint(llama_dir, allow_pickle=allow_pickle, llama_only=True)
    verify_files(ckpt.tokenizer_files())
    config = liquid_config_from_llama(ckpt.raw_config, options)
    ckpt.config = config
    model = convert_tensors(ckpt.tensors, config, options.gate_bias)
    report = measure_distance(ckpt, model, options.gate_bias)
    log.info("probe of %d tokens: largest |logit difference| vs the original Llama = %.3g",
             report.probe_tokens, report.max_abs_logit_diff)
    config = config.replace(extra={**config.extra, "lmexport_conversion": {
        "source": str(Path(llama_dir).name), "gate_bias": options.gate_bias,
        "probe_max_abs_logit_diff": report.max_abs_logit_diff}})
    model.config = config
    save_checkpoint(model, out_dir, tokenizer_from=ckpt.path, overwrite=overwrite)
    return report
