"""Faults through mpiexec: a frozen worker, signals while rank 0 waits, a second signal.

The frozen worker is a real SIGSTOP of one rank; the job must end within seconds anyway, with
one line, the right exit code and no rank left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import pytest

from conftest import MPIEXEC, cpu_pinned, launch, tmpfs
from fedast_mpi.checkpoint import checkpoint_paths
from fedast_mpi.deadline import STACKS_FILE
from test_checkpoint import assert_same_run

pytestmark = pytest.mark.launch

BANNERS = ("Abort(", "BAD TERMINATION", "Traceback")


def start(n, out, *extra):
    """The default job under mpiexec; its ranks carry a tag in their environment."""
    tag = uuid.uuid4().hex
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "fedast_mpi",
           *cpu_pinned(["run", "--out", str(out), "--set", "run.log_every=0", *extra])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FEDAST_TEST_TAG": tag},
                            start_new_session=True)
    proc.tag = tag  # type: ignore[attr-defined]
    return proc


def ranks(tag) -> dict[int, int]:
    """rank -> pid of the live processes started with this tag."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FEDAST_TEST_TAG={tag}".encode() in env:
            for item in env:
                if item.startswith(b"PMI_RANK="):
                    found[int(item[9:])] = int(entry.name)
    return found


def wait_until(cond, timeout=90, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def n_events(out) -> int:
    try:
        with h5py.File(out / "run.h5", "r", locking=False) as f:
            return len(f["events"])
    except (OSError, KeyError):
        return 0


def finish(proc, timeout, run_dir=None):
    """(rc, stdout, stderr, seconds) of a job, killing it (and failing) past the timeout; the
    failure shows what the job printed and the stacks a stuck rank 0 left in `run_dir`."""
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in ranks(proc.tag).values():
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate()
        stacks = Path(run_dir or "/nonexistent") / STACKS_FILE
        raise AssertionError(f"the job did not end within {timeout} s; stderr: {err[-3000:]}"
                             + (f"; {stacks}: {stacks.read_text()}" if stacks.is_file() else "")
                             ) from None
    return proc.returncode, out, err, time.monotonic() - start


def status(out):
    with h5py.File(out / "run.h5", "r") as f:
        return str(f.attrs["status"]), str(f.attrs["stop_reason"])


def test_sigterm_with_a_frozen_worker_exits_75_within_seconds_and_resumes(default_runs, tmp_path):
    out = tmp_path / "run"
    proc = start(3, out, "--set", "run.checkpoint.every_seconds=0.5")
    wait_until(lambda: len(checkpoint_paths(out)) >= 1 and n_events(out) > 100,
               what="a checkpoint")
    pids = ranks(proc.tag)
    os.kill(pids[2], signal.SIGSTOP)
    time.sleep(1.0)  # rank 0 now waits for rank 2
    proc.send_signal(signal.SIGTERM)
    rc, _, err, took = finish(proc, 60, out)
    # 75 from rank 0; Hydra may report the SIGKILL it sent the frozen rank (9) instead
    assert rc in (75, 9), err
    assert took < 20, f"{took:.0f} s from SIGTERM to the end"
    assert not any(b in err for b in BANNERS), err
    lines = [ln for ln in err.splitlines() if ln.startswith("fedast-mpi:")]
    assert len(lines) == 1 and "SIGTERM" in lines[0] or "did not answer" in lines[0], err
    assert status(out)[0] == "interrupted"
    assert not ranks(proc.tag), "a rank outlived the job"
    assert not list((out / "checkpoints").glob("*.tmp"))
    res = launch(2, "resume", str(out))
    assert res.rc == 0, res.stderr
    assert_same_run(default_runs[1][0], out)


def test_a_stalled_worker_ends_the_job_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = start(3, out, "--set", "run.stall_timeout=3")
    wait_until(lambda: n_events(out) > 100, what="the run to get going")
    os.kill(ranks(proc.tag)[1], signal.SIGSTOP)
    rc, _, err, took = finish(proc, 60)
    # non-zero: 1 from rank 0, or 9 when Hydra reports the frozen rank it had to SIGKILL first
    assert rc in (1, 9), err
    assert took < 40
    assert not any(b in err for b in BANNERS), err
    lines = [ln for ln in err.splitlines() if ln.startswith("fedast-mpi:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("fedast-mpi: error: stalled: rank 1 on ")
    assert re.search(r"sent nothing for \d+ s while rank 0 waited for the update of request \d+",
                     lines[0]), lines[0]
    assert "run.stall_timeout = 3 s" in lines[0]
    st, reason = status(out)
    assert st == "failed" and reason.startswith("stalled: rank 1")
    assert not ranks(proc.tag), "a rank outlived the job"


def test_a_second_signal_keeps_exit_75(tmp_path):
    out = tmp_path / "run"
    proc = start(3, out)
    wait_until(lambda: n_events(out) > 100, what="the run to get going")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    rc, _, err, _ = finish(proc, 60)
    assert rc == 75, err
    assert not any(b in err for b in BANNERS), err
    assert status(out)[0] == "interrupted"
    assert checkpoint_paths(out)


def test_a_worker_error_ends_the_job_in_order_with_one_line_and_exit_1(tmp_path):
    """Rank 0 prints the worker's line and stops every worker; all ranks leave through MPI's
    finalisation with exit 1: no MPI_Abort banner, no rank killed, no second line."""
    res = launch(3, "run", "--out", str(tmp_path / "run"), "--set", "run.log_every=0",
                 env={"FEDAST_INJECT_FAULT": "2:5"}, timeout=60)
    assert res.rc == 1, res.stderr
    assert res.stderr.splitlines() == res.error_lines() and len(res.error_lines()) == 1
    assert "rank 2" in res.error_lines()[0] and "injected fault" in res.error_lines()[0]


def test_a_diverging_run_fails_with_one_line_and_no_warnings(tmp_path):
    res = launch(3, "run", "--out", str(tmp_path / "run"), "--set", "run.log_every=0",
                 "--set", "tasks.0.local_lr=1e30", timeout=60)
    assert res.rc == 1, res.stderr
    assert res.stderr.splitlines() == res.error_lines(), res.stderr
    assert "non-finite update" in res.error_lines()[0]


def test_a_full_disk_ends_the_job_with_one_line_and_keeps_the_checkpoints(tmp_path):
    """--out on an 8 MiB tmpfs, a checkpoint every second: rank 0 must not crash in h5py (it
    segfaulted, exit 11, with hundreds of lines) but say which file and why, exit 1."""
    with tmpfs(tmp_path / "small", "8m") as mnt:
        out = mnt / "run"
        res = launch(3, "run", "--out", str(out), "--set", "run.log_every=0",
                     "--set", "run.checkpoint.every_seconds=1", "--set", "run.checkpoint.keep=8",
                     timeout=180)
        assert res.rc == 1, res.stderr
        assert not any(b in res.stderr for b in BANNERS), res.stderr
        assert res.stderr.splitlines() == res.error_lines() and len(res.error_lines()) == 1
        line = res.error_lines()[0]
        assert "No space left on device" in line and str(out) in line
        assert not list((out / "checkpoints").glob("*.tmp"))
        from fedast_mpi.checkpoint import read_checkpoint
        assert checkpoint_paths(out), "the checkpoints written before the disk filled"
        for path in checkpoint_paths(out):  # every checkpoint left is whole and verifies
            read_checkpoint(path)


def test_a_second_job_on_the_run_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    proc = start(3, out)
    wait_until(lambda: n_events(out) > 100, what="the run to get going")
    res = launch(2, "resume", str(out), "--force", "--set", "run.log_every=1")
    assert res.rc == 2, res.stderr
    assert len(res.error_lines()) == 1 and "is in use by pid" in res.error_lines()[0]
    rc, _, err, _ = finish(proc, 120)
    assert rc == 0, err
    assert status(out)[0] == "completed"
    assert not (out / ".lock").exists()
