"""Signals and resume through mpiexec: SIGTERM, other rank counts, SIGKILL mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import pytest

from conftest import MPIEXEC, cpu_pinned, launch
from fedast_mpi.checkpoint import CHECKPOINT_DIR, checkpoint_paths, read_checkpoint
from fedast_mpi.errors import CheckpointError
from test_checkpoint import assert_same_run

pytestmark = pytest.mark.launch


def start(n, out, *extra, env=None):
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "fedast_mpi",
           *cpu_pinned(["run", "--out", str(out), "--set", "run.log_every=0", *extra])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def wait_for_events(out, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with h5py.File(out / "run.h5", "r", locking=False) as f:
                if len(f["events"]) > 200:
                    return
        except (OSError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError("the run never got going")


def test_sigterm_checkpoints_then_resume_completes(default_runs, tmp_path):
    out = tmp_path / "run"
    proc = start(3, out)
    wait_for_events(out)
    proc.send_signal(signal.SIGTERM)  # to mpiexec, which forwards it to every rank
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 75, stderr
    with h5py.File(out / "run.h5", "r") as f:
        assert f.attrs["status"] == "interrupted" and "SIGTERM" in f.attrs["stop_reason"]
    assert len(checkpoint_paths(out)) >= 1
    res = launch(2, "resume", str(out))
    assert res.rc == 0, res.stderr
    assert_same_run(default_runs[1][0], out)


def test_resume_with_another_rank_count(default_runs, tmp_path):
    out = tmp_path / "run"
    res = launch(4, "run", "--out", str(out), "--set", "run.log_every=0",
                 env={"FEDAST_INTERRUPT_AFTER": "900"})
    assert res.rc == 75, res.stderr
    res = launch(2, "resume", str(out))
    assert res.rc == 0, res.stderr
    assert_same_run(default_runs[1][0], out)


def test_sigkill_mid_write_never_leaves_a_bad_checkpoint(default_runs, tmp_path):
    out = tmp_path / "run"
    for attempt in range(3):
        proc = start(3, out, "--set", "run.checkpoint.every_seconds=0.01",
                     "--set", "run.checkpoint.keep=4") if attempt == 0 else None
        if proc is None:
            proc = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, "-m", "fedast_mpi",
                                     *cpu_pinned(["resume", str(out), "--force", "--set",
                                                  "run.checkpoint.every_seconds=0.01"])],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
        deadline = time.monotonic() + 60
        before = {p.name for p in checkpoint_paths(out)}
        while time.monotonic() < deadline and proc.poll() is None:  # wait for fresh writes
            if len({p.name for p in checkpoint_paths(out)} - before) >= 2:
                break
            time.sleep(0.05)
        time.sleep(0.013 * (attempt + 1))  # somewhere inside the stream of writes
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # every rank and mpiexec at once
        except ProcessLookupError:  # the rest of the run was done before two fresh writes
            pass
        proc.communicate(timeout=30)
        good = 0
        for path in checkpoint_paths(out):
            try:
                read_checkpoint(path)
                good += 1
            except CheckpointError:
                pass  # refused cleanly: never half-read
        assert good >= 1, f"attempt {attempt}: no usable checkpoint"
        leftovers = list((out / CHECKPOINT_DIR).glob("*.tmp"))
        assert all(not p.name.endswith(".h5") for p in leftovers)
    res = launch(2, "resume", str(out), "--force", "--set", "run.checkpoint.every_seconds=600")
    assert res.rc == 0, res.stderr
    assert not list((out / CHECKPOINT_DIR).glob("*.tmp"))
    assert_same_run(default_runs[1][0], out)


def test_late_evaluations_speculation_rollbacks_and_resume(default_runs, tmp_path):
    """Evaluation results come 50 ms late: rank 0 speculates past them and rolls back at the
    completions, checkpoints only confirmed states, and every run ends as the plain one."""
    late = {"FEDAST_EVAL_DELAY": "0.05"}
    full = tmp_path / "full"
    res = launch(3, "run", "--out", str(full), "--set", "run.log_every=0", env=late)
    assert res.rc == 0, res.stderr
    assert_same_run(default_runs[1][0], full)
    with h5py.File(full / "run.h5", "r") as f:
        assert f.attrs["speculation_rollbacks"] >= 1
        assert f.attrs["speculation_sent_ahead"] > 0  # requests went out before confirmation
    out = tmp_path / "run"
    res = launch(3, "run", "--out", str(out), "--set", "run.log_every=0",
                 env={**late, "FEDAST_INTERRUPT_AFTER": "300"})
    assert res.rc == 75, res.stderr
    res = launch(2, "resume", str(out), env=late)
    assert res.rc == 0, res.stderr
    assert_same_run(default_runs[1][0], out)
