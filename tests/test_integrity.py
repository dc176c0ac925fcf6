"""Checkpoint and run-file integrity under fault injection: damaged attributes, foreign
checkpoints, run files that do not match, full disks, the first checkpoint, and resume's
usage errors."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import tmpfs
from fedast_mpi import checkpoint as ckpt_mod
from fedast_mpi import runlog as runlog_mod
from fedast_mpi.checkpoint import (FIRST_CHECKPOINT_SECONDS, Checkpointer, CheckpointWriteError,
                                   ForeignCheckpoint, checkpoint_paths, latest_checkpoint,
                                   read_checkpoint)
from fedast_mpi.cli import main
from fedast_mpi.errors import CheckpointError, FedastError
from fedast_mpi.h5tree import ATTRS_CRC, read_tree, seal, write_tree
from fedast_mpi.runlog import RunFileError, RunFileWriteError, RunLog
from test_checkpoint import SHORT, assert_same_run

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
OFTEN = ["--set", "run.checkpoint.every_seconds=0.2", "--set", "run.checkpoint.keep=3"]


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    saved = {s: signal.getsignal(s) for s in SIGNALS}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(ref, interrupted): the short default job run through, and the same job interrupted
    after 400 batches with a checkpoint every 0.2 s (three kept)."""
    saved = {s: signal.getsignal(s) for s in SIGNALS}
    base = tmp_path_factory.mktemp("runs")
    ref, out = base / "ref", base / "interrupted"
    try:
        assert main(["run", "--out", str(ref), *SHORT]) == 0
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FEDAST_INTERRUPT_AFTER", "400")
            assert main(["run", "--out", str(out), *SHORT, *OFTEN]) == 75
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert len(checkpoint_paths(out)) >= 2
    return ref, out


def copy_run(src, tmp_path, name="run"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- damage of what is not an array -------------------------------------------------------------

def flip_rng_digit(f):
    """One digit of the SELECT stream's PCG64 state, still valid JSON."""
    text = f["state"].attrs["select_rng"]
    m = re.search(r'"state": \{"state": (\d)', text)
    i = m.end(1) - 1
    f["state"].attrs["select_rng"] = text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]


def break_json(f):
    f["state"].attrs["busy"] = f["state"].attrs["busy"][:-3]


def wrong_type(f):
    f["state"].attrs["n_processed"] = "many"


def root_time(f):
    f.attrs["time"] = float(f.attrs["time"]) + 1.0


def root_config(f):
    f.attrs["config"] = f.attrs["config"] + "\n"


def member_dtype(f):
    """A dataset rewritten with another dtype (its bytes and CRC kept valid)."""
    g = f["state/tasks/0"]
    name = next(k for k, v in g.items() if isinstance(v, h5py.Dataset))
    data, attrs = g[name][()], dict(g[name].attrs)
    del g[name]
    g.create_dataset(name, data=data.view(np.uint8))
    for k, v in attrs.items():
        g[name].attrs[k] = v


def drop_root_check(f):
    del f.attrs[ATTRS_CRC]


DAMAGES = [flip_rng_digit, break_json, wrong_type, root_time, root_config, member_dtype,
           drop_root_check]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__ for d in DAMAGES])
