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


def gpu_devices(llama_cpp=None) -> list[str]:
    """Names of the GPU devices ggml registered (empty on a CPU build).

    ``llama_supports_gpu_offload()`` is also true for a CPU build with the RPC backend compiled in, so it
    cannot tell whether layers really leave the CPU; ggml's device registry can."""
    import ctypes

    lib = library_path(llama_cpp)
    if lib is None:
        return []
    try:
        ggml = ctypes.CDLL(str(lib.parent / "libggml.so"))
    except OSError:
        return []
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.argtypes, ggml.ggml_backend_dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
    ggml.ggml_backend_dev_type.argtypes, ggml.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
    ggml.ggml_backend_dev_name.argtypes, ggml.ggml_backend_dev_name.restype = [ctypes.c_void_p], ctypes.c_char_p
    gpu_types = (1, 2)          # enum ggml_backend_dev_type: CPU 0, GPU 1, IGPU 2, ACCEL 3
    devices = (ggml.ggml_backend_dev_get(i) for i in range(ggml.ggml_backend_dev_count()))
    return [ggml.ggml_backend_dev_name(d).decode() for d in devices if ggml.ggml_backend_dev_type(d) in gpu_types]
