"""The checks of a model folder that need no torch, run before the commands import it.

A bad config.json or a shard index that names files outside the folder is then
reported in the time it takes to read two small files, not after torch has loaded
(seconds) and gigabytes of weights have been read. ``checkpoint.read_checkpoint``
runs the same checks again when it reads the folder for real.
"""
from __future__ import annotations

from pathlib import Path

from lmexport.errors import CheckpointError, ConfigError, InputError
from lmexport.jsonio import read_json_object
from lmexport.config import LiquidMetalConfig
from lmexport.safe_paths import check_folder_links, name_problem

INDEX_FILE = "model.safetensors.index.json"


def check_model_folder(path: str | Path) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise InputError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder", hint="pass the folder that holds config.json")
    check_folder_links(folder)        # every file the folder gives stays inside it (or its cache's blobs)
    return folder


def read_config_dict(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder} has no config.json", hint="point at a Hugging Face-style model folder")
    return read_json_object(path, ConfigError)


def shard_names(folder: Path) -> list[str] | None:
    """The shard files the index names (each checked to be a name inside the folder); None without an index."""
    index = folder / INDEX_FILE
    if not index.is_file():
        return None
    weight_map = read_json_object(index, CheckpointError).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} is not a valid safetensors index (no weight_map object)")
    bad = sorted({f"{tensor}: {problem}" for tensor, shard in weight_map.items()
                  if (problem := name_problem(shard)) is not None})
    if bad:
        raise CheckpointError(f"{index.name} names shard files that are not inside {folder}", bad,
                              hint="every shard must be a file of the model folder, named relative to it")
    return sorted(set(weight_map.values()))


def precheck(path: str | Path) -> Path:
    """The folder, its config.json and its shard index, checked without torch."""
    folder = check_model_folder(path)
    LiquidMetalConfig.from_dict(read_config_dict(folder))
    shard_names(folder)
    return folder