def test_any_damage_is_detected_and_skipped(runs, tmp_path, capsys, damage):
    out = copy_run(runs[1], tmp_path)
    paths = checkpoint_paths(out)
    with h5py.File(paths[0], "r+") as f:
        damage(f)
    with pytest.raises(CheckpointError):
        read_checkpoint(paths[0])
    capsys.readouterr()
    assert main(["inspect", str(paths[0])]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedast-mpi: error:") and "\n" not in err and str(paths[0]) in err
    path, _ = latest_checkpoint(out)
    assert path == paths[1]
    assert f"skipping {paths[0]}" in capsys.readouterr().err


def test_broken_json_falls_back_and_the_resume_ends_as_the_plain_run(runs, tmp_path, capsys):
    """Before: the checkpoint verified, the server's json.loads failed, exit 1."""
    out = copy_run(runs[1], tmp_path)
    paths = checkpoint_paths(out)
    with h5py.File(paths[0], "r+") as f:
        break_json(f)
    assert main(["resume", str(out), "--force"]) == 0
    assert "skipping" in capsys.readouterr().err
    assert_same_run(runs[0], out)


def strip_checks(path, keep_arrays=True):
    """Make a checkpoint as written before attribute checks (and run ids) existed."""
    with h5py.File(path, "r+") as f:
        groups = [f]
        f.visititems(lambda name, obj: groups.append(obj) if isinstance(obj, h5py.Group) else None)
        for g in groups:
            if ATTRS_CRC in g.attrs:
                del g.attrs[ATTRS_CRC]
        del f.attrs["run_id"]


def test_old_checkpoint_without_checks_is_accepted_with_a_warning(runs, tmp_path, capsys):
    out = copy_run(runs[1], tmp_path)
    newest = checkpoint_paths(out)[0]
    strip_checks(newest)
    with h5py.File(out / "run.h5", "r+") as f:
        del f.attrs["run_id"]  # an older run: neither file names it
    ckpt = read_checkpoint(newest)
    assert ckpt["checked"] is False and ckpt["run_id"] == ""
    path, _ = latest_checkpoint(out)
    assert path == newest and "no attribute check" in capsys.readouterr().err
    assert main(["inspect", str(newest)]) == 0
    assert "no attribute check" in capsys.readouterr().out


def test_old_checkpoint_of_wrong_types_is_refused_not_crashing(runs, tmp_path):
    """Without checks a damaged value is still a CheckpointError (TypeError escaped before)."""
    out = copy_run(runs[1], tmp_path)
    newest = checkpoint_paths(out)[0]
    strip_checks(newest)
    with h5py.File(newest, "r+") as f:
        f.attrs["time"] = np.array([1.0, 2.0])
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(newest)


def test_tree_checks_cover_attributes_and_members(tmp_path):
    tree = {"rng": json.dumps({"state": 2**100 + 7}), "n": 3, "x": 0.1, "flag": True,
            "sub": {"a": np.arange(4.0), "s": "text"}, "lst": [np.zeros(2), {"k": 1}]}
    with h5py.File(tmp_path / "t.h5", "w") as f:
        write_tree(f.create_group("g"), tree)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        back = read_tree(f["g"], required=True)
    assert back["rng"] == tree["rng"] and back["n"] == 3 and back["x"] == 0.1
    assert back["lst"][1] == {"k": 1}
    cases = {"attr": lambda g: g.attrs.__setitem__("n", 4),
             "sub attr": lambda g: g["sub"].attrs.__setitem__("s", "texT"),
             "new attr": lambda g: g.attrs.__setitem__("extra", 1),
             "dropped member": lambda g: g["sub"].__delitem__("a"),
             "list length": lambda g: g["lst"].attrs.__setitem__("__list__", 1)}
    for damage in cases.values():
        shutil.copy(tmp_path / "t.h5", tmp_path / "d.h5")
        with h5py.File(tmp_path / "d.h5", "r+") as f:
            damage(f["g"])
        with h5py.File(tmp_path / "d.h5", "r") as f, pytest.raises(CheckpointError,
                                                                   match="CRC"):
            read_tree(f["g"], required=True)


# -- run ids and the run file -------------------------------------------------------------------

def test_every_checkpoint_names_the_run(runs):
    ref, out = runs
    with h5py.File(out / "run.h5", "r") as f:
        run_id = f.attrs["run_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", run_id)
    assert {read_checkpoint(p)["run_id"] for p in checkpoint_paths(out)} == {run_id}
    with h5py.File(ref / "run.h5", "r") as f:
        assert f.attrs["run_id"] != run_id


def test_foreign_checkpoint_refuses_the_resume_and_touches_nothing(runs, tmp_path, capsys):
    out = copy_run(runs[1], tmp_path)
    foreign = out / "checkpoints" / "ckpt-999999.h5"
    shutil.copy(checkpoint_paths(runs[0])[0], foreign)  # the other run's, now the newest
    before = digest(out / "run.h5")
    with pytest.raises(ForeignCheckpoint):
        latest_checkpoint(out)
    capsys.readouterr()
    assert main(["resume", str(out), "--force"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedast-mpi: error:") and "\n" not in err
    assert str(foreign) in err and str(out / "run.h5") in err and "another run" in err
    assert digest(out / "run.h5") == before


def test_old_run_takes_checkpoints_without_run_id_only(runs, tmp_path):
    out = copy_run(runs[1], tmp_path)
    with h5py.File(out / "run.h5", "r+") as f:
        del f.attrs["run_id"]
    with pytest.raises(ForeignCheckpoint):  # a checkpoint naming a run, a file naming none
        latest_checkpoint(out)
    for path in checkpoint_paths(out):
        with h5py.File(path, "r+") as f:
            del f.attrs["run_id"]
            seal(f)  # as a checked checkpoint that names no run
    path, ckpt = latest_checkpoint(out)
    assert path == checkpoint_paths(out)[0] and ckpt["run_id"] == ""


def test_checkpoint_the_run_file_does_not_reach_is_skipped(runs, tmp_path, capsys):
    out = copy_run(runs[1], tmp_path)
    newest, older = checkpoint_paths(out)[:2]
    n_new = read_checkpoint(newest)["runlog"]["events"]
    n_old = read_checkpoint(older)["runlog"]["events"]
    assert n_old < n_new
    with h5py.File(out / "run.h5", "r+") as f:
        f["events"].resize((n_new - 1,))
    path, _ = latest_checkpoint(out)
    assert path == older
    assert "does not reach it" in capsys.readouterr().err


def test_reopen_checks_everything_before_it_cuts(runs, tmp_path):
    out = copy_run(runs[1], tmp_path)
    ckpt = read_checkpoint(checkpoint_paths(out)[0])
    run_file = out / "run.h5"
    before = digest(run_file)
    too_far = {**ckpt["runlog"], "events": 10**9}
    with pytest.raises(RunFileError, match="fewer than the checkpoint's"):
        RunLog.reopen(run_file, too_far, 3)
    missing = {k: v for k, v in ckpt["runlog"].items() if k != "eval_1"}
    with pytest.raises(RunFileError, match="tables"):
        RunLog.reopen(run_file, missing, 3)
    with pytest.raises(CheckpointError, match="another run"):
        RunLog.reopen(run_file, ckpt["runlog"], 3, run_id="0" * 32)
    assert digest(run_file) == before
    log = RunLog.reopen(run_file, ckpt["runlog"], 2, run_id=ckpt["run_id"])
    assert log.run_id == ckpt["run_id"]
    log.close("interrupted", "test")
    with h5py.File(run_file, "r") as f:
        assert f["events"].shape[0] == ckpt["runlog"]["events"]
        assert f.attrs["writer_pid"] == os.getpid() and f.attrs["world_size"] == 2


# -- resume of a completed run, and usage errors ------------------------------------------------

def test_completed_run_is_left_alone_unless_max_time_grows(runs, tmp_path, capsys):
    out = copy_run(runs[0], tmp_path)
    before = digest(out / "run.h5")
    capsys.readouterr()
    assert main(["resume", str(out)]) == 0
    text = capsys.readouterr().out
    assert "already completed" in text and "nothing to resume" in text
    assert digest(out / "run.h5") == before
    assert main(["resume", str(out), "--set", "run.max_time=200", "--force"]) == 0  # unchanged
    assert digest(out / "run.h5") == before
    with h5py.File(out / "run.h5", "r") as f:
        n = f["events"].shape[0]
    assert main(["resume", str(out), "--set", "run.max_time=230", "--force"]) == 0
    with h5py.File(out / "run.h5", "r") as f:
        assert f.attrs["status"] == "completed" and f["events"].shape[0] > n


# -- the first checkpoint -----------------------------------------------------------------------

def fake_server(state=None):
    state = state if state is not None else {"n": 1, "a": np.ones(4, np.float32)}
    return types.SimpleNamespace(
        state_dict=lambda: state, settle=lambda: None,
        clock=types.SimpleNamespace(now=3.0, wall=lambda: 1.0),
        cfg=types.SimpleNamespace(algorithm=types.SimpleNamespace(name="fedast")))


def new_log(path):
    return RunLog(path, config_yaml="x: 1", algorithm="fedast", clock="virtual", seed=0,
                  world_size=2, package_version="0")


def test_first_checkpoint_comes_early_then_every_seconds(tmp_path):
    assert FIRST_CHECKPOINT_SECONDS == 30
    log = new_log(tmp_path / "run" / "run.h5")
    ck = Checkpointer(tmp_path / "run", "x: 1", log, 600.0, 5)
    server = fake_server()
    ck.tick(server)
    assert ck.saved == []
    ck.last -= FIRST_CHECKPOINT_SECONDS + 1
    ck.tick(server)
    assert len(ck.saved) == 1 and read_checkpoint(ck.saved[0])["run_id"] == log.run_id
    ck.last -= FIRST_CHECKPOINT_SECONDS + 1
    ck.tick(server)
    assert len(ck.saved) == 1  # then every every_seconds
    ck.last -= 600
    ck.tick(server)
    assert len(ck.saved) == 2
    short = Checkpointer(tmp_path / "run", "x: 1", log, 10.0, 5)
    short.last -= 11
    short.tick(server)
    assert len(short.saved) == 1  # every_seconds below the constant: unchanged
    log.close("completed")


# -- full disks ---------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (root only), unmounted afterwards."""
    with tmpfs(tmp_path / "small", "1m") as mnt:
        yield mnt


def assert_checkpoint_write_error(exc_info, path):
    err = exc_info.value
    assert isinstance(err, FedastError) and err.exit_code == 1
    text = str(err)
    assert "\n" not in text and f"cannot write checkpoint {path}: " in text
    assert "[Errno 28] No space left on device" in text


def test_checkpoint_on_a_full_disk(tmp_path, small_fs):
    log = new_log(tmp_path / "log" / "run.h5")
    ck = Checkpointer(small_fs, "x: 1", log, 600.0, 5)
    first = ck.save(fake_server())
    with pytest.raises(CheckpointWriteError) as info:
        ck.save(fake_server({"big": np.ones(1 << 18)}))  # 2 MiB
    assert_checkpoint_write_error(info, small_fs / "checkpoints" / "ckpt-000001.h5")
    assert not list((small_fs / "checkpoints").glob("*.tmp"))
    assert checkpoint_paths(small_fs) == [first] and read_checkpoint(first)["index"] == 0
    assert ck.save(fake_server()).name == "ckpt-000001.h5"  # room again: the next one goes on
    log.close("completed")


def test_checkpoint_write_failure_monkeypatched(tmp_path, monkeypatch):
    log = new_log(tmp_path / "run" / "run.h5")
    ck = Checkpointer(tmp_path / "run", "x: 1", log, 600.0, 5)
    first = ck.save(fake_server())

    def full(group, tree):
        group.attrs["partial"] = 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "write_tree", full)
    with pytest.raises(CheckpointWriteError) as info:
        ck.save(fake_server())
    assert_checkpoint_write_error(info, tmp_path / "run" / "checkpoints" / "ckpt-000001.h5")
    assert checkpoint_paths(tmp_path / "run") == [first]
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    log.close("completed")


def event_row(i):
    return (i, 0, 0, 1, i, i + 1, 1, 0.5, 1.0, 1.5, 0.1, 0.01, 2.0, 1)


def assert_run_write_error(err, path):
    assert isinstance(err, FedastError) and err.exit_code == 1
    text = str(err)
    assert "\n" not in text and f"cannot write run file {path}: " in text
    assert "[Errno 28] No space left on device" in text


FULL_DISK_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
from fedast_mpi import runlog
from fedast_mpi.runlog import RunFileWriteError
from test_integrity import event_row, new_log
runlog.RESERVE_BYTES = 0
log = new_log({path!r})
log.add_task(0, "a", dataset="d", model="m", n_params=10, target_accuracy=0.5)
for i in range(40000):  # 3 MiB of rows
    log.event(event_row(i))
try:
    log.flush()
except RunFileWriteError as e:
    print("ERROR", e, flush=True)
log.close("failed", "disk full")  # already reported: no second error
log.close("failed")  # and nothing more
print("CLOSED", log.closed, len(runlog._UNCLOSABLE), flush=True)
import gc; gc.collect()  # the handle is held: the collector does not make HDF5 close it
print("COLLECTED", flush=True)
os._exit(0)  # as the launcher ends such a process: HDF5 would crash closing the file at exit
"""


def test_run_file_on_a_full_disk(small_fs):
    """A write that fails inside HDF5 (the reserve check off, as a quota statvfs does not
    show would be). In a child process: HDF5 cannot close such a file (it crashes), so the
    file is held open and the process ends without teardown, as the launcher does."""
    path = small_fs / "run.h5"
    script = FULL_DISK_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("ERROR "), res.stdout + res.stderr
    assert_run_write_error(RunFileWriteError(lines[0][len("ERROR "):]), path)
    assert lines[1:] == ["CLOSED True 1", "COLLECTED"], res.stdout + res.stderr


def test_run_file_write_failures_monkeypatched(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    log = new_log(tmp_path / "a" / "run.h5")
    log.add_task(0, "a", dataset="d", model="m", n_params=10, target_accuracy=0.5)
    monkeypatch.setattr(runlog_mod, "_append", full)
    log.event(event_row(0))
    with pytest.raises(RunFileWriteError) as info:
        log.flush()
    assert_run_write_error(info.value, log.path)
    log.close("failed", "disk full")  # the file is broken and that was said: no second error
    assert log.closed
    with h5py.File(log.path, "r") as f:
        assert f.attrs["status"] == "failed"

    log = new_log(tmp_path / "b" / "run.h5")  # the first failure in close: raised once
    log.event(event_row(0))
    with pytest.raises(RunFileWriteError) as info:
        log.close("completed")
    assert_run_write_error(info.value, log.path)
    assert log.closed
    log.close("completed")


def test_run_file_refuses_to_write_below_the_reserve(small_fs, monkeypatch):
    """With less than RESERVE_BYTES free HDF5 is not asked to write; the status still is."""
    monkeypatch.setattr(runlog_mod, "RESERVE_BYTES", 0)  # the header on a 1 MiB file system
    log = new_log(small_fs / "run.h5")
    log.add_task(0, "a", dataset="d", model="m", n_params=10, target_accuracy=0.5)
    log.event(event_row(0))
    monkeypatch.setattr(runlog_mod, "RESERVE_BYTES", 4 << 20)
    with pytest.raises(RunFileWriteError) as info:
        log.flush()
    text = str(info.value)
    assert "No space left on device" in text and "stops below 4 MiB" in text
    assert not info.value.broken
    log.close("failed", "disk full")
    with h5py.File(small_fs / "run.h5", "r") as f:
        assert f.attrs["status"] == "failed"
