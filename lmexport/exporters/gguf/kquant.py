"""K-quant GGUFs (``lmexport gguf --outtype q4_k_m|q5_k_m|q6_k``): llama.cpp's own quantizer.

The exporter writes and validates an f32 file in its staging folder as usual, then the patched
llama.cpp (``lmexport llamacpp build``) quantizes it to the mix, beside it in the same staging
folder; the writer validates the result (``validate_gguf`` with the mix's rules) and only then
renames it into place, so the output appears complete or not at all.
"""
from __future__ import annotations

from pathlib import Path

from lmexport.formats import gguf as fmt
from lmexport.errors import InputError


def check_kquant_options(outtype: str, split_max_size: int) -> None:
    if outtype in fmt.KQUANTS and split_max_size:
        raise InputError(f"--split-max-size is not supported with --outtype {outtype} (llama.cpp's quantizer "
                         "writes one file)", hint="split a K-quant file with llama.cpp's gguf-split")


def requantize_staged(staged_f32: Path, outtype: str) -> Path:
    """Quantize the validated f32 file ``staged_f32`` to ``outtype`` beside it; the f32 file is removed."""
    from lmexport.runtime.llamacpp.quantize import quantize

    out = staged_f32.with_name(f"{outtype}-{staged_f32.name}")
    quantize(staged_f32, out, outtype, overwrite=True)
    staged_f32.unlink()
    return out
