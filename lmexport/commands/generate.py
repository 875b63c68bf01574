"""`lmexport generate` and `lmexport chat`: the torch-free runtimes on the command line.

An exported ONNX folder runs on ONNX Runtime (``lmexport.runtime``); a GGUF file runs on the
patched llama.cpp (``lmexport.runtime.llamacpp``, built by ``lmexport llamacpp build``), with the
same sampling options.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

DEVICE = click.Choice(["cpu", "cuda", "auto"])
PROMPT = "> "   # the user's turn in `lmexport chat`, as llama-cli marks it


def runtime_options(f):
    for option in reversed([
        click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1)),
        click.option("--temperature", default=0.0, show_default=True, type=float, help="0 = greedy."),
        click.option("--top-k", default=0, show_default=True, type=click.IntRange(0), help="0 = off."),
        click.option("--top-p", default=1.0, show_default=True, type=float, help="1 = off."),
        click.option("--repetition-penalty", default=1.0, show_default=True, type=float, help="1 = off."),
        click.option("--seed", type=int, help="Seed for sampling (same seed, same text)."),
        click.option("--device", type=DEVICE, default="cpu", show_default=True,
                     help="auto takes CUDA when onnxruntime offers it."),
        click.option("--threads", type=click.IntRange(1), help="ONNX Runtime intra-op threads."),
        click.option("--optimization", type=click.Choice(["disable", "basic", "extended", "all"]), default="all",
                     show_default=True, help="ONNX Runtime graph optimisation level."),
    ]):
        f = option(f)
    return f


def _read_line(number: int) -> str:
    """One line of stdin as text; a line that is not UTF-8 is a GenerationError, not a traceback."""
    from lmexport.errors import GenerationError

    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:                      # a text stream without bytes (tests, embedding)
        return sys.stdin.readline()
    data = raw.readline()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GenerationError(f"line {number} of the input is not UTF-8 (byte {exc.start})",
                              hint="send UTF-8 text") from None


def _is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _open_gguf(path: Path, device, threads, n_ctx: int | None = None):
    """The GGUF in llama.cpp; --device cuda/auto offloads every layer (a CUDA build of llama.cpp)."""
    from lmexport.runtime.llamacpp.engine import LlamaCppEngine, require_patched

    require_patched()                # first: without the patched build, one line on how to build it
    kwargs = dict(n_gpu_layers=0 if device == "cpu" else -1, n_threads=threads)
    if n_ctx:
        kwargs["n_ctx"] = n_ctx
    else:
        from lmexport.exporters.gguf.reader import open_gguf
        kwargs["n_ctx"] = open_gguf(path).config().max_position_embeddings
    eng = LlamaCppEngine(path, **kwargs)
    click.echo(f"[running on llama.cpp ({'cpu' if device == 'cpu' else 'offloaded: ' + device})]", err=True)
    return eng


def _llamacpp_sampling(temperature, top_k, top_p, repetition_penalty, seed) -> dict:
    return dict(temperature=temperature, top_k=top_k, top_p=top_p, repeat_penalty=repetition_penalty,
                seed=seed if seed is not None else 0)


def _generate_gguf(path, prompts, max_new_tokens, sampling, device, threads, stop, chat, truncate, stats):
    import time

    from lmexport.errors import InputError

    if chat or truncate:
        raise InputError(f"--{'chat' if chat else 'truncate'} is not supported for a GGUF file",
                         hint="use `lmexport chat model.gguf` for a conversation" if chat else None)
    with _open_gguf(path, device, threads) as eng:
        for i, prompt in enumerate(prompts):
            if len(prompts) > 1:
                click.echo(f"--- [{i}]")
            click.echo(prompt, nl=False)
            t0, n = time.perf_counter(), 0
            for piece in eng.generate(prompt, max_tokens=max_new_tokens, stop=list(stop), **sampling):
                n += 1
                click.echo(piece, nl=False)
                sys.stdout.flush()
            click.echo()
            if stats:
                dt = time.perf_counter() - t0
                click.echo(f"[{n} pieces in {dt:.2f} s ({n / dt if dt else 0:.1f}/s) on llama.cpp]", err=True)


def _generate_pte(path, prompts, max_new_tokens, sampling, device, threads, stop, chat, truncate, stats):
    """A .pte in executorch.runtime: one prompt after the other, each a new sequence (input_pos 0).

    A small loop until the engine layer (lmexport.engine) runs every artifact through one generator."""
    import time

    import numpy as np

    from lmexport.errors import InputError
    from lmexport.exporters.executorch.engine import ExecutorchEngine
    from lmexport.runtime.sampling import choose

    if truncate:
        raise InputError("--truncate is not supported for a .pte", hint="use a shorter prompt")
    with ExecutorchEngine(path, device=device, threads=threads) as eng:
        click.echo("[running on executorch (XNNPACK, cpu)]", err=True)
        tok = eng.tokenizer
        eos = set(eng.info.eos_token_ids)
        for i, prompt in enumerate(prompts):
            if len(prompts) > 1:
                click.echo(f"--- [{i}]")
            if chat:
                text = tok.apply_chat_template([{"role": "user", "content": prompt}])
                ids = tok.encode(text, add_special_tokens=False)
            else:
                click.echo(prompt, nl=False)
                ids = tok.encode(prompt)
            if len(ids) + max_new_tokens > eng.max_context:
                raise InputError(f"the prompt ({len(ids)} tokens) and --max-new-tokens {max_new_tokens} exceed the "
                                 f"program's context of {eng.max_context} tokens",
                                 hint="export with a larger --max-context, or ask for fewer tokens")
            rngs = [np.random.default_rng(sampling.seed)]
            t0 = time.perf_counter()
            logits = eng.logits_for(ids, 0)[-1:]
            prefill_s, t1 = time.perf_counter() - t0, time.perf_counter()
            new, shown = [], ""
            while len(new) < max_new_tokens:
                nxt = int(choose(logits, sampling, rngs, [set(ids + new)])[0])
                if nxt in eos:
                    break
                new.append(nxt)
                text = tok.decode(new)
                if not text.endswith("\ufffd"):
                    click.echo(text[len(shown):], nl=False)
                    sys.stdout.flush()
                    shown = text
                if any(s in text for s in stop) or len(new) == max_new_tokens:
                    break
                logits = eng.logits_for([nxt], len(ids) + len(new) - 1)[-1:]
            click.echo(tok.decode(new)[len(shown):])
            if stats:
                dt = time.perf_counter() - t1
                n = max(len(new) - 1, 0)
                click.echo(f"[{len(ids)} prompt tokens, {len(new)} new tokens; prefill {prefill_s * 1e3:.1f} ms; "
                           f"decode {n / dt if dt > 0 else 0:.1f} tokens/s on executorch (XNNPACK, cpu)]", err=True)


def _open(folder, device, threads, optimization):
    from lmexport.runtime import Generator
    from lmexport.runtime.hugepages import reexec_for

    reexec_for(Path(folder))

    gen = Generator.from_folder(folder, device=device, threads=threads, optimization=optimization)
    click.echo(f"[running on {gen.device}{' (--device auto)' if device == 'auto' else ''}]", err=True)
    return gen


def _sampling(temperature, top_k, top_p, repetition_penalty, seed):
    from lmexport.runtime import SamplingParams
    return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                          repetition_penalty=repetition_penalty, seed=seed)


@click.command("generate")
@click.argument("folder", type=click.Path(path_type=Path), metavar="OUT_DIR_OR_GGUF")
@click.option("--prompt", "prompts", multiple=True, required=True, help="Prompt text; repeat for a batch.")
@runtime_options
@click.option("--stop", multiple=True, help="Stop when this text appears (repeatable).")
@click.option("--chat", is_flag=True, help="Wrap each prompt in the tokenizer's chat template.")
@click.option("--truncate", is_flag=True, help="Keep the last tokens of a prompt longer than the context.")
@click.option("--stats", is_flag=True, help="Print tokens/s at the end.")
def generate(folder, prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, device,
             threads, optimization, stop, chat, truncate, stats):
    """Generate text from an exported ONNX folder (ONNX Runtime) or a GGUF file (llama.cpp); no torch needed.

    One prompt streams its text as it is produced; several run as one
    left-padded batch (ONNX) or one after the other (GGUF) and print in order.
    A GGUF needs the patched llama.cpp: lmexport llamacpp build.

    \b
    Examples:
      lmexport generate out/onnx --prompt "def read_file(path):" --max-new-tokens 48
      lmexport generate out/model.gguf --prompt "def read_file(path):" --temperature 0.8 --seed 1
    """
    if folder.suffix == ".pte" and folder.is_file():
        return _generate_pte(folder, prompts, max_new_tokens,
                             _sampling(temperature, top_k, top_p, repetition_penalty, seed),
                             device, threads, stop, chat, truncate, stats)
    if _is_gguf(folder):
        return _generate_gguf(folder, prompts, max_new_tokens,
                              _llamacpp_sampling(temperature, top_k, top_p, repetition_penalty, seed),
                              device, threads, stop, chat, truncate, stats)
    gen = _open(folder, device, threads, optimization)
    sampling = _sampling(temperature, top_k, top_p, repetition_penalty, seed)
    kwargs = dict(max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, chat=chat, truncate=truncate)
    # A completion continues its prompt, so the prompt is printed first; a chat answer
    # is a reply to the prompt, printed alone (as llama-cli and ollama print it).
    if len(prompts) == 1:
        if not chat:
            click.echo(prompts[0], nl=False)
        for piece in gen.stream(prompts[0], **kwargs):
            click.echo(piece.text, nl=False)
            sys.stdout.flush()
        click.echo()
    else:
        for i, result in enumerate(gen.generate(list(prompts), **kwargs)):
            click.echo(f"--- [{i}] ({result.finish_reason}, {len(result.token_ids)} tokens)")
            click.echo(result.text if chat else result.prompt + result.text)
    if stats:
        s = gen.last_stats
        click.echo(f"[{s.prompt_tokens} prompt tokens, {s.new_tokens} new tokens; prefill {s.prefill_s * 1e3:.1f} ms; "
                   f"decode {s.decode_tokens_per_s:.1f} tokens/s on {gen.device}]", err=True)


@click.command("chat")
@click.argument("folder", type=click.Path(path_type=Path), metavar="OUT_DIR_OR_GGUF")
@runtime_options
@click.option("--system", help="A system message to start the conversation with.")
def chat(folder, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, device, threads,
         optimization, system):
    """Chat with an exported ONNX folder or a GGUF file (llama.cpp); the model keeps its state between turns.

    Type a message after the "> " prompt and press Enter; the reply follows on its
    own line(s) and a blank line ends the turn, as in llama-cli and ollama. An empty
    line is skipped; /reset starts a new conversation; /exit or end of input
    (Ctrl-D) ends the chat. Piped input is echoed after the prompt, so the output
    reads as the conversation: "> message", the reply, a blank line.
    """
    if _is_gguf(folder):
        from lmexport.runtime.llamacpp.chat import LlamaCppChat

        session = LlamaCppChat(_open_gguf(folder, device, threads), max_new_tokens=max_new_tokens, system=system,
                               **_llamacpp_sampling(temperature, top_k, top_p, repetition_penalty, seed))
    else:
        from lmexport.runtime import ChatSession

        gen = _open(folder, device, threads, optimization)
        session = ChatSession(gen, max_new_tokens=max_new_tokens, system=system,
                              sampling=_sampling(temperature, top_k, top_p, repetition_penalty, seed))
    interactive = sys.stdin.isatty()
    number = 0
    while True:
        if interactive:
            click.echo(PROMPT, nl=False)
        number += 1
        line = _read_line(number)
        if not line or line.strip() == "/exit":
            break
        if not line.strip():
            continue
        if not interactive:                  # the terminal did not echo it: show the user's turn
            click.echo(PROMPT + line.rstrip("\n"))
        if line.strip() == "/reset":
            session.reset()
            continue
        for piece in session.send(line.rstrip("\n")):
            click.echo(piece, nl=False)
            sys.stdout.flush()
        click.echo("\n")                     # end the reply's line, then a blank line ends the turn
