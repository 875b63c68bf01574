"""The browser page (examples/web/) in headless Chromium: transformers.js's web build on
onnxruntime-web (WebAssembly) runs folders of the bundled model exported with
``--target transformers.js`` and gives lmexport's greedy tokens, for one prompt and for a
chat that keeps its state; a folder too large for the browser and a missing WebGPU get a
message on the page. The page is served by examples/web/serve.py over loopback and driven
by node/browser.mjs (puppeteer-core with the system's Chromium: Debian's ``chromium``,
scripts/system_deps.sh; the npm packages from scripts/setup_node.sh). Without them these
tests skip, unless LMEXPORT_REQUIRE_BROWSER=1 (scripts/test.sh sets it)."""
from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from lmexport.errors import ExportError
from lmexport.exporters.onnx.transformersjs import BROWSER_MISSING_OPS, check_browser_ops
from lmexport.manifest import Manifest
from lmexport.runtime import ChatSession, Generator
from lmexport.runtime.tokenizer import TextTokenizer

from onnx_consumers import ROOT, exported, lmexport_tokens

NODE_DIR = Path(__file__).resolve().parent / "node"
DRIVER = NODE_DIR / "browser.mjs"
SERVE = ROOT / "examples" / "web" / "serve.py"
CHROMIUM = os.environ.get("LMEXPORT_CHROMIUM", "/usr/bin/chromium")
PROMPT, NEW_TOKENS = "def read_file(path):", 32
# a chat whose later replies depend on the state (test_browser_chat_keeps_its_state checks that)
CHAT, CHAT_TOKENS = ("def read_file(path):", "import os", "class Point(object):"), 16
STEPS = [{"mode": "complete", "prompt": PROMPT, "max_new_tokens": NEW_TOKENS}, {"reset": True}] + \
        [{"mode": "chat", "prompt": text, "max_new_tokens": CHAT_TOKENS} for text in CHAT]
TIMEOUT_S = 120                       # each wait of the driver; the driver's own watchdog stops it after 2x


