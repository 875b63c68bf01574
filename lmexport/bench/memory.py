"""What a process holds in memory, from Linux's /proc (stdlib only; elsewhere what ``resource`` says).

Read by the benchmark protocol (peak RSS, huge-page share) and ``benchmarks/bandwidth.py``.
"""
from __future__ import annotations

import platform
import resource


def rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc; elsewhere the peak)."""
    value = proc_kb("/proc/self/status", "VmRSS")
    return value / 1024.0 if value is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB, since the last ``reset_peak_rss``."""
    value = proc_kb("/proc/self/status", "VmHWM")
    if value is not None:
        return value / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if platform.system() == "Darwin" else peak / 1024.0


def reset_peak_rss() -> bool:
    """Restart the peak-RSS counter (Linux: write 5 to /proc/self/clear_refs). False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def huge_mapped_mb() -> float | None:
    """Memory this process maps with huge pages now, in MiB: anonymous THP plus PMD-mapped file pages
    (Linux ``/proc/self/smaps_rollup``; None elsewhere). Tells which bandwidth bounds a row."""
    value = proc_kb("/proc/self/smaps_rollup", "AnonHugePages", "FilePmdMapped", "ShmemPmdMapped")
    return value / 1024.0 if value is not None else None


def proc_kb(path: str, *keys: str) -> float | None:
    """The sum of the ``key: N kB`` fields ``keys`` of a /proc file; None if it cannot be read or has none."""
    total, found = 0.0, False
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in keys:
                    total += float(rest.split()[0])
                    found = True
    except OSError:
        return None
    return total if found else None
