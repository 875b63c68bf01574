"""``lmexport parity``: run the PyTorch reference and an artifact on the same inputs.

Both are engines (``lmexport.engine``) and the run is the comparison core's loop
(``lmexport.compare.loop``): prefill a batch of left-padded prompts, then ``steps`` decode
steps in which both sides are fed the reference's greedy token (so their states stay
comparable), comparing the logits of every valid position at every step. On failure, the
per-layer module outputs of one prefill are compared to name the first layer and module
that diverges.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmexport.compare.loop import Divergence, compare_calls, localise
from lmexport.compare.metrics import StepMetrics, overall
from lmexport.compare.tolerances import Tolerance, check, get_tolerance
from lmexport.errors import InputError
from lmexport.parity.inputs import BUILTIN_PROMPTS, make_batches, read_prompt_file, tokenize

log = logging.getLogger(__name__)


@dataclass
class ParityReport:
    model: str
    artifact: str
    kind: str
    preset: str
    tolerance: Tolerance
    steps: list[dict] = field(default_factory=list)    # per step: {"step": name, **metrics}
    overall: StepMetrics | None = None
    greedy_match: list[int] = field(default_factory=list)   # per prompt
    failures: list[str] = field(default_factory=list)
    divergence: Divergence | None = None
    per_layer: list[dict] = field(default_factory=list)
    engine: str = "pytorch"            # what computed the artifact's logits
    localised_by: str = "pytorch"      # what computed the artifact's per-layer outputs

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        return {"model": self.model, "artifact": self.artifact, "kind": self.kind, "engine": self.engine,
                "localised_by": self.localised_by, "preset": self.preset,
                "tolerance": self.tolerance.to_json(), "passed": self.passed, "failures": self.failures,
                "overall": self.overall.to_json() if self.overall else None,
                "greedy_match": {"per_prompt": self.greedy_match,
                                 "min": min(self.greedy_match) if self.greedy_match else 0,
                                 "steps": len(self.steps) - 1 if self.steps else 0},
                "steps": self.steps,
                "divergence": self.divergence.to_json() if self.divergence else None,
                "per_layer": self.per_layer}


def run_parity(model_dir: str | Path, artifact: str | Path, *, prompts: list[str] | None = None,
               prompts_file: str | Path | None = None, steps: int = 16, batch_size: int = 3,
               device: str = "cpu", preset: str | None = None, engine: str = "pytorch",
               progress=None) -> ParityReport:
    from lmexport.engine import artifact_kind
    from lmexport.modeling.checkpoint import load_model
    from lmexport.modeling.engine import TorchEngine
    from lmexport.parity.artifacts import open_artifact

    artifact = Path(artifact)
    kind = artifact_kind(artifact)
    if prompts_file is not None:
        prompts = read_prompt_file(prompts_file)
    prompts = list(prompts or BUILTIN_PROMPTS)
    model, ckpt = load_model(model_dir)
    art, localiser = open_artifact(artifact, ckpt, device=device, engine=engine, batch_size=batch_size)
    try:
        preset = preset or art.info.tolerance
        tol = get_tolerance(preset)
        ref = TorchEngine(model_dir, model=model)

        c = ckpt.config
        if steps >= c.max_position_embeddings:
            raise InputError(f"--steps {steps} leaves no room for a prompt in the model's context of "
                             f"{c.max_position_embeddings} tokens", hint="use fewer --steps")
        token_lists = tokenize(prompts, Path(model_dir), c.vocab_size, c.bos_token_id,
                               c.max_position_embeddings - steps)
        pad = c.pad_token_id if c.pad_token_id is not None else 0
        batches = make_batches(token_lists, batch_size, pad)
        report = ParityReport(str(model_dir), str(artifact), kind, preset, tol, engine=art.info.engine,
                              localised_by=localiser.info.engine)
        per_batch: list[list[StepMetrics]] = []
        greedy = []
        for batch in batches:
            metrics, agree = compare_calls(ref, art, batch.input_ids, batch.attention_mask, steps,
                                           on_call=(lambda *_: progress()) if progress else None)
            per_batch.append(metrics)
            greedy.extend(agree.tolist())
        for s in range(steps + 1):
            m = overall([b[s] for b in per_batch])
            report.steps.append({"step": "prefill" if s == 0 else f"decode {s}", **m.to_json()})
        report.overall = overall([m for b in per_batch for m in b])
        report.greedy_match = greedy
        report.failures = check(report.overall, tol)
        if report.failures:
            report.divergence, report.per_layer = localise(ref, localiser, batches[0].input_ids,
                                                           batches[0].attention_mask, tol.hidden_rel,
                                                           c.num_hidden_layers)
    finally:
        art.close()
    return report
