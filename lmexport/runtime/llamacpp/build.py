"""Build llama-cpp-python with lmexport's ``liquidmetal`` architecture patched into its llama.cpp.

``build()`` downloads the llama-cpp-python sdist (pinned ``LLAMA_CPP_PYTHON_VERSION``) with pip
into a cache (``$LMEXPORT_CACHE/llamacpp`` or ``~/.cache/lmexport/llamacpp``), unpacks it, applies
``liquidmetal.patch`` to ``vendor/llama.cpp`` and ``pip install``s the result into the running
interpreter's environment, with a persistent CMake build folder under the cache, so that a rebuild
after a patch change recompiles only what changed.

The build makes a wheel first and keeps it under ``<cache>/wheels/<key>``, the key made of the
patch hash, the version, the effective CMAKE_ARGS, the host CPU and the Python ABI tag (not the
interpreter's path): a fresh virtual environment on the same machine (a new CI clone) installs that
wheel in seconds instead of compiling llama.cpp again; it compiles only when no wheel fits.

A stamp (hash of the patch, the version, the effective CMAKE_ARGS, the interpreter and the host CPU)
is written into the installed package (``llama_cpp/lmexport_build.json``). When the installed
package carries the stamp of the build asked for, ``build()`` returns at once ("already built").

CPU build by default (``-DGGML_NATIVE=ON``, with AMX disabled: ggml's AMX path crashes on some
Intel Xeons, see docs); the user's ``CMAKE_ARGS`` are appended, so ``CMAKE_ARGS=-DGGML_CUDA=on``
builds the CUDA backend. Imports neither torch nor llama_cpp.
"""
from __future__ import annotations

import filecmp
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmexport.errors import LmexportError
from lmexport.runtime.llamacpp import tools

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
PATCH_PATH = Path(__file__).with_name("liquidmetal.patch")
STAMP_NAME = "lmexport_build.json"
BUILD_REQUIREMENTS = ("scikit-build-core>=0.9.2",)
RUNTIME_REQUIREMENTS = ("typing-extensions>=4.5.0", "numpy>=1.20.0", "diskcache>=5.6.1", "jinja2>=2.11.3")
# the wheel's build keeps tools and server off; tools.py configures them on in the same tree.
# GGML_RPC: the RPC backend (libggml-rpc, ggml-rpc-server); OPENSSL off: nothing here needs HTTPS;
# RPATH $ORIGIN: the programs find the libraries beside them once copied out of the build folder
BASE_CMAKE_ARGS = ("-DGGML_NATIVE=ON", "-DLLAVA_BUILD=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                   "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
                   "-DGGML_RPC=ON", "-DLLAMA_OPENSSL=OFF", "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON")
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


class BuildError(LmexportError):
    """The patched llama.cpp could not be built (a missing tool, a failed download or compile)."""


@dataclass(frozen=True)
class BuildResult:
    status: str            # "built", "installed from cache" or "already built"
    stamp: str
    package_dir: Path
    seconds: float
    log: Path | None = None


