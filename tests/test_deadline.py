"""The signal deadline: a process whose main thread is stuck inside a C call still ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from fedast_mpi.deadline import STACKS_FILE, SignalDeadline, bounded, write_stacks

STUCK = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from mpi4py import MPI
    from fedast_mpi.deadline import SignalDeadline
    ran = []
    for name in ("SIGTERM", "SIGUSR1", "SIGUSR2"):  # as checkpoint.Signals installs them
        signal.signal(getattr(signal, name), lambda *a: ran.append(1))
    def expire(name, ago):
        print(f"expired {name} after {ago:.1f} s; handler ran: {bool(ran)}", flush=True)
        os._exit(75)
    SignalDeadline(float(sys.argv[1]), expire).arm()
    print("ready", flush=True)
    MPI.COMM_SELF.Recv(np.zeros(1), source=0, tag=7)  # never returns: no send will come
""")


def stuck_process(seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", STUCK, str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_main_thread_stuck_in_mpi_never_runs_the_handler_but_the_deadline_ends_it():
    proc = stuck_process(1.0)
    try:
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 75, err
    assert "expired SIGTERM after 1.0 s; handler ran: False" in out
    assert time.monotonic() - sent < 10


def test_only_the_run_signals_start_the_deadline():
    proc = stuck_process(0.5)
    try:
        proc.send_signal(signal.SIGUSR2)  # a Python handler too, but not a stop
        time.sleep(2.0)
        assert proc.poll() is None, "SIGUSR2 started the deadline"
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 75 and "expired SIGUSR1" in out


def test_disarmed_in_time_nothing_expires_and_the_wakeup_fd_is_restored():
    got = []
    handler = signal.signal(signal.SIGUSR1, lambda *a: None)
    try:
        before = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(before)
        deadline = SignalDeadline(0.3, lambda name, ago: got.append(name)).arm()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        deadline.disarm()
        time.sleep(0.5)
        assert got == []
        assert signal.set_wakeup_fd(before) == before  # what arm() replaced is back
        assert not any(t.name == "fedast-signal-deadline" for t in threading.enumerate())
        deadline.disarm()  # twice: nothing
    finally:
        signal.signal(signal.SIGUSR1, handler)


def test_the_deadline_thread_calls_expire_with_the_signal_name():
    got = []
    handler = signal.signal(signal.SIGUSR1, lambda *a: None)
    try:
        deadline = SignalDeadline(0.2, lambda name, ago: got.append((name, ago))).arm()
        os.kill(os.getpid(), signal.SIGUSR1)
        end = time.monotonic() + 10
        while not got and time.monotonic() < end:
            time.sleep(0.05)
        deadline.disarm()
    finally:
        signal.signal(signal.SIGUSR1, handler)
    assert [g[0] for g in got] == ["SIGUSR1"] and got[0][1] >= 0.2


def test_stacks_name_the_function_the_main_thread_is_in(tmp_path):
    def somewhere_deep():
        return write_stacks(tmp_path)
    path = somewhere_deep()
    assert path == tmp_path / STACKS_FILE
    assert "somewhere_deep" in path.read_text()
    assert write_stacks(tmp_path / "missing" / "dir") is None


def test_bounded_gives_up_on_a_blocked_step():
    lock = threading.Lock()
    lock.acquire()
    try:
        start = time.monotonic()
        assert bounded(lambda: (lock.acquire(), "closed")[1], 0.2, "late") == "late"
        assert time.monotonic() - start < 5
    finally:
        lock.release()
    assert bounded(lambda: "closed", 5.0, "late") == "closed"


MISSED = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    import numpy as np
    from mpi4py import MPI
    from fedast_mpi.launch import deadline_missed
    from fedast_mpi.runlog import RunLog
    out = Path(sys.argv[1])
    log = RunLog(out / "run.h5", config_yaml="{}", algorithm="fedast", clock="virtual", seed=0,
                 world_size=1, package_version="test")
    threading.Timer(0.5, deadline_missed, (MPI.COMM_WORLD, log, out, "SIGTERM", 15.2)).start()
    MPI.COMM_WORLD.Recv(np.zeros(1), source=0, tag=7)  # the stuck main thread
""")


def test_a_missed_deadline_ends_the_job_with_one_line_the_status_and_the_stacks(tmp_path):
    import h5py

    from conftest import MPIEXEC
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-000003.h5").write_bytes(b"")  # the newest on disk
    res = subprocess.run([MPIEXEC, "-n", "1", sys.executable, "-c", MISSED, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 75, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("fedast-mpi:")]
    assert len(lines) == 1 and lines[0].startswith(
        "fedast-mpi: stopped: SIGTERM received 15 s ago and rank 0 has not stopped"), res.stderr
    assert f"stacks: {tmp_path / STACKS_FILE}" in lines[0]
    assert "a resume continues from ckpt-000003.h5" in lines[0]
    stuck_line = 1 + next(i for i, ln in enumerate(MISSED.splitlines()) if ".Recv(" in ln)
    assert f'File "<string>", line {stuck_line} in <module>' in (tmp_path / STACKS_FILE).read_text()
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert f.attrs["status"] == "interrupted"
        assert "has not stopped" in f.attrs["stop_reason"]
