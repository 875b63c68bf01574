"""`lmexport generate` and `lmexport chat`: the torch-free runtimes on the command line.

The artifact is opened in its engine (``lmexport.engine.open_artifact``: an exported ONNX folder
on ONNX Runtime, a GGUF file on the patched llama.cpp built by ``lmexport llamacpp build``) and
run by the one generation loop (``lmexport.runtime.generator``) and chat session
(``lmexport.runtime.chat``): the same options, defaults, output and --stats line on every engine.
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
                     help="auto takes CUDA when onnxruntime offers it; a GGUF on cuda/auto offloads every layer."),
        click.option("--threads", type=click.IntRange(1), help="Threads of the engine (ONNX Runtime intra-op, "
                                                                 "llama.cpp)."),
        click.option("--optimization", type=click.Choice(["disable", "basic", "extended", "all"]), default="all",
                     show_default=True, help="ONNX Runtime graph optimisation level (ONNX folders)."),
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


def open_generator(path: Path, device: str, threads: int | None, optimization: str):
    """The artifact at ``path`` in its engine (``lmexport.engine.open_artifact``) under the one generation
    loop; an ONNX folder first gets the CLI's huge-page decision, a GGUF the check for the patched build."""
    from lmexport.cli import huge_pages_for
    from lmexport.engine import artifact_kind, open_artifact
    from lmexport.errors import InputError
    from lmexport.runtime.generator import Generator

    kind = artifact_kind(path)
    options: dict = {"device": device, "threads": threads}
    if kind == "onnx":
        huge_pages_for(path)
        options["optimization"] = optimization
    elif kind == "gguf":
        from lmexport.runtime.llamacpp.install import require_patched
        require_patched()            # first: without the patched build, one line on how to build it
    elif kind == "pytorch":
        raise InputError(f"{path} is a model folder; generate and chat run an exported artifact",
                         hint="export it first (lmexport onnx or lmexport gguf), or pass the exported folder or file")
    gen = Generator(open_artifact(path, **options))
    info = gen.engine.info
    click.echo(f"[running on {info.device}{' (--device auto)' if device == 'auto' else ''}] {info.engine} "
               f"({info.variant})", err=True)
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
    left-padded batch and print in order. Every engine runs the same loop:
    the same sampling options, stop strings and --stats line.
    A GGUF needs the patched llama.cpp: lmexport llamacpp build.

    \b
    Examples:
      lmexport generate out/onnx --prompt "def read_file(path):" --max-new-tokens 48
      lmexport generate out/model.gguf --prompt "def read_file(path):" --temperature 0.8 --seed 1
    """
    gen = open_generator(folder, device, threads, optimization)
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
        click.echo(gen.stats_line(), err=True)


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
    from lmexport.runtime import ChatSession

    session = ChatSession(open_generator(folder, device, threads, optimization), max_new_tokens=max_new_tokens,
                          system=system, sampling=_sampling(temperature, top_k, top_p, repetition_penalty, seed))
    from lmexport.errors import ChatTemplateError, GenerationError

    interactive = sys.stdin.isatty()
    number = refused = 0
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
        try:
            for piece in session.send(line.rstrip("\n")):
                click.echo(piece, nl=False)
                sys.stdout.flush()
        except (GenerationError, ChatTemplateError) as exc:    # this turn only: /reset, or another message
            click.echo(f"error: {exc.one_line()}", err=True)
            refused += 1
            continue
        click.echo("\n")                     # end the reply's line, then a blank line ends the turn
    if refused:                              # the chat went on; the exit code still says a turn failed
        sys.exit(2)
