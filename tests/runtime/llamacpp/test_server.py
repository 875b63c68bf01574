"""`lmexport serve`: llama.cpp's llama-server on a liquidmetal GGUF, driven by the real `openai` client.

Greedy answers equal `lmexport chat` (the GGUF's chat template, llama.cpp), streaming equals the
whole answer, and four concurrent requests decoded together in the server's slots (continuous
batching) each equal the same request sent alone: the conv window and running sums of one slot
never leak into another. Servers listen on 127.0.0.1 on free ports and are always stopped.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cli_helpers import run_cli
from lmexport.exporters.gguf.write import GGUFOptions, export_gguf

openai = pytest.importorskip("openai")

REPO = Path(__file__).resolve().parents[3]
BUNDLED = REPO / "examples" / "liquid-metal-tiny"
ALIAS = "liquid-metal-tiny"
MAX_TOKENS = 24
MESSAGES = ["hello", "def add(a, b):", "Write a function that reads a file.", "import os"]
# plain completions for the concurrency test: the code model's chat replies are alike, its code is not
PROMPTS = ["def add(a, b):", "import os\n", "class Stack:\n    def", "for i in range("]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory, llamacpp_tools):
    path = tmp_path_factory.mktemp("serve") / "bundled-f32.gguf"
    export_gguf(BUNDLED, path, GGUFOptions(outtype="f32"))
    return path


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read_line(stream, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    ready = sel.select(timeout)
    sel.close()
    return stream.readline() if ready else ""


class Served:
    """`lmexport serve GGUF --port 0 ...` as a user runs it; the URL is read from its first line."""

    def __init__(self, gguf: Path, *args: str, timeout: float = 120):
        self.gguf = gguf
        self.proc = subprocess.Popen([sys.executable, "-m", "lmexport.cli", "serve", str(gguf), "--port", "0",
                                      "--threads", "2", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ})
        self.stderr = ""
        self.command = _read_line(self.proc.stderr, timeout)      # printed before the server starts
        line = _read_line(self.proc.stdout, timeout)
        if "serving" not in line:
            self.stop()
            pytest.fail(f"lmexport serve did not start: {line!r} {self.command!r} {self.stderr!r}")
        self.banner = line
        self.url = line.split(" at ", 1)[1].split()[0]
        self.server_pids = _children(self.proc.pid)
        self.client = openai.OpenAI(base_url=self.url, api_key="none", timeout=120, max_retries=0)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)          # what Ctrl-C sends
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.stderr = self.proc.stderr.read()
        for pid in getattr(self, "server_pids", []):     # never leave a llama-server behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        return self.proc.returncode


@pytest.fixture(scope="module")
def served(gguf):
    server = Served(gguf, "--parallel", "4", "--alias", ALIAS)
    yield server
    code = server.stop()
    assert code == 130 and "stopped llama-server" in server.stderr, (code, server.stderr)
    assert not any(_alive(pid) for pid in server.server_pids)


def chat(client, message: str, max_tokens: int = MAX_TOKENS, **kw) -> str:
    done = client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": message}],
                                          temperature=0, max_tokens=max_tokens, **kw)
    return done.choices[0].message.content


def complete(client, prompt: str, max_tokens: int = 48) -> str:
    done = client.completions.create(model=ALIAS, prompt=prompt, temperature=0, max_tokens=max_tokens)
    return done.choices[0].text


def lmexport_generate(gguf: Path, prompt: str, n: int) -> str:
    """The text `lmexport generate GGUF` (greedy) adds to the prompt."""
    done = run_cli("generate", gguf, "--prompt", prompt, "--max-new-tokens", n, "--threads", "2", timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(prompt) and done.stdout.endswith("\n")
    return done.stdout[len(prompt):-1]


def lmexport_chat_reply(gguf: Path, message: str) -> str:
    """The first reply of `lmexport chat GGUF` (greedy), from its output "> message\\nREPLY\\n\\n"."""
    done = run_cli("chat", gguf, "--max-new-tokens", MAX_TOKENS, "--threads", "2", input=message + "\n",
                   timeout=300)
    assert done.returncode == 0, done.stderr
    head = f"> {message}\n"
    assert done.stdout.startswith(head) and done.stdout.endswith("\n\n"), done.stdout
    return done.stdout[len(head):-2]


def test_serve_prints_the_url_and_the_plain_command(served, gguf):
    assert served.url.startswith("http://127.0.0.1:") and served.url.endswith("/v1")
    port = served.url.rsplit(":", 1)[1].split("/")[0]
    assert served.command.startswith("llama-server: ")
    argv = served.command.split(": ", 1)[1].split()
    assert Path(argv[0]).name == "llama-server" and Path(argv[0]).is_file()
    assert argv[argv.index("-m") + 1] == str(gguf) and argv[argv.index("--port") + 1] == port
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--parallel") + 1] == "4"
    assert argv[argv.index("--kv-unified-per-slot") + 1] == "512"     # the bundled GGUF's context
    with urllib.request.urlopen(served.url.rsplit("/v1", 1)[0] + "/health", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_chat_completion_equals_lmexport_chat(served, gguf):
    want = lmexport_chat_reply(gguf, MESSAGES[0])
    assert want.strip()
    assert chat(served.client, MESSAGES[0]) == want


def test_streaming_gives_the_same_text(served):
    whole = chat(served.client, MESSAGES[1])
    pieces = []
    for chunk in served.client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": MESSAGES[1]}],
                                                       temperature=0, max_tokens=MAX_TOKENS, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert len(pieces) > 1 and "".join(pieces) == whole


def test_concurrent_requests_each_equal_the_request_alone(served):
    """Four different prompts at once, decoded together in four slots, then each alone."""
    assert complete(served.client, PROMPTS[0], 24) == lmexport_generate(served.gguf, PROMPTS[0], 24)
    busy, stop = [], threading.Event()
    base = served.url.rsplit("/v1", 1)[0]

    def watch():            # how many slots decode at the same moment (llama-server's /slots)
        while not stop.is_set():
            try:
                with urllib.request.urlopen(base + "/slots", timeout=5) as r:
                    busy.append(sum(1 for s in json.loads(r.read()) if s.get("is_processing")))
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: complete(served.client, p), PROMPTS))
    stop.set()
    watcher.join(timeout=10)
    alone = [complete(served.client, p) for p in PROMPTS]
    print("slots busy at once (max):", max(busy, default=0))
    assert max(busy, default=0) >= 2, "the requests were not decoded together"
    assert len(set(together)) == len(PROMPTS)             # different prompts, different texts
    assert together == alone
    # and again, each on a slot that last held another prompt
    assert [complete(served.client, p) for p in reversed(PROMPTS)] == alone[::-1]


def test_models_endpoint_lists_the_model(served):
    models = served.client.models.list()
    assert [m.id for m in models.data] == [ALIAS]


def test_malformed_requests_get_http_4xx_and_the_server_keeps_serving(served):
    want = chat(served.client, MESSAGES[0])
    url = served.url + "/chat/completions"
    bad = [{"messages": "not a list"}, {"prompt": "no messages"},
           {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}]
    for body in [json.dumps(b).encode() for b in bad]:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=30)
        assert exc.value.code == 400, (body, exc.value.code)
        assert json.loads(exc.value.read())["error"]["type"] == "invalid_request_error"
    # a body that is not JSON at all: this llama-server answers 500 (its JSON parser's exception), and lives on
    req = urllib.request.Request(url, data=b"{not json", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=30)
    assert exc.value.code >= 400 and "parse error" in exc.value.read().decode()
    with pytest.raises(openai.BadRequestError):
        served.client.chat.completions.create(model=ALIAS, messages=[{"role": "wizard", "content": 3}], max_tokens=4)
    assert chat(served.client, MESSAGES[0]) == want


# ---------------------------------------------------------------- one-line errors, exit 2
def test_serve_errors_are_one_line_exit_2(gguf, tmp_path):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("this is a text file, not a model\n" * 8)
    cases = [([tmp_path / "missing.gguf"], "not found"), ([not_gguf], "not a GGUF")]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        cases.append(([gguf, "--port", str(busy.getsockname()[1])], "is in use"))
        for args, text in cases:
            done = run_cli("serve", *args, timeout=60)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2 and len(lines) == 1 and text in lines[0], (args, done.stderr)
    empty = tmp_path / "no-tools"
    empty.mkdir()
    done = run_cli("serve", gguf, "--port", "0", env={"LMEXPORT_LLAMACPP_TOOLS": str(empty)}, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "llama-server is not installed" in done.stderr and "lmexport llamacpp build" in done.stderr


def test_serve_reports_llama_servers_own_load_error(tmp_path, llamacpp_tools):
    legacy = tmp_path / "legacy.gguf"
    from lmexport.modeling.tiny import make_model_folder

    folder = make_model_folder(tmp_path / "legacy", seed=1, context_mode="legacy")
    export_gguf(folder, legacy, GGUFOptions(outtype="f32"))
    done = run_cli("serve", legacy, "--port", "0", timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[-1].startswith("error: llama-server exited") and "context_mode 'legacy'" in lines[-1], lines
