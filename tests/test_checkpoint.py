"""Checkpoints and resume: round trips, exact resume (virtual clock), refusals, fallbacks."""

from __future__ import annotations

import shutil
import signal

import h5py
import numpy as np
import pytest

from fedast_mpi.checkpoint import (CHECKPOINT_DIR, checkpoint_paths, config_differences,
                                   latest_checkpoint, read_checkpoint)
from fedast_mpi.cli import main
from fedast_mpi.clients import ClientPool, DelayModel
from fedast_mpi.errors import CheckpointError
from fedast_mpi.h5tree import read_tree, write_tree

SHORT = ["--set", "run.log_every=0", "--set", "run.max_time=200", "--set", "run.device=cpu"]


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def run_file(path):
    """Everything a run file holds that must not depend on where or when it ran."""
    with h5py.File(path / "run.h5", "r") as f:
        out = {"status": f.attrs["status"]}
        for name in ("events", "aggregations", "allocation"):
            a = f[name][()]
            out[name] = a[[n for n in a.dtype.names if n not in ("wall", "worker")]]
        for task, g in f["tasks"].items():
            e = g["eval"][()]
            out[f"eval/{task}"] = e[[n for n in e.dtype.names if n != "wall"]]
            out[f"final/{task}"] = g["final_model"][()].tobytes()
            out[f"reached/{task}"] = float(g.attrs["reached_time"])
    return out


def assert_same_run(a, b):
    ra, rb = run_file(a), run_file(b)
    assert ra.keys() == rb.keys()
    for key in ra:
        if isinstance(ra[key], np.ndarray):  # field by field: a field subset keeps the padding
            assert len(ra[key]) == len(rb[key]), key
            for name in ra[key].dtype.names:
                assert np.array_equal(ra[key][name], rb[key][name], equal_nan=True), (key, name)
        else:
            assert ra[key] == rb[key] or (ra[key] != ra[key] and rb[key] != rb[key]), key


def test_tree_round_trip_and_corruption(tmp_path):
    tree = {"a": np.arange(5.0), "n": 3, "s": "x", "none": None, "big": 2**100,
            "sub": {"m": np.ones((2, 3), np.float32), "flag": True},
            "lst": [np.zeros(2), np.ones(3)], "empty": [], "nums": [1, 2]}
    with h5py.File(tmp_path / "t.h5", "w") as f:
        write_tree(f.create_group("g"), tree)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        back = read_tree(f["g"])
    assert back["n"] == 3 and back["s"] == "x" and back["none"] is None and back["big"] == 2**100
    assert np.array_equal(back["sub"]["m"], tree["sub"]["m"]) and back["sub"]["flag"] is True
    assert [list(x) for x in back["lst"]] == [[0, 0], [1, 1, 1]] and back["empty"] == []
    with h5py.File(tmp_path / "t.h5", "r+") as f:
        f["g/a"][2] = 99.0  # damage the bytes, keep the file valid
    with h5py.File(tmp_path / "t.h5", "r") as f, pytest.raises(CheckpointError, match="CRC"):
        read_tree(f["g"])


def test_client_pool_round_trip_continues_every_stream():
    code, mult = np.ones(5, np.int8), np.ones(5, np.float32)
    delays = [DelayModel(1.0, 2.0, 1.0), DelayModel(0.5, 1.0, 2.0)]
    a = ClientPool(code, mult, delays, seed=1, available=3)
    for k in range(7):
        a.schedule(k % 5, k % 2, float(k))
    b = ClientPool(code, mult, delays, seed=1, available=3)
    b.load_state_dict(a.state_dict())
    assert b.n_busy == a.n_busy and np.array_equal(b.pending, a.pending)
    for k in range(10):
        assert a.schedule(k % 5, k % 2, 50.0 + k) == b.schedule(k % 5, k % 2, 50.0 + k)


def interrupted_then_resumed(tmp_path, monkeypatch, after, args, resume_args=()):
    out = tmp_path / f"run-{after}"
    monkeypatch.setenv("FEDAST_INTERRUPT_AFTER", str(after))
    assert main(["run", "--out", str(out), *args]) == 75
    with h5py.File(out / "run.h5", "r") as f:
        assert f.attrs["status"] == "interrupted"
    monkeypatch.delenv("FEDAST_INTERRUPT_AFTER")
    assert main(["resume", str(out), *resume_args]) == 0
    return out


@pytest.mark.parametrize("args", [
    [],  # FedAST static, completion and hand-over inside the window
    ["--set", "algorithm.allocation=dynamic"],
    ["--set", "algorithm.allocation=dynamic", "--set", "algorithm.realloc.variant=code",
     "--set", "algorithm.r_to_b=4"],
    ["--set", "algorithm.name=sync-ucb", "--set", "clients.available=30"],
    ["--set", "algorithm.name=sync-bayes", "--set", "clients.available=30"],
], ids=["static", "dynamic-paper", "dynamic-code", "sync-ucb", "sync-bayes"])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, args):
    ref = tmp_path / "ref"
    assert main(["run", "--out", str(ref), *SHORT, *args]) == 0
    points = (7, 120, 600) if not args else (60,)
    for after in points:
        out = interrupted_then_resumed(tmp_path, monkeypatch, after, [*SHORT, *args])
        assert_same_run(ref, out)


