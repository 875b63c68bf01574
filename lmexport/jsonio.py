"""The one reader of the JSON files in a folder (config.json, lmexport.json, tokenizer
and index files): an object or a typed error, never a traceback. Torch-free.

Such a file may be damaged or hostile: not UTF-8, not JSON, nested 200,000 levels
deep (Python's parser then overflows its recursion limit), a link to a device that
never ends, or gigabytes long. Each becomes one ``error`` naming the file.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from lmexport.errors import InputError

MAX_JSON_BYTES = 256 << 20     # a tokenizer.json of a 256k vocabulary is ~20 MB


def read_bounded(path: Path, error: type[InputError] = InputError, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file (links followed) of at most ``max_bytes``."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except OSError as exc:
        raise error(f"{path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path} is not a regular file")
    if info.st_size > max_bytes:
        raise error(f"{path} is {info.st_size / 1e6:,.0f} MB, more than such a file can be "
                    f"({max_bytes / 1e6:,.0f} MB)")
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)[:max_bytes + 1]
    except OSError as exc:
        raise error(f"{path} cannot be read ({exc.strerror})") from None


def parse_json(data: bytes, where: Path | str, error: type[InputError] = InputError) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON ({exc})") from None
    except RecursionError:
        raise error(f"{where} is nested too deeply to be a real file of its kind") from None


def read_json_object(path: str | Path, error: type[InputError] = InputError) -> dict:
    """A JSON file that must hold an object; ``error`` for unreadable or other JSON."""
    path = Path(path)
    data = parse_json(read_bounded(path, error), path, error)
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data
