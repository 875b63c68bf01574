"""Beyond one machine: ggml-rpc-server on loopback holds the layers, llama-server --rpc drives it, and the
greedy tokens equal those of the same server computing locally."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from lmexport.exporters.gguf.write import GGUFOptions, export_gguf
from lmexport.runtime.llamacpp.server import LlamaServer, ServeOptions, free_port

REPO = Path(__file__).resolve().parents[3]
BUNDLED = REPO / "examples" / "liquid-metal-tiny"
PROMPTS = ["def add(a, b):", "import os\n"]


def completion(server: LlamaServer, prompt: str) -> list[int]:
    body = json.dumps({"prompt": prompt, "n_predict": 24, "temperature": 0, "return_tokens": True,
                       "cache_prompt": False}).encode()
    req = urllib.request.Request(server.base_url + "/completion", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        out = json.loads(r.read())
    assert out["tokens"], out
    return out["tokens"]


@pytest.fixture()
def rpc_worker(llamacpp_tools):
    port = free_port()
    proc = subprocess.Popen([str(llamacpp_tools["ggml-rpc-server"]), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    import socket

    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
    yield f"127.0.0.1:{port}", proc
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_rpc_worker_computes_the_layers_with_the_local_greedy_tokens(tmp_path, rpc_worker, llamacpp_tools):
    endpoint, worker = rpc_worker
    gguf = tmp_path / "bundled-f32.gguf"
    export_gguf(BUNDLED, gguf, GGUFOptions(outtype="f32"))
    with LlamaServer(gguf, ServeOptions(port=0, parallel=1, threads=1)) as local:
        want = [completion(local, p) for p in PROMPTS]
    with LlamaServer(gguf, ServeOptions(port=0, parallel=1, threads=1, rpc=endpoint, n_gpu_layers=99,
                                                  extra=["--log-verbosity", "4"])) as remote:
        got = [completion(remote, p) for p in PROMPTS]
        log = "\n".join(remote.log)
    assert got == want
    # the model's layers, its KV cache and its recurrent state (conv windows, running sums) live on the RPC device
    device = f"RPC0[{endpoint}]"
    for what in ("model buffer size", "KV buffer size", "RS buffer size"):
        assert any(device in ln and what in ln for ln in log.splitlines()), (what, log[-3000:])
    assert "offloaded 5/5 layers" in log          # 4 blocks and the output layer
    assert worker.poll() is None                   # the worker serves on
