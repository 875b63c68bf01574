"""llama.cpp's own log (it writes from C): collected into a list instead of printed."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def native_log(llama_cpp, verbose: bool):
    """Collect llama.cpp's warnings and errors (it logs from C) instead of printing its chatter.

    Yields a list that fills with the warning/error lines; with ``verbose`` llama-cpp-python's own
    logger stays in place and the list stays empty."""
    lines: list[str] = []
    if verbose:
        yield lines
        return
    import ctypes

    state = {"keep": False}

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):  # ggml.h: WARN = 3, ERROR = 4, CONT = 5 (continues the last line)
        if level in (3, 4) or (level == 5 and state["keep"]):
            state["keep"] = True
            if text:
                lines.append(text.decode("utf-8", errors="replace").strip())
        elif level != 5:
            state["keep"] = False

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def load_error(lines: list[str]) -> str | None:
    for line in lines:
        if "error loading model" in line:
            return line.split("error loading model:", 1)[-1].strip()
    return None
