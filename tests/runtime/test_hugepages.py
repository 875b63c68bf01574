"""Huge pages for ONNX Runtime's weights: the CLI re-executes itself once with glibc's hugetlb tunable.

Real processes: ``lmexport bench`` (console entry, so it may re-execute) on a real tiny ONNX folder
reports whether the tunable was on; an in-process ``main([...])`` never re-executes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from lmexport.runtime import hugepages

SMOKE = ["--repeats", "1", "--prompt-tokens", "4", "--new-tokens", "2", "--threads", "1", "--device", "cpu", "--json"]
CAN = hugepages.thp_mode() == "madvise" and (hugepages.glibc_version() or (0,)) >= hugepages.MIN_GLIBC \
    and sys.platform == "linux"


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
    from lmexport.modeling.tiny import make_model_folder

    base = tmp_path_factory.mktemp("hugepages")
    out = base / "onnx"
    export_onnx(make_model_folder(base / "tiny", seed=0), out, OnnxExportOptions())
    return out


def bench_env(switch: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.SWITCH)}
    if switch is not None:
        env[hugepages.SWITCH] = switch
    return env


def run_bench(onnx_dir, switch):
    proc = subprocess.run([sys.executable, "-m", "lmexport.cli", "bench", str(onnx_dir), *SMOKE],
                          capture_output=True, text=True, timeout=300, env=bench_env(switch))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_process_entry_reexecutes_with_the_tunable_when_the_system_allows(onnx_dir):
    report = run_bench(onnx_dir, "1")
    assert report["versions"]["glibc_malloc_hugetlb"] == ("on" if CAN else "off")


def test_switch_off_and_small_folders_keep_the_process(onnx_dir):
    assert run_bench(onnx_dir, "0")["versions"]["glibc_malloc_hugetlb"] == "off"
    # a tiny folder is below MIN_BYTES: no re-execution by default
    assert run_bench(onnx_dir, None)["versions"]["glibc_malloc_hugetlb"] == "off"


def test_in_process_main_never_reexecutes(onnx_dir, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from lmexport.cli import main
        main(["bench", {str(onnx_dir)!r}, *{SMOKE!r}])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=bench_env("1"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["versions"]["glibc_malloc_hugetlb"] == "off"


def test_generate_output_is_the_same_with_huge_pages(onnx_dir):
    def generate(switch):
        proc = subprocess.run([sys.executable, "-m", "lmexport.cli", "generate", str(onnx_dir), "--prompt", "ab",
                               "--max-new-tokens", "6"], capture_output=True, text=True, timeout=300,
                              env=bench_env(switch))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    assert generate("1") == generate("0")


@pytest.mark.parametrize("env, size, expect", [
    ({hugepages.SWITCH: "0"}, 1 << 40, "LMEXPORT_HUGE_PAGES=0"),
    ({"GLIBC_TUNABLES": "glibc.malloc.check=0:" + hugepages.TUNABLE}, 1 << 40, "already set"),
    ({}, 1 << 20, "weights below"),
])
def test_why_not_names_the_reason(monkeypatch, env, size, expect):
    monkeypatch.delenv(hugepages.SWITCH, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert expect in (hugepages.why_not(size) or "")


def test_why_not_follows_the_kernel_mode(monkeypatch, tmp_path):
    monkeypatch.delenv(hugepages.SWITCH, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for mode, line in (("always", "[always] madvise never"), ("never", "always madvise [never]")):
        f = tmp_path / mode
        f.write_text(line + "\n")
        monkeypatch.setattr(hugepages, "THP_ENABLED", f)
        assert hugepages.thp_mode() == mode
        assert f"THP mode is {mode}" in hugepages.why_not(1 << 40)
    monkeypatch.setattr(hugepages, "THP_ENABLED", tmp_path / "missing")
    assert hugepages.thp_mode() is None
