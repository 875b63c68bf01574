"""``ORTModelForLiquidMetal``: optimum-onnx's ORTModelForCausalLM for an lmexport folder.

What it changes in its parent, and why:

* ``from_pretrained`` reads the folder's lmexport.json first (an ``ArtifactError`` for
  a folder that is not one), builds the transformers config from it and loads the
  graph file it names.
* ``forward`` feeds every graph input by its role in lmexport.json: ``input_ids``,
  ``attention_mask`` (past and new tokens), ``position_ids`` (when not given: from the
  mask, padding at 0, as ``lmexport generate`` does) and each state input from the
  ``OnnxState`` that the previous call returned (zeros on the first call). The parent
  knows only ``.key``/``.value`` names and fails on ``past_conv.0``.
* ``_reorder_cache`` reorders that state for beam search.

The graph runs with ``InferenceSession.run`` on host arrays (the state stays torch CPU
tensors that share memory with them); optimum's IO binding is not used.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from optimum.onnxruntime import ORTModelForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from lmexport.errors import ArtifactError, GenerationError, InputError
from lmexport.manifest import MANIFEST_FILE, Manifest, check_files
from lmexport.manifest_schema import IO_ROLES
from lmexport.optimum.config import config_from_manifest
from lmexport.optimum.state import OnnxState
from lmexport.runtime.batch import positions_from_mask

log = logging.getLogger(__name__)
FEED_ROLES = IO_ROLES


class ORTModelForLiquidMetal(ORTModelForCausalLM):
    """An lmexport ONNX folder on ONNX Runtime with transformers' generation (greedy, sampling,
    beam search, streamers). ``from_pretrained(folder, provider=..., session_options=...)``."""

    def __init__(self, *, config=None, session=None, use_io_binding=None, generation_config=None,
                 model_save_dir=None):
        super().__init__(config=config, session=session, use_io_binding=False,
                         generation_config=generation_config, model_save_dir=model_save_dir)
        if use_io_binding:
            log.warning("ORTModelForLiquidMetal runs without IO binding; use_io_binding=True is ignored")
        self.folder = Path(self.path).parent
        self.manifest = Manifest.read(self.folder)
        declared = {s.name for s in self.manifest.inputs}, {s.name for s in self.manifest.outputs}
        actual = set(self.input_names), set(self.output_names)
        if declared != actual:
            diff = sorted((declared[0] ^ actual[0]) | (declared[1] ^ actual[1]))
            raise ArtifactError(f"{self.path} does not have the inputs and outputs its lmexport.json declares "
                                f"(differing: {', '.join(diff[:8])})", hint="re-export the folder with lmexport onnx")
        self.states = self.manifest.state_inputs()
        self.feed_names = {role: self.manifest.input(role).name for role in FEED_ROLES}
        self.logits_name = self.manifest.output("logits").name
        self.graph_outputs = [o.name for o in session.get_outputs()]
        self.context_length = int(self.manifest.config.get("max_position_embeddings", 2048))

    # ------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model_id: str | Path, *, config=None, export: bool = False, **kwargs):
        """Load an lmexport ONNX folder (a local path). ``kwargs`` are optimum's:
        ``provider``, ``providers``, ``session_options``, ``generation_config``, ``use_cache``..."""
        if export:
            raise InputError("export=True is optimum's exporter, which does not know this model",
                                  hint="export with `lmexport onnx` and load the folder it writes")
        folder = Path(model_id)
        manifest = Manifest.read(folder)
        check_files(folder, manifest)
        kwargs.setdefault("file_name", manifest.model_file)
        return super().from_pretrained(folder, config=config or config_from_manifest(manifest), **kwargs)

    def _save_config(self, save_directory):
        """Only the generation config: config.json stays the exporter's, as lmexport.json lists it."""
        self.generation_config.save_pretrained(save_directory)

    def _save_pretrained(self, save_directory: str | Path):
        """Copy the folder as lmexport.json lists it (graph, weights, config, tokenizer)."""
        save_directory = Path(save_directory)
        for name in [MANIFEST_FILE, *self.manifest.files]:
            shutil.copyfile(self.folder / name, save_directory / name)

    # ------------------------------------------------------------ calls
    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor | None = None,
                past_key_values: OnnxState | None = None, position_ids: torch.LongTensor | None = None,
                use_cache: bool | None = None, **kwargs) -> CausalLMOutputWithPast:
        """One graph call: ``input_ids`` [B, T]; ``attention_mask`` [B, P+T] over the past and
        these tokens; ``past_key_values`` the OnnxState of the previous call or None."""
        use_cache = self.config.use_cache if use_cache is None else use_cache
        batch, length = input_ids.shape
        if past_key_values is None:
            past_key_values = OnnxState.initial(self.states, batch)
        elif not isinstance(past_key_values, OnnxState):
            raise GenerationError(f"past_key_values is a {type(past_key_values).__name__}; this model takes the "
                                  "OnnxState its previous call returned, or None")
        total = past_key_values.get_seq_length() + length
        if total > self.context_length:
            raise GenerationError(f"{total} tokens (past and new) exceed the model's context of {self.context_length}",
                                  hint="shorten the prompt or lower max_new_tokens")
        ids = input_ids.detach().cpu().numpy().astype(np.int64, copy=False)
        if attention_mask is None:
            mask = np.ones((batch, total), dtype=np.int64)
        else:
            mask = attention_mask.detach().cpu().numpy().astype(np.int64, copy=False)
        if mask.shape != (batch, total):
            raise GenerationError(f"attention_mask has shape {list(mask.shape)}; it must cover the "
                                  f"{total - length} past and {length} new tokens: [{batch}, {total}]")
        if position_ids is None:
            positions = positions_from_mask(mask, length)
        else:
            positions = position_ids.detach().cpu().numpy().astype(np.int64, copy=False)
        feeds = {self.feed_names["input_ids"]: np.ascontiguousarray(ids),
                 self.feed_names["attention_mask"]: np.ascontiguousarray(mask),
                 self.feed_names["position_ids"]: np.ascontiguousarray(positions),
                 **past_key_values.feeds()}
        outputs = dict(zip(self.graph_outputs, self.session.run(None, feeds)))
        logits = torch.from_numpy(outputs[self.logits_name]).to(input_ids.device)   # generate() cats on that device
        past = OnnxState.from_outputs(self.states, outputs) if use_cache else None
        return CausalLMOutputWithPast(logits=logits, past_key_values=past)

    # ------------------------------------------------------------ generation hooks
    def prepare_inputs_for_generation(self, *args, **kwargs):
        """transformers' preparation, less its position ids (padding at 1): ``forward`` takes them
        from the mask with padding at 0, so a batch gets exactly what ``lmexport generate`` feeds."""
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        inputs["position_ids"] = None
        return inputs

    @staticmethod
    def _reorder_cache(past_key_values: OnnxState, beam_idx: torch.LongTensor) -> OnnxState:
        return past_key_values.reorder(beam_idx)
