"""Copying the tokenizer and generation files of a model folder into an export.

A file is copied only after it parsed as what its name says it is: JSON files as
a JSON object (tokenizer.json also through ``tokenizers``), tokenizer.model as a
SentencePiece model (a protobuf ``ModelProto`` whose pieces are strings), the
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


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _fields(data: bytes):
    """(field number, wire type, value) of a protobuf message; ValueError if it is not one."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(data, i)
            value, i = data[i:i + n], i + n
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(data):
            raise ValueError("truncated field")
        yield number, wire, value


def check_sentencepiece(data: bytes) -> int:
    """Number of pieces of a SentencePiece ``ModelProto``; ValueError if ``data`` is not one.

    ModelProto field 1 is ``repeated SentencePiece pieces``; each piece has its text
    in field 1 (a UTF-8 string) and its score in field 2 (a float).
    """
    pieces = 0
    for number, wire, value in _fields(data):
        if number == 1:
            if wire != 2:
                raise ValueError("pieces field of the wrong type")
            texts = [v for n, w, v in _fields(value) if n == 1 and w == 2]
            if len(texts) != 1:
                raise ValueError("a piece without its text")
            texts[0].decode("utf-8")
            pieces += 1
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
