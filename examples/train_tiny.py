#!/usr/bin/env python
"""Train a tiny Liquid-Metal model from scratch on the Python standard library's source.

The corpus is the ``.py`` source (code and docstrings) of the running interpreter's
standard library, read offline; it is covered by the PSF License Agreement, which
permits derived works. A fixed set of modules (``HELDOUT_MODULES``) is held out:
their text is written to ``heldout.txt`` in the output folder and the model card's
perplexity is measured on that file with ``lmexport.perplexity.perplexity_torch``, so
tests need the folder only, not this interpreter's stdlib.

Deterministic for a given ``--seed``, Python version and thread count (2 by default).

    python examples/train_tiny.py --out examples/liquid-metal-tiny --overwrite
    python examples/train_tiny.py --smoke --out /tmp/smoke      # a few seconds, for the tests

Outputs (a Hugging Face-style folder): config.json, model.safetensors, tokenizer.json,
tokenizer_config.json (with a chat template), README.md (model card), metrics.json,
heldout.txt, loss_curve.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Sleep, do not spin, while waiting at OpenMP barriers: on a shared 2-core machine a
# spinning thread pool slows a step down up to 10x. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without install

from lmexport.modeling.checkpoint import save_checkpoint  # noqa: E402
from lmexport.config import LiquidMetalConfig  # noqa: E402
from lmexport.modeling.model import LiquidMetalForCausalLM  # noqa: E402
from lmexport.modeling.engine import TorchEngine  # noqa: E402
from lmexport.perplexity import engine_scorer, perplexity  # noqa: E402
from lmexport.modeling.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, write_tokenizer_files  # noqa: E402

log = logging.getLogger("train_tiny")

# Stdlib folders left out: tests, GUI demos, vendored packages, codec tables.
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
                           "turtledemo", "ensurepip", "encodings", "__pycache__", "venv"})
# Held-out modules (paths relative to the stdlib folder), never trained on.
HELDOUT_MODULES = ("textwrap.py", "fnmatch.py", "colorsys.py", "bisect.py", "shlex.py")
HELDOUT_MAX_BYTES = 32_000
# Prompts of the greedy samples in the model card.
SAMPLE_PROMPTS = ('def read_file(path):\n    """', '"""Utilities for', "    if not isinstance(")
EOS = "</s>"


@dataclass(frozen=True)
class Preset:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    corpus_limit: int | None     # bytes of training text, None = all
    eval_every: int


PRESETS = {
    # ~1.5M parameters; hidden 128 and intermediate 384 are multiples of 64 and 32 (quantiser blocks).
    "tiny": Preset(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, seq_len=256, batch_size=16,
                   steps=600, lr=3e-3, corpus_limit=None, eval_every=50),
    # For the test suite: seconds, not minutes.
    "smoke": Preset(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, seq_len=64, batch_size=8,
                    steps=30, lr=3e-3, corpus_limit=150_000, eval_every=10),
}


# ---------------------------------------------------------------------------- corpus
@dataclass(frozen=True)
class Corpus:
    train_docs: list[str]
    heldout_text: str
    train_files: list[str]
    files_sha256: str        # over the sorted list of train + held-out relative paths
    stdlib: str
    python_version: str


def stdlib_files(root: Path) -> list[Path]:
    """Every .py file under ``root`` outside EXCLUDED_DIRS, sorted by relative path."""
    files = [p for p in root.rglob("*.py")
             if not EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")


def build_corpus(limit_bytes: int | None) -> Corpus:
    """Train documents (one per file) and held-out text from the stdlib, deterministically.

    With ``limit_bytes`` the training files are taken in the order of the sha256 of
    their relative path (a fixed shuffle independent of the seed) until the limit.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    rel = {p: p.relative_to(root).as_posix() for p in files}
    missing = [m for m in HELDOUT_MODULES if not (root / m).is_file()]
    if missing:
        raise SystemExit(f"held-out module(s) {missing} not found under {root}")
    heldout = "\n\n".join(_read(root / m).strip("\n") for m in HELDOUT_MODULES)
    heldout = heldout[:heldout.rfind("\n", 0, HELDOUT_MAX_BYTES) + 1] if len(heldout) > HELDOUT_MAX_BYTES else heldout
    train = [p for p in files if rel[p] not in HELDOUT_MODULES]
    train.sort(key=lambda p: hashlib.sha256(rel[p].encode()).hexdigest())
    docs, names, size = [], [], 0
    for p in train:
        text = _read(p)
        if not text.strip():
            continue
        if limit_bytes is not None and size + len(text) > limit_bytes and docs:
            break
        docs.append(text)
        names.append(rel[p])
        size += len(text)
    listing = "\n".join(sorted(names) + ["--heldout--"] + list(HELDOUT_MODULES))
    return Corpus(docs, heldout, names, hashlib.sha256(listing.encode()).hexdigest(), str(root),
                  platform.python_version())


