"""Names that a file of a folder gives to other files of the same folder.

A shard index entry, the model and data file in lmexport.json: each must be a
relative name inside the folder, never an absolute path or one that climbs out
with ``..``, so a folder can only make lmexport read its own files. (A file of
the folder may still be a symlink: a Hugging Face cache snapshot links every file
into ``../../blobs/``; what is forbidden is a *name* that points outside.)
Torch-free: the runtime uses it.
"""
from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath


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
