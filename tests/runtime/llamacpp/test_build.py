"""The build command's decisions, without compiling: stamp, CMake arguments, tool checks, CLI errors."""
from __future__ import annotations

import json

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


def test_missing_compiler_or_cmake_is_one_line_error(monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(b, "installed_stamp", lambda: None)
    monkeypatch.setattr(b.shutil, "which", lambda name: None)
    with pytest.raises(b.BuildError, match="no C/C.. compiler found"):
        b.build(progress=None)
    monkeypatch.setattr(b, "find_compilers", lambda: ("cc", "c++"))
    monkeypatch.setattr(b, "sys", type("S", (), {"executable": "/nonexistent/python"}))
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
    calls = []
    monkeypatch.setattr(b, "_run_pip_install", lambda *a, **k: calls.append(a))
    result = b.build(progress=None)
    assert result.status == "already built" and calls == []
    assert b.is_built()
    # a stock llama-cpp-python installed over it replaces the library but leaves the stamp file
    (pkg / "lib" / "libllama.so").write_bytes(b"stock build")
    assert not b.is_built()
    (pkg / "lib" / "libllama.so").write_bytes(b"patched")
    (pkg / b.STAMP_NAME).write_text(json.dumps({"stamp": "old", "libraries": b._library_fingerprint(pkg)}))
    assert not b.is_built()
