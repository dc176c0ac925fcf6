"""Rank 0's last resort after a signal: the job ends within seconds even when rank 0 is stuck.

Rank 0 acts on a signal at its next safe point, and its waits give up `SIGNAL_GRACE` s after
one (`fedast_mpi.watchdog`). Both need rank 0's main thread to run Python. A main thread stuck
inside one C call (an MPI call that never returns because a peer froze mid-transfer, a write to
a file system that blocks) never even runs the Python signal handler; the scheduler then kills
the job (SLURM: KillWait seconds after its SIGTERM), leaving the run file `running` and an exit
code no requeue logic recognises.

`SignalDeadline` hears of a signal from Python's wakeup fd, which the C-level handler writes
at once whatever the main thread does, on a thread of its own. If the process is still there
`seconds` later it calls `expire` (rank 0: its threads' stacks to a file, the run file marked,
the job ended from the newest checkpoint, exit 75). Nothing here uses MPI.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

SIGNAL_DEADLINE = 15.0
"""Seconds from a signal to the forced end of a job that has not ended on its own: the signal
grace of a wait (5 s), the drain of the workers after the checkpoint (5 s), and 5 s for the
checkpoint and the run file; under SLURM's default KillWait (30 s) so that the job still
ends with its own exit code."""
STACKS_FILE = "stacks-rank0.txt"
"""Where, in the run directory, the stacks of a rank 0 that missed the deadline go."""


class SignalDeadline:
    """Calls `expire(signal name, seconds since it)` when the process outlives a signal by
    `seconds`. `arm` on the main thread (Python's rule for the wakeup fd); `disarm` when the
    run returns. Only the first of `names` received counts, as in `checkpoint.Signals`."""

    def __init__(self, seconds: float, expire: Callable[[str, float], None],
                 names: Sequence[str] = ("SIGTERM", "SIGUSR1", "SIGINT")) -> None:
        self.seconds = float(seconds)
        self.expire = expire
        self.numbers = {int(getattr(signal, n)) for n in names}
        self._done = threading.Event()
        self._fds: tuple[int, int] | None = None
        self._previous = -1
        self._thread: threading.Thread | None = None

    def arm(self) -> "SignalDeadline":
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # the C handler must never block on a full pipe
        self._previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._fds = (read_fd, write_fd)
        self._thread = threading.Thread(target=self._watch, args=(read_fd,),
                                        name="fedast-signal-deadline", daemon=True)
        self._thread.start()
        return self

    def disarm(self) -> None:
        """Stop watching; the wakeup fd goes back to what it was."""
        if self._fds is None:
            return
        signal.set_wakeup_fd(self._previous)
        self._done.set()
        read_fd, write_fd = self._fds
        self._fds = None
        os.close(write_fd)  # the watcher's read returns (end of file)
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        os.close(read_fd)

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                got = os.read(read_fd, 64)
            except OSError:
                return
            if not got or self._done.is_set():
                return
            first = next((b for b in got if b in self.numbers), None)
            if first is not None:
                break
        at = time.monotonic()
        if not self._done.wait(self.seconds):
            self.expire(signal.Signals(first).name, time.monotonic() - at)


def write_stacks(folder: Path) -> Path | None:
    """Every thread's Python stack into `folder/STACKS_FILE` (where a stuck rank 0 was);
    None when it cannot be written."""
    path = Path(folder) / STACKS_FILE
    try:
        with open(path, "w") as fh:
            faulthandler.dump_traceback(fh, all_threads=True)
    except OSError:
        return None
    return path


def bounded(step: Callable[[], str], seconds: float, late: str) -> str:
    """`step()`'s result, or `late` if it has not returned within `seconds`: a step another
    thread may block (the stuck main thread may hold the HDF5 lock) must not stop the end."""
    result = [late]

    def run() -> None:
        result[0] = step()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    return result[0]