def train_tokenizer(docs: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (as ``lmexport.modeling.tiny.make_tokenizer``) trained on the training documents."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def encode_docs(tok: Tokenizer, docs: list[str]) -> torch.Tensor:
    """One stream of ids: documents joined by the end-of-sequence token."""
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------- model
def make_config(preset: Preset, vocab_size: int, tok: Tokenizer) -> LiquidMetalConfig:
    return LiquidMetalConfig.from_dict({
        "model_type": "liquid_metal", "vocab_size": vocab_size, "hidden_size": preset.hidden_size,
        "intermediate_size": preset.intermediate_size, "num_hidden_layers": preset.num_hidden_layers,
        "num_attention_heads": preset.num_attention_heads, "num_key_value_heads": preset.num_key_value_heads,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "bos_token_id": tok.token_to_id("<s>"),
        "eos_token_id": tok.token_to_id(EOS), "pad_token_id": tok.token_to_id("<pad>"),
        "token_mixing_kernel_size": 3, "se_reduction": 8, "context_mode": "streaming"})


def init_weights(model: LiquidMetalForCausalLM, seed: int) -> None:
    """GPT-2 style init for the Llama parts; the new modules start near identity, trainable.

    Gates (adaptive-norm gate, SE fc2) get a bias of 2 (sigmoid ~0.88) and small weights,
    the convolution passes the current token through plus small noise; residual output
    projections are scaled by 1/sqrt(2 * layers).
    """
    gen = torch.Generator().manual_seed(seed)
    n_layers = model.config.num_hidden_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("token_mixing.conv.weight"):
                p.copy_(0.02 * noise)
                p[:, 0, -1] += 1.0
            elif name.endswith(".bias"):
                p.fill_(2.0 if (name.endswith("layernorm.gate.bias") or name.endswith("se.fc2.bias")) else 0.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.copy_(0.02 / math.sqrt(2 * n_layers) * noise)
            else:
                p.copy_(0.02 * noise)


def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10% of ``lr``."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def sample_batch(data: torch.Tensor, batch: int, seq: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
    chunk = torch.stack([data[s:s + seq + 1] for s in starts.tolist()])   # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def eval_loss(model: LiquidMetalForCausalLM, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    total = sum(float(F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())) for x, y in batches)
    model.train()
    return total / len(batches)


@torch.no_grad()
def greedy(model: LiquidMetalForCausalLM, tok: Tokenizer, prompt: str, new_tokens: int) -> str:
    """Greedy continuation with a full forward per token (short texts only)."""
    model.eval()
    ids = tok.encode(prompt).ids
    eos = tok.token_to_id(EOS)
    window = model.config.max_position_embeddings
    for _ in range(new_tokens):
        logits = model(torch.tensor([ids[-window:]])).logits[0, -1]
        nxt = int(logits.argmax())
        if nxt == eos:
            break
        ids.append(nxt)
    return tok.decode(ids)


def unigram_perplexity(train_ids: torch.Tensor, heldout_ids: list[int], vocab_size: int) -> float:
    """Baseline: add-one smoothed unigram model of the training ids, on the held-out ids[1:]."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    logp = torch.log(counts / counts.sum())
    return math.exp(-float(logp[torch.tensor(heldout_ids[1:])].mean()))


# ---------------------------------------------------------------------------- training
def train(out: Path, preset: Preset, *, seed: int = 0, max_minutes: float = 18.0, threads: int = 2,
          stop_after: int | None = None,
          overwrite: bool = False, eval_window: int = 256, eval_stride: int = 128,
          progress: bool = True, command: str = "") -> dict:
    """Build the corpus and tokenizer, train, evaluate and write the model folder; returns the metrics.

    The learning-rate schedule spans ``preset.steps``. Training stops after ``stop_after``
    steps if given (same schedule, so a run cut short by ``max_minutes`` is reproduced
    exactly by passing its step count here), or when ``max_minutes`` have passed.
    """
    t_start = time.time()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    corpus = build_corpus(preset.corpus_limit)
    log.info("corpus: %d training files, %.2f MB; held-out %d bytes", len(corpus.train_files),
             sum(map(len, corpus.train_docs)) / 1e6, len(corpus.heldout_text))
    tok = train_tokenizer(corpus.train_docs, preset.vocab_size)
    vocab = tok.get_vocab_size()
    data = encode_docs(tok, corpus.train_docs)
    heldout_ids = tok.encode(corpus.heldout_text).ids
    log.info("tokens: %d train, %d held-out, vocab %d", len(data), len(heldout_ids), vocab)

    config = make_config(preset, vocab, tok)
    model = LiquidMetalForCausalLM(config)
    init_weights(model, seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %d parameters", n_params)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=preset.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(seed)
    held_stream = torch.tensor(heldout_ids, dtype=torch.long)
    eval_seq = min(preset.seq_len, len(held_stream) - 2)
    eval_batches = [sample_batch(held_stream, 4, eval_seq, torch.Generator().manual_seed(1000 + i))
                    for i in range(2)]

    train_losses: list[float] = []
    eval_points: list[tuple[int, float]] = []
    deadline = t_start + max_minutes * 60.0
    stopped_early = False
    t_train = time.time()
    bar = tqdm(range(preset.steps), desc="train", unit="step", disable=not progress, mininterval=2.0)
    model.train()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, preset.steps, preset.lr)
        x, y = sample_batch(data, preset.batch_size, preset.seq_len, gen)
        loss = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_losses.append(loss.item())
        if (step + 1) % preset.eval_every == 0 or step + 1 == preset.steps:
            eval_points.append((step + 1, eval_loss(model, eval_batches)))
            bar.set_postfix(loss=f"{train_losses[-1]:.3f}", heldout=f"{eval_points[-1][1]:.3f}")
            log.debug("step %d loss %.4f heldout %.4f", step + 1, train_losses[-1], eval_points[-1][1])
        if stop_after is not None and step + 1 >= stop_after:
            break
        if time.time() > deadline:
            log.warning("stopping at step %d: --max-minutes %.1f reached", step + 1, max_minutes)
            stopped_early = True
            break
    bar.close()
    train_seconds = time.time() - t_train

    model.eval()
    result = perplexity(engine_scorer(TorchEngine(model=model)), heldout_ids, eval_window, eval_stride)
    tail = train_losses[-min(50, len(train_losses)):]
    metrics = {
        "heldout_perplexity": result.perplexity,
        "heldout_mean_nll": result.mean_nll,
        "heldout_tokens": result.n_tokens,
        "perplexity_window": eval_window,
        "perplexity_stride": eval_stride,
        "unigram_perplexity": unigram_perplexity(data, heldout_ids, vocab),
        "initial_train_loss": train_losses[0],
        "final_train_loss": sum(tail) / len(tail),
        "final_train_loss_window": len(tail),
        "steps": len(train_losses),
        "planned_steps": preset.steps,
        "stopped_early": stopped_early,
        "reproduce_stop_after": len(train_losses) if len(train_losses) < preset.steps else None,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": None,
        "tokens_seen": len(train_losses) * preset.batch_size * preset.seq_len,
        "train_tokens": len(data),
        "parameters": n_params,
        "seed": seed,
        "threads": threads,
        "preset": preset.__dict__,
        "python_version": corpus.python_version,
        "torch_version": torch.__version__,
        "corpus_files": len(corpus.train_files),
        "corpus_bytes": sum(map(len, corpus.train_docs)),
        "corpus_files_sha256": corpus.files_sha256,
        "heldout_modules": list(HELDOUT_MODULES),
        "command": command,
        "train_loss_history": [round(v, 4) for v in train_losses],
        "heldout_loss_history": [[s, round(v, 4)] for s, v in eval_points],
    }
    samples = {p: greedy(model, tok, p, 60 if preset.steps > 100 else 10) for p in SAMPLE_PROMPTS}
    metrics["samples"] = samples
    metrics["total_seconds"] = round(time.time() - t_start, 1)
    log.info("held-out perplexity %.3f (unigram %.1f), final train loss %.3f, %d s",
             result.perplexity, metrics["unigram_perplexity"], metrics["final_train_loss"], train_seconds)

    with tempfile.TemporaryDirectory() as tmp:
        # no BOS: encode_docs joins documents with EOS only and perplexity is scored without BOS,
        # so the tokenizer files say so (tokenizer.json adds nothing, add_bos_token: false)
        write_tokenizer_files(tok, Path(tmp), chat_template=CHAT_TEMPLATE, add_bos=False)
        save_checkpoint(model, out, tokenizer_from=Path(tmp), overwrite=overwrite, extra_files={
            "metrics.json": json.dumps(metrics, indent=2) + "\n",
            "heldout.txt": corpus.heldout_text,
            "README.md": model_card(metrics, config, samples),
        })
    plot_losses(train_losses, eval_points, out / "loss_curve.png")
    return metrics


def plot_losses(train_losses: list[float], eval_points: list[tuple[int, float]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(1, len(train_losses) // 100)
    smooth = [sum(train_losses[max(0, i - k + 1):i + 1]) / len(train_losses[max(0, i - k + 1):i + 1])
              for i in range(len(train_losses))]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(range(1, len(train_losses) + 1), train_losses, color="tab:blue", alpha=0.25, lw=0.8)
    ax.plot(range(1, len(smooth) + 1), smooth, color="tab:blue", label=f"train (mean of {k})")
    if eval_points:
        ax.plot(*zip(*eval_points), "o-", color="tab:orange", ms=3, label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("liquid-metal-tiny")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_card(m: dict, config: LiquidMetalConfig, samples: dict[str, str]) -> str:
    repro = m["command"]
    stop_note = ""
    if m["reproduce_stop_after"] and "--stop-after" not in repro:
        repro += f" --stop-after {m['reproduce_stop_after']}"
        stop_note = (f" Training was stopped by the time limit after {m['steps']} of the {m['planned_steps']}"
                     f" scheduled steps; `--stop-after` repeats exactly that.")
    sample_text = "\n\n".join(f"Prompt `{p!r}`:\n\n```python\n{s}\n```" for p, s in samples.items())
    return f"""---
license: other
license_name: psf-2.0
language: [en, code]
tags: [liquid-metal, lmexport, tiny]
---
# liquid-metal-tiny

A {m['parameters'] / 1e6:.2f}M-parameter Liquid-Metal decoder (TinyLlama layout plus adaptive
RMSNorm, causal token mixing and squeeze-and-excitation, **streaming** context mode; see
lmexport's docs/ARCHITECTURE.md) trained from scratch by `examples/train_tiny.py`. It is a test model for
lmexport's exporters: big enough to have measurable quality, small enough for CI. It writes
text that looks like Python source; it is not useful for anything else.

| | |
|---|---|
| layers / hidden / intermediate | {config.num_hidden_layers} / {config.hidden_size} / {config.intermediate_size} |
| heads / kv heads / head dim | {config.num_attention_heads} / {config.num_key_value_heads} / {config.head_dim} |
| kernel / SE reduction | {config.token_mixing_kernel_size} / {config.se_reduction} |
| vocabulary | {config.vocab_size} (byte-level BPE, trained on the same corpus) |
| tied embeddings / max positions | {config.tie_word_embeddings} / {config.max_position_embeddings} |

## Results

| metric | value |
|---|---|
| held-out perplexity (PyTorch fp32) | **{m['heldout_perplexity']:.4f}** |
| held-out mean NLL (nats/token) | {m['heldout_mean_nll']:.4f} |
| unigram baseline perplexity (same tokens) | {m['unigram_perplexity']:.1f} |
| final training loss (mean of last {m['final_train_loss_window']} steps) | {m['final_train_loss']:.4f} |
| initial training loss | {m['initial_train_loss']:.4f} |

Perplexity is measured on `heldout.txt` ({m['heldout_tokens']} tokens) by
`lmexport.perplexity.perplexity_torch(model, ids, window={m['perplexity_window']}, stride={m['perplexity_stride']})`:
windows of {m['perplexity_window']} tokens starting {m['perplexity_stride']} apart, each token
scored once, from an empty state, no BOS added. `metrics.json` holds the same numbers for
machines; the tests check that the committed weights reproduce them.

![loss curve](loss_curve.png)

## Training

{m['steps']} steps of AdamW (betas 0.9/0.95, weight decay 0.1, grad clip 1.0), batch
{m['preset']['batch_size']} x {m['preset']['seq_len']} tokens, peak LR {m['preset']['lr']} with 5% warm-up and
cosine decay to 10%; {m['tokens_seen'] / 1e6:.1f}M tokens seen from a {m['train_tokens'] / 1e6:.2f}M-token
training stream. {m['train_seconds'] / 60:.1f} minutes on {m['threads']} CPU threads (torch {m['torch_version']}).
Seed {m['seed']}.{stop_note}

Reproduce (the same Python version gives the same corpus, see below; the script writes to
`examples/liquid-metal-tiny` unless given `--out`, and replaces it with `--overwrite`):

```
{repro}
```

## Data

The `.py` files of the CPython {m['python_version']} standard library (code, comments and
docstrings), read offline from the interpreter that ran the script: {m['corpus_files']} files,
{m['corpus_bytes'] / 1e6:.1f} MB, excluding the folders test, tests, idlelib, lib2to3, turtledemo,
ensurepip, encodings and site-packages. sha256 of the file list: `{m['corpus_files_sha256']}`.
Another Python version gives a different corpus and a different model.

Held out (never trained on): {', '.join(m['heldout_modules'])}; their text, joined by a blank
line and cut to at most {HELDOUT_MAX_BYTES // 1000} KB, is `heldout.txt`.

**Licence.** The Python standard library is distributed under the PSF License Agreement
(Python Software Foundation License Version 2), which permits preparing and distributing
derivative works provided the PSF copyright notice is retained: Copyright (c) 2001 Python
Software Foundation; All Rights Reserved. `heldout.txt` is an excerpt of that source.

## Greedy samples

Greedy decoding of a model this small soon repeats itself; the text still reads as Python.

{sample_text}
"""


def rewrite_card(folder: Path) -> None:
    """Re-render README.md from the folder's metrics.json and config.json (weights untouched)."""
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    config = LiquidMetalConfig.from_file(folder / "config.json")
    (folder / "README.md").write_text(model_card(metrics, config, metrics["samples"]), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("examples/liquid-metal-tiny"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on a tiny slice, for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--corpus-limit", type=int, help="bytes of training text (default: the preset's)")
    parser.add_argument("--max-minutes", type=float, default=18.0,
                        help="stop training early (and say so in metrics.json) after this long")
    parser.add_argument("--stop-after", type=int,
                        help="stop after this many steps of the --steps schedule (reproduces a time-limited run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--rewrite-card", action="store_true",
                        help="only re-render README.md in --out from its metrics.json, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.rewrite_card:
        rewrite_card(args.out)
        return 0

    preset = PRESETS["smoke" if args.smoke else "tiny"]
    changes = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
                                 "lr": args.lr, "corpus_limit": args.corpus_limit}.items() if v is not None}
    preset = Preset(**{**preset.__dict__, **changes})
    # The arguments that change the model (not --out, --overwrite or --max-minutes).
    command = "python examples/train_tiny.py" + (" --smoke" if args.smoke else "") + f" --seed {args.seed}"
    for flag in ("steps", "batch_size", "seq_len", "lr", "corpus_limit", "stop_after"):
        if getattr(args, flag) is not None:
            command += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
    if args.threads != 2:
        command += f" --threads {args.threads}"
    train(args.out, preset, seed=args.seed, max_minutes=args.max_minutes, threads=args.threads,
          stop_after=args.stop_after,
          overwrite=args.overwrite, progress=not args.no_progress, command=command,
          eval_window=min(256, preset.seq_len * 2), eval_stride=min(128, preset.seq_len))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
