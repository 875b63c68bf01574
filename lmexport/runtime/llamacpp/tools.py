"""llama.cpp's own programs (llama-server, llama-cli, llama-bench, ...) built from the patched source.

``lmexport llamacpp build`` compiles llama-cpp-python's wheel in a kept CMake build folder; the
tools come from that same folder: one more CMake configure with the tool options on
(``TOOLS_CMAKE_ARGS``), then ``cmake --build --target`` of only the programs in ``TOOLS``. They link
the same shared libraries (libllama, libggml*, built once) and find them through a RUNPATH of
``$ORIGIN`` (``-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON``), so a folder holding the programs and those
libraries is self-contained and can be copied anywhere.

That folder is kept in the wheel's cache entry (``<cache>/wheels/<key>/tools``, the same key: patch,
version, CMAKE_ARGS, host CPU, Python ABI) and installed into the environment as
``<prefix>/libexec/lmexport-llamacpp/`` with one relative symlink per program in the scripts
folder (``<venv>/bin``, where pip puts console scripts), so that ``llama-server`` is on the PATH of
an activated environment. Imports neither torch nor llama_cpp.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Callable

from lmexport.errors import LmexportError

# the programs (cmake targets). In this llama.cpp llama-cli is the chat program (the template, one turn with -st)
# and llama-completion the plain-text one; ggml-rpc-server is what older docs call rpc-server
TOOLS = ("llama-server", "llama-cli", "llama-completion", "llama-bench", "llama-perplexity", "llama-quantize",
         "ggml-rpc-server")
# on top of the wheel's CMAKE_ARGS (which keep tools and server off for the wheel's own build):
# nothing is downloaded (no prebuilt web UI, no npm), and the server gets no web UI
TOOLS_CMAKE_ARGS = ("-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_USE_PREBUILT_UI=OFF",
                    "-DLLAMA_BUILD_UI=OFF")
STAMP_NAME = "lmexport_tools.json"
BUILD_HINT = "run `lmexport llamacpp build`"
HOME_NAME = "lmexport-llamacpp"


class ToolsError(LmexportError):
    """llama.cpp's programs are missing here, or could not be built or installed."""


def tools_home(prefix: Path | None = None) -> Path:
    """Where the programs and their libraries are installed in this environment."""
    return Path(prefix or sys.prefix) / "libexec" / HOME_NAME


def scripts_dir() -> Path:
    """The environment's scripts folder (``<venv>/bin``): where the programs' symlinks go."""
    return Path(sysconfig.get_path("scripts"))


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(text)


def _cmake_from_cache(build_dir: Path) -> tuple[str, str | None]:
    """The cmake (and make program) that configured ``build_dir``: reconfiguring with another
    version of cmake would regenerate everything."""
    cmake, make = None, None
    try:
        for line in (build_dir / "CMakeCache.txt").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("CMAKE_COMMAND:"):
                cmake = line.split("=", 1)[1]
            elif line.startswith("CMAKE_MAKE_PROGRAM:"):
                make = line.split("=", 1)[1]
    except OSError:
        pass
    if not cmake or not Path(cmake).exists():
        cmake = shutil.which("cmake")
    if cmake is None:
        raise ToolsError("cmake not found", hint="install it: pip install cmake (or apt-get install cmake)")
    return cmake, make


def _run_logged(cmd: list[str], log, progress, label: str) -> int:
    """Run ``cmd``, its output into ``log``; ninja's ``[n/N]`` lines become progress, one per 5 s."""
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    last = 0.0
    step = re.compile(r"^\[(\d+)/(\d+)\]")
    for line in proc.stdout:
        log.write(line)
        m = step.match(line.strip())
        if m and time.monotonic() - last > 5:
            _say(progress, f"  [{m.group(1)}/{m.group(2)}] {label}")
            last = time.monotonic()
    return proc.wait()


