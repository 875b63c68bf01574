"""lmexport.atomic on a real file system: the rename decides, folders and inputs are never replaced,
and temporaries of dead processes are swept (issue #17, "data destroyed" and "leftovers")."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lmexport import atomic
from lmexport.atomic import (atomic_output, atomic_outputs, check_output_path, rename_noreplace, staging_folder,
                             sweep_stale)
from lmexport.errors import InputError, OutputExistsError


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(params=["native", "portable"])
def rename_kind(request, monkeypatch):
    """Each rename test twice: with the kernel's no-replace rename, and with the portable fallback."""
    if request.param == "portable":
        monkeypatch.setattr(atomic, "_LIBC", None)
    return request.param


@pytest.mark.parametrize("directory", [False, True], ids=["file", "folder"])
def test_a_target_that_appears_meanwhile_is_kept(directory, rename_kind, tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="appeared while the export ran"):
        with atomic_output(target, directory=directory) as tmp:
            (tmp / "model.onnx" if directory else tmp).write_text("ours")
            target.mkdir() if directory else None
            (target / "theirs" if directory else target).write_text("theirs")
    assert (target / "theirs" if directory else target).read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_rename_noreplace_refuses_and_leaves_both(rename_kind, tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").read_text() == "a" and (tmp_path / "b").read_text() == "b"
    rename_noreplace(tmp_path / "a", tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]


def test_several_outputs_appear_all_or_none(tmp_path):
    targets = [tmp_path / "a-00001-of-00002.gguf", tmp_path / "a-00002-of-00002.gguf"]
    with pytest.raises(OutputExistsError):
        with atomic_outputs(targets) as tmps:
            for tmp in tmps:
                tmp.write_text("ours")
            targets[1].write_text("theirs")
    assert sorted(p.name for p in tmp_path.iterdir()) == [targets[1].name]


@pytest.mark.parametrize("directory, make, message", [
    (False, lambda p: p.mkdir(), "is a folder"),
    (True, lambda p: p.write_text("x"), "is a file"),
], ids=["file over folder", "folder over file"])
def test_a_folder_and_a_file_never_replace_each_other(directory, make, message, tmp_path):
    target = tmp_path / "out"
    make(target)
    with pytest.raises(InputError, match=message):
        check_output_path(target, True, directory=directory)


@pytest.mark.parametrize("out, inp, message", [
    ("m", "m", "is the input"),
    ("m/model.gguf", "m", "lies inside the input"),
    (".", "m", "contains the input"),
    ("link", "m", "is the input"),                        # the same folder through a link
    ("blobs/b1", "snap", "is the input"),                 # a file a snapshot links to
], ids=["same", "inside", "contains", "through a link", "a linked blob"])
def test_an_output_never_overlaps_an_input(out, inp, message, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "link").symlink_to("m")
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "b1").write_text("weights")
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "model.safetensors").symlink_to("../blobs/b1")
    with pytest.raises(InputError, match=message):
        check_output_path(tmp_path / out, True, inputs=[tmp_path / inp])


def test_a_dangling_link_is_an_existing_output(tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError, match="as a link to nothing"):
        with atomic_output(tmp_path / "out") as tmp:
            tmp.write_text("x")
    assert os.readlink(tmp_path / "out") == str(tmp_path / "nowhere")


def test_stale_temporaries_of_dead_processes_are_swept(tmp_path):
    pid, alive = dead_pid(), os.getppid()
    (tmp_path / f".out.lmexport-tmp-{pid}").mkdir()
    (tmp_path / f".out.lmexport-tmp-{pid}" / "model.onnx").write_text("half")
    (tmp_path / f".x.gguf.lmexport-stage-{pid}").mkdir()
    (tmp_path / f".prev.lmexport-old-{pid}").write_text("the user's previous output")
    (tmp_path / "kept").write_text("new")
    (tmp_path / f".kept.lmexport-old-{pid}").write_text("replaced")
    (tmp_path / f".busy.lmexport-tmp-{alive}").write_text("a running export")
    (tmp_path / ".notes.lmexport-tmp-abc").write_text("not ours")
    sweep_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["prev", "kept", f".busy.lmexport-tmp-{alive}", ".notes.lmexport-tmp-abc"])
    assert (tmp_path / "prev").read_text() == "the user's previous output"
    assert (tmp_path / "kept").read_text() == "new"


def test_overwrite_replaces_and_failure_keeps_the_old(tmp_path):
    target = tmp_path / "out"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target, overwrite=True) as tmp:
            tmp.write_text("new")
            raise RuntimeError("validation failed")
    assert target.read_text() == "old"
    with atomic_output(target, overwrite=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    with staging_folder(target) as stage:
        assert stage.name == f".out.lmexport-stage-{os.getpid()}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _child_export(target: str, written, go) -> None:
    with atomic_output(target) as tmp:
        tmp.write_text("child")
        written.set()
        go.wait(30)


def test_of_two_processes_writing_one_new_path_the_second_to_finish_fails(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    written, go = ctx.Event(), ctx.Event()
    target = tmp_path / "out.gguf"
    child = ctx.Process(target=_child_export, args=(str(target), written, go))
    with pytest.raises(OutputExistsError, match="appeared while the export ran"):
        with atomic_output(target) as tmp:
            tmp.write_text("parent")
            child.start()
            assert written.wait(30)           # both have checked the target and written their temporary
            go.set()
            child.join(30)
            assert child.exitcode == 0
    assert target.read_text() == "child"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def test_a_pid_reused_by_a_younger_process_owns_no_older_temporary():
    import time

    before = time.time() - 100                 # a temporary last changed 100 s ago
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert atomic._alive(proc.pid, time.time())           # changed now: may be this process's
        if atomic._start_time(proc.pid) is not None:          # Linux: the start time is known
            assert not atomic._alive(proc.pid, before)         # older than the process: a dead owner's
    finally:
        proc.kill()
        proc.wait()
    assert not atomic._alive(dead_pid(), time.time())
