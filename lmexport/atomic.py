"""Atomic outputs: every writer writes under a temporary name beside the target
and renames it into place only when the whole output is complete.

The promises (README, "Commands"):

* Without ``overwrite`` an existing target is never replaced, and the decision is
  made at the rename itself (``renameat2(RENAME_NOREPLACE)``, ``renamex_np(RENAME_EXCL)``
  or a hard link for files), so a target that appears while the export runs (another
  export to the same path, a user's file) is kept and the export fails.
* A folder is never replaced by a file nor a file by a folder, even with ``overwrite``.
* An output that is, contains or lies inside one of the command's inputs is refused
  before any work starts (``lmexport onnx m -o m --overwrite`` would delete its input).
* With ``overwrite`` the old target is moved aside, the new one renamed in, and only
  then is the old one removed; a failed write leaves the old target as it was.
* Temporaries are named ``.NAME.lmexport-{tmp,old,stage}-PID`` (and ``.lmexport-probe-PID``); those of dead
  processes (after SIGKILL, power loss) are swept by the next run that writes beside
  them: ``tmp``/``stage`` are removed, an ``old`` (the user's previous output, moved
  aside just before the rename) is put back when nothing took its place.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from lmexport import interrupts
from lmexport.errors import DiskSpaceError, InputError, OutputExistsError

log = logging.getLogger(__name__)
TMP_MARKER = ".lmexport-tmp"
OLD_MARKER = ".lmexport-old"
STAGE_MARKER = ".lmexport-stage"
# .NAME.lmexport-KIND-PID: what `sweep_stale` may remove, and nothing else.
# A target name too long to take the suffix (NAME_MAX, 255 bytes) is cut and ends in ~HASH.
# The output folder's probe (check_output_path) is .lmexport-probe-PID, named after no target.
_OURS = re.compile(r"^\.(?:(?P<name>.+?)(?P<hashed>~[0-9a-f]{12})?\.)?lmexport-(?P<kind>tmp|old|stage|probe)-(?P<pid>\d+)$")
NAME_MAX = 255
# Tests (and users who know better) can make the space check see another free
# size, in bytes; this is how "disk full" is simulated without filling a disk.
FREE_SPACE_OVERRIDE_ENV = "LMEXPORT_FREE_SPACE_OVERRIDE"


def temp_name(target: Path, kind: str = "tmp") -> Path:
    """The temporary path of ``kind`` (tmp, old, stage) beside ``target`` for this process.

    Never longer than NAME_MAX: a legal 255-byte target name is cut to fit and given a hash
    of the whole name, so that the temporary never fails where the target would not.
    """
    suffix = f".lmexport-{kind}-{os.getpid()}"
    name = target.name
    raw = os.fsencode(name)
    if len(raw) + len(suffix) + 1 > NAME_MAX:
        digest = hashlib.sha256(raw).hexdigest()[:12]
        name = os.fsdecode(raw[:NAME_MAX - len(suffix) - 1 - 13]) + "~" + digest
    return target.parent / f".{name}{suffix}"


# ---------------------------------------------------------------- checks before work

def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _input_paths(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(what the user named, real path) for every input and, for a folder, every file in it
    that is a link (a Hugging Face snapshot links into ../../blobs: those blobs are inputs too)."""
    out = []
    for given in inputs:
        given = Path(given)
        if not os.path.lexists(given):
            continue
        out.append((given, _real(given)))
        if given.is_dir():
            with contextlib.suppress(OSError):
                for entry in os.scandir(given):
                    if entry.is_symlink():
                        out.append((Path(entry.path), _real(Path(entry.path))))
    return out


