"""Is the patched llama.cpp here? The install probe of the llama.cpp engine (``lmexport llamacpp build``).

Imports llama_cpp only when asked; never torch.
"""
from __future__ import annotations

from pathlib import Path

from lmexport.errors import LmexportError
from lmexport.formats.gguf import ARCH_LIQUIDMETAL, KERNEL_SIZE, native_key

BUILD_HINT = "run `lmexport llamacpp build`"


class LlamaCppUnavailable(LmexportError):
    """llama-cpp-python is missing, or is a build without the liquidmetal architecture."""


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:  # not installed, or its shared library does not load
        raise LlamaCppUnavailable(f"llama-cpp-python is not usable here ({exc})", hint=BUILD_HINT) from exc
    return llama_cpp


def library_path(llama_cpp=None) -> Path | None:
    """The libllama the imported llama_cpp loaded (honours LLAMA_CPP_LIB_PATH)."""
    llama_cpp = llama_cpp or _import_llama_cpp()
    lib = getattr(llama_cpp.llama_cpp, "_lib", None)
    name = getattr(lib, "_name", None)
    return Path(name) if name else None


def is_patched(llama_cpp=None) -> bool:
    """Does the loaded libllama know the liquidmetal architecture? (looks for its metadata key name)"""
    path = library_path(llama_cpp)
    if path is None or not path.exists():
        return False
    data = path.read_bytes()
    return ARCH_LIQUIDMETAL.encode() in data and native_key(KERNEL_SIZE) in data


def require_patched():
    llama_cpp = _import_llama_cpp()
    if not is_patched(llama_cpp):
        raise LlamaCppUnavailable(f"the installed llama-cpp-python ({library_path(llama_cpp)}) has no liquidmetal "
                                  f"architecture", hint=BUILD_HINT)
    return llama_cpp
