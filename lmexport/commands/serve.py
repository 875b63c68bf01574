"""``lmexport serve MODEL.gguf``: llama.cpp's llama-server for a GGUF (OpenAI-compatible API, parallel slots)."""
from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("gguf_path", type=click.Path(path_type=Path), metavar="MODEL.gguf")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes the server to the network).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0 = a free port.")
@click.option("--parallel", "-np", default=4, show_default=True, type=click.IntRange(1, 256),
              help="Slots: requests decoded together (continuous batching).")
@click.option("--ctx-size", type=click.IntRange(16), help="Context of one slot [default: the GGUF's context length].")
@click.option("--threads", type=click.IntRange(1), help="CPU threads [default: llama-server's].")
@click.option("--rpc", metavar="HOST:PORT[,...]", help="ggml-rpc-server workers to spread the layers over.")
@click.option("--n-gpu-layers", type=int, help="Layers to offload (a GPU or RPC build); passed as -ngl.")
@click.option("--alias", help="Model name in /v1/models [default: the file name].")
@click.option("--verbose", is_flag=True, help="Echo llama-server's log to stderr.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED, metavar="[-- LLAMA_SERVER_ARGS...]")
def serve(gguf_path, host, port, parallel, ctx_size, threads, rpc, n_gpu_layers, alias, verbose, extra):
    """Serve a GGUF over HTTP with llama.cpp's llama-server (OpenAI-compatible API).

    Listens on 127.0.0.1 unless --host says otherwise, with --parallel slots
    sharing one KV pool (each slot gets the GGUF's context), the GGUF's chat
    template, and llama-server's continuous batching. Prints the URL and the
    plain llama-server command it ran; Ctrl-C stops the server. Arguments after
    `--` go to llama-server as they are. Needs `lmexport llamacpp build`.

    \b
    Examples:
      lmexport serve lm-q4_k_m.gguf
      lmexport serve lm-q4_k_m.gguf --parallel 8 --port 0
      lmexport serve lm-q4_k_m.gguf --rpc 192.168.1.20:50052 --n-gpu-layers 99
      curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
           -d '{"messages": [{"role": "user", "content": "hello"}]}'
    """
    from lmexport.errors import EXIT_INTERRUPTED
    from lmexport.runtime.llamacpp.server import LlamaServer, ServeOptions, ServerError

    extra = [a for a in extra if a != "--"]
    options = ServeOptions(host=host, port=port, parallel=parallel, ctx_per_slot=ctx_size, threads=threads, rpc=rpc,
                           n_gpu_layers=n_gpu_layers, alias=alias, extra=extra)
    echo = (lambda line: click.echo(line, err=True)) if verbose else None
    server = LlamaServer(gguf_path, options, echo=echo)
    server.prepare()
    click.echo(f"llama-server: {server.command_line()}", err=True)
    try:
        server.start()
        click.echo(f"serving {gguf_path.name} at {server.url} ({parallel} parallel slots, "
                   f"context {server.ctx_per_slot or 'of the model'} per slot); Ctrl-C stops it")
        sys.stdout.flush()
        code = server.wait()
    except KeyboardInterrupt:          # Ctrl-C or SIGTERM (cli.py): forwarded to llama-server as SIGINT
        server.stop()
        click.echo("stopped llama-server", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if code != 0:
        raise ServerError(f"llama-server exited with code {code}: {server.failure_reason()}")