def check_not_an_input(target: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is, contains or lies inside an input (compared as real paths)."""
    real = _real(target)
    for given, inp in _input_paths(inputs):
        if real == inp:
            why = "is"
        elif _inside(real, inp):
            why = "lies inside"
        elif _inside(inp, real):
            why = "contains"
        else:
            continue
        raise InputError(f"the output {target} {why} the input {given}; writing it would destroy the input",
                         hint="write the output somewhere else")


def check_output_path(target: Path, overwrite: bool, *, directory: bool | None = None,
                      inputs: Iterable[str | Path] = ()) -> None:
    """Everything that can be said about an output path before the work starts.

    ``directory``: the output is a folder (True) or a file (False); an existing target
    of the other kind is refused even with ``overwrite``. ``inputs``: paths the command
    reads, which the output must neither be, contain nor lie inside.
    """
    target = Path(target).absolute()
    parent = target.parent
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output folder {parent} is not writable", hint="choose another output path")
    check_not_an_input(target, inputs)
    sweep_stale(parent)
    _probe(target)
    if not os.path.lexists(target):
        return
    if directory is not None:
        _check_kind(target, directory)
    if not overwrite:
        dangling = " as a link to nothing" if target.is_symlink() and not target.exists() else ""
        raise OutputExistsError(f"{target} already exists{dangling}", hint="pass --overwrite to replace it")


PROBE_BYTES = 4096


def _probe(target: Path) -> None:
    """Write a small temporary beside ``target`` and remove it: a folder that cannot hold the
    output (read-only, full, a name too long) is refused now, before the work and its report."""
    if len(os.fsencode(target.name)) > NAME_MAX:
        raise InputError(f"the output name {target.name[:40]}... is {len(os.fsencode(target.name))} bytes long; "
                         f"file names are limited to {NAME_MAX}", hint="choose a shorter output name")
    probe = target.parent / f".lmexport-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return                                # ours, from a check running now: the folder holds files
    except OSError as exc:
        raise _cannot_write(exc, target) from None
    try:
        os.write(fd, b"\0" * PROBE_BYTES)
        os.fsync(fd)
    except OSError as exc:
        raise _cannot_write(exc, target) from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def _cannot_write(exc: OSError, target: Path) -> InputError:
    full = disk_full_error(exc, target.parent)
    if full is not None:
        return full
    return InputError(f"cannot write {target}: {exc.strerror or exc}", hint="choose another output path")


def _check_kind(target: Path, directory: bool) -> None:
    is_dir = target.is_dir()
    if directory and os.path.lexists(target) and not is_dir:
        raise InputError(f"{target} is a file, and this command writes a folder there; "
                         f"a file is never replaced by a folder", hint="choose another output path")
    if not directory and is_dir:
        raise InputError(f"{target} is a folder, and this command writes a file there; "
                         f"a folder is never replaced by a file (not even with --overwrite)",
                         hint="name the output file, e.g. " + str(target / "model.gguf"))


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


# ---------------------------------------------------------------- stale temporaries

def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), on Linux; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")     # field 22: starttime, in clock ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _alive(pid: int, since: float) -> bool:
    """Whether process ``pid`` may still own a temporary last changed (ctime) at ``since``.

    A process that no longer exists owns nothing; one that started after the temporary
    was last changed is another process that got the same PID.
    """
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass                                 # another user's process, say: it exists
    started = _start_time(pid)
    return started is None or started <= since + 2


def sweep_stale(folder: Path) -> list[Path]:
    """Remove this tool's temporaries left in ``folder`` by dead processes; returns what was handled."""
    handled = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return handled
    for entry in entries:
        m = _OURS.match(entry.name)
        if not m:
            continue
        path = Path(entry.path)
        try:
            info = entry.stat(follow_symlinks=False)
            since = max(info.st_mtime, info.st_ctime)     # a rename (an "old") changes only the ctime
        except OSError:
            continue
        if _alive(int(m["pid"]), since):
            continue
        if (m["kind"] == "probe") != (m["name"] is None):
            continue
        target = path.parent / (m["name"] or "")
        if m["kind"] == "old" and m["hashed"]:
            log.warning("%s is an output moved aside by an export that was killed (pid %s); its full name was "
                        "too long to keep in the temporary name, so it is left for you to rename", path, m["pid"])
            continue
        if m["kind"] == "old" and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.rename(path, target)
                log.warning("put back %s, moved aside by an export that was killed (pid %s)", target, m["pid"])
                handled.append(path)
                continue
        _remove(path)
        log.info("removed %s, left by an export that was killed (pid %s)", path.name, m["pid"])
        handled.append(path)
    return handled


# ---------------------------------------------------------------- rename without replacing

_RENAME_NOREPLACE = 1      # linux/fs.h
_RENAME_EXCL = 0x4         # macOS sys/stdio.h
_AT_FDCWD = -100


def _libc():
    with contextlib.suppress(OSError, TypeError):
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return None


_LIBC = _libc()


def _native_noreplace(src: Path, dst: Path) -> bool:
    """Rename with the kernel refusing an existing ``dst``; False where the call is unavailable."""
    if _LIBC is None:
        return False
    s, d = os.fsencode(src), os.fsencode(dst)
    if sys.platform.startswith("linux") and hasattr(_LIBC, "renameat2"):
        rc = _LIBC.renameat2(_AT_FDCWD, s, _AT_FDCWD, d, _RENAME_NOREPLACE)
    elif sys.platform == "darwin" and hasattr(_LIBC, "renamex_np"):
        rc = _LIBC.renamex_np(s, d, _RENAME_EXCL)
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False                         # the call or this file system does not support the flag
    raise OSError(err, os.strerror(err), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; FileExistsError (and ``src`` untouched) if ``dst`` exists.

    Atomic through the kernel where it can (Linux renameat2, macOS renamex_np); else a
    hard link for a file (link fails atomically on an existing name); else, for a
    folder, a check followed by rename, which POSIX refuses over a non-empty folder and
    Windows over anything, so only an empty folder that appears in between can be lost.
    """
    if _native_noreplace(src, dst):
        return
    if not src.is_dir():
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError:
            pass                             # no hard links here (FAT, some FUSE): the portable fallback
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from exc
        raise


# ---------------------------------------------------------------- the writers' context managers

# Every output this process published (renamed into place), for the CLI's last word after an interrupt.
published: list[Path] = []


def disk_full_error(exc: OSError, folder: Path) -> DiskSpaceError | None:
    """A DiskSpaceError for an OSError that means the disk filled up while writing, else None.

    ENOSPC/EDQUOT say so; numpy's ``tofile`` (the gguf writer) says only "N requested and M
    written", without an errno, which on a regular file means the same.
    """
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT) or (
        exc.errno is None and "requested and" in str(exc) and "written" in str(exc))
    if not full:
        return None
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:,.1f} MB"
    except OSError:
        free = "unknown"
    return DiskSpaceError(f"no space left on device at {folder}: free {free}; nothing was written",
                          hint="free some space or write elsewhere")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _appeared(target: Path) -> OutputExistsError:
    return OutputExistsError(f"{target} appeared while the export ran; it was kept and nothing was written",
                             hint="pass --overwrite to replace it, or choose another output path")


def _commit(pairs: Sequence[tuple[Path, Path]], overwrite: bool, directory: bool) -> None:
    """Rename every temporary to its target, or none: a failure undoes the renames already done."""
    done: list[tuple[Path, Path | None]] = []   # (target now ours, old target moved aside)
    try:
        for tmp, target in pairs:
            old = None
            if os.path.lexists(target):
                if not overwrite:
                    raise _appeared(target)
                _check_kind(target, directory)
                old = temp_name(target, "old")
                _remove(old)
                os.replace(target, old)
                interrupts.hit("aside")
            try:
                rename_noreplace(tmp, target)
            except FileExistsError:
                if old is not None:           # something took the place between the two renames
                    log.warning("%s appeared while replacing it; the previous output is kept as %s", target, old)
                raise _appeared(target) from None
            except BaseException:
                if old is not None and not os.path.lexists(target):
                    os.replace(old, target)
                raise
            done.append((target, old))
    except BaseException:
        for target, old in reversed(done):
            _remove(target)
            if old is not None:
                os.replace(old, target)
        raise
    for _, old in done:
        if old is not None:
            _remove(old)


@contextlib.contextmanager
def atomic_outputs(targets: Sequence[str | Path], *, overwrite: bool = False, directory: bool = False,
                   needed_bytes: int = 0, inputs: Iterable[str | Path] = ()) -> Iterator[list[Path]]:
    """Yield one temporary path per target; on success rename them all into place, or none.

    On any exception (KeyboardInterrupt included) the temporaries are removed and
    existing targets are left as they were.
    """
    targets = [Path(t).absolute() for t in targets]
    inputs = list(inputs)
    for target in targets:
        check_output_path(target, overwrite, directory=directory, inputs=inputs)
    if needed_bytes and targets:
        check_disk_space(targets[0].parent, needed_bytes, targets[0].name)
    tmps = [temp_name(t) for t in targets]
    try:
        for tmp in tmps:
            _remove(tmp)
            if directory:
                tmp.mkdir()
        interrupts.hit("writing")
        try:
            yield tmps
        except OSError as exc:
            full = disk_full_error(exc, targets[0].parent)
            if full is not None:
                raise full from exc
            where = Path(os.path.abspath(exc.filename)) if isinstance(exc.filename, str) else None
            for tmp, target in zip(tmps, targets):     # name what the user gave, never our temporary
                if where is not None and (where == tmp or tmp in where.parents):
                    raise _cannot_write(exc, target / where.relative_to(tmp)) from exc
            raise
        interrupts.hit("commit")
        # The commit point: an interrupt received so far (even one a __del__ swallowed) stops it
        # here, before any rename; one received during the renames waits until they are done.
        with interrupts.deferred():
            interrupts.check()
            _commit(list(zip(tmps, targets)), overwrite, directory)
            published.extend(targets)
        interrupts.hit("published")
    finally:
        with interrupts.deferred():
            for tmp in tmps:
                _remove(tmp)
    for target in targets:
        log.debug("wrote %s", target)


@contextlib.contextmanager
def atomic_output(target: str | Path, *, overwrite: bool = False, directory: bool = False,
                  needed_bytes: int = 0, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it to ``target`` on success (see atomic_outputs)."""
    with atomic_outputs([target], overwrite=overwrite, directory=directory, needed_bytes=needed_bytes,
                        inputs=inputs) as (tmp,):
        yield tmp


@contextlib.contextmanager
def staging_folder(target: str | Path) -> Iterator[Path]:
    """A scratch folder beside ``target`` (``.NAME.lmexport-stage-PID``), removed afterwards."""
    path = temp_name(Path(target).absolute(), "stage")
    _remove(path)
    path.mkdir()
    try:
        yield path
    finally:
        with interrupts.deferred():
            _remove(path)
