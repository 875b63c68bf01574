"""The build command's decisions, without compiling: stamp, CMake arguments, tool checks, CLI errors."""
from __future__ import annotations

import json
import sys

import pytest

from lmexport.runtime.llamacpp import build as b


def test_stamp_follows_patch_version_and_cmake_args(monkeypatch):
    args = b.cmake_args("")
    base = b.build_stamp(args)
    assert b.build_stamp(args) == base
    assert b.build_stamp(args + ["-DGGML_CUDA=on"]) != base
    monkeypatch.setattr(b, "patch_bytes", lambda: b"changed")
    assert b.build_stamp(args) != base
    monkeypatch.undo()
    monkeypatch.setattr(b, "LLAMA_CPP_PYTHON_VERSION", "0.0.0")
    assert b.build_stamp(args) != base


def test_cmake_args_cpu_defaults_no_amx_and_user_args_last(monkeypatch):
    monkeypatch.setattr(b.platform, "machine", lambda: "x86_64")
    args = b.cmake_args("-DGGML_CUDA=on -DGGML_NATIVE=OFF")
    assert args[0] == "-DGGML_NATIVE=ON" and args[-2:] == ["-DGGML_CUDA=on", "-DGGML_NATIVE=OFF"]
    assert f"-DCMAKE_C_FLAGS={b.NO_AMX_FLAGS}" in args and f"-DCMAKE_CXX_FLAGS={b.NO_AMX_FLAGS}" in args
    # the user's own C flags win: lmexport adds none
    own = b.cmake_args("-DCMAKE_C_FLAGS=-O2")
    assert not any(a.startswith("-DCMAKE_C_FLAGS=-mno") for a in own)
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_VULKAN=on")
    assert b.cmake_args()[-1] == "-DGGML_VULKAN=on"
    monkeypatch.setattr(b.platform, "machine", lambda: "aarch64")
    assert not any("amx" in a for a in b.cmake_args(""))


def test_cache_root_honours_lmexport_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LMEXPORT_CACHE", str(tmp_path))
    assert b.cache_root() == tmp_path / "llamacpp"
    monkeypatch.delenv("LMEXPORT_CACHE")
    assert b.cache_root().parts[-3:] == (".cache", "lmexport", "llamacpp")


def test_missing_compiler_or_cmake_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("LMEXPORT_CACHE", str(tmp_path))      # an empty wheel cache
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(b, "installed_stamp", lambda: None)
    monkeypatch.setattr(b.shutil, "which", lambda name: None)
    with pytest.raises(b.BuildError, match="no C/C.. compiler found"):
        b.build(progress=None)
    monkeypatch.setattr(b, "find_compilers", lambda: ("cc", "c++"))
    monkeypatch.setattr(b, "sys", type("S", (), {"executable": "/nonexistent/python",
                                                 "implementation": sys.implementation}))
    with pytest.raises(b.BuildError, match="cmake not found"):
        b.build(progress=None)


