"""Rank 0's progress lines (simulated time, per-task accuracy and version, updates/s) and final
table."""

from __future__ import annotations

import math
import sys
import time


class Progress:
    """Prints a status line every `every` seconds: in place on a terminal, plain lines otherwise."""

    def __init__(self, every: float, stream=None, enabled: bool = True):
        self.every = every
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_wall = time.perf_counter()
        self.last_count = 0
        self.start_wall = self.last_wall
        self.start_count = 0

    def resumed_at(self, count: int) -> None:
        """Rates count only this process's updates (a resumed run starts at the checkpoint's)."""
        self.last_count = self.start_count = count

    def _emit(self, line: str, transient: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty and transient:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        self.stream.flush()

    def maybe_print(self, server) -> None:
        now = time.perf_counter()
        if not self.enabled or self.every <= 0 or now - self.last_wall < self.every:
            return
        count = server.tasks.n_processed
        rate = (count - self.last_count) / (now - self.last_wall)
        self.last_wall, self.last_count = now, count
        parts = [f"t={server.clock.now:9.1f}", f"{rate:7.0f} upd/s"]
        for t in server.tasks:
            mark = "*" if t.finished else ""
            parts.append(f"{t.name} v{t.version} {t.accuracy:.3f}{mark}")
        self._emit(" | ".join(parts), transient=True)

    def emit(self, line: str) -> None:
        self._emit(line)

    @staticmethod
    def reached_line(server, task) -> str:
        return (f"t={server.clock.now:9.1f} | {task.name} reached {task.accuracy:.3f} "
                   f"(target {task.cfg.target_accuracy}) at version {task.version}")

    def final(self, server, status: str, reason: str, run_file: str) -> None:
        """Time-to-target table of every task; accuracy is the final model's (evaluated at
        the end of a completed run), else the last periodic evaluation's."""
        wall = time.perf_counter() - self.start_wall
        count = server.tasks.n_processed
        done = count - self.start_count
        rate = done / wall if wall > 0 else 0.0
        lines = [f"run {status}: {reason}; simulated time {server.clock.now:.1f}, "
                 f"{count} updates"
                 + (f" ({done} since the resume)" if self.start_count else "")
                 + f" in {wall:.1f} s wall ({rate:.0f} upd/s)",
                 f"{'task':<20} {'target':>7} {'reached at':>11} {'version':>8} "
                 f"{'updates':>8} {'accuracy':>9}"]
        final = getattr(server, "final_evals", {})
        for t in server.tasks:
            reached = "-" if math.isnan(t.reached_time) else f"{t.reached_time:.1f}"
            target = "-" if t.cfg.target_accuracy is None else f"{t.cfg.target_accuracy:.3f}"
            # the final model's accuracy (a completed run), else the last evaluation's
            acc = final[t.index][0] if t.index in final else t.accuracy
            lines.append(f"{t.name:<20} {target:>7} {reached:>11} "
                         f"{t.version:>8} {t.updates:>8} {acc:>9.3f}")
        done = [t.reached_time for t in server.tasks]
        if all(not math.isnan(x) for x in done):
            lines.append(f"time to completion: {max(done):.1f}")
        lines.append(f"run file: {run_file}")
        for line in lines:
            self._emit(line)