def cache_root() -> Path:
    base = os.environ.get("LMEXPORT_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "lmexport"
    return root / "llamacpp"


def patch_bytes() -> bytes:
    try:
        return PATCH_PATH.read_bytes()
    except OSError as exc:
        raise BuildError(f"the llama.cpp patch {PATCH_PATH} is missing ({exc})",
                         hint="reinstall lmexport") from exc


def host_fingerprint() -> str:
    """CPU model and feature flags: a -march=native build is only valid on the host it was built on."""
    parts = [platform.machine(), platform.system()]
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        for key in ("model name", "flags", "Features"):
            line = next((ln for ln in text.splitlines() if ln.startswith(key)), "")
            parts.append(line)
    except OSError:
        parts.append(platform.processor())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _compiler_accepts(compiler: str, flags: str) -> bool:
    try:
        proc = subprocess.run([compiler, *flags.split(), "-x", "c", "-E", "-"], input=b"",
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def find_compilers() -> tuple[str, str]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cc or not cxx:
        raise BuildError("no C/C++ compiler found (need cc and c++ on PATH, or CC/CXX set)",
                         hint="install gcc/g++ or clang, e.g. apt-get install build-essential")
    return cc, cxx


def find_cmake() -> str:
    cmake = shutil.which("cmake")
    if cmake is None:
        candidate = Path(sys.executable).with_name("cmake")
        cmake = str(candidate) if candidate.exists() else None
    if cmake is None:
        raise BuildError("cmake not found", hint="install it: pip install cmake (or apt-get install cmake)")
    return cmake


def cmake_args(user_args: str | None = None) -> list[str]:
    """The effective CMAKE_ARGS: lmexport's CPU defaults, AMX off on x86, then the user's (which win)."""
    user = shlex.split(os.environ.get("CMAKE_ARGS", "") if user_args is None else user_args)
    args = list(BASE_CMAKE_ARGS)
    user_sets_flags = any(a.startswith(("-DCMAKE_C_FLAGS", "-DCMAKE_CXX_FLAGS")) for a in user)
    if platform.machine().lower() in ("x86_64", "amd64") and not user_sets_flags:
        cc, cxx = find_compilers()
        if _compiler_accepts(cc, NO_AMX_FLAGS) and _compiler_accepts(cxx, NO_AMX_FLAGS):
            args += [f"-DCMAKE_C_FLAGS={NO_AMX_FLAGS}", f"-DCMAKE_CXX_FLAGS={NO_AMX_FLAGS}"]
    return args + user


def build_stamp(args: list[str]) -> str:
    h = hashlib.sha256()
    for part in (LLAMA_CPP_PYTHON_VERSION, sys.executable, host_fingerprint(), *args):
        h.update(part.encode() + b"\0")
    h.update(patch_bytes())
    return h.hexdigest()


def abi_tag() -> str:
    """The interpreter's ABI (e.g. cpython-311-x86_64-linux-gnu): what a built wheel is tied to."""
    return f"{sys.implementation.cache_tag}-{sysconfig.get_config_var('SOABI') or ''}-{platform.machine()}"


def wheel_key(args: list[str]) -> str:
    """Key of a cached wheel: patch, version, CMAKE_ARGS, host CPU and ABI; not the interpreter path."""
    h = hashlib.sha256()
    for part in (LLAMA_CPP_PYTHON_VERSION, abi_tag(), host_fingerprint(), *args):
        h.update(part.encode() + b"\0")
    h.update(patch_bytes())
    return h.hexdigest()[:24]


def cached_wheel(cache: Path, args: list[str], with_tools: bool = False) -> Path | None:
    """The cached wheel of this build; with ``with_tools`` only if the entry holds the programs too."""
    folder = cache / "wheels" / wheel_key(args)
    wheels = sorted(folder.glob("llama_cpp_python-*.whl")) if folder.is_dir() else []
    if with_tools and not all((folder / "tools" / t).is_file() for t in tools.TOOLS):
        return None
    return wheels[0] if wheels else None


def installed_package_dir() -> Path | None:
    """Folder of the importable llama_cpp package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _library_fingerprint(pkg: Path) -> dict[str, list[int]]:
    """Size and mtime of the shared libraries the package loads: a stock llama-cpp-python installed
    over this build replaces them (and leaves our stamp file behind, as it is not in pip's RECORD)."""
    out = {}
    for lib in sorted((pkg / "lib").glob("*")) if (pkg / "lib").is_dir() else ():
        if lib.is_file() and (".so" in lib.name or lib.suffix in (".dylib", ".dll")):
            st = lib.stat()
            out[lib.name] = [st.st_size, st.st_mtime_ns]
    return out


def installed_stamp() -> dict | None:
    """The stamp of the installed llama_cpp, if it is an lmexport build whose libraries are unchanged."""
    pkg = installed_package_dir()
    if pkg is None:
        return None
    try:
        record = json.loads((pkg / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("libraries") != _library_fingerprint(pkg):
        return None
    return record


def is_built(args: list[str] | None = None) -> bool:
    """Is the installed llama_cpp exactly the build ``build()`` would make now?"""
    stamp = installed_stamp()
    return stamp is not None and stamp.get("stamp") == build_stamp(cmake_args() if args is None else args)


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def download_sdist(cache: Path, progress=None) -> Path:
    sdist_dir = cache / "sdist"
    name = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    path = sdist_dir / name
    if path.exists():
        return path
    sdist_dir.mkdir(parents=True, exist_ok=True)
    _say(progress, f"downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} (sdist, ~77 MB) ...")
    with tempfile.TemporaryDirectory(dir=sdist_dir) as tmp:
        # --no-build-isolation: pip would otherwise build an isolated env only to read the metadata
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / name
        if proc.returncode != 0 or not got.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BuildError(f"could not download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}: {tail[0]}",
                             hint="needs access to PyPI (or a pip index with the sdist)")
        got.replace(path)
    return path


def _patched_tree(sdist: Path, staging: Path, progress=None) -> Path:
    """Unpack the sdist into ``staging`` and apply the patch there; returns the source folder."""
    with tarfile.open(sdist) as tar:
        try:
            tar.extractall(staging, filter="tar")
        except TypeError:  # Python < 3.11.4: no extraction filters
            tar.extractall(staging)
    src = staging / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    vendor = src / "vendor" / "llama.cpp"
    patch = shutil.which("patch")
    if patch is None:
        raise BuildError("the `patch` tool is not installed", hint="apt-get install patch")
    proc = subprocess.run([patch, "-p1", "--forward", "--batch", "-d", str(vendor)], input=patch_bytes(),
                          capture_output=True)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
        raise BuildError(f"liquidmetal.patch does not apply to llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}: "
                         + (out[-1] if out else "no output"))
    _say(progress, "patched vendor/llama.cpp with liquidmetal.patch")
    return src


def _sync_tree(new: Path, dst: Path) -> int:
    """Make ``dst`` equal to ``new``, rewriting only files whose bytes differ (so their mtimes move and
    the kept build folder recompiles only them). Returns the number of files written."""
    written = 0
    for root, dirs, files in os.walk(new):
        rel = Path(root).relative_to(new)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            s, d = Path(root) / f, dst / rel / f
            if d.exists() and filecmp.cmp(s, d, shallow=False):
                continue
            shutil.copy2(s, d) if not d.exists() else shutil.copyfile(s, d)
            written += 1
    for root, dirs, files in os.walk(dst, topdown=False):
        rel = Path(root).relative_to(dst)
        for f in files:
            if not (new / rel / f).exists():
                (Path(root) / f).unlink()
    return written


def _ensure_build_requirements(progress=None) -> None:
    import importlib.util

    if importlib.util.find_spec("scikit_build_core") is None:
        _say(progress, "installing the build backend (scikit-build-core) ...")
        proc = subprocess.run([sys.executable, "-m", "pip", "install", *BUILD_REQUIREMENTS],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BuildError(f"could not install scikit-build-core: {tail[0]}")


def _runtime_requirements(src: Path) -> list[str]:
    """llama-cpp-python's own dependencies (diskcache, jinja2, ...), from its pyproject.toml."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return list(RUNTIME_REQUIREMENTS)
    try:
        data = tomllib.loads((src / "pyproject.toml").read_text(encoding="utf-8"))
        return list(data["project"]["dependencies"])
    except (OSError, KeyError, ValueError):
        return list(RUNTIME_REQUIREMENTS)


def _install_requirements(deps: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "install", *deps], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"could not install llama-cpp-python's dependencies ({', '.join(deps)}): {tail[0]}")


def _install_wheel(wheel: Path, deps: list[str], progress=None) -> None:
    # the dependencies first, as plain requirements (kept if satisfied), then the package itself with
    # --no-deps --force-reinstall, so that numpy & co. are never reinstalled by the rebuild
    _install_requirements(deps)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"could not install {wheel.name}: {tail[0]}", hint=f"remove {wheel.parent} to rebuild")
    _say(progress, f"  installed {wheel.name}")


def _run_pip_wheel(src: Path, build_dir: Path, args: list[str], log_path: Path, out_dir: Path,
                   progress=None) -> Path:
    """Compile llama-cpp-python into a wheel in ``out_dir`` (the CMake build folder is kept)."""
    env = dict(os.environ)
    env["CMAKE_ARGS"] = shlex.join(args)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
           "--no-cache-dir", "-C", f"build-dir={build_dir}", "-w", str(out_dir), str(src)]
    last = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ CMAKE_ARGS=" + shlex.quote(env["CMAKE_ARGS"]) + " " + shlex.join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1)
        for line in proc.stdout:
            log.write(line)
            text = line.strip()
            # ninja's "[n/N] ..." lines: show at most one every 5 s, plus the last
            if text.startswith("[") and "/" in text.split("]")[0]:
                if time.monotonic() - last > 5:
                    _say(progress, "  " + text.split("]")[0] + "] compiling")
                    last = time.monotonic()
            elif text.startswith(("*** ", "Successfully built", "ERROR:")):
                _say(progress, "  " + text)
        rc = proc.wait()
    wheels = sorted(out_dir.glob("llama_cpp_python-*.whl"))
    if rc != 0 or not wheels:
        raise BuildError(f"building llama-cpp-python failed (pip exit {rc})", hint=f"full log: {log_path}")
    return wheels[0]


def build(*, force: bool = False, cache: Path | None = None,
          progress: Callable[[str], None] | None = print, with_tools: bool = True) -> BuildResult:
    """Build and install the patched llama-cpp-python and (``with_tools``) llama.cpp's programs
    (llama-server, llama-cli, ...: ``tools.TOOLS``), or return at once if both are installed already."""
    t0 = time.monotonic()
    args = cmake_args()
    stamp = build_stamp(args)
    key = wheel_key(args)
    installed = installed_stamp()
    pkg = installed_package_dir()
    pkg_ok = not force and installed is not None and installed.get("stamp") == stamp and pkg is not None
    tools_ok = not with_tools or (not force and tools.installed_key() == key)
    if pkg_ok and tools_ok:
        return BuildResult("already built", stamp, pkg, time.monotonic() - t0)

    cache = Path(cache) if cache is not None else cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    wheel = None if force else cached_wheel(cache, args, with_tools=with_tools)
    if wheel is not None:
        _say(progress, f"installing the cached build {wheel.parent.name} (same patch, CMAKE_ARGS, CPU, ABI)")
        if not pkg_ok:
            deps_file = wheel.parent / "requirements.json"
            try:
                deps = json.loads(deps_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                deps = list(RUNTIME_REQUIREMENTS)
            _install_wheel(wheel, deps, progress)
        if not tools_ok:
            tools.install(wheel.parent / "tools", key, progress)
        return _finish(stamp, args, "installed from cache", t0, None, progress)

    find_compilers()
    find_cmake()
    _ensure_build_requirements(progress)
    sdist = download_sdist(cache, progress)

    # one source folder and one build folder per configuration (not per patch): a patch change
    # rewrites only the files it touches and recompiles only those
    config_key = hashlib.sha256(("\0".join([LLAMA_CPP_PYTHON_VERSION, sys.executable, host_fingerprint(), *args]))
                                .encode()).hexdigest()[:12]
    work = cache / f"work-{config_key}"
    work.mkdir(parents=True, exist_ok=True)
    src_dir, build_dir = work / "src", work / "build"
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        fresh = _patched_tree(sdist, Path(tmp), progress)
        if src_dir.exists():
            n = _sync_tree(fresh, src_dir)
            _say(progress, f"source folder updated ({n} file(s) changed)")
        else:
            fresh.replace(src_dir)
    warm = build_dir.exists()
    _say(progress, f"building llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} with liquidmetal "
                   f"({'incremental' if warm else 'full build, several minutes'}); CMAKE_ARGS: {shlex.join(args)}")
    log_path = work / "build.log"
    deps = _runtime_requirements(src_dir)
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".partial-") as tmp:
        built = _run_pip_wheel(src_dir, build_dir, args, log_path, Path(tmp), progress)
        if with_tools:
            tools.build_tools(src_dir, build_dir, args, Path(tmp) / "tools", log_path, progress)
            tools.check_runs(Path(tmp) / "tools")
        (Path(tmp) / "requirements.json").write_text(json.dumps(deps) + "\n", encoding="utf-8")
        final = wheels / wheel_key(args)
        if final.exists():          # a stale entry (e.g. --force): replace it
            shutil.rmtree(final)
        os.chmod(tmp, 0o755)        # mkdtemp makes it 0700
        Path(tmp).rename(final)     # the cache entry appears whole or not at all
        os.mkdir(tmp)               # for TemporaryDirectory's cleanup
    _install_wheel(final / built.name, deps, progress)
    if with_tools:
        tools.install(final / "tools", key, progress)
    return _finish(stamp, args, "built", t0, log_path, progress)


def _finish(stamp: str, args: list[str], status: str, t0: float, log_path: Path | None, progress) -> BuildResult:
    import importlib

    importlib.invalidate_caches()   # pip installed into site-packages from another process
    pkg = installed_package_dir()
    if pkg is None:
        raise BuildError("pip reported success but llama_cpp is not importable", hint=f"see {log_path}")
    record = {"stamp": stamp, "version": LLAMA_CPP_PYTHON_VERSION, "cmake_args": args,
              "patch_sha256": hashlib.sha256(patch_bytes()).hexdigest(), "python": sys.executable,
              "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "libraries": _library_fingerprint(pkg)}
    (pkg / STAMP_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    seconds = time.monotonic() - t0
    _say(progress, f"{status} in {seconds:.0f} s: {pkg}")
    return BuildResult(status, stamp, pkg, seconds, log_path)
