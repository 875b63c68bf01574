"""Which weights an int4/int8 export quantises and at how many bits (issue 23; quant.py rewrites them).

* ``find_sites``: every constant MatMul weight and the embedding table, a tied head merged into
  the embedding (one copy feeds both).
* ``plan_bits``: 4 bits everywhere, then 8 bits within a bits-per-weight budget, by
  ``measure_sensitivity`` (the KL each 4-bit weight adds, a Fisher estimate) per extra byte;
  ``q4_k_m_bits`` is the default budget
  (llama.cpp's Q4_K_M mix for the same matrices), ``site_bytes`` what each choice costs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from lmexport.exporters.onnx.blockquant import Quantized
from lmexport.tensor_names import EMBEDDING, LM_HEAD, lookup, lookup_pack

log = logging.getLogger(__name__)

SENSITIVITY_TOKENS = (2, 64)      # int4 planning: the random token ids whose gradients rank the weights
SENSITIVITY_SEED = 1234           # not the validation's seed (0)
SENSITIVITY_SAMPLES = 4           # forward/backward passes, each with its own token ids and sampled outputs
EXACT = 1e-10                     # an estimated KL this small is float rounding: the 4-bit form is exact (a layer
                                  # on a q4_1 grid measures ~1e-14), and 8 bits would only round it


# ---------------------------------------------------------------- what gets quantised

@dataclass
class Site:
    """One quantised weight: the stored initializer, its [N, K] matrix, the nodes reading it."""
    name: str                      # initializer name (canonical or pack); the quantised ones add suffixes
    matrix: np.ndarray             # [N, K]: rows are outputs (MatMulNBits' layout)
    matmuls: list                  # MatMul nodes with it as B (its transpose is the [K, N] initializer)
    gathers: list                  # Gather nodes with it as data (the embedding)
    drop: list                     # initializers it replaces

    @property
    def numel(self) -> int:
        return int(self.matrix.size)


def find_sites(graph: onnx.GraphProto, block: int) -> list[Site]:
    """Every constant MatMul weight and the embedding table, a tied head merged into the embedding."""
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in inits:
                readers.setdefault(name, []).append((node, i))
    sites: dict[str, Site] = {}
    for name, uses in readers.items():
        t = inits[name]
        if len(t.dims) != 2 or t.data_type != onnx.TensorProto.FLOAT:
            continue
        matmul = [n for n, i in uses if n.op_type == "MatMul" and i == 1]
        gather = [n for n, i in uses if n.op_type == "Gather" and i == 0] if name == EMBEDDING.name else []
        if len(matmul) + len(gather) != len(uses) or not (matmul or gather):
            continue                                   # read by something else too: leave it fp32
        k = t.dims[0] if matmul else t.dims[1]         # MatMul B is [K, N]; the table is [vocab, hidden]
        if k % block and gather:
            log.info("leaving %s fp32: its row size %d is not a multiple of the block size %d", name, k, block)
            continue
        array = numpy_helper.to_array(t)
        sites[name] = Site(name, np.ascontiguousarray(array.T if matmul else array), matmul, gather, [name])
    emb, head = sites.get(EMBEDDING.name), sites.get(LM_HEAD.name)
    if emb is not None and head is not None and emb.matrix.shape == head.matrix.shape \
            and np.array_equal(emb.matrix, head.matrix):
        emb.matmuls += head.matmuls                     # tied: one copy feeds both
        emb.drop.append(head.name)
        del sites[head.name]
        log.info("tied lm_head: stored once, shared with the embedding")
    return list(sites.values())


# ---------------------------------------------------------------- bit widths under a budget

def site_bytes(site: Site, bits: int, block: int, offsets: bool = False, scale_bytes: int = 2) -> int:
    """Bytes of one site at ``bits``: blocks, scales (``scale_bytes`` each), packed uint8 zero
    points, and (``offsets``, 4 bits) one fp16 offset per block."""
    n, k = site.matrix.shape
    nb = -(-k // block)
    zeros = n * -(-nb * bits // 8) + (n * nb * 2 if offsets else 0)
    return n * nb * block * bits // 8 + n * nb * scale_bytes + zeros


def q4_k_m_bits(sites: list[Site], config) -> float:
    """Bits per weight of llama.cpp's Q4_K_M for these weights: the mix of llama_tensor_get_type
    (llama-quant.cpp, read): Q6_K (6.5625 bpw) for the output head (the embedding when tied)
    and for attn_v / ffn_down in the layers use_more_bits picks (first and last eighth, every
    third between), Q4_K (4.5) for the rest; a row length that is not a multiple of 256 falls
    back to Q5_0 (5.5) for Q4_K and Q8_0 (8.5) for Q6_K. Only these weights are counted."""
    n = config.num_hidden_layers

    def more_bits(i: int) -> bool:
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    total = bits = 0.0
    for site in sites:
        for ref, rows, k in _members(site, config):
            name = ref.name if ref is not None else ""
            high = ref is not None and (ref.entry.module in ("lm_head", "embedding") or (
                ref.bid is not None and more_bits(ref.bid)
                and (name.endswith("v_proj.weight") or name.endswith("down_proj.weight"))))
            fits = k % 256 == 0
            bpw = (6.5625 if fits else 8.5) if high else (4.5 if fits else 5.5)
            bits += bpw * rows * k
            total += rows * k
    return bits / total


def _members(site: Site, config):
    """(canonical ref or None, output rows, K) of each tensor a site stores."""
    n, k = site.matrix.shape
    pack = lookup_pack(site.name)
    if pack is not None:
        return [(ref, end - first, k) for ref, first, end in pack.columns(config)]
    return [(lookup(site.name), n, k)]


def plan_bits(sites: list[Site], block: int, budget_bpw: float, sensitivity: dict[str, float],
              offsets: frozenset[str] = frozenset(), scale_bytes: int = 2) -> dict[str, int]:
    """4 bits everywhere, then 8 bits while the total stays within ``budget_bpw`` bits per quantised
    weight (``offsets``: the sites whose 4-bit form carries float offsets, ``site_bytes``), the sites
    whose 4-bit form costs the most KL (``measure_sensitivity``) per extra byte first.

    There is no rule for the output head: the Fisher estimate sees its error land on the logits, so
    it ranks the head where it belongs (the earlier per-matrix measure needed a head-first rule)."""
    bits = {s.name: 4 for s in sites}
    limit = budget_bpw * sum(s.numel for s in sites) / 8
    four = {s.name: site_bytes(s, 4, block, s.name in offsets, scale_bytes) for s in sites}
    used = sum(four.values())
    extra = {s.name: site_bytes(s, 8, block, scale_bytes=scale_bytes) - four[s.name] for s in sites}
    order = sorted(sites, key=lambda s: -sensitivity.get(s.name, 0.0) / max(extra[s.name], 1))
    for s in order:
        if sensitivity and sensitivity.get(s.name, 0.0) <= EXACT:
            continue                        # its 4-bit form is already exact: 8 bits would only round it
        if used + extra[s.name] <= limit:
            bits[s.name] = 8
            used += extra[s.name]
    return bits


def measure_sensitivity(model, sites: list[Site], config, quantized: dict[str, Quantized]) -> dict[str, float]:
    """Per site, the KL its 4-bit version adds to the model's next-token distribution, estimated to
    second order with the diagonal of the Fisher information: KL ~ 1/2 sum_i F_ii dw_i^2, with dw the
    4-bit rounding error and F_ii = E[(d log p(y) / d w_i)^2], y drawn from the model's own output
    (no labels, no data: fixed random token ids). One forward and backward pass per sample; since
    E_y[d log p(y)] = 0 at every position, the square of a pass's summed gradient estimates the sum
    of the per-position squares without bias. The sum is linear in the samples, so each parameter's
    gradient is folded into its site's total as soon as it accumulates and freed (a hook): neither F
    nor a full set of gradients is held, only dw^2 in bfloat16 (half the fp32 weights' bytes).

    The estimate is end-to-end: an error that lands on the logits (the head) or early in the residual
    stream counts for what it does to the output, which the earlier per-matrix relative output error
    could not see. Measured at the default budget (benchmarks/quant_table.py): the medium random
    model's int4 KL 0.0274 -> 0.0156 (Q4_K_M 0.0173), the bundled model +0.43% -> +0.03%
    perplexity, SmolLM2-135M unchanged (its layers sit on a 4-bit grid: exact either way)."""
    import torch

    params = dict(model.named_parameters())         # a parameter tied in PyTorch is listed once
    dw2 = {site.name: torch.from_numpy(np.square(quantized[site.name].dequantize() - site.matrix)).bfloat16()
           for site in sites}
    slices, shared = _parameter_slices(sites, params, config)
    total = {site.name: 0.0 for site in sites}

    def consume(p: torch.Tensor, name: str) -> None:   # after a backward pass fills p.grad: sum, then free it
        g2 = p.grad.square()
        for site, first, end in slices[name]:
            total[site] += float((g2 * dw2[site][first:end].float()).sum())
        p.grad = None

    hooks = [params[n].register_post_accumulate_grad_hook(lambda p, n=n: consume(p, n)) for n in slices]
    wanted = set(slices).union(*shared.values())
    rng = np.random.default_rng(SENSITIVITY_SEED)
    draw = torch.Generator().manual_seed(SENSITIVITY_SEED)
    b, t = SENSITIVITY_TOKENS
    grad_was = {n: p.requires_grad for n, p in params.items()}
    try:
        for n, p in params.items():
            p.requires_grad_(n in wanted)
        for _ in range(SENSITIVITY_SAMPLES):
            ids = torch.from_numpy(rng.integers(0, config.vocab_size, (b, t)))
            model.zero_grad(set_to_none=True)
            logits = model(ids, torch.ones_like(ids), torch.arange(t)[None].expand(b, t).contiguous()).logits
            logp = torch.log_softmax(logits.float(), -1).reshape(-1, logits.shape[-1])
            y = torch.multinomial(logp.detach().exp(), 1, generator=draw)
            logp.gather(-1, y).sum().backward()
            for site, names in shared.items():     # one matrix stored for two parameters: their gradients add
                g = sum(params[n].grad for n in names if params[n].grad is not None)
                total[site] += float((g.square() * dw2[site].float()).sum())
    finally:
        for hook in hooks:
            hook.remove()
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(grad_was[n])
    return {name: v / SENSITIVITY_SAMPLES / 2 / (b * t) for name, v in total.items()}


def _parameter_slices(sites: list[Site], params: dict, config) -> tuple[dict, dict]:
    """({parameter: [(site, first row, end row)]}, {site: parameters}) for the PyTorch parameters the
    sites store. The first are summed as their gradients accumulate: a pack's members own the rows
    ``PackRef.columns`` gives them, any other site all of its rows. The second are summed after the
    backward pass: one matrix stored for two parameters (an embedding and an equal head that PyTorch
    does not tie), whose gradients add before squaring."""
    slices: dict[str, list] = {}
    shared: dict[str, list] = {}
    for site in sites:
        pack = lookup_pack(site.name)
        if pack is not None:
            for ref, first, end in pack.columns(config):
                if ref.name in params:
                    slices.setdefault(ref.name, []).append((site.name, first, end))
            continue
        names = [n for n in _site_parameters(site) if n in params]
        if len(names) > 1:
            shared[site.name] = names
        elif names:
            slices.setdefault(names[0], []).append((site.name, 0, site.matrix.shape[0]))
    return slices, shared


def _site_parameters(site: Site) -> list[str]:
    """The PyTorch parameters an unpacked site stores: the embedding and the head it feeds when
    tied, else the site itself."""
    if site.name == EMBEDDING.name and LM_HEAD.name in site.drop:
        return [EMBEDDING.name, LM_HEAD.name]
    return [site.name]
