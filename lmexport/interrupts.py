"""Ctrl-C and SIGTERM that cannot be lost.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread is.
Raised inside a ``__del__`` or a weakref callback (a numpy memmap, a gguf reader, a
temporary file being collected), the exception is printed as "Exception ignored
in ..." and *dropped*: the work carries on as if nothing happened, and an export
would publish its output and exit 0. So the handler here also records the signal:
``pending()`` stays true after a swallowed interrupt, ``atomic`` checks it at its
commit point (the rename that publishes an output) and refuses to publish, and the
CLI exits 130 for a recorded interrupt even if nothing re-raised it.

Inside ``deferred()`` (the commit itself, and the removal of temporaries) the
handler only records: the renames complete, then the interrupt is raised.
Torch-free; the handler is installed by ``cli.main`` (main thread only).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator

# Tests make a command interrupt itself at a named point of the atomic write
# (``hit``), to check every moment without racing a timer; see tests/test_signals.py.
TEST_POINT_ENV = "LMEXPORT_TEST_INTERRUPT_AT"

_pending: int | None = None
_defer_depth = 0


def _handler(signum, frame):
    global _pending
    _pending = signum
    if _defer_depth == 0:
        raise KeyboardInterrupt


def install(*, record_only: bool = False) -> None:
    """Route SIGINT and SIGTERM through the recording handler (also where the shell ignored SIGINT).

    ``record_only``: while the program itself is still importing; ``install()`` again then
    lets the handler raise, and ``check()`` raises for what came meanwhile.
    """
    global _defer_depth
    _defer_depth = 1 if record_only else 0
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    sys.unraisablehook = _unraisable


def saved() -> tuple:
    """The handlers and hooks ``install`` replaces, for ``restore``."""
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook


def restore(state: tuple) -> None:
    """Put back what ``saved`` returned, and forget recorded interrupts (an in-process caller's next run)."""
    global _pending, _defer_depth
    signal.signal(signal.SIGINT, state[0])
    signal.signal(signal.SIGTERM, state[1])
    sys.unraisablehook = state[2]
    _pending, _defer_depth = None, 0


def _unraisable(info) -> None:
    """An interrupt a ``__del__`` swallowed is recorded already: no "Exception ignored" traceback for it."""
    if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt) and _pending is not None:
        return
    sys.__unraisablehook__(info)


def pending() -> int | None:
    """The signal received so far in this process, if any (even one whose exception was swallowed)."""
    return _pending


def hold(process_exit: bool = False) -> None:
    """From now on only record interrupts (the work is done; the exit code says what happened).

    ``process_exit``: the process is about to end; ignore the signals outright, since Python
    resets its handlers to the default (kill) while it finalises, and a late Ctrl-C would then
    turn a finished command's exit code into -2.
    """
    global _defer_depth
    _defer_depth += 1
    if process_exit:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def check() -> None:
    """Raise KeyboardInterrupt if an interrupt was received (a safe point: nothing half-published)."""
    if _pending is not None:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block to its end; an interrupt received meanwhile is raised when it ends."""
    global _defer_depth
    _defer_depth += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _defer_depth -= 1
    if ok and _defer_depth == 0:
        check()


class _SwallowedInterrupt:
    """Signals this process from its ``__del__``, where Python drops the KeyboardInterrupt."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):              # the handler runs here, inside __del__
            pass


def hit(point: str) -> None:
    """Test hook: signal this process at ``point`` when LMEXPORT_TEST_INTERRUPT_AT names it.

    ``NAME`` sends SIGINT here; ``NAME:del`` sends it from a ``__del__``, the way a real
    interrupt is lost (the exception is swallowed and only the record remains).
    """
    want = os.environ.get(TEST_POINT_ENV)
    if not want or want.split(":")[0] != point:
        return
    if want.endswith(":del"):
        obj = _SwallowedInterrupt()
        del obj
    else:
        os.kill(os.getpid(), signal.SIGINT)
