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
import signal
import sys

import click

from lmexport.errors import EXIT_INTERRUPTED, EXIT_USAGE, LmexportError

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
    "bench": ("lmexport.commands.bench", "bench", "Benchmark an ONNX folder or a PyTorch model."),
    "llamacpp": ("lmexport.commands.llamacpp", "llamacpp", "Build llama.cpp with liquidmetal; quantize, run GGUFs."),
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


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


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


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # Ctrl-C and SIGTERM interrupt the work and clean up, even when the shell that
    # started us ignored SIGINT (background jobs inherit an ignored SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Only a process entry (no argv given) may re-execute itself (lmexport/runtime/hugepages.py).
    try:
        cli.main(args=args, prog_name="lmexport", standalone_mode=False, obj={"process_entry": argv is None})
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
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        if debug:
            raise
        click.echo("interrupted: nothing was written to the output path", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
    except OSError as exc:  # disk full, permission denied: an input/environment problem, not a bug
        if debug:
            raise
        click.echo(f"error: {exc.strerror or exc} ({exc.filename or 'file system'})", err=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
