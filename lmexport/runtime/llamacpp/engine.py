"""Run a ``liquidmetal`` GGUF in llama.cpp through llama-cpp-python (patched: ``lmexport llamacpp build``).

Imports llama_cpp and numpy only (never torch). ``LlamaCppEngine`` opens one GGUF and offers:

* ``logits(token_ids, n_ubatch=...)``: logits of every position of a fresh sequence, ``[T, V]``;
* ``logits_multi({seq_id: ids, ...})``: several sequences decoded together in one context;
* ``generate(prompt, ...)``: streamed text through llama-cpp-python's own sampler (greedy at
  temperature 0; top_k, top_p, repeat penalty, seed, stop strings, max tokens);
* ``generate_ids(token_ids, ...)``: the same, yielding token ids.

``f32_kv=True`` keeps the KV cache in F32 (llama.cpp's default is F16, ~1e-3 off a fp32 reference),
for exact comparisons. Flash attention is on by default, as llama.cpp's own tools pick it where the
backend supports it (if a context cannot be created with it, the engine retries without); with
``f32_kv`` it defaults to off, because ggml's CPU flash attention rounds through F16 (measured:
1.6e-3 max |logit diff| on the bundled model with it, 6e-6 without).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from lmexport.errors import ArtifactError, InputError, LmexportError

BUILD_HINT = "run `lmexport llamacpp build`"
GGML_TYPE_F32 = 0


class LlamaCppUnavailable(LmexportError):
    """llama-cpp-python is missing, or is a build without the liquidmetal architecture."""


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:  # not installed, or its shared library does not load
        raise LlamaCppUnavailable(f"llama-cpp-python is not usable here ({exc})", hint=BUILD_HINT) from exc
    return llama_cpp


def library_path(llama_cpp=None) -> Path | None:
    """The libllama the imported llama_cpp loaded (honours LLAMA_CPP_LIB_PATH)."""
    llama_cpp = llama_cpp or _import_llama_cpp()
    lib = getattr(llama_cpp.llama_cpp, "_lib", None)
    name = getattr(lib, "_name", None)
    return Path(name) if name else None


def is_patched(llama_cpp=None) -> bool:
    """Does the loaded libllama know the liquidmetal architecture? (looks for its metadata key name)"""
    path = library_path(llama_cpp)
    if path is None or not path.exists():
        return False
    data = path.read_bytes()
    return b"liquidmetal" in data and b"%s.token_mixing.kernel_size" in data


def require_patched():
    llama_cpp = _import_llama_cpp()
    if not is_patched(llama_cpp):
        raise LlamaCppUnavailable(f"the installed llama-cpp-python ({library_path(llama_cpp)}) has no liquidmetal "
                                  f"architecture", hint=BUILD_HINT)
    return llama_cpp


@contextmanager
def native_log(llama_cpp, verbose: bool):
    """Collect llama.cpp's warnings and errors (it logs from C) instead of printing its chatter.

    Yields a list that fills with the warning/error lines; with ``verbose`` llama-cpp-python's own
    logger stays in place and the list stays empty."""
    lines: list[str] = []
    if verbose:
        yield lines
        return
    import ctypes

    state = {"keep": False}

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):  # ggml.h: WARN = 3, ERROR = 4, CONT = 5 (continues the last line)
        if level in (3, 4) or (level == 5 and state["keep"]):
            state["keep"] = True
            if text:
                lines.append(text.decode("utf-8", errors="replace").strip())
        elif level != 5:
            state["keep"] = False

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _load_error(lines: list[str]) -> str | None:
    for line in lines:
        if "error loading model" in line:
            return line.split("error loading model:", 1)[-1].strip()
    return None


@dataclass(frozen=True)
class EngineOptions:
    n_ctx: int = 512
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int | None = None
    n_gpu_layers: int = 0
    f32_kv: bool = False
    flash_attn: bool | None = None     # None: on, falling back to off where a context cannot use it
    seed: int = 0
    verbose: bool = False


class LlamaCppEngine:
    """One liquidmetal (or llama) GGUF opened in llama.cpp."""

    def __init__(self, path: str | Path, options: EngineOptions | None = None, **kwargs):
        self.llama_cpp = require_patched()
        self.path = Path(path)
        if not self.path.exists():
            raise ArtifactError(f"{self.path} not found", hint="write one with `lmexport gguf`")
        self.options = options or EngineOptions(**kwargs)
        self._contexts: dict[tuple[int, int], object] = {}
        # llama.cpp's CPU flash attention computes in F16 internally (~1e-4 relative off fp32), so an
        # exact (f32 KV) engine keeps it off unless asked for
        fa = self.options.flash_attn
        self.flash_attn = (False if self.options.f32_kv else None) if fa is None else fa
        self.llm = self._open_llama()

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
            reason = _load_error(log)
            if reason is not None or "load model" in str(last):
                # the model itself did not load: flash attention is not the cause
                raise ArtifactError(f"llama.cpp could not load {self.path}: {reason or last}",
                                    hint="expected a liquidmetal (streaming) or llama GGUF from `lmexport gguf`; "
                                         f"if the architecture is unknown, {BUILD_HINT}") from last
        raise ArtifactError(f"llama.cpp could not open {self.path}: {last}",
                            hint="run with verbose=True for llama.cpp's log") from last

    @property
    def model(self):
        return self.llm._model.model

    @property
    def n_vocab(self) -> int:
        return int(self.llm.n_vocab())

    def close(self) -> None:
        for ctx in self._contexts.values():
            self.llama_cpp.llama_free(ctx)
        self._contexts.clear()
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ raw contexts
    def _context(self, n_ubatch: int, n_seq_max: int):
        """A context of this model for logits (all outputs), cached per (n_ubatch, n_seq_max)."""
        key = (n_ubatch, n_seq_max)
        if key in self._contexts:
            return self._contexts[key]
        lc, o = self.llama_cpp, self.options
        params = lc.llama_context_default_params()
        params.n_ctx = o.n_ctx
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
        """Decode (token, position, seq_id) triples into ``ctx`` (from ``sequences``): logits ``[n, V]``."""
        items = [(int(t), int(p), int(s)) for t, p, s in items]
        bad = [t for t, _, _ in items if not 0 <= t < self.n_vocab]
        if bad:
            raise InputError(f"token ids out of range 0..{self.n_vocab - 1}: {bad[:5]}")
        self._decode(ctx, items)
        return self._rows(ctx, len(items))

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
        if len(items) > max(self.options.n_batch, n_ubatch or 0):
            raise InputError(f"{len(items)} tokens exceed n_batch={self.options.n_batch}")
        self._decode(ctx, items)
        rows = self._rows(ctx, len(items))
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

    def generate(self, prompt: str | Sequence[int], *, max_tokens: int = 64, temperature: float = 0.0, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.0, repeat_penalty: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] | str | None = None) -> Iterator[str]:
        """Stream the completion of ``prompt`` (text, or token ids as they are) as text pieces
        (llama-cpp-python's create_completion). temperature 0 is greedy."""
        self._check_sampling(max_tokens, temperature, top_k, top_p, repeat_penalty)
        stream = self.llm.create_completion(
            prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            repeat_penalty=repeat_penalty, seed=self.options.seed if seed is None else seed,
            stop=[stop] if isinstance(stop, str) else list(stop or []), stream=True)
        for chunk in stream:
            text = chunk["choices"][0]["text"]
            if text:
                yield text

    def generate_ids(self, token_ids: Sequence[int], *, max_tokens: int = 64, temperature: float = 0.0,
                     top_k: int = 40, top_p: float = 0.95, min_p: float = 0.0, repeat_penalty: float = 1.0,
                     seed: int | None = None, stop_ids: Sequence[int] = ()) -> Iterator[int]:
        """Stream generated token ids after the prompt ``token_ids`` (llama-cpp-python's Llama.generate)."""
        self._check_sampling(max_tokens, temperature, top_k, top_p, repeat_penalty)
        ids = self._check_ids(token_ids)
        if seed is not None or self.options.seed is not None:
            self.llm.set_seed(self.options.seed if seed is None else seed)
        self.llm.reset()
        stops = set(int(t) for t in stop_ids)
        for n, tok in enumerate(self.llm.generate(ids, top_k=top_k, top_p=top_p, min_p=min_p, temp=temperature,
                                                  repeat_penalty=repeat_penalty, reset=True)):
            if tok in stops or n >= max_tokens:
                break
            yield int(tok)
            if n + 1 >= max_tokens or len(ids) + n + 1 >= self.options.n_ctx:
                break

    @staticmethod
    def _check_sampling(max_tokens, temperature, top_k, top_p, repeat_penalty) -> None:
        if max_tokens < 1:
            raise InputError("max_tokens must be at least 1")
        if temperature < 0:
            raise InputError("temperature must be >= 0 (0 is greedy)")
        if top_k < 0 or not 0 < top_p <= 1:
            raise InputError("top_k must be >= 0 and top_p in (0, 1]")
        if repeat_penalty <= 0:
            raise InputError("repeat_penalty must be > 0")


def open_engine(path: str | Path, **kwargs) -> LlamaCppEngine:
    return LlamaCppEngine(path, **kwargs)

