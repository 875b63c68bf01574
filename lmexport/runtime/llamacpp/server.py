"""Serve a GGUF with llama.cpp's own ``llama-server`` (OpenAI-compatible HTTP API, parallel slots).

``LlamaServer`` builds the plain ``llama-server`` command line (``command``), starts it, waits until
``/health`` answers, and stops it (SIGINT, as Ctrl-C would, then SIGKILL after a grace period).
The server's log is read by a thread (kept in memory, optionally echoed), so the pipe never fills;
when the server dies before it is ready, its own error line becomes the exception's message.

Defaults: 127.0.0.1, ``--parallel 4`` slots with a unified KV pool sized to ``parallel`` times the
context of one slot (``--kv-unified-per-slot``, default the GGUF's ``<arch>.context_length``), the
GGUF's chat template (llama-server's Jinja engine, on by default). Imports neither torch nor llama_cpp.
"""
from __future__ import annotations

import collections
import errno
import json
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from lmexport.errors import ArtifactError, InputError, LmexportError
from lmexport.runtime.llamacpp.tools import require_tool, scripts_dir

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080          # llama-server's own default
DEFAULT_PARALLEL = 4


class ServerError(LmexportError):
    """llama-server did not start, or stopped answering."""


@dataclass
class ServeOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT          # 0: a free port, picked before the server starts
    parallel: int = DEFAULT_PARALLEL
    ctx_per_slot: int | None = None   # None: the GGUF's context length
    threads: int | None = None
    rpc: str | None = None            # host:port[,host:port...] of ggml-rpc-server workers
    n_gpu_layers: int | None = None
    alias: str | None = None
    extra: list[str] = field(default_factory=list)   # passed to llama-server as they are


def check_port(host: str, port: int) -> int:
    """The port to use: ``port`` if nothing listens there (else an InputError), or a free one for 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {host} is in use",
                                 hint="pick another with --port, or --port 0 for a free one") from None
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                             hint="check --host") from None
        return s.getsockname()[1]


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return DEFAULT_HOST if host != "::" else "[::1]"
    return f"[{host}]" if ":" in host else host


def _on_path(name: str) -> Path:
    """The program as the user would call it: the venv's bin/ symlink when it points at the installed one."""
    exe = require_tool(name)
    link = scripts_dir() / name
    return link if link.is_symlink() and link.resolve() == exe.resolve() else exe


class LlamaServer:
    """One llama-server process for one GGUF."""

    def __init__(self, model: str | Path, options: ServeOptions | None = None, *, echo=None,
                 executable: str | Path | None = None):
        self.model = Path(model)
        self.options = options or ServeOptions()
        self.echo = echo                      # callable(line) for the server's log, or None
        self.executable = Path(executable) if executable else _on_path("llama-server")
        self.proc: subprocess.Popen | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=400)
        self._reader: threading.Thread | None = None
        self.port: int | None = None
        self.ctx_per_slot: int | None = None

    # ------------------------------------------------------------------ the command
    def prepare(self) -> list[str]:
        """Check the model file and the port, then return the command line (not started)."""
        if not self.model.is_file():
            raise ArtifactError(f"{self.model} not found", hint="write one with `lmexport gguf`")
        from lmexport.formats.gguf import architecture_and_context

        _, n_ctx = architecture_and_context(self.model)
        o = self.options
        if o.parallel < 1:
            raise InputError("--parallel must be at least 1")
        self.ctx_per_slot = o.ctx_per_slot or n_ctx
        self.port = check_port(o.host, o.port)
        return self.command()

    def command(self) -> list[str]:
        o = self.options
        cmd = [str(self.executable), "-m", str(self.model), "--host", o.host, "--port", str(self.port),
               "--parallel", str(o.parallel), "--kv-unified"]
        if self.ctx_per_slot:
            cmd += ["--kv-unified-per-slot", str(self.ctx_per_slot)]
        if o.threads:
            cmd += ["--threads", str(o.threads), "--threads-batch", str(o.threads)]
        if o.rpc:
            cmd += ["--rpc", o.rpc]
        if o.n_gpu_layers is not None:
            cmd += ["--n-gpu-layers", str(o.n_gpu_layers)]
        if o.alias:
            cmd += ["--alias", o.alias]
        return cmd + list(o.extra)

    def command_line(self) -> str:
        return shlex.join(self.command())

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.options.host)}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI API's base URL (what ``openai.OpenAI(base_url=...)`` takes)."""
        return self.base_url + "/v1"

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 120.0) -> "LlamaServer":
        cmd = self.prepare() if self.port is None else self.command()
        # its own session: a Ctrl-C in the terminal reaches lmexport, which forwards it (stop())
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self.log.append(line)
            if self.echo is not None:
                self.echo(line)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self._reader is not None:
                    self._reader.join(timeout=5)
                raise ServerError(f"llama-server exited (code {self.proc.returncode}) before it was ready: "
                                  f"{self.failure_reason()}", hint=self._hint())
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as r:
                    if r.status == 200 and json.loads(r.read() or b"{}").get("status") == "ok":
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.2)
        raise ServerError(f"llama-server was not ready after {timeout:.0f} s", hint=f"its last line: {self._last_line()}")

    def failure_reason(self) -> str:
        """The server's own error line, if it printed one, else its last line."""
        for line in self.log:
            low = line.lower()
            if "error loading model" in low:
                return line.split("error loading model:", 1)[-1].strip() or line.strip()
            if "unknown model architecture" in low or "couldn't bind" in low or "failed to load model" in low:
                return line.strip()
        return self._last_line()

    def _hint(self) -> str | None:
        text = "\n".join(self.log).lower()
        if "unknown model architecture" in text:
            return "this llama-server has no liquidmetal architecture: run `lmexport llamacpp build`"
        if "couldn't bind" in text or "address already in use" in text:
            return "the port is in use: pick another with --port, or --port 0 for a free one"
        if "error loading model" in text or "failed to load model" in text:
            return "expected a liquidmetal (streaming) or llama GGUF from `lmexport gguf`"
        return None

    def _last_line(self) -> str:
        lines = [ln.strip() for ln in self.log if ln.strip()]
        return lines[-1] if lines else "no output"

    def wait(self) -> int:
        """Block until the server exits; returns its exit code."""
        return self.proc.wait()

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGINT (llama-server shuts down cleanly on it), then SIGKILL after ``grace`` seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=grace)
            except ProcessLookupError:
                pass
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.proc.returncode

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port(host: str = DEFAULT_HOST) -> int:
    return check_port(host, 0)