def build_tools(src: Path, build_dir: Path, args: list[str], out_dir: Path, log_path: Path,
                progress: Callable[[str], None] | None = print, jobs: int | None = None) -> list[str]:
    """Configure the wheel's build folder ``build_dir`` (source ``src``) with the tools on, build only
    ``TOOLS`` and copy them with the shared libraries they load into ``out_dir``. Returns the names copied.

    The wheel's next ``pip wheel`` in the same folder configures the tools off again; their objects
    stay, so a later tools build only recompiles and relinks what changed."""
    cmake, make = _cmake_from_cache(build_dir)
    jobs = jobs or int(os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or os.cpu_count() or 2)
    configure = [cmake, "-S", str(src), "-B", str(build_dir), *args, *TOOLS_CMAKE_ARGS]
    if make:
        configure.append(f"-DCMAKE_MAKE_PROGRAM={make}")
    _say(progress, f"building llama.cpp's programs in the same tree: {', '.join(TOOLS)}")
    with open(log_path, "a", encoding="utf-8") as log:
        rc = _run_logged(configure, log, progress, "configuring")
        if rc != 0:
            raise ToolsError(f"configuring llama.cpp's programs failed (cmake exit {rc})", hint=f"full log: {log_path}")
        rc = _run_logged([cmake, "--build", str(build_dir), "--target", *TOOLS, "-j", str(jobs)], log, progress,
                         "compiling the programs")
    if rc != 0:
        raise ToolsError(f"building llama.cpp's programs failed (exit {rc})", hint=f"full log: {log_path}")
    return collect(build_dir / "bin", out_dir)


def _is_library(name: str) -> bool:
    return ".so" in name or name.endswith(".dylib")


def collect(bin_dir: Path, out_dir: Path) -> list[str]:
    """Copy the programs of ``TOOLS`` and every shared library beside them (symlinks kept as links)."""
    missing = [t for t in TOOLS if not (bin_dir / t).is_file()]
    if missing:
        raise ToolsError(f"the build made no {', '.join(missing)} in {bin_dir}", hint="rerun with --force")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for path in sorted(bin_dir.iterdir()):
        if path.name in TOOLS or _is_library(path.name):
            dst = out_dir / path.name
            if path.is_symlink():
                os.symlink(os.readlink(path), dst)
            else:
                shutil.copy2(path, dst)
            names.append(path.name)
    return names


def check_runs(folder: Path) -> None:
    """Each program of ``folder`` starts (its libraries resolve) and says its version."""
    for tool in ("llama-server", "llama-cli", "llama-bench"):
        proc = subprocess.run([str(folder / tool), "--version"], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 or "version" not in text:
            tail = text.strip().splitlines()[-1:] or ["no output"]
            raise ToolsError(f"{folder / tool} does not run: {tail[0]}", hint="rerun `lmexport llamacpp build --force`")


def installed_key(prefix: Path | None = None) -> str | None:
    """The cache key of the programs installed in this environment (None: none, or incomplete)."""
    home = tools_home(prefix)
    try:
        record = json.loads((home / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not all((home / t).is_file() for t in TOOLS):
        return None
    bin_dir = scripts_dir() if prefix is None else Path(prefix) / "bin"
    if not all(_links_here(bin_dir, t, home) for t in TOOLS):
        return None
    return record.get("key")


def _links_here(bin_dir: Path, tool: str, home: Path) -> bool:
    link = bin_dir / tool
    return link.is_symlink() and link.resolve() == (home / tool).resolve()


def install(entry: Path, key: str, progress: Callable[[str], None] | None = print,
            prefix: Path | None = None) -> Path:
    """Install the programs of a cache entry's ``tools`` folder into this environment; returns the home."""
    home = tools_home(prefix)
    bin_dir = scripts_dir() if prefix is None else Path(prefix) / "bin"
    for tool in TOOLS:
        link = bin_dir / tool
        if link.exists() and not link.is_symlink():
            raise ToolsError(f"{link} exists and is not lmexport's", hint="remove it, then rerun the build")
    home.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=home.parent, prefix=f".{HOME_NAME}-"))
    try:
        shutil.rmtree(tmp)
        shutil.copytree(entry, tmp, symlinks=True)
        (tmp / STAMP_NAME).write_text(json.dumps({"key": key, "tools": list(TOOLS),
                                                  "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                                 indent=2) + "\n", encoding="utf-8")
        if home.exists():
            shutil.rmtree(home)
        tmp.rename(home)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        link = bin_dir / tool
        if link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(home / tool, bin_dir))
    _say(progress, f"  installed {', '.join(TOOLS)} into {bin_dir}")
    return home


def tools_dir() -> Path:
    """Where lmexport looks for the programs: ``$LMEXPORT_LLAMACPP_TOOLS`` (another build of the same
    patched llama.cpp) or the environment's install (``tools_home``)."""
    override = os.environ.get("LMEXPORT_LLAMACPP_TOOLS")
    return Path(override).expanduser() if override else tools_home()


def find_tool(name: str) -> Path | None:
    """The program ``name`` installed by ``lmexport llamacpp build`` in this environment, else None."""
    path = tools_dir() / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def require_tool(name: str) -> Path:
    """``find_tool`` or a one-line error saying how to get it."""
    path = find_tool(name)
    if path is None:
        raise ToolsError(f"{name} is not installed in {tools_dir()}", hint=BUILD_HINT)
    return path
