"""Rank 0's guard while it waits for workers: signals acted on, stalled workers detected.

Rank 0 acts on a signal between batches (`Checkpointer.tick`), but it can only get there when
the update or evaluation it waits for arrives. A frozen worker (a hung GPU, a stopped
process, a file system that blocks) would make it wait forever, deaf to signals. So every
wait of the MPI transport asks a `Watchdog`, at each wake-up, whether to give up:

- a signal was received and the wait has not ended within `grace` seconds of it: the run
  cannot reach a consistent state to checkpoint, so it stops from its newest checkpoint
  (`Halt`, exit 75 when there is one);
- the workers it waits on have sent nothing for `stall_timeout` seconds (`run.stall_timeout`):
  the run stops as failed, naming the rank, host and request (`Halt`, exit 1).

Pure: no MPI. The transport says whom it waits on and when it last heard from each worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

SIGNAL_GRACE = 5.0
"""Seconds a wait may still take after a signal before the run stops without reaching its next
consistent state: long enough for an update already on its way, short enough that a job
asked to stop (SLURM's USR1 lead, a scancel) ends in seconds."""
HEARTBEAT_EVERY = 10.0
"""Seconds between heartbeats (`beat`) while rank 0 waits: the run file then says the run is
alive during long waits too."""
EXIT_STALLED = 1
"""Exit code of a run stopped by the stall watchdog (a failure: SPEC §7's 1)."""


@dataclass(frozen=True)
class Awaited:
    """One thing rank 0 waits for: the worker that owes it, and words for the message."""

    worker: int
    what: str  # e.g. "request 123 (task 0)"


class Halt(Exception):
    """Rank 0 gives up a wait: the job ends now, from the newest checkpoint on disk.

    `status` is the run file's (`interrupted` after a signal, `failed` after a stall) and
    `exit_code` the job's (75 or 1, set by the launcher from what is on disk for a signal).
    """

    def __init__(self, message: str, status: str, signal: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.signal = signal


class Watchdog:
    """Decides, at each wake-up of a wait, whether rank 0 keeps waiting.

    signal: returns (name, monotonic time received) of the first signal, or None.
    hosts: host name of every rank, for the messages. beat: called every HEARTBEAT_EVERY
    seconds of waiting (the run file's heartbeat). clock: time.monotonic (tests pass theirs).
    """

    def __init__(self, stall_timeout: float, signal: Callable[[], tuple[str, float] | None],
                 hosts: Sequence[str], beat: Callable[[], None] | None = None,
                 grace: float = SIGNAL_GRACE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_timeout = float(stall_timeout)
        self.signal = signal
        self.hosts = list(hosts)
        self.beat = beat
        self.grace = grace
        self.clock = clock
        self.last_beat = clock()

    def host(self, rank: int) -> str:
        return self.hosts[rank] if 0 <= rank < len(self.hosts) else "?"

    def check(self, since: float, awaited: Sequence[Awaited], heard: dict[int, float]) -> None:
        """Raise Halt if the wait that began at `since` must end now.

        awaited: what is still owed, by whom; heard: monotonic time of each worker's last
        message (absent: never heard since the transport started).
        """
        now = self.clock()
        if self.beat is not None and now - self.last_beat >= HEARTBEAT_EVERY:
            self.last_beat = now
            self.beat()
        got = self.signal()
        if got is not None:
            name, at = got
            if now - max(at, since) >= self.grace:
                raise Halt(f"{name} received while rank 0 waited {now - since:.0f} s for "
                           f"{self.describe(awaited)}", "interrupted", name)
        if self.stall_timeout <= 0 or not awaited:
            return
        silent = [(now - max(since, heard.get(a.worker, since)), a) for a in awaited]
        longest, a = max(silent, key=lambda s: s[0])
        if longest >= self.stall_timeout:
            raise Halt(f"stalled: rank {a.worker} on {self.host(a.worker)} sent nothing for "
                       f"{longest:.0f} s while rank 0 waited for {a.what} "
                       f"(run.stall_timeout = {self.stall_timeout:g} s)", "failed")

    def describe(self, awaited: Sequence[Awaited]) -> str:
        if not awaited:
            return "the workers"
        a = awaited[0]
        more = f" and {len(awaited) - 1} more" if len(awaited) > 1 else ""
        return f"{a.what} from rank {a.worker} on {self.host(a.worker)}{more}"
