"""Transparent huge pages for ONNX Runtime's weights, asked for by the CLI before a session opens.

A decode step reads every weight once, so it runs at memory bandwidth, and a read over 4 KiB pages
is slower than over 2 MiB ones (TLB misses). Where the kernel's THP mode is ``madvise`` (common:
Debian, Ubuntu, Fedora), memory gets huge pages only when asked for: numpy asks for its large
arrays, llama.cpp's file mappings get them from the page cache, but ONNX Runtime allocates its
weights (and the pre-packed MatMulNBits blocks) with ``malloc``, which asks only when glibc's
``glibc.malloc.hugetlb=1`` tunable is set, and that is read once, at process start.

So ``lmexport generate``, ``chat`` and ``bench`` on an ONNX folder re-execute themselves once with
the tunable added to ``GLIBC_TUNABLES`` (same interpreter, arguments, file descriptors), when:
Linux, glibc >= 2.35, THP mode ``madvise``, the folder's files hold at least ``MIN_BYTES``, and
``LMEXPORT_HUGE_PAGES`` is not ``0``. ``LMEXPORT_HUGE_PAGES=1`` asks regardless of size. Measured
on the 1.1B shape (benchmarks/RESULTS.md): faster decode, a slower load (the kernel compacts
memory to find 2 MiB pages). Library users set the variable themselves before starting Python:
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``. Whether to re-execute at all is the CLI's decision
(``lmexport.cli.huge_pages_for``: only its process entry, ``lmexport.cli.main()`` without arguments);
this module only says whether the system allows it (``why_not``) and does it (``reexec``).
"""
from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

log = logging.getLogger(__name__)

SWITCH = "LMEXPORT_HUGE_PAGES"          # "0": never; "1": whatever the size; unset: from MIN_BYTES
TUNABLE = "glibc.malloc.hugetlb=1"
MIN_BYTES = 256 << 20
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_GLIBC = (2, 35)                      # the first glibc with glibc.malloc.hugetlb


def thp_mode() -> str | None:
    """The kernel's THP mode (``always``, ``madvise``, ``never``), or None where it cannot be read."""
    try:
        text = THP_ENABLED.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, ...] | None:
    lib, ver = platform.libc_ver()
    if lib != "glibc" or not ver:
        return None
    try:
        return tuple(int(p) for p in ver.split(".")[:2])
    except ValueError:
        return None


def active() -> bool:
    """Is the tunable set for this process?"""
    return TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def folder_bytes(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
    except OSError:
        return 0


def why_not(weight_bytes: int) -> str | None:
    """None if this process should re-execute with the tunable, else the reason it does not."""
    switch = os.environ.get(SWITCH, "")
    if switch == "0":
        return f"{SWITCH}=0"
    if active():
        return "already set"
    if switch != "1" and weight_bytes < MIN_BYTES:
        return f"weights below {MIN_BYTES >> 20} MiB"
    if sys.platform != "linux":
        return "not Linux"
    mode = thp_mode()
    if mode != "madvise":
        return f"THP mode is {mode or 'unknown'}" + (" (malloc already gets huge pages)" if mode == "always" else "")
    version = glibc_version()
    if version is None or version < MIN_GLIBC:
        return "glibc older than 2.35 or not glibc"
    return None


def reexec(folder: Path) -> None:
    """Re-execute this process with huge pages for malloc, if ``why_not`` finds no reason against the
    folder's weights; otherwise return and go on as before."""
    reason = why_not(folder_bytes(folder))
    if reason is not None:
        log.debug("huge pages for ONNX Runtime: not asked for (%s)", reason)
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), TUNABLE) if t)
    log.debug("huge pages for ONNX Runtime: re-executing with GLIBC_TUNABLES=%s", env["GLIBC_TUNABLES"])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
