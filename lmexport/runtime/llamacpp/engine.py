"""The llama.cpp engine: a ``liquidmetal`` (or llama) GGUF in the patched llama.cpp, through llama-cpp-python.

Imports llama_cpp and numpy only (never torch). ``LlamaCppEngine`` implements the one engine protocol
(``lmexport.engine``: ``reset``/``step``, ``tokenizer``, ``info``), so ``generate``, ``chat``, ``bench``,
``parity --engine llama.cpp`` and ``perplexity --engine llama.cpp`` run a GGUF through the same loops
as an ONNX folder. Each row of a left-padded batch is its own llama.cpp sequence (seq_id = row,
positions from the caller) in one context; only the valid tokens are decoded, and the logits come
back in the batch layout ``[B, T, V]`` (zeros at padded positions, which no loop reads). Beyond the
protocol it offers llama.cpp's raw views:

* ``logits(token_ids, n_ubatch=...)``: logits of every position of a fresh sequence, ``[T, V]``;
* ``logits_multi({seq_id: ids, ...})``: several sequences decoded together in one context;
* ``greedy(token_ids, steps)``: a prompt, then greedy tokens decoded one by one;
* ``generate``/``generate_ids``: llama-cpp-python's own sampler (``completion.py``).

The install probe is ``install.py``, llama.cpp's log capture ``native_log.py``, its tokenizer
``tokenizer.py``. ``f32_kv=True`` keeps the KV cache in F32 (llama.cpp's default is F16, ~1e-3 off
a fp32 reference), for exact comparisons. Flash attention is on by default, as llama.cpp's own tools
pick it where the backend supports it (if a context cannot be created with it, the engine retries
without); with ``f32_kv`` it defaults to off, because ggml's CPU flash attention rounds through F16
(measured: 1.6e-3 max |logit diff| on the bundled model with it, 6e-6 without).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from lmexport.compare.tolerances import gguf_preset
from lmexport.engine import EngineBase, EngineInfo
from lmexport.errors import ArtifactError, InputError, LmexportError
from lmexport.formats import gguf as fmt
from lmexport.runtime.llamacpp.install import (BUILD_HINT, LlamaCppUnavailable, is_patched,  # noqa: F401
                                               gpu_devices, library_path, require_patched)
from lmexport.runtime.llamacpp.native_log import load_error, native_log

GGML_TYPE_F32 = 0


@dataclass(frozen=True)
class EngineOptions:
    n_ctx: int = 512                   # tokens per sequence
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int | None = None
    n_gpu_layers: int = 0
    f32_kv: bool = False
    flash_attn: bool | None = None     # None: on, falling back to off where a context cannot use it
    seed: int = 0
    verbose: bool = False


class LlamaCppEngine(EngineBase):
    """One liquidmetal (or llama) GGUF opened in llama.cpp.

    ``device``/``threads`` as every engine takes them (``lmexport.engine.open_artifact``): a device
    other than cpu offloads every layer (a CUDA build of llama.cpp); ``n_ctx`` defaults to the
    model's context length when opened that way."""

    def __init__(self, path: str | Path, options: EngineOptions | None = None, *, device: str | None = None,
                 threads: int | None = None, **kwargs):
        self.llama_cpp = require_patched()
        self.path = Path(path)
        if not self.path.exists():
            raise ArtifactError(f"{self.path} not found", hint="write one with `lmexport gguf`")
        if device is not None:
            kwargs.setdefault("n_gpu_layers", 0 if device == "cpu" else -1)
            kwargs.setdefault("n_ctx", 0)            # 0: the model's own context length (below)
        if threads is not None:
            kwargs.setdefault("n_threads", threads)
        self.options = options or EngineOptions(**kwargs)
        self._contexts: dict[tuple[int, int], object] = {}
        self._ctx = None                             # the protocol's context (reset/step)
        self._batch = 0
        self._tokenizer = None
        # llama.cpp's CPU flash attention computes in F16 internally (~1e-4 relative off fp32), so an
        # exact (f32 KV) engine keeps it off unless asked for
        fa = self.options.flash_attn
        self.flash_attn = (False if self.options.f32_kv else None) if fa is None else fa
        self.llm = self._open_llama()
        if self.options.n_ctx == 0:
            from dataclasses import replace
            self.options = replace(self.options, n_ctx=self.context_length)
        offloads = self.options.n_gpu_layers != 0 and bool(gpu_devices(self.llama_cpp))
        self.info = self._info("gpu (llama.cpp offload)" if offloads else "cpu")

    # ------------------------------------------------------------------ opening
    def _llama_kwargs(self, flash_attn: bool) -> dict:
        o = self.options
        kw = dict(model_path=str(self.path), n_ctx=o.n_ctx, n_batch=o.n_batch, n_ubatch=o.n_ubatch,
                  n_gpu_layers=o.n_gpu_layers, seed=o.seed, verbose=o.verbose, flash_attn=flash_attn,
                  logits_all=False)
        if o.n_threads:
            kw.update(n_threads=o.n_threads, n_threads_batch=o.n_threads)
        if o.f32_kv:
            kw.update(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
        return kw

    def _open_llama(self):
        tries = [True, False] if self.flash_attn is None else [bool(self.flash_attn)]
        last: Exception | None = None
        for fa in tries:
            with native_log(self.llama_cpp, self.options.verbose) as log:
                try:
                    llm = self.llama_cpp.Llama(**self._llama_kwargs(fa))
                except (ValueError, RuntimeError) as exc:
                    last = exc
                else:
                    self.flash_attn = fa
                    return llm
            reason = load_error(log)
            if reason is not None or "load model" in str(last):
                # the model itself did not load: flash attention is not the cause
                raise ArtifactError(f"llama.cpp could not load {self.path}: {reason or last}",
                                    hint="expected a liquidmetal (streaming) or llama GGUF from `lmexport gguf`; "
                                         f"if the architecture is unknown, {BUILD_HINT}") from last
        raise ArtifactError(f"llama.cpp could not open {self.path}: {last}",
                            hint="run with verbose=True for llama.cpp's log") from last

    def _info(self, device: str) -> EngineInfo:
        meta = self.llm.metadata
        outtype = fmt.file_outtype(meta.get(fmt.Keys.General.FILE_TYPE), meta.get(fmt.OUTTYPE))
        pad = meta.get(fmt.Keys.Tokenizer.PAD_ID)
        eos = {int(self.llm.token_eos())}
        if meta.get(fmt.Keys.Tokenizer.EOT_ID) is not None:
            eos.add(int(meta[fmt.Keys.Tokenizer.EOT_ID]))
        bos = int(self.llm.token_bos())
        import llama_cpp

        return EngineInfo(kind="gguf", engine="llama.cpp", variant=outtype, device=device,
                          context_length=self.context_length, vocab_size=self.n_vocab,
                          bos_token_id=bos if bos >= 0 else None, eos_token_ids=tuple(sorted(i for i in eos if i >= 0)),
                          pad_token_id=int(pad) if pad is not None else 0, tolerance=gguf_preset(outtype),
                          versions={"llama_cpp_python": getattr(llama_cpp, "__version__", "?")})

    @property
    def context_length(self) -> int:
        """The model's context length (its GGUF's ``{arch}.context_length``)."""
        return int(self.llm._model.n_ctx_train())

    @property
    def model(self):
        return self.llm._model.model

    @property
    def n_vocab(self) -> int:
        return int(self.llm.n_vocab())

    def close(self) -> None:
        self._ctx = None
        for ctx in self._contexts.values():
            self.llama_cpp.llama_free(ctx)
        self._contexts.clear()
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    # ------------------------------------------------------------------ raw contexts
    def _context(self, n_ubatch: int, n_seq_max: int):
        """A context of this model for logits (all outputs), cached per (n_ubatch, n_seq_max)."""
        key = (n_ubatch, n_seq_max)
        if key in self._contexts:
            return self._contexts[key]
        lc, o = self.llama_cpp, self.options
        params = lc.llama_context_default_params()
        params.n_ctx = o.n_ctx * n_seq_max       # llama.cpp splits n_ctx between the sequences
        params.n_batch = max(o.n_batch, n_ubatch)
        params.n_ubatch = n_ubatch
        params.n_seq_max = n_seq_max
        if o.n_threads:
            params.n_threads = params.n_threads_batch = o.n_threads
        params.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn
                                  else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        if o.f32_kv:
            params.type_k = params.type_v = GGML_TYPE_F32
        with native_log(lc, o.verbose):
            ctx = lc.llama_init_from_model(self.model, params)
        if not ctx:
            raise ArtifactError(f"llama.cpp could not create a context for {self.path} "
                                f"(n_ubatch={n_ubatch}, n_seq_max={n_seq_max})")
        self._contexts[key] = ctx
        return ctx

    def _decode(self, ctx, items: list[tuple[int, int, int]]) -> None:
        """Decode (token, pos, seq_id) triples in one llama_batch, every one an output."""
        lc = self.llama_cpp
        batch = lc.llama_batch_init(len(items), 0, 1)
        try:
            batch.n_tokens = len(items)
            for i, (tok, pos, seq) in enumerate(items):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = 1
            rc = lc.llama_decode(ctx, batch)
        finally:
            lc.llama_batch_free(batch)
        if rc != 0:
            raise LmexportError(f"llama_decode failed with code {rc}")

    def _decode_chunks(self, ctx, items: list[tuple[int, int, int]], n_batch: int) -> np.ndarray:
        """Decode ``items`` in llama_decode calls of at most ``n_batch`` tokens; logits ``[len(items), V]``."""
        out = []
        for start in range(0, len(items), n_batch):
            part = items[start:start + n_batch]
            self._decode(ctx, part)
            out.append(self._rows(ctx, len(part)))
        return np.concatenate(out, axis=0)

    def _rows(self, ctx, n: int) -> np.ndarray:
        ptr = self.llama_cpp.llama_get_logits(ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab)).copy()

    def _check_ids(self, token_ids: Sequence[int]) -> list[int]:
        ids = [int(t) for t in token_ids]
        if not ids:
            raise InputError("no tokens given")
        if len(ids) > self.options.n_ctx:
            raise InputError(f"{len(ids)} tokens do not fit the context of {self.options.n_ctx}",
                             hint="open the engine with a larger n_ctx")
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise InputError(f"token ids out of range 0..{self.n_vocab - 1}: {bad[:5]}")
        return ids

    # ------------------------------------------------------------------ sequences of a batch
    def sequences(self, n_seq: int, n_ubatch: int | None = None):
        """A cleared context for ``n_seq`` sequences (ids 0..n_seq-1), to ``decode`` into step by step."""
        ctx = self._context(n_ubatch or self.options.n_ubatch, n_seq)
        self.llama_cpp.llama_memory_clear(self.llama_cpp.llama_get_memory(ctx), True)
        return ctx

    def decode(self, ctx, items: Sequence[tuple[int, int, int]]) -> np.ndarray:
        """Decode (token, position, seq_id) triples into ``ctx`` (from ``sequences``): logits ``[n, V]``
        (in llama_decode calls of at most n_batch tokens)."""
        items = [(int(t), int(p), int(s)) for t, p, s in items]
        bad = [t for t, _, _ in items if not 0 <= t < self.n_vocab]
        if bad:
            raise InputError(f"token ids out of range 0..{self.n_vocab - 1}: {bad[:5]}")
        return self._decode_chunks(ctx, items, self.options.n_batch)

    # ------------------------------------------------------------------ the engine protocol
    def reset(self, batch: int) -> None:
        self._ctx = self.sequences(batch)
        self._batch = batch

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self._ctx is None:
            raise InputError("step before reset")
        b, t = ids.shape
        if b != self._batch:
            raise InputError(f"batch of {b} rows after a reset for {self._batch}")
        valid = np.asarray(mask)[:, mask.shape[1] - t:].astype(bool)
        where = [(r, c) for r in range(b) for c in range(t) if valid[r, c]]
        if any(int(positions[r, c]) >= self.options.n_ctx for r, c in where):
            raise InputError(f"a sequence reaches past the context of {self.options.n_ctx} tokens")
        rows = self.decode(self._ctx, [(ids[r, c], positions[r, c], r) for r, c in where])
        out = np.zeros((b, t, rows.shape[1]), dtype=np.float32)
        for (r, c), row in zip(where, rows):
            out[r, c] = row
        return out

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from lmexport.runtime.llamacpp.tokenizer import LlamaCppTokenizer

            self._tokenizer = LlamaCppTokenizer(self)
        return self._tokenizer


    # ------------------------------------------------------------------ logits
    def logits(self, token_ids: Sequence[int], n_ubatch: int | None = None, chunk: int | None = None) -> np.ndarray:
        """Logits of every position of ``token_ids`` as a fresh sequence, float32 ``[T, V]``.

        ``n_ubatch``: llama.cpp's micro-batch size (the graph runs on at most this many tokens);
        ``chunk``: tokens per llama_decode call (default: all at once; 1 = token by token)."""
        ids = self._check_ids(token_ids)
        n_ubatch = n_ubatch or self.options.n_ubatch
        ctx = self._context(n_ubatch, 1)
        self.llama_cpp.llama_memory_clear(self.llama_cpp.llama_get_memory(ctx), True)
        step = min(chunk or len(ids), max(self.options.n_batch, n_ubatch))  # one llama_decode takes <= n_batch
        out = []
        for start in range(0, len(ids), step):
            part = ids[start:start + step]
            self._decode(ctx, [(t, start + i, 0) for i, t in enumerate(part)])
            out.append(self._rows(ctx, len(part)))
        return np.concatenate(out, axis=0)

    def logits_multi(self, sequences: Mapping[int, Sequence[int]] | Sequence[Sequence[int]],
                     n_ubatch: int | None = None, interleave: bool = True) -> dict[int, np.ndarray]:
        """Several fresh sequences in one context (n_seq_max = their number), decoded in one batch.

        ``interleave``: put the sequences' tokens alternately into the batch (llama.cpp regroups
        them into per-sequence ubatches). Returns seq_id -> ``[T_i, V]``."""
        if not isinstance(sequences, Mapping):
            sequences = dict(enumerate(sequences))
        seqs = {int(s): self._check_ids(ids) for s, ids in sequences.items()}
        if sorted(seqs) != list(range(len(seqs))):
            raise InputError("sequence ids must be 0..n-1")
        ctx = self._context(n_ubatch or self.options.n_ubatch, len(seqs))
        self.llama_cpp.llama_memory_clear(self.llama_cpp.llama_get_memory(ctx), True)
        items: list[tuple[int, int, int]] = []
        if interleave:
            for pos in range(max(len(v) for v in seqs.values())):
                items += [(ids[pos], pos, s) for s, ids in seqs.items() if pos < len(ids)]
        else:
            for s, ids in seqs.items():
                items += [(t, p, s) for p, t in enumerate(ids)]
        rows = self._decode_chunks(ctx, items, max(self.options.n_batch, n_ubatch or 0))
        out: dict[int, list[np.ndarray]] = {s: [] for s in seqs}
        for row, (_, _, s) in zip(rows, items):
            out[s].append(row)
        return {s: np.stack(v) for s, v in out.items()}

    def greedy(self, token_ids: Sequence[int], steps: int) -> tuple[list[int], np.ndarray]:
        """Prompt, then ``steps`` greedy tokens decoded one by one: (new tokens, logits [T+steps, V])."""
        ids = self._check_ids(token_ids)
        if len(ids) + steps > self.options.n_ctx:
            raise InputError(f"{len(ids)} + {steps} tokens do not fit the context of {self.options.n_ctx}")
        ctx = self._context(self.options.n_ubatch, 1)
        lc = self.llama_cpp
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        rows = []
        step = self.options.n_batch
        for start in range(0, len(ids), step):
            part = ids[start:start + step]
            self._decode(ctx, [(t, start + i, 0) for i, t in enumerate(part)])
            rows.append(self._rows(ctx, len(part)))
        new: list[int] = []
        for k in range(steps):
            nxt = int(rows[-1][-1].argmax())
            new.append(nxt)
            self._decode(ctx, [(nxt, len(ids) + k, 0)])
            rows.append(self._rows(ctx, 1))
        return new, np.concatenate(rows, axis=0)

    # ------------------------------------------------------------------ text
    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def generate(self, prompt: str | Sequence[int], **kwargs) -> Iterator[str]:
        """llama-cpp-python's own sampler, streaming text (``completion.generate``)."""
        from lmexport.runtime.llamacpp.completion import generate

        return generate(self, prompt, **kwargs)

    def generate_ids(self, token_ids: Sequence[int], **kwargs) -> Iterator[int]:
        """llama-cpp-python's own sampler, streaming token ids (``completion.generate_ids``)."""
        from lmexport.runtime.llamacpp.completion import generate_ids

        return generate_ids(self, token_ids, **kwargs)