def test_batched_resume_equals_uninterrupted_and_keeps_open_groups(tmp_path, monkeypatch):
    """Groups of 4: a checkpoint between members of a group stores the rest, trained in it."""
    args = [*SHORT, "--set", "run.batch_requests=4"]
    ref = tmp_path / "ref"
    assert main(["run", "--out", str(ref), *args]) == 0
    ready = 0
    for after in (7, 121, 601):
        out = tmp_path / f"run-{after}"
        monkeypatch.setenv("FEDAST_INTERRUPT_AFTER", str(after))
        assert main(["run", "--out", str(out), *args]) == 75
        monkeypatch.delenv("FEDAST_INTERRUPT_AFTER")
        state = latest_checkpoint(out)[1]["state"]
        ready += sum(len(e["meta"]) for e in state["ready"].values())
        assert (state["requests"]["group"] >= -1).all()
        assert main(["resume", str(out)]) == 0
        assert_same_run(ref, out)
    assert ready > 0  # some interruption fell inside a partly processed group


def test_resume_refuses_changed_config_and_accepts_harmless_with_force(tmp_path, monkeypatch,
                                                                      capsys):
    out = tmp_path / "run"
    monkeypatch.setenv("FEDAST_INTERRUPT_AFTER", "50")
    assert main(["run", "--out", str(out), *SHORT]) == 75
    monkeypatch.delenv("FEDAST_INTERRUPT_AFTER")
    capsys.readouterr()
    assert main(["resume", str(out), "--set", "tasks.0.local_lr=0.5"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedast-mpi: error:") and "tasks.0.local_lr" in err and "\n" not in err
    for device in ("auto", "cuda"):  # the device sets the bits and, under auto, the group sizes
        assert main(["resume", str(out), "--set", f"run.device={device}", "--force"]) == 3
        err = capsys.readouterr().err.strip()
        assert err.startswith("fedast-mpi: error:") and "\n" not in err
        assert "differs from the checkpoint's in run.device;" in err
        assert "run.device" not in err.split("can only change")[1]
    assert main(["resume", str(out), "--set", "run.max_time=150"]) == 3
    assert "--force" in capsys.readouterr().err
    assert main(["resume", str(out), "--set", "run.max_time=150", "--force"]) == 0
    with h5py.File(out / "run.h5", "r") as f:
        assert f.attrs["status"] == "completed" and f.attrs["stop_reason"] == "max_time"


def test_corrupt_newest_checkpoint_falls_back(tmp_path, monkeypatch, capsys):
    ref = tmp_path / "ref"
    assert main(["run", "--out", str(ref), *SHORT]) == 0
    out = tmp_path / "run"
    monkeypatch.setenv("FEDAST_INTERRUPT_AFTER", "400")
    assert main(["run", "--out", str(out), *SHORT, "--set", "run.checkpoint.every_seconds=0.2",
                 "--set", "run.checkpoint.keep=3"]) == 75
    monkeypatch.delenv("FEDAST_INTERRUPT_AFTER")
    paths = checkpoint_paths(out)
    assert len(paths) >= 2
    with h5py.File(paths[0], "r+") as f:  # flip numbers inside the newest, keep it valid HDF5
        ds = f["state/tasks/1/versions"]
        key = next(iter(ds))
        ds[key][0] = ds[key][0] + 1.0
    path, _ = latest_checkpoint(out)
    assert path == paths[1]
    assert "skipping" in capsys.readouterr().err
    assert main(["resume", str(out), "--force"]) == 0  # --force: keep/every_seconds differ
    assert_same_run(ref, out)


def test_truncated_and_foreign_checkpoints_are_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setenv("FEDAST_INTERRUPT_AFTER", "30")
    assert main(["run", "--out", str(out), *SHORT]) == 75
    monkeypatch.delenv("FEDAST_INTERRUPT_AFTER")
    (ckpt,) = checkpoint_paths(out)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        read_checkpoint(ckpt)
    capsys.readouterr()
    assert main(["resume", str(out)]) == 3
    assert "no usable checkpoint" in capsys.readouterr().err
    shutil.copy(out / "run.h5", ckpt)  # a run file where a checkpoint should be
    with pytest.raises(CheckpointError, match="schema"):
        read_checkpoint(ckpt)
    assert main(["resume", str(out)]) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["resume", str(empty)]) == 2  # not a run directory: a usage error
    assert (out / CHECKPOINT_DIR).is_dir()


def test_config_differences_names_keys():
    a = {"run": {"seed": 1, "max_time": 5}, "tasks": [{"x": 1}, {"x": 2}]}
    b = {"run": {"seed": 1, "max_time": 6}, "tasks": [{"x": 1}, {"x": 3}]}
    assert config_differences(a, b) == ["run.max_time", "tasks.1.x"]


def test_inspect_a_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setenv("FEDAST_INTERRUPT_AFTER", "40")
    assert main(["run", "--out", str(out), *SHORT]) == 75
    (path,) = checkpoint_paths(out)
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "fedast-mpi/checkpoint/1" in text and "verified" in text and "outstanding" in text