@pytest.fixture(scope="module")
def node():
    """The node binary, once puppeteer-core is installed and Chromium is there."""
    binary = shutil.which("node")
    missing = [what for what, there in [
        ("node", binary is not None),
        ("puppeteer-core (bash scripts/setup_node.sh)", (NODE_DIR / "node_modules" / "puppeteer-core").is_dir()),
        (f"Chromium at {CHROMIUM} (bash scripts/system_deps.sh: Debian's chromium)", Path(CHROMIUM).is_file()),
    ] if not there]
    if missing:
        message = "the browser tests need " + ", ".join(missing)
        if os.environ.get("LMEXPORT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return binary


@contextmanager
def served(folder: Path, *extra: str):
    """examples/web/serve.py for ``folder`` on a free loopback port: yields its URL; always stopped."""
    server = subprocess.Popen([sys.executable, str(SERVE), "--model", str(folder), "--port", "0", "--quiet", *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 30)
        line = server.stdout.readline() if ready else ""
        assert line.startswith("serving http://127.0.0.1:"), line + server.stderr.read() if server.poll() else line
        yield line.split()[1]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def open_page(node, folder: Path, steps: list | dict = (), query: str = "") -> dict:
    """The page on ``folder`` after ``steps`` (a list of steps or a dict of graphs: browser.mjs's JSON)."""
    with served(folder) as url:
        request = json.dumps(steps if isinstance(steps, dict) else list(steps))
        done = subprocess.run([node, str(DRIVER), url + query, request], capture_output=True,
                              text=True, cwd=NODE_DIR, timeout=2 * TIMEOUT_S * (len(steps) + 1) + 30,
                              env={**os.environ, "LMEXPORT_CHROMIUM": CHROMIUM,
                                   "LMEXPORT_BROWSER_TIMEOUT_S": str(TIMEOUT_S)})
    assert done.stdout.strip(), done.stderr[-3000:]
    page = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and not page["crashed"], json.dumps(page, indent=1)[-4000:]
    return page


_runs: dict[str, dict] = {}


def page_run(node, name: str, tmp_path_factory) -> tuple[Path, dict]:
    """The bundled model's folder ``name`` after STEPS in the page (run once per session)."""
    folder = exported(name, tmp_path_factory)
    if name not in _runs:
        _runs[name] = open_page(node, folder, STEPS)
        assert _runs[name]["state"] == "ready", _runs[name]["status"]
    return folder, _runs[name]


@pytest.mark.parametrize("name", ["tjs-fp32", "tjs-int4"])
def test_browser_greedy_equals_lmexport_generate(node, name, tmp_path_factory):
    """One prompt from a fresh state: the page's ids are lmexport's, and so are its 32 greedy tokens,
    on onnxruntime-web's WebAssembly provider in a cross-origin isolated page."""
    folder, page = page_run(node, name, tmp_path_factory)
    load, turn = page["load"], page["turns"][0]
    assert load["device"] == "wasm" and load["cross_origin_isolated"] is True
    assert load["weight_bytes"] == sum(Manifest.read(folder).files[f]["bytes"] for f in ("model.onnx", "model.onnx.data"))
    assert turn["mode"] == "complete" and turn["prompt_ids"] == TextTokenizer.from_folder(folder).encode(PROMPT)
    want = lmexport_tokens(folder, [PROMPT], NEW_TOKENS)[0]
    assert len(want) == NEW_TOKENS and turn["finish"] == "length"       # no EOS came: all 32 are compared
    assert turn["reply_ids"] == want
    assert turn["decode_tokens_per_s"] > 0
    # everything came from the page's server: the folder, node_modules' web builds, the page
    assert "/model/model.onnx.data" in page["requests"]
    assert "/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm" in page["requests"]   # the plain build


@pytest.mark.parametrize("name", ["tjs-fp32", "tjs-int4"])
def test_browser_chat_keeps_its_state(node, name, tmp_path_factory):
    """Three chat turns: after each, the ids in the page's state are those lmexport's ChatSession
    holds (the rendered template's new text, the reply and its EOS), so every reply equals
    lmexport chat's; only the first turn starts from zeros."""
    folder, page = page_run(node, name, tmp_path_factory)
    turns = [t for t in page["turns"] if t["mode"] == "chat"]
    assert [t["prompt"] for t in turns] == list(CHAT)
    assert [t["rebuild"] for t in turns] == [True, False, False]
    gen = Generator.from_folder(folder)
    chat = ChatSession(gen, max_new_tokens=CHAT_TOKENS)
    for text, turn in zip(CHAT, turns):
        reply = "".join(chat.send(text))
        assert turn["fed"] == chat.fed, text
        assert turn["text"] == reply
    # the state matters here: a later turn's new text alone, from zeros, continues otherwise (one of
    # them: a short greedy reply can coincide, as the int4 folder's second turn does since issue 23's fp16 scales)
    alone = [gen.generate([gen.tokenizer.decode(t["new_ids"])], max_new_tokens=CHAT_TOKENS)[0].token_ids
             for t in turns[1:]]
    assert alone != [t["reply_ids"] for t in turns[1:]]


def test_browser_refuses_a_folder_too_large_for_the_page(node, tmp_path_factory):
    """A folder whose graph and weights (sizes from lmexport.json) exceed the page's limit: one
    message on the page, before any weight is fetched; the tab stays alive."""
    folder = exported("tjs-fp32", tmp_path_factory)
    page = open_page(node, folder, query="?max_weight_mb=4")      # the folder is 8.0 MiB
    assert page["state"] == "error"
    assert "more than the 0.004 GiB a browser tab can hold in WebAssembly memory" in page["status"]
    assert "--quantize int4" in page["status"]
    assert "/model/lmexport.json" in page["requests"]
    assert not {"/model/model.onnx", "/model/model.onnx.data"} & set(page["requests"])


def test_browser_without_webgpu_says_so(node, tmp_path_factory):
    """device=webgpu where the browser has none (headless Chromium here): a message, no fetch."""
    folder = exported("tjs-fp32", tmp_path_factory)
    page = open_page(node, folder, query="?device=webgpu")
    assert page["state"] == "error"
    assert "WebGPU is not available in this browser" in page["status"] and "choose wasm" in page["status"]
    assert not any(path.startswith("/model/") for path in page["requests"])


def test_browser_server_serves_only_its_trees(tmp_path_factory):
    """serve.py: loopback only, COOP/COEP on every response (cross-origin isolation for wasm
    threads), wasm as application/wasm, and nothing outside the page, the folder and the
    web builds' dist/ folders."""
    folder = exported("tjs-fp32", tmp_path_factory)
    if not (NODE_DIR / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.skip("run bash scripts/setup_node.sh")
    with served(folder) as url:
        host, port = url.split("//")[1].strip("/").split(":")
        assert host == "127.0.0.1"

        def get(path):
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()

        status, headers, body = get("/model/lmexport.json")
        assert status == 200 and json.loads(body)["format"] == "lmexport-onnx"
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        status, headers, _ = get("/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.wasm")
        assert status == 200 and headers["Content-type"] == "application/wasm"
        status, headers, _ = get("/app.mjs")
        assert status == 200 and headers["Content-type"] == "text/javascript"
        for outside in ("/model/../serve.py", "/model/%2e%2e/%2e%2e/etc/passwd", "/node_modules/puppeteer-core/package.json",
                        "/node_modules/onnxruntime-web/package.json", "/model/"):
            assert get(outside)[0] == 404, outside


def test_browser_server_refuses_a_folder_without_the_loader(tmp_path):
    """A folder that is not a --target transformers.js export: one line, exit 2, no server."""
    done = subprocess.run([sys.executable, str(SERVE), "--model", str(tmp_path), "--port", "0"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "--target transformers.js" in done.stderr


def quantised_graphs() -> list[tuple[str, bytes, dict]]:
    """One-node graphs of the contrib ops a quantised export uses or may use: MatMulNBits with 4-
    and 8-bit weights (the int4 recipe, its 8-bit lm_head) and GatherBlockQuantized (a quantised
    embedding), 4 and 8 bits, with and without zero points. accuracy_level 0: exact float
    arithmetic, so that onnxruntime on the CPU gives the reference."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graphs = []

    def add(name, node, inputs, initializers, feeds):
        graph = helper.make_graph([node], name, inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(v, k) for k, v in initializers.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 10
        graphs.append((name, model.SerializeToString(), feeds))

    k, n, block = 64, 48, 32
    for bits in (4, 8):
        for zero_points in (False, True):
            init = {"W": rng.integers(0, 256, size=(n, k // block, block * bits // 8), dtype=np.uint8),
                    "S": (rng.random(n * k // block, dtype=np.float32) * 0.1)}
            if zero_points:
                init["Z"] = rng.integers(0, 256, size=(n * ((k // block * bits + 7) // 8),), dtype=np.uint8)
            add(f"MatMulNBits bits={bits}{' zero points' if zero_points else ''}",
                helper.make_node("MatMulNBits", ["A", *init], ["Y"], domain="com.microsoft", K=k, N=n, bits=bits,
                                 block_size=block, accuracy_level=0),
                [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, 3, k])], init,
                {"A": rng.standard_normal((2, 3, k)).astype(np.float32)})
    vocab, dim = 100, 64
    for bits in (4, 8):
        for zero_points in (False, True):
            init = {"E": rng.integers(0, 256, size=(vocab, dim * bits // 8), dtype=np.uint8),
                    "S": rng.random((vocab, dim // block), dtype=np.float32) * 0.1}
            inputs = ["E", "I", "S"]
            if zero_points:
                init["Z"] = rng.integers(0, 256, size=(vocab, max(dim // block * bits // 8, 1)), dtype=np.uint8)
                inputs.append("Z")
            add(f"GatherBlockQuantized bits={bits}{' zero points' if zero_points else ''}",
                helper.make_node("GatherBlockQuantized", inputs, ["Y"], domain="com.microsoft", bits=bits,
                                 block_size=block, gather_axis=0, quantize_axis=1),
                [helper.make_tensor_value_info("I", TensorProto.INT64, [2, 3])], init,
                {"I": np.array([[1, 5, 99], [0, 42, 7]], dtype=np.int64)})
    # the standard-op form of an 8-bit blocked embedding: Gather the rows and their scales, then
    # DequantizeLinear with block_size (opset 21)
    table = rng.integers(0, 256, size=(vocab, dim), dtype=np.uint8)
    scales = rng.random((vocab, dim // block), dtype=np.float32) * 0.1
    zeros = rng.integers(0, 256, size=(vocab, dim // block), dtype=np.uint8)
    nodes = [helper.make_node("Gather", ["E", "I"], ["q"]), helper.make_node("Gather", ["S", "I"], ["s"]),
             helper.make_node("Gather", ["Z", "I"], ["z"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["Y"], axis=-1, block_size=block)]
    graph = helper.make_graph(nodes, "gather-dq", [helper.make_tensor_value_info("I", TensorProto.INT64, [2, 3])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(table, "E"), numpy_helper.from_array(scales, "S"),
                               numpy_helper.from_array(zeros, "Z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    graphs.append(("Gather + DequantizeLinear block_size uint8", model.SerializeToString(),
                   {"I": np.array([[1, 5, 99], [0, 42, 7]], dtype=np.int64)}))
    return graphs


_graph_runs: dict[str, dict] = {}
# the onnxruntime-web builds the page's import map chooses: device=wasm gets the plain WebAssembly
# build; device=webgpu gets the WebGPU build, whose WebAssembly (asyncify) kernels are the ones
# every device of a stock transformers.js web app runs on (it imports onnxruntime-web/webgpu)
BUILDS = {"wasm": "", "webgpu": "?device=webgpu"}


def graphs_in_the_page(node, tmp_path_factory, build: str) -> tuple[list, dict]:
    """quantised_graphs() run on the WebAssembly provider of the page's onnxruntime-web ``build``
    (once per session and build; on webgpu the page itself stops at its missing adapter)."""
    import base64

    graphs = quantised_graphs()
    if build not in _graph_runs:
        folder = exported("tjs-int4", tmp_path_factory)
        request = {"graphs": [{"name": name, "model": base64.b64encode(model).decode(),
                               "feeds": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "data": v.ravel().tolist()}
                                         for k, v in feeds.items()}} for name, model, feeds in graphs]}
        _graph_runs[build] = open_page(node, folder, request, query=BUILDS[build])["graphs"]
    return graphs, _graph_runs[build]


def op_types(model: bytes) -> set[tuple[str, str]]:
    import onnx

    return {(n.domain or "", n.op_type) for n in onnx.load_from_string(model).graph.node}


@pytest.mark.parametrize("build", list(BUILDS))
def test_browser_runs_the_quantised_ops(node, build, tmp_path_factory):
    """onnxruntime-web's WebAssembly kernels in the page run MatMulNBits (4 and 8 bits) and a
    Gather + DequantizeLinear embedding, and the plain build GatherBlockQuantized too, and
    compute what onnxruntime computes on the CPU."""
    import numpy as np
    import onnxruntime

    graphs, got = graphs_in_the_page(node, tmp_path_factory, build)
    failures, ran = [], []
    for name, model, feeds in graphs:
        if build == "webgpu" and op_types(model) & set(BROWSER_MISSING_OPS):
            continue
        want = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        if "error" in got[name]:
            failures.append(f"{name}: {got[name]['error']}")
            continue
        y = np.asarray(got[name]["data"], dtype=np.float32).reshape(got[name]["dims"])
        if y.shape != want.shape or not np.allclose(y, want, rtol=1e-5, atol=1e-4 * np.abs(want).max()):
            failures.append(f"{name}: differs by {np.abs(y - want).max()}")
        ran.append(name)
    assert not failures, failures
    assert {"MatMulNBits bits=8", "MatMulNBits bits=4", "Gather + DequantizeLinear block_size uint8"} <= set(ran)
    assert build == "webgpu" or len(ran) == len(graphs)


def test_browser_lacks_the_ops_the_export_refuses(node, tmp_path_factory):
    """Each op in BROWSER_MISSING_OPS still fails in the WebGPU build's WebAssembly kernels (a newer
    onnxruntime-web that runs one makes this fail: then the transformers.js target may use it)."""
    graphs, got = graphs_in_the_page(node, tmp_path_factory, "webgpu")
    for domain, op in BROWSER_MISSING_OPS:
        cases = [name for name, model, _ in graphs if (domain, op) in op_types(model)]
        assert cases, op
        for name in cases:
            assert f"Could not find an implementation for {op}" in got[name].get("error", ""), (name, got[name])


def test_browser_target_refuses_a_graph_with_an_op_the_browser_lacks(tmp_path_factory):
    """check_browser_ops (run by the export for --target transformers.js) passes the exported
    folders and names the missing op and the way out for a graph that uses one."""
    import onnx

    for name in ("tjs-fp32", "tjs-int4"):
        check_browser_ops(onnx.load(str(exported(name, tmp_path_factory) / "model.onnx"), load_external_data=False).graph)
    gbq = next(model for name, model, _ in quantised_graphs() if name.startswith("GatherBlockQuantized"))
    with pytest.raises(ExportError, match="onnxruntime-web has no com.microsoft.GatherBlockQuantized .*DequantizeLinear"):
        check_browser_ops(onnx.load_from_string(gbq).graph)
