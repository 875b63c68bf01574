"""A benchmark workload checked against the model and the machine before anything runs.

``--batch 1000000`` or ``--prompt-tokens 100000`` would otherwise go straight into
ONNX Runtime or torch, allocate until the machine swaps, and not answer Ctrl-C
while a single call runs. Stdlib only.
"""
from __future__ import annotations

import os

from lmexport.bench.protocol import Workload

MAX_REPEATS = 1000
FLOAT_BYTES = 4


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux, else physical)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def estimate_bytes(workload: Workload, config: dict) -> int:
    """Rough peak memory of one prefill plus the decode state: logits, KV cache, activations."""
    def get(name, default=0):
        value = config.get(name, default)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    hidden, heads = get("hidden_size", 1), get("num_attention_heads", 1)
    kv_heads, head_dim = get("num_key_value_heads", heads), get("head_dim", max(1, hidden // heads))
    tokens = workload.prompt_tokens + workload.new_tokens
    per_sequence = (workload.prompt_tokens * get("vocab_size", 1)                          # prefill logits
                    + get("num_hidden_layers", 1) * 2 * kv_heads * head_dim * tokens       # KV cache
                    + workload.prompt_tokens * max(3 * get("intermediate_size", 1), 8 * hidden)  # activations
                    + heads * workload.prompt_tokens * workload.prompt_tokens)             # attention scores
    return per_sequence * workload.batch * FLOAT_BYTES


def workload_problems(workload: Workload, config: dict, threads: int | None) -> list[str]:
    """Everything in ``workload`` (and ``threads``) that this model or machine cannot take."""
    problems = workload.problems()
    if problems:
        return problems
    cpus = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cpus:
        problems.append(f"--threads {threads} is out of range: this machine has {cpus} CPUs")
    if workload.repeats > MAX_REPEATS:
        problems.append(f"--repeats {workload.repeats} is more than {MAX_REPEATS}")
    context = config.get("max_position_embeddings")
    if isinstance(context, int) and workload.prompt_tokens + workload.new_tokens > context:
        problems.append(f"--prompt-tokens {workload.prompt_tokens} plus --new-tokens {workload.new_tokens} "
                        f"exceed the model's context of {context} tokens")
    elif not problems:
        need, have = estimate_bytes(workload, config), available_memory()
        if need > have // 2:
            problems.append(f"--batch {workload.batch} with --prompt-tokens {workload.prompt_tokens} needs about "
                            f"{need / 1e9:,.1f} GB of memory; {have / 1e9:,.1f} GB are available")
    return problems
