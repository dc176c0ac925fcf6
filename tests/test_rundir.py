"""The run directory lock (one writer per RUN_DIR) and resume's checks of RUN_DIR."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from fedast_mpi.cli import main
from fedast_mpi.errors import ConfigError, FedastError
from fedast_mpi.rundir import LOCK_FILE, RunDirBusy, RunDirLock, check_run_dir, pid_alive
from fedast_mpi.runlog import RunFileError

HOLD = textwrap.dedent("""
    import sys, time
    from fedast_mpi.rundir import RunDirBusy, RunDirLock
    lock = RunDirLock(sys.argv[1])
    while time.time() < float(sys.argv[2]):  # start together
        time.sleep(0.001)
    try:
        lock.acquire()
    except RunDirBusy as e:
        print("busy", e, flush=True)
        sys.exit(2)
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
    lock.release()
""")


def contend(run_dir, n, hold=1.0):
    """n processes try to take the lock at the same instant; their outputs."""
    start = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(start), str(hold)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    return [p.communicate(timeout=60) + (p.returncode,) for p in procs]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(run_dir, **holder):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps(holder))


def test_acquire_writes_the_holder_and_release_removes_it(tmp_path):
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir) as lock:
        holder = json.loads((run_dir / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert abs(holder["started"] - time.time()) < 60 and lock.held
    assert not (run_dir / LOCK_FILE).exists() and not lock.held
    lock.release()  # twice: nothing


def test_second_holder_is_refused_in_the_same_and_another_process(tmp_path):
    run_dir = tmp_path / "run"
    lock = RunDirLock(run_dir).acquire()
    with pytest.raises(RunDirBusy) as info:
        RunDirLock(run_dir).acquire()
    err = info.value
    assert isinstance(err, FedastError) and err.exit_code == 2 and "\n" not in str(err)
    assert (f"{run_dir} is in use by pid {os.getpid()} on host {socket.gethostname()} since "
            in str(err)) and f"delete {run_dir / LOCK_FILE}" in str(err)
    ((out, _, rc),) = contend(run_dir, 1, hold=0)
    assert rc == 2 and out.startswith("busy") and f"pid {os.getpid()}" in out
    lock.release()
    ((out, _, rc),) = contend(run_dir, 1, hold=0)
    assert rc == 0 and out.strip() == "held"


def test_exactly_one_of_many_processes_gets_it(tmp_path):
    results = contend(tmp_path / "run", 4)
    assert sorted(rc for _, _, rc in results) == [0, 2, 2, 2], results
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_stale_lock_on_this_host_is_taken_over_by_one(tmp_path):
    run_dir = tmp_path / "run"
    write_lock(run_dir, host=socket.gethostname(), pid=dead_pid(), started=time.time() - 60)
    results = contend(run_dir, 4)
    assert sorted(rc for _, _, rc in results) == [0, 2, 2, 2], results
    winner = next(err for _, err, rc in results if rc == 0)
    assert "warning" in winner and "taking over the lock of pid" in winner and "gone" in winner


def test_stale_lock_taken_over_in_process_with_a_warning(tmp_path, capsys):
    run_dir = tmp_path / "run"
    pid = dead_pid()
    write_lock(run_dir, host=socket.gethostname(), pid=pid, started=time.time() - 60)
    with RunDirLock(run_dir):
        assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {pid}" in capsys.readouterr().err
    assert not (run_dir / LOCK_FILE).exists()


@pytest.mark.parametrize("holder", [
    {"host": "elsewhere", "pid": 1, "started": 0.0},  # another host: cannot be checked
    {"host": socket.gethostname(), "pid": os.getppid(), "started": 0.0},  # alive
    None,  # damaged or still being written
], ids=["other-host", "live-pid", "unreadable"])
def test_lock_that_cannot_be_shown_stale_refuses(tmp_path, holder):
    run_dir = tmp_path / "run"
    if holder is None:
        run_dir.mkdir()
        (run_dir / LOCK_FILE).write_text("{not json")
    else:
        write_lock(run_dir, **holder)
    before = (run_dir / LOCK_FILE).read_text()
    with pytest.raises(RunDirBusy, match=f"if that job is gone, delete {run_dir / LOCK_FILE}"):
        RunDirLock(run_dir).acquire()
    assert (run_dir / LOCK_FILE).read_text() == before


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    run_dir = tmp_path / "run"
    lock = RunDirLock(run_dir).acquire()
    os.unlink(run_dir / LOCK_FILE)  # someone deleted it by hand and a new job took it
    write_lock(run_dir, host="elsewhere", pid=4242, started=1.0)
    lock.release()
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == 4242


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), "0", "60"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(RunDirBusy):
        RunDirLock(run_dir).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with RunDirLock(run_dir) as lock:
        assert lock.held


# -- resume's checks of the directory -------------------------------------------------------

def test_check_run_dir(tmp_path):
    with pytest.raises(ConfigError, match="no such run directory"):
        check_run_dir(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        check_run_dir(tmp_path / "file")
    with pytest.raises(ConfigError, match=r"not a run directory \(no run.h5 and no"):
        check_run_dir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-000000.h5").write_bytes(b"")
    with pytest.raises(RunFileError, match="no such run file") as info:
        check_run_dir(tmp_path)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("case", ["missing", "file", "empty", "no-run-file"])
def test_resume_usage_errors_exit_2_with_one_line(tmp_path, capsys, case):
    target = tmp_path / "run"
    message = {"missing": f"{target}: no such run directory",
               "file": f"{target}: not a directory",
               "empty": f"{target}: not a run directory",
               "no-run-file": f"{target / 'run.h5'}: no such run file"}[case]
    if case == "file":
        target.write_text("x")
    elif case == "empty":
        target.mkdir()
    elif case == "no-run-file":
        (target / "checkpoints").mkdir(parents=True)
        (target / "checkpoints" / "ckpt-000000.h5").write_bytes(b"")
    assert main(["resume", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == err.splitlines()[0] and err.startswith(f"fedast-mpi: error: {message}")


def test_without_flock_the_lock_file_alone_guards(tmp_path, monkeypatch):
    import errno

    import fedast_mpi.rundir as rundir

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir.fcntl, "flock", no_locks)
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir):
        with pytest.raises(RunDirBusy, match=f"pid {os.getpid()}"):
            RunDirLock(run_dir).acquire()
    assert not (run_dir / LOCK_FILE).exists()


def test_lock_of_an_earlier_start_of_this_slurm_job_is_taken_over(tmp_path, monkeypatch, capsys):
    """A requeued job (same SLURM_JOB_ID, next SLURM_RESTART_COUNT) may start on another node:
    the lock its killed first start left there is stale, whatever its host."""
    run_dir = tmp_path / "run"
    write_lock(run_dir, host="node1", pid=1, started=0.0, slurm_job="42", slurm_restart="0")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with RunDirLock(run_dir):
        info = json.loads((run_dir / LOCK_FILE).read_text())
        assert info["slurm_job"] == "42" and info["slurm_restart"] == "1"
    assert "taking over the lock of pid 1 on node1" in capsys.readouterr().err
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same start: a live holder, refused
    write_lock(run_dir, host="node1", pid=1, started=0.0, slurm_job="42", slurm_restart="0")
    with pytest.raises(RunDirBusy):
        RunDirLock(run_dir).acquire()


def test_a_zombie_is_not_alive():
    """A killed rank nobody has reaped yet is a zombie: its lock is stale (pid_alive False)."""
    proc = subprocess.Popen(["true"])
    stat = f"/proc/{proc.pid}/stat"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exited, not reaped (Popen.wait not called yet)
        with open(stat, "rb") as fh:
            if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                break
        time.sleep(0.01)
    try:
        assert not pid_alive(proc.pid)
    finally:
        proc.wait()
    assert pid_alive(os.getpid())
