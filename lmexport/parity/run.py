"""``lmexport parity``: run the PyTorch reference and an artifact on the same inputs.

Prefill a batch of left-padded prompts, then ``steps`` decode steps in which both
sides are fed the reference's greedy token (so their states stay comparable),
comparing the logits of every valid position at every step. On failure, the
per-layer module outputs of one prefill are compared to name the first layer
and module that diverges.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmexport.errors import ArtifactError, InputError
from lmexport.modeling.model import LAYER_MODULES
from lmexport.parity.tolerances import Tolerance, check, get_tolerance
from lmexport.runtime.batch import positions_from_mask as positions
from lmexport.parity.inputs import BUILTIN_PROMPTS, Batch, make_batches, read_prompt_file, tokenize
from lmexport.parity.metrics import StepMetrics, compare_logits, greedy_agreement_length, overall, relative_difference

log = logging.getLogger(__name__)


@dataclass
class Divergence:
    where: str                 # "layer 3 se"
    layer: int | None
    module: str
    relative_difference: float
    threshold: float

    def to_json(self) -> dict:
        return dict(self.__dict__)


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


def compare_batch(ref, art, batch: Batch, steps: int, step_metrics: list[list[StepMetrics]],
                  on_step=None) -> np.ndarray:
    """One batch through prefill and ``steps`` decode steps. Returns greedy agreement per row."""
    ids, mask = batch.input_ids, batch.attention_mask
    ref.reset(ids.shape[0])
    art.reset(ids.shape[0])
    pos = positions(mask, ids.shape[1])
    ref_logits, art_logits = ref.step(ids, mask, pos), art.step(ids, mask, pos)
    valid = mask.astype(bool)
    metrics = [compare_logits(ref_logits[valid], art_logits[valid])]
    ref_tokens, art_tokens = [], []
    for i in range(steps):
        nxt_ref = ref_logits[:, -1].argmax(-1)
        ref_tokens.append(nxt_ref)
        art_tokens.append(art_logits[:, -1].argmax(-1))
        if on_step:
            on_step()
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
        tok = nxt_ref[:, None].astype(np.int64)
        pos = positions(mask, 1)
        ref_logits, art_logits = ref.step(tok, mask, pos), art.step(tok, mask, pos)
        metrics.append(compare_logits(ref_logits[:, -1], art_logits[:, -1]))
    step_metrics.append(metrics)
    if not steps:
        return np.zeros(ids.shape[0], dtype=int)
    return greedy_agreement_length(np.stack(ref_tokens, 1), np.stack(art_tokens, 1))


def localise(ref, art, batch: Batch, threshold: float, num_layers: int) -> tuple[Divergence | None, list[dict]]:
    """Compare every layer module's output on one prefill; name the first beyond ``threshold``."""
    ids, mask = batch.input_ids, batch.attention_mask
    pos = positions(mask, ids.shape[1])
    want, got = ref.intermediates(ids, mask, pos), art.intermediates(ids, mask, pos)
    valid = mask.astype(bool)
    table, first = [], None
    for layer in range(num_layers):
        row = {"layer": layer}
        for module in LAYER_MODULES:
            key = f"layers.{layer}.{module}"
            if key not in want or key not in got:
                continue
            rel = relative_difference(want[key][valid], got[key][valid])
            row[module] = rel
            if first is None and rel > threshold:
                first = Divergence(f"layer {layer} {module}", layer, module, rel, threshold)
        table.append(row)
    return first, table


def detect_kind(artifact: Path) -> str:
    if artifact.is_dir():
        return "onnx"
    if artifact.is_file():
        with open(artifact, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return "gguf"
        if artifact.suffix == ".pte":
            return "pte"
        raise ArtifactError(f"{artifact} is neither an exported ONNX folder nor a GGUF file (nor a .pte) "
                            f"(its first bytes are {magic!r})")
    raise ArtifactError(f"artifact {artifact} does not exist")


def run_parity(model_dir: str | Path, artifact: str | Path, *, prompts: list[str] | None = None,
               prompts_file: str | Path | None = None, steps: int = 16, batch_size: int = 3,
               device: str = "cpu", preset: str | None = None, engine: str = "pytorch",
               progress=None) -> ParityReport:
    from lmexport.modeling.checkpoint import load_model
    from lmexport.parity.artifacts import open_artifact

    artifact = Path(artifact)
    kind = detect_kind(artifact)
    if prompts_file is not None:
        prompts = read_prompt_file(prompts_file)
    prompts = list(prompts or BUILTIN_PROMPTS)
    model, ckpt = load_model(model_dir)
    art, default_preset = open_artifact(kind, artifact, ckpt, device=device, engine=engine, batch_size=batch_size)
    preset = preset or default_preset
    tol = get_tolerance(preset)
    from lmexport.parity.backends import TorchBackend
    ref = TorchBackend(model)

    c = ckpt.config
    if steps >= c.max_position_embeddings:
        raise InputError(f"--steps {steps} leaves no room for a prompt in the model's context of "
                            f"{c.max_position_embeddings} tokens", hint="use fewer --steps")
    token_lists = tokenize(prompts, Path(model_dir), c.vocab_size, c.bos_token_id,
                           c.max_position_embeddings - steps)
    pad = c.pad_token_id if c.pad_token_id is not None else 0
    batches = make_batches(token_lists, batch_size, pad)
    report = ParityReport(str(model_dir), str(artifact), kind, preset, tol)
    if kind == "onnx":
        report.engine = report.localised_by = "onnxruntime"
    elif kind == "pte":
        report.engine = report.localised_by = "executorch"
    elif engine == "llama.cpp":
        report.engine, report.localised_by = "llama.cpp", "pytorch rebuild of the GGUF"
    else:
        report.engine = report.localised_by = "pytorch rebuild of the GGUF"
    per_batch: list[list[StepMetrics]] = []
    greedy = []
    for batch in batches:
        greedy.extend(compare_batch(ref, art, batch, steps, per_batch, progress).tolist())
    n_steps = steps + 1
    for s in range(n_steps):
        m = overall([b[s] for b in per_batch])
        report.steps.append({"step": "prefill" if s == 0 else f"decode {s}", **m.to_json()})
    report.overall = overall([m for b in per_batch for m in b])
    report.greedy_match = greedy
    report.failures = check(report.overall, tol)
    if report.failures:
        report.divergence, report.per_layer = localise(ref, art, batches[0], tol.hidden_rel, c.num_hidden_layers)
    if hasattr(art, "close"):
        art.close()
    return report
