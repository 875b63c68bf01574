"""Atomic outputs: every writer writes under a temporary name beside the target
and renames it into place only when the whole output is complete.

An existing target is never replaced without ``overwrite`` and never damaged
when the new write fails: the old target is moved aside, the new one renamed in,
and only then is the old one removed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

from lmexport.errors import DiskSpaceError, InputError, OutputExistsError

log = logging.getLogger(__name__)
TMP_MARKER = ".lmexport-tmp"
# Tests (and users who know better) can make the space check see another free
# size, in bytes; this is how "disk full" is simulated without filling a disk.
FREE_SPACE_OVERRIDE_ENV = "LMEXPORT_FREE_SPACE_OVERRIDE"


def check_output_path(target: Path, overwrite: bool) -> None:
    parent = target.parent
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output folder {parent} is not writable", hint="choose another output path")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists", hint="pass --overwrite to replace it")


def free_bytes(folder: Path) -> int:
    override = os.environ.get(FREE_SPACE_OVERRIDE_ENV)
    if override:
        return int(override)
    return shutil.disk_usage(folder).free


def check_disk_space(folder: Path, needed: int, what: str) -> None:
    free = free_bytes(folder)
    if needed > free:
        raise DiskSpaceError(f"not enough disk space for {what}: about {needed / 1e6:,.1f} MB needed, "
                             f"{free / 1e6:,.1f} MB free in {folder}", hint="free some space or write elsewhere")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(target: str | Path, *, overwrite: bool = False, directory: bool = False,
                  needed_bytes: int = 0) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it to ``target`` on success.

    On any exception (KeyboardInterrupt included) the temporary path is removed
    and an existing target is left as it was.
    """
    target = Path(target).absolute()
    check_output_path(target, overwrite)
    if needed_bytes:
        check_disk_space(target.parent, needed_bytes, target.name)
    tmp = target.parent / f".{target.name}{TMP_MARKER}-{os.getpid()}"
    _remove(tmp)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    old = target.parent / f".{target.name}.lmexport-old-{os.getpid()}"
    try:
        if target.exists() or target.is_symlink():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)
        _remove(tmp)
        raise
    _remove(old)
    log.debug("wrote %s", target)
