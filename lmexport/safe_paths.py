"""Names that a file of a folder gives to other files of the same folder.

A shard index entry, the model and data file in lmexport.json: each must be a
relative name inside the folder, never an absolute path or one that climbs out
with ``..``, so a folder can only make lmexport read its own files. (A file of
the folder may still be a symlink: a Hugging Face cache snapshot links every file
into ``../../blobs/``; what is forbidden is a *name* that points outside.) ``check_folder_links`` is the
other half: no file of the folder may be a link that resolves outside it, except into
the same Hugging Face cache's ``blobs``.
Torch-free: the runtime uses it.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from lmexport.errors import InputError


def name_problem(name: object, *, flat: bool = False) -> str | None:
    """Why ``name`` is not a relative file name inside the folder, or None when it is.

    ``flat``: the name must also be a plain file name, without folders.
    """
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a file name"
    if "\0" in name or "\\" in name or PureWindowsPath(name).drive:
        return f"{name!r} is not a plain relative file name"
    path = PurePosixPath(name)
    if path.is_absolute():
        return f"{name!r} is an absolute path, not a name inside the folder"
    if ".." in path.parts:
        return f"{name!r} points outside the folder"
    if flat and len(path.parts) != 1:
        return f"{name!r} is not a plain file name"
    if path.name in (".", ""):
        return f"{name!r} is not a file name"
    return None


MAX_FOLDER_ENTRIES = 100_000


def allowed_roots(folder: str | os.PathLike) -> list[Path]:
    """Where the files of ``folder`` may really lie: in it, and for a Hugging Face cache snapshot
    (``.../snapshots/<revision>``) in the same cache repository's ``blobs`` (the cache links every
    file there)."""
    root = Path(os.path.realpath(folder))
    return [root] + ([root.parent.parent / "blobs"] if root.parent.name == "snapshots" else [])


def link_problem(folder: str | os.PathLike, path: str | os.PathLike) -> str | None:
    """Why ``path`` (a file of ``folder``) resolves outside it, or None when it stays inside."""
    real = Path(os.path.realpath(path))
    if any(real == r or r in real.parents for r in allowed_roots(folder)):
        return None
    return f"{Path(path).name} is a link to {real}, outside the folder"


def check_folder_links(folder: str | os.PathLike, error: type[InputError] = InputError) -> None:
    """Refuse a folder any of whose entries (at any depth) is a link that leads out of it.

    The one check of every file a model or export folder gives (config, weights, tokenizer,
    templates, generation settings): a link to a host file would otherwise be read, parsed,
    or copied into an export. Links into the same Hugging Face cache's ``blobs`` are fine.
    """
    problems, seen = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):     # links to folders are not descended
        for name in dirnames + filenames:
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                raise error(f"{folder} holds more than {MAX_FOLDER_ENTRIES:,} files; not a model folder")
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and (problem := link_problem(folder, path)):
                rel = os.path.relpath(path, folder)
                problems.append(problem.replace(Path(path).name, rel, 1))
    if problems:
        more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
        raise error(f"{folder}: " + "; ".join(problems[:4]) + more,
                    hint="a folder's files must lie inside it; copy the file into the folder instead of linking it")
