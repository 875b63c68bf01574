"""The `lmexport` command line: argument parsing and the error policy, nothing else.

Each subcommand lives in ``lmexport/commands/<name>.py`` and is imported only
when it runs, so ``lmexport generate`` never imports torch. Errors raised on
purpose (``lmexport.errors``) become one line on stderr and an exit code:
1 failed check, 2 usage or input error, 130 interrupted. ``--debug`` shows the
traceback instead.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

from lmexport import interrupts

if __name__ == "__main__":        # as early as can be: Ctrl-C while click and torch import is not lost either
    interrupts.install(record_only=True)

import click  # noqa: E402
from lmexport.errors import EXIT_INTERRUPTED, EXIT_USAGE, LmexportError  # noqa: E402

# name -> (module, function, one-line help); the help is here so `lmexport --help`
# does not import every command.
COMMANDS = {
    "convert": ("lmexport.commands.convert", "convert", "Turn a plain Llama checkpoint into a Liquid-Metal one."),
    "onnx": ("lmexport.commands.onnx", "onnx", "Export to a stateful ONNX folder, validated against PyTorch."),
    "gguf": ("lmexport.commands.gguf", "gguf", "Export to a GGUF file for llama.cpp-based stacks, validated."),
    "executorch": ("lmexport.commands.executorch", "executorch", "Export to an ExecuTorch .pte (XNNPACK), validated."),
    "generate": ("lmexport.commands.generate", "generate", "Generate text from an ONNX folder or a GGUF (llama.cpp)."),
    "chat": ("lmexport.commands.generate", "chat", "Chat with an ONNX folder or a GGUF (llama.cpp)."),
    "parity": ("lmexport.commands.parity", "parity", "Compare an ONNX folder or GGUF file with PyTorch."),
    "perplexity": ("lmexport.commands.perplexity", "perplexity", "Perplexity of a model, ONNX folder or GGUF file."),
    "bench": ("lmexport.commands.bench", "bench", "Benchmark an ONNX folder, a GGUF or a PyTorch model."),
    "llamacpp": ("lmexport.commands.llamacpp", "llamacpp", "Build llama.cpp with liquidmetal; quantize GGUFs."),
    "serve": ("lmexport.commands.serve", "serve", "Serve a GGUF with llama.cpp's llama-server (OpenAI API)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _available(name):
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


# Packages of the `export` extra (pip install 'lmexport[export]'); the plain install lacks them.
EXPORT_EXTRA = ("torch", "transformers", "safetensors", "onnx", "onnxscript", "accelerate", "sentencepiece")


def missing_extra_message(exc: ModuleNotFoundError, command: str | None) -> str | None:
    """One line for a command that needs the export extra in an install without it, else None."""
    root = (exc.name or "").split(".")[0]
    if root not in EXPORT_EXTRA:
        return None
    what = f"`lmexport {command}`" if command else "this command"
    return (f"{what} needs {root}, which this installation lacks (the plain install is the runtime only): "
            "pip install torch==2.13.0 'lmexport[export]' (torch first, for its CPU build)")


def huge_pages_for(artifact) -> None:
    """Before a command opens an ONNX folder: re-execute the process with huge pages for ONNX Runtime's
    weights (``lmexport/runtime/hugepages.py``). Decided here, by the CLI: only its process entry
    (``main()`` without arguments) re-executes itself, never an in-process call, and only for an ONNX folder."""
    from pathlib import Path

    from lmexport.engine import MANIFEST_FILE

    ctx = click.get_current_context(silent=True)
    if ctx is None or not (ctx.find_root().obj or {}).get("process_entry"):
        return
    if not (Path(artifact) / MANIFEST_FILE).is_file():
        return
    from lmexport.runtime.hugepages import reexec

    reexec(Path(artifact))


def _interrupted(process_entry: bool) -> None:
    """The last line after Ctrl-C/SIGTERM: what was published, if anything, then exit 130."""
    interrupts.hold(process_exit=process_entry)
    from lmexport.atomic import published

    shown = [str(p) for p in published if os.path.lexists(p)]      # not a staging folder's inner files
    if shown:
        click.echo(f"interrupted after {', '.join(shown)} was written completely", err=True)
    else:
        click.echo("interrupted: nothing was written to the output path", err=True)
    # Not sys.exit: a KeyboardInterrupt that passed through an exec'd frame (dataclasses, torch
    # imports) marks the interpreter as killed by SIGINT, and it would exit -2 instead of 130.
    # Every temporary is already removed (atomic's finally blocks ran).
    if not process_entry:
        sys.exit(EXIT_INTERRUPTED)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="lmexport")
@click.pass_context
def cli(ctx, debug: bool, quiet: bool):
    """lmexport: the Liquid-Metal TinyLlama from PyTorch to ONNX and GGUF.

    \b
    Typical flow:
      lmexport onnx examples/liquid-metal-tiny -o out/onnx
      lmexport gguf examples/liquid-metal-tiny -o out/model.gguf
      lmexport generate out/onnx --prompt "def "
      lmexport parity examples/liquid-metal-tiny out/onnx

    Exit codes: 0 ok, 1 a check failed, 2 bad usage or input, 130 interrupted.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s" if not debug else "%(levelname)s %(name)s: %(message)s")
    if not debug:   # torchao (the [executorch] extra), imported by transformers, warns on import about its CUDA kernels
        logging.getLogger("torchao").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        return _main(None)
    saved = interrupts.saved()          # called in-process (tests): give the caller its handlers back
    try:
        _main(argv)
    finally:
        interrupts.restore(saved)


def _main(argv: list[str] | None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # Ctrl-C and SIGTERM interrupt the work and clean up, even when the shell that
    # started us ignored SIGINT (background jobs inherit an ignored SIGINT).
    # An interrupt is also recorded, so one that a __del__ swallowed still stops the commit
    # of an output (lmexport/atomic.py) and still ends the program with 130 (below).
    interrupts.install()
    # Only a process entry (no argv given) may re-execute itself (lmexport/runtime/hugepages.py).
    try:
        interrupts.check()         # one that came while the program was importing
        cli.main(args=args, prog_name="lmexport", standalone_mode=False, obj={"process_entry": argv is None})
        interrupts.hold(process_exit=argv is None)   # the work is done: a late signal cannot kill the exit
        interrupts.check()
    except LmexportError as exc:
        if debug:
            raise
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc, next((a for a in args if a in COMMANDS), None))
        if debug or message is None:
            raise
        click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_USAGE)
    except click.exceptions.Abort:
        _interrupted(argv is None)
    except KeyboardInterrupt:
        if debug:
            raise
        _interrupted(argv is None)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
    except OSError as exc:  # disk full, permission denied: an input/environment problem, not a bug
        if debug:
            raise
        from lmexport.atomic import disk_full_error

        full = disk_full_error(exc, Path(exc.filename).parent if exc.filename else Path.cwd())
        if full is not None:
            click.echo(f"error: {full.one_line()}", err=True)
            sys.exit(EXIT_USAGE)
        click.echo(f"error: {exc.strerror or exc} ({exc.filename or 'file system'})", err=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
