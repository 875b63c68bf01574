"""The one reader of the JSON files in a folder (config.json, lmexport.json, tokenizer
and index files): an object or a typed error, never a traceback. Torch-free."""
from __future__ import annotations

import json
from pathlib import Path

from lmexport.errors import InputError


def read_json_object(path: str | Path, error: type[InputError] = InputError) -> dict:
    """A JSON file that must hold an object; ``error`` for unreadable or other JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON ({exc})") from exc
    except RecursionError as exc:       # hostile nesting: json recurses per level
        raise error(f"{path} nests too deeply to be a real file of its kind") from exc
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object")
    return data
