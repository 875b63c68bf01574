"""llama.cpp's own quantizer (``llama_model_quantize`` in the patched libllama), for K-quants.

``lmexport gguf`` writes the legacy block types itself (q8_0, q4_0, ...); the K-quant mixes
(q4_k_m, q5_k_m, q6_k) are llama.cpp's choice of a type per tensor, so they are made by llama.cpp
from an f32/f16 liquidmetal GGUF. The patch keeps ``token_conv.weight`` in F32 (ggml_ssm_conv needs
it); tensors whose rows do not fit a K-quant block (256) fall back to the types llama.cpp picks.
"""
from __future__ import annotations

from pathlib import Path

from lmexport.errors import ArtifactError, InputError, LmexportError
from lmexport.runtime.llamacpp.install import require_patched
from lmexport.runtime.llamacpp.native_log import native_log

# name -> llama_ftype (llama.h)
FTYPES = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}


def quantize(src_gguf: str | Path, dst_gguf: str | Path, ftype: str, *, nthread: int = 0,
             overwrite: bool = False, verbose: bool = False) -> Path:
    """Quantize ``src_gguf`` (f32 or f16) to ``dst_gguf`` as ``ftype`` (a key of FTYPES)."""
    if ftype not in FTYPES:
        raise InputError(f"unknown llama.cpp quantization type {ftype!r}", hint="choose one of " + ", ".join(FTYPES))
    src, dst = Path(src_gguf), Path(dst_gguf)
    if not src.exists():
        raise ArtifactError(f"{src} not found")
    from lmexport.atomic import atomic_output, check_output_path

    check_output_path(dst.absolute(), overwrite, directory=False, inputs=[src])
    lc = require_patched()
    params = lc.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = nthread
    # written under a temporary name and renamed by lmexport.atomic, as every output: an interrupt
    # (recorded while llama.cpp runs) or a failure leaves the previous file as it was
    with atomic_output(dst, overwrite=overwrite, inputs=[src]) as tmp:
        with native_log(lc, verbose) as log:
            rc = lc.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.exists():
            detail = next((ln for ln in reversed(log) if ln), "")
            raise LmexportError(f"llama_model_quantize({src.name} -> {ftype}) failed with code {rc}"
                                + (f": {detail}" if detail else ""),
                                hint="run with verbose=True for llama.cpp's log")
    return dst
