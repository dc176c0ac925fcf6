"""Emulated workers, for measuring how the server scales beyond this machine's cores.

An emulated worker runs the real worker loop, protocol and transport, but instead of training
it sleeps for a duration calibrated on real training of the same model, and returns a
deterministic pseudo-random delta of the model's size; an evaluation chunk sleeps for its own
calibrated time. It loads neither torch nor any data set, so that many of them fit on one
machine: a sleeping rank costs no core. Only the timing means something: the deltas are not
trained, so accuracies are meaningless.

Enabled on worker ranks by `FEDAST_EMULATE=CALIBRATION.json` (written by `calibrate`, see
`benchmarks/scaling.py`); rank 0 stays the real server.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np

ENV = "FEDAST_EMULATE"
SLICE = 0.005
"""Longest sleep between two checks for evaluation work and for MPI progress (a real worker
checks every SGD step, ~2-6 ms for LeNet-5 here). Each check costs CPU that the server needs
when many emulated workers share few cores; 10 ms slices delayed every update's transfer to
rank 0 (a rendezvous needs the sender's progress too): at 32 workers 132 updates/s, 5 ms 150."""
IDLE_POLL = 0.005


@dataclass(frozen=True)
class TaskTiming:
    """Calibrated costs of one task's work on one worker."""

    n_params: int
    train_seconds: float
    """One request (local_steps SGD steps), median over the calibration."""
    eval_chunk_seconds: float
    """One evaluation chunk (`evaluation.EVAL_BATCH` test samples)."""
    local_steps: int


def save(path, timings: Sequence[TaskTiming], **info) -> None:
    Path(path).write_text(json.dumps({"tasks": [asdict(t) for t in timings], **info}, indent=1))


def load(path) -> list[TaskTiming]:
    return [TaskTiming(**t) for t in json.loads(Path(path).read_text())["tasks"]]


def from_environment() -> list[TaskTiming] | None:
    """The calibration named by FEDAST_EMULATE, or None when workers are real."""
    path = os.environ.get(ENV)
    return load(path) if path else None


class EmulatedRunner:
    """The part of `TaskRunner` a worker uses, with sleeps instead of torch."""

    def __init__(self, timings: Sequence[TaskTiming], seed: int) -> None:
        self.timings = list(timings)
        self.n_params = [t.n_params for t in self.timings]
        self.device = SimpleNamespace(type="cpu")
        self.on_step: Callable[[], None] | None = None
        self.idle_poll = IDLE_POLL
        """Longest sleep of an idle worker between polls (`Worker.run`'s backoff cap)."""
        rng = np.random.default_rng(seed)
        self._direction = [(0.01 * rng.standard_normal(n)).astype(np.float32)
                           for n in self.n_params]

    def resident(self, model: np.ndarray) -> np.ndarray:
        return model

    def _sleep(self, seconds: float) -> None:
        """Sleep `seconds` in slices of at most SLICE, serving evaluations between.

        Not one slice per SGD step as a real worker (27 slices of 5 ms for LeNet-5):
        64 emulated workers waking that often took the cores the server needs."""
        slices = max(1, int(seconds / SLICE) + 1)
        end = time.perf_counter()
        for _ in range(slices):
            end += seconds / slices
            left = end - time.perf_counter()
            if left > 0:
                time.sleep(left)
            if self.on_step is not None:
                served = time.perf_counter()
                self.on_step()
                end += time.perf_counter() - served  # as a real worker, trains on afterwards

    def train_group(self, task: int, items: list, outs: list | None = None) -> list:
        """Sleep one calibrated request per member; each delta is the task's fixed random
        direction scaled by the request's seed (so equal requests give equal bits)."""
        timing = self.timings[task]
        out = []
        for k, (_, _, seed) in enumerate(items):
            self._sleep(timing.train_seconds)
            scale = np.float32(1.0 + (int(seed) % 1000) / 1000.0)
            delta = outs[k] if outs is not None else np.empty(timing.n_params, np.float32)
            np.multiply(self._direction[task], scale, out=delta)
            out.append((delta, float(scale), 1))
        return out

    def evaluate_chunk(self, task: int, model, chunk: int) -> tuple[float, float]:
        """Sleep one calibrated chunk; sums that mean nothing (no correct prediction)."""
        self._sleep(self.timings[task].eval_chunk_seconds)
        return 0.0, 1.0
