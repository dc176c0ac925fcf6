"""The run directory: one writer at a time (`RunDirLock`) and what a resume starts from.

A job that writes RUN_DIR (a `run` or a `resume`, on rank 0) holds `RUN_DIR/.lock`: a file
created with O_CREAT|O_EXCL holding JSON {host, pid, started}, and an `flock` on it where the
file system supports one. A second job is refused (`RunDirBusy`, exit 2); a lock left by a
killed job on this host (its pid is gone) is taken over with a warning. On another host the
pid cannot be checked: the message says to delete the lock file if that job is gone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from fedast_mpi.errors import ConfigError, FedastError

LOCK_FILE = ".lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
"""flock errors of file systems without (working) locks: the O_EXCL file alone then guards."""


class RunDirBusy(FedastError):
    """Another job is writing the run directory (exit 2: a usage error)."""

    exit_code = 2


PID_EXIT_GRACE = 2.0
"""Seconds a lock's holder on this host may take to exit before the lock counts as held: a
resume started right after its job was SIGKILLed finds the killed rank still exiting."""


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (another user's counts). A zombie does not: a
    killed rank stays one until its parent reaps it, and where nothing reaps orphans (a
    container's init) it stays one for good."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): it exists
    return state not in (b"Z", b"X")


def _flock(fd: int) -> bool:
    """Take an exclusive flock without waiting: False when another process holds one;
    True when taken or when the file system has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _NO_FLOCK:
            return True
        raise
    return True


def _flock_soon(fd: int, seconds: float = 2.0) -> bool:
    """`_flock` on a file just created: another job may hold its flock for a moment, while it
    reads the file (still empty, hence not stale) before it gives up."""
    deadline = time.monotonic() + seconds
    while not _flock(fd):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _read_holder(fd: int) -> dict | None:
    """The lock file's JSON {host, pid, started}, or None when empty or not such JSON."""
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        holder = json.loads(data.decode("utf-8"))
        if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
            return holder
    except (UnicodeDecodeError, ValueError):
        pass
    return None


class RunDirLock:
    """`RUN_DIR/.lock`, held by the one job writing RUN_DIR (rank 0 of a run or resume).

    `acquire()` raises RunDirBusy when another live job holds it; `release()` removes the
    file only while it is still this holder's. Also a context manager.
    """

    def __init__(self, run_dir) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self.info: dict | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunDirLock":
        """Take the lock, or take over a stale one (this host, pid gone); RunDirBusy if held."""
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the file may vanish between a failed create and its open
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                if self._take_over():
                    return self
                continue
            if not _flock_soon(fd):
                os.close(fd)
                raise self._busy(None)
            self._own(fd)
            return self
        raise RunDirBusy(f"{self.run_dir}: cannot take {self.path} (it keeps appearing and "
                         f"disappearing); if no job uses {self.run_dir}, delete {self.path}")

    def _take_over(self) -> bool:
        """The lock file exists: take it if its holder is a dead process on this host (with a
        warning), raise RunDirBusy if it is held; False if it vanished meanwhile."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            if not _flock(fd):  # a live process on this host holds it
                raise self._busy(_read_holder(fd))
            holder = _read_holder(fd)
            if not self._stale(holder) or not self._same_file(fd):
                raise self._busy(holder)
        except BaseException:
            os.close(fd)
            raise
        assert holder is not None  # _stale() is False for None
        print(f"fedast-mpi: warning: {self.path}: taking over the lock of pid {holder['pid']} "
              f"on {holder.get('host')} (since {_when(holder)}), which is gone",
              file=sys.stderr, flush=True)
        self._own(fd)
        return True

    def _same_file(self, fd: int) -> bool:
        """Whether `fd` is still the file at self.path (not removed and recreated)."""
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _stale(holder: dict | None) -> bool:
        """A holder on this host whose process is gone, or an earlier start of this very SLURM
        job (same job id, another restart count: SLURM requeues a job only once it has
        ended, and a requeued job may start on another node)."""
        if holder is None:
            return False
        job = os.environ.get("SLURM_JOB_ID")
        if job and holder.get("slurm_job") == job and holder.get("slurm_restart") != \
                os.environ.get("SLURM_RESTART_COUNT", "0"):
            return True
        if holder.get("host") != socket.gethostname():
            return False
        pid, deadline = int(holder["pid"]), time.monotonic() + PID_EXIT_GRACE
        while pid_alive(pid):  # a rank killed a moment ago may still be exiting
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _own(self, fd: int) -> None:
        """Write our {host, pid, started} into the open, locked file and keep it open."""
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        if os.environ.get("SLURM_JOB_ID"):
            self.info["slurm_job"] = os.environ["SLURM_JOB_ID"]
            self.info["slurm_restart"] = os.environ.get("SLURM_RESTART_COUNT", "0")
        data = json.dumps(self.info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self._fd = fd

    def _busy(self, holder: dict | None) -> RunDirBusy:
        """The error naming who holds the lock."""
        who = ("another job (its lock file is being written or is damaged)" if holder is None
               else f"pid {holder['pid']} on host {holder.get('host', '?')} since "
                    f"{_when(holder)}")
        return RunDirBusy(f"{self.run_dir} is in use by {who} (a run or resume is writing it); "
                          f"if that job is gone, delete {self.path}")

    def release(self) -> None:
        """Remove the lock file if it is still ours, then let the descriptor (and flock) go."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._same_file(fd) and _read_holder(fd) == self.info:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a lock we cannot remove is reported by the next job, with the way out
        finally:
            os.close(fd)

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()


def _when(holder: dict) -> str:
    """The holder's start time, readable (UTC)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder["started"])))
    except (KeyError, TypeError, ValueError, OverflowError):
        return "an unknown time"


def check_run_dir(run_dir) -> None:
    """What `resume` needs before anything else: RUN_DIR exists and holds a run.

    ConfigError (exit 2) for a missing path, a file, or a directory with neither run.h5 nor
    checkpoints; RunFileError (exit 2) for checkpoints without their run.h5.
    """
    from fedast_mpi.checkpoint import CHECKPOINT_DIR, checkpoint_paths
    from fedast_mpi.runlog import RunFileError
    from fedast_mpi.schema import RUN_FILE
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a directory (resume takes the run directory)")
    has_run, has_ckpt = (run_dir / RUN_FILE).exists(), bool(checkpoint_paths(run_dir))
    if not has_run and not has_ckpt:
        raise ConfigError(f"{run_dir}: not a run directory (no {RUN_FILE} and no "
                          f"{CHECKPOINT_DIR}/ckpt-*.h5)")
    if not has_run:
        raise RunFileError(f"{run_dir / RUN_FILE}: no such run file; the checkpoints in "
                           f"{run_dir / CHECKPOINT_DIR} cannot be resumed without it")


def resume_point(run_dir) -> tuple[Path, dict, dict]:
    """Where a resume continues, all checked read-only (nothing in RUN_DIR changes):
    (checkpoint path, checkpoint, run-file facts); see `check_run_dir`,
    `fedast_mpi.checkpoint.latest_checkpoint` and `fedast_mpi.runlog.run_file_facts`."""
    from fedast_mpi.checkpoint import latest_checkpoint
    from fedast_mpi.runlog import run_file_facts
    from fedast_mpi.schema import RUN_FILE
    check_run_dir(run_dir)
    RunDirLock(run_dir).acquire().release()  # a job writing RUN_DIR: refused before anything
    facts = run_file_facts(Path(run_dir) / RUN_FILE)
    path, ckpt = latest_checkpoint(run_dir)
    return path, ckpt, facts
