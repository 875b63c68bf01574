"""Copying the tokenizer and generation files of a model folder into an export.

A file is copied only after it parsed as what its name says it is: JSON files as
a JSON object (tokenizer.json also through ``tokenizers``), tokenizer.model as a
SentencePiece model (loaded by ``sentencepiece``), the
chat template as a Jinja template. Files may be symlinks (a Hugging Face cache
snapshot is a folder of links into ``../../blobs/``), so a link that points at an
arbitrary host file would otherwise be published with the export; with these
checks it fails instead. The bytes that were checked are the bytes written.
"""
from __future__ import annotations

from pathlib import Path

from lmexport.errors import CheckpointError
from lmexport.jsonio import parse_json, read_bounded

MAX_TOKENIZER_BYTES = 512 << 20


def check_sentencepiece(data: bytes) -> int:
    """Number of pieces of a SentencePiece model, loaded by ``sentencepiece`` itself (a dependency of the
    export extra, which this module belongs to); ValueError if ``data`` is not one."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(data)
    except (RuntimeError, OSError) as exc:   # sentencepiece reports a bad model as RuntimeError("INTERNAL: ...")
        raise ValueError(str(exc).splitlines()[0][:120] if str(exc) else "not a ModelProto") from None
    pieces = processor.GetPieceSize()
    if not pieces:
        raise ValueError("no pieces")
    return pieces


def verify(name: str, data: bytes, where: Path) -> None:
    """Raise CheckpointError unless ``data`` parses as the file ``name`` claims to be."""
    problem = None
    if name.endswith(".json"):
        value = parse_json(data, where, CheckpointError)
        if not isinstance(value, dict):
            problem = "does not hold a JSON object"
        elif name == "tokenizer.json":
            from tokenizers import Tokenizer
            try:
                Tokenizer.from_str(data.decode("utf-8"))
            except Exception as exc:  # tokenizers raises a bare Exception for a bad file
                problem = f"is not a tokenizers file ({str(exc)[:100]})"
    elif name == "tokenizer.model":
        try:
            check_sentencepiece(data)
        except (ValueError, UnicodeDecodeError) as exc:
            problem = f"is not a SentencePiece model ({exc})"
    elif name.endswith(".jinja"):
        from jinja2 import Environment, TemplateSyntaxError
        try:
            Environment().parse(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            problem = f"is not UTF-8 (byte {exc.start})"
        except TemplateSyntaxError as exc:
            problem = f"is not a Jinja template ({exc.message})"
    if problem:
        raise CheckpointError(f"{where} {problem}; it is not copied into the export",
                              hint="restore the model folder's file, or remove it")


def copy_verified(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` after checking that it is what its name says."""
    data = read_bounded(src, CheckpointError, MAX_TOKENIZER_BYTES)
    verify(src.name, data, src)
    dst.write_bytes(data)


def verify_files(paths: list[Path]) -> None:
    """Check every file that will be copied, before the export's long work starts."""
    for path in paths:
        verify(path.name, read_bounded(path, CheckpointError, MAX_TOKENIZER_BYTES), path)
