"""ExecuTorch's own LLM runner on an lmexport .pte: the check that the program keeps the runner's contract.

``TextLLMRunner`` is the C++ runner of ``extension/llm/runner`` (behind ``llama_main`` and the Android
and iOS demo apps), here through the executorch wheel's Python bindings, in a subprocess (it prints
its own logs and stats).
"""
from __future__ import annotations

import subprocess
import sys

RUNNER_SCRIPT = """
import sys
import executorch.extension.llm.custom_ops.custom_ops  # the LLM kernels, as llama_main links them
from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
pte, tokenizer, prompt, new, bos, out = sys.argv[1:7]
pieces = []
runner = TextLLMRunner(pte, tokenizer)
runner.generate(prompt, GenerationConfig(echo=False, max_new_tokens=int(new), temperature=0.0, num_bos=int(bos)),
                token_callback=pieces.append)
open(out, "w", encoding="utf-8").write("".join(pieces))    # the runner prints its own stats on stdout
"""


def llm_runner_text(pte, prompt: str, new: int, out) -> str:
    """Greedy text from ExecuTorch's own C++ TextLLMRunner (extension/llm/runner: the runner behind
    llama_main and the Android and iOS demo apps, here through its Python bindings) with the
    tokenizer.json written beside the program; BOS as lmexport's tokenizer adds it (the runner's own
    rule is its ``num_bos`` setting, not the tokenizer's post-processor)."""
    from lmexport.runtime.tokenizer import TextTokenizer

    tok = TextTokenizer.from_folder(pte.parent)
    with_bos = tok.encode(prompt)
    bos = int(len(with_bos) > len(tok.encode(prompt, add_special_tokens=False)))
    done = subprocess.run([sys.executable, "-c", RUNNER_SCRIPT, str(pte), str(pte.parent / "tokenizer.json"),
                           prompt, str(new), str(bos), str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out.read_text(encoding="utf-8")
