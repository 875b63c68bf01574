"""llama.cpp's own programs on a liquidmetal GGUF agree with lmexport's commands on the same file:
llama-completion (plain text) with `lmexport generate`, llama-cli (one chat turn) with `lmexport chat`,
llama-perplexity with lmexport's llama.cpp scorer over llama-perplexity's own chunks."""
from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest

from cli_helpers import run_cli
from lmexport.exporters.gguf.write import GGUFOptions, export_gguf

REPO = Path(__file__).resolve().parents[3]
BUNDLED = REPO / "examples" / "liquid-metal-tiny"
HELDOUT = BUNDLED / "heldout.txt"
PROMPT = "def add(a, b):"
N = 24
EXTRA = 8


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, llamacpp_tools):
    root = tmp_path_factory.mktemp("tools-agree")
    out = {}
    for outtype in ("f32", "q8_0"):
        out[outtype] = root / f"bundled-{outtype}.gguf"
        export_gguf(BUNDLED, out[outtype], GGUFOptions(outtype=outtype))
    return out


def run_tool(exe: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_llama_completion_greedy_equals_lmexport_generate(ggufs, llamacpp_tools, outtype, tmp_path):
    # the text is read from --log-file, and llama-completion runs EXTRA tokens past lmexport's N: on a busy
    # machine its last piece can miss both the console and the log at exit, so lmexport's N tokens must be
    # a strict prefix of llama.cpp's longer greedy text rather than equal to it
    log = tmp_path / "completion.log"
    done = run_tool(llamacpp_tools["llama-completion"], "-m", ggufs[outtype], "-p", PROMPT, "-n", N + EXTRA, "--temp", "0",
                    "-no-cnv", "-t", "2", "--no-warmup", "--log-file", log)
    assert done.returncode == 0, done.stderr[-2000:]
    text = log.read_text(encoding="utf-8")
    text = text[text.index("\n" + PROMPT) + 1:]
    stamp = re.search(r"^\d+(\.\d+)+ [DIWE] ", text, re.M)       # the next log line ends the text
    text = text[:stamp.start()] if stamp else text
    mine = run_cli("generate", ggufs[outtype], "--prompt", PROMPT, "--max-new-tokens", N, "--threads", "2")
    assert mine.returncode == 0, mine.stderr
    assert mine.stdout.startswith(PROMPT) and len(mine.stdout) > len(PROMPT) + 4
    theirs, mine_text = text.rstrip("\n"), mine.stdout.rstrip("\n")
    if theirs.endswith(" [end of text]"):          # both stopped at the end-of-text token
        assert theirs.removesuffix(" [end of text]") == mine_text
    else:
        assert theirs.startswith(mine_text) and len(theirs) > len(mine_text), (theirs, mine_text)


def test_llama_cli_one_chat_turn_equals_lmexport_chat(ggufs, llamacpp_tools):
    message = "hello"
    done = run_tool(llamacpp_tools["llama-cli"], "-m", ggufs["f32"], "-p", message, "-st", "-n", N, "--temp", "0",
                    "-t", "2", "--no-warmup", "--simple-io")
    assert done.returncode == 0, done.stderr[-2000:]
    mine = run_cli("chat", ggufs["f32"], "--max-new-tokens", N, "--threads", "2", input=message + "\n")
    assert mine.returncode == 0, mine.stderr
    reply = mine.stdout[len(f"> {message}\n"):-2]
    assert reply.strip() and reply.strip() in done.stdout, (reply, done.stdout[-2000:])


def llama_perplexity_scheme(engine, ids: list[int], n_ctx: int) -> float:
    """llama-perplexity's estimate computed with lmexport's scorer: disjoint chunks of n_ctx tokens,
    each a fresh sequence, scoring the tokens after its first half (no BOS: the GGUF's add_bos is off)."""
    from lmexport.compare.metrics import nll_sum

    first = n_ctx // 2
    nll, count = 0.0, 0
    for c in range(len(ids) // n_ctx):
        chunk = ids[c * n_ctx:(c + 1) * n_ctx]
        logits = engine.logits(chunk)
        nll += nll_sum(logits[first:-1], chunk[first + 1:])
        count += n_ctx - first - 1
    return math.exp(nll / count)


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_llama_perplexity_agrees_with_lmexports_llamacpp_scorer(ggufs, llamacpp_tools, outtype, tmp_path):
    n_ctx = 256
    log = tmp_path / "perplexity.log"      # its console log can lose the last lines at exit; the file has them
    done = run_tool(llamacpp_tools["llama-perplexity"], "-m", ggufs[outtype], "-f", HELDOUT, "-c", n_ctx, "-t", "2",
                    "--log-file", log, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = float(re.search(r"Final estimate: PPL = ([0-9.]+)", log.read_text()).group(1))
    from lmexport.runtime.llamacpp.engine import LlamaCppEngine

    with LlamaCppEngine(ggufs[outtype], n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=2) as eng:
        ids = eng.tokenize(HELDOUT.read_text(encoding="utf-8"))
        mine = llama_perplexity_scheme(eng, ids, n_ctx)
    print(f"{outtype}: llama-perplexity {theirs:.4f}, lmexport scorer on its chunks {mine:.4f}")
    assert abs(mine / theirs - 1) < 2e-3, (mine, theirs)
    # lmexport's own windowing (windows of 256, stride 128) scores other tokens: near, not equal
    cli = run_cli("perplexity", ggufs[outtype], "--engine", "llama.cpp", "--text", HELDOUT, "--tokenizer", BUNDLED,
                  "--window", n_ctx, "--stride", n_ctx // 2, "--json")
    assert cli.returncode == 0, cli.stderr
    import json

    strided = json.loads(cli.stdout)["perplexity"]
    print(f"{outtype}: lmexport perplexity --engine llama.cpp (window 256, stride 128) {strided:.4f}")
    assert abs(strided / theirs - 1) < 0.1
