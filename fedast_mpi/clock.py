"""The run's time: simulated `now` (what every record and decision uses) and wall seconds."""

from __future__ import annotations

import time


class Clock:
    """Simulated time and the wall clock of one run.

    Virtual clock: `now` is set by the event pump to the finish time being processed.
    Real clock: simulated time is wall seconds since `wall0` divided by `time_scale`, and a
    request's update is released at the wall time of its finish time.
    """

    def __init__(self, real: bool, time_scale: float, wall0: float | None = None) -> None:
        self.real = real
        self.time_scale = time_scale
        self.wall0 = time.time() if wall0 is None else wall0
        self.cpu0 = time.process_time()
        self.now = 0.0

    def wall(self) -> float:
        """Wall seconds since the run started."""
        return time.time() - self.wall0

    def cpu(self) -> float:
        """CPU seconds of this process since the run (or its resume) started."""
        return time.process_time() - self.cpu0

    def sim_now(self) -> float:
        """Simulated time of the real clock: wall seconds / time_scale."""
        return self.wall() / self.time_scale

    def release_wall(self, finish_time: float) -> float:
        """Real clock: the wall time at which an update finishing at `finish_time` is released."""
        return self.wall0 + finish_time * self.time_scale

    def restore(self, now: float, wall: float, cpu: float) -> None:
        """Continue a checkpointed run: its simulated time, wall and CPU seconds so far."""
        self.now = now
        self.wall0 = time.time() - wall
        if self.real:  # the simulated clock continues where it stopped
            self.wall0 = time.time() - now * self.time_scale
        self.cpu0 = time.process_time() - cpu


class Busy:
    """Rank 0's busy seconds by category: the serial work that every update waits for.

    Wall seconds spent in each timed step, less the time that step spent waiting in the
    executor (`WaitClock`), so that waiting for workers never counts as work. What is not
    timed (the event pump, the policies, the request book, the rows) is the rest of the
    loop: `other` in `Server.finish`.
    """

    CATEGORIES = ("evaluate", "aggregate", "send", "flush", "checkpoint")

    def __init__(self, wait) -> None:
        self.wait = wait
        self.seconds = dict.fromkeys(self.CATEGORIES, 0.0)

    def timed(self, category: str, fn, *args):
        """fn(*args), its busy time added to `category`."""
        t0, w0 = time.perf_counter(), self.wait.wall
        try:
            return fn(*args)
        finally:
            self.seconds[category] += time.perf_counter() - t0 - (self.wait.wall - w0)