def test_cli_turns_build_errors_into_exit_2(monkeypatch, capsys):
    from lmexport.cli import main

    def fail(**_):
        raise b.BuildError("cmake not found", hint="install it: pip install cmake")

    monkeypatch.setattr(b, "build", fail)
    with pytest.raises(SystemExit) as exc:
        main(["llamacpp", "build"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: cmake not found (install it: pip install cmake)"


def test_already_built_when_the_installed_stamp_matches(monkeypatch, tmp_path):
    pkg = tmp_path / "llama_cpp"
    (pkg / "lib").mkdir(parents=True)
    (pkg / "lib" / "libllama.so").write_bytes(b"patched")
    stamp = b.build_stamp(b.cmake_args())
    libs = b._library_fingerprint(pkg)
    (pkg / b.STAMP_NAME).write_text(json.dumps({"stamp": stamp, "libraries": libs}))
    monkeypatch.setattr(b, "installed_package_dir", lambda: pkg)
    monkeypatch.setattr(b.tools, "installed_key", lambda prefix=None: b.wheel_key(b.cmake_args()))
    calls = []
    monkeypatch.setattr(b, "_run_pip_wheel", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(b, "_install_wheel", lambda *a, **k: calls.append(a))
    result = b.build(progress=None)
    assert result.status == "already built" and calls == []
    assert b.is_built()
    # a stock llama-cpp-python installed over it replaces the library but leaves the stamp file
    (pkg / "lib" / "libllama.so").write_bytes(b"stock build")
    assert not b.is_built()
    (pkg / "lib" / "libllama.so").write_bytes(b"patched")
    (pkg / b.STAMP_NAME).write_text(json.dumps({"stamp": "old", "libraries": b._library_fingerprint(pkg)}))
    assert not b.is_built()


def test_wheel_cache_key_ignores_the_interpreter_path_but_not_patch_args_or_abi(monkeypatch, tmp_path):
    args = b.cmake_args("")
    key = b.wheel_key(args)
    assert b.wheel_key(args) == key and len(key) == 24
    monkeypatch.setattr(b.sys, "executable", "/a/fresh/clone/.venv/bin/python")
    assert b.wheel_key(args) == key                      # a fresh venv finds the same wheel
    assert b.wheel_key(args + ["-DGGML_CUDA=on"]) != key
    monkeypatch.setattr(b, "abi_tag", lambda: "cpython-312-x86_64-linux-gnu")
    assert b.wheel_key(args) != key
    monkeypatch.undo()
    monkeypatch.setattr(b, "patch_bytes", lambda: b"another patch")
    assert b.wheel_key(args) != key


def test_cached_wheel_is_found_only_under_its_key(tmp_path):
    args = b.cmake_args("")
    assert b.cached_wheel(tmp_path, args) is None
    other = tmp_path / "wheels" / ("0" * 24)
    other.mkdir(parents=True)
    (other / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    assert b.cached_wheel(tmp_path, args) is None
    mine = tmp_path / "wheels" / b.wheel_key(args)
    mine.mkdir()
    (mine / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    assert b.cached_wheel(tmp_path, args).parent == mine


def test_tools_install_into_libexec_with_relative_links_and_a_stamp(tmp_path):
    from lmexport.runtime.llamacpp import tools

    entry = tmp_path / "entry"
    entry.mkdir()
    for name in tools.TOOLS:
        (entry / name).write_text("#!/bin/sh\necho " + name + "\n")
        (entry / name).chmod(0o755)
    (entry / "libllama.so.0.5.0").write_bytes(b"lib")
    (entry / "libllama.so.0").symlink_to("libllama.so.0.5.0")
    prefix = tmp_path / "venv"
    assert tools.installed_key(prefix) is None
    home = tools.install(entry, "k1", progress=None, prefix=prefix)
    assert home == prefix / "libexec" / "lmexport-llamacpp" and tools.installed_key(prefix) == "k1"
    assert (home / "libllama.so.0").is_symlink()                        # library links kept as links
    for name in tools.TOOLS:
        link = prefix / "bin" / name
        assert link.is_symlink() and not link.readlink().is_absolute()  # relocatable
        assert link.resolve() == (home / name).resolve()
    (prefix / "bin" / "llama-server").unlink()
    assert tools.installed_key(prefix) is None                          # incomplete: reinstall
    tools.install(entry, "k2", progress=None, prefix=prefix)            # replaces the old install
    assert tools.installed_key(prefix) == "k2"
    (prefix / "bin" / "llama-cli").unlink()
    (prefix / "bin" / "llama-cli").write_text("a user's own program")
    with pytest.raises(tools.ToolsError, match="is not lmexport's"):
        tools.install(entry, "k3", progress=None, prefix=prefix)


def test_cached_wheel_with_tools_needs_every_program(tmp_path):
    from lmexport.runtime.llamacpp import tools

    args = b.cmake_args("")
    mine = tmp_path / "wheels" / b.wheel_key(args)
    (mine / "tools").mkdir(parents=True)
    (mine / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl").write_bytes(b"")
    assert b.cached_wheel(tmp_path, args) is not None
    assert b.cached_wheel(tmp_path, args, with_tools=True) is None
    for name in tools.TOOLS:
        (mine / "tools" / name).write_bytes(b"")
    assert b.cached_wheel(tmp_path, args, with_tools=True) is not None
