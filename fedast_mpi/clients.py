"""Clients: speed tiers, shifted-exponential delay streams, FIFO queues, availability cap."""

from __future__ import annotations

from dataclasses import dataclass

import json

import numpy as np

from fedast_mpi import seeding

TIER_ORDER = ("slow", "normal", "fast")


def assign_tiers(count: int, tiers, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tier code (0 slow, 1 normal, 2 fast) and speed multiplier of every client.

    Clients are shuffled with the run's TIERS stream and cut in tier order
    (PAPER.md §5.1), so the same seed gives the same tiers for every algorithm.
    """
    perm = seeding.generator(seed, seeding.TIERS).permutation(count)
    fractions = np.array([getattr(tiers, name).fraction for name in TIER_ORDER])
    bounds = np.rint(np.cumsum(fractions) * count).astype(np.int64)
    bounds[-1] = count
    code = np.empty(count, np.int8)
    start = 0
    for k, stop in enumerate(bounds):
        code[perm[start:stop]] = k
        start = stop
    mult = np.array([getattr(tiers, name).multiplier for name in TIER_ORDER], np.float32)[code]
    return code, mult


@dataclass(frozen=True)
class DelayModel:
    """Duration of one request: local_multi × tier multiplier × (shift + Exp(exp_mean))."""

    shift: float
    exp_mean: float
    local_multi: float

    def draw(self, rng: np.random.Generator, multiplier: float) -> float:
        """One request duration, from one draw of the client's (client, task) stream."""
        expo = rng.exponential(self.exp_mean) if self.exp_mean > 0 else 0.0
        return self.local_multi * float(multiplier) * (self.shift + expo)


class ClientPool:
    """Every client's FIFO queue (busy-until time), pending requests and delay streams.

    A request dispatched at `now` to client i starts at max(now, busy_until[i])
    and finishes after one duration draw (PAPER.md §1.4). The availability cap
    limits the number of distinct clients with pending work; a busy client can
    always take more (its queue grows).

    The per-client state lives in Python lists (`schedule`/`release` run once per request
    on the server's hot path, where numpy scalar indexing costs more than the work);
    `busy_until` and `pending` give numpy copies.
    """

    def __init__(self, tier: np.ndarray, multiplier: np.ndarray, delays: list[DelayModel],
                 seed: int, available: int | None, stream_keys: list[int] | None = None):
        """`stream_keys[m]`: the task key of task m's delay streams (default m; a task
        trained alone keeps the streams it has in its multi-task config, `stream_index`)."""
        self.tier = tier
        self.multiplier = multiplier
        self.delays = delays
        self.seed = seed
        self.available = available
        self.stream_keys = list(range(len(delays))) if stream_keys is None else stream_keys
        n = len(tier)
        self._mult = [float(m) for m in multiplier]  # exact: float32 -> float
        self._busy = [0.0] * n
        self._pending = [0] * n
        self.n_busy = 0
        self._streams: dict[tuple[int, int], np.random.Generator] = {}

    @property
    def count(self) -> int:
        return len(self.tier)

    @property
    def busy_until(self) -> np.ndarray:
        """Each client's busy-until time (a float64 copy)."""
        return np.array(self._busy, np.float64)

    @property
    def pending(self) -> np.ndarray:
        """Each client's number of pending requests (an int64 copy)."""
        return np.array(self._pending, np.int64)

    def stream(self, client: int, task: int) -> np.random.Generator:
        """The delay stream of (client, task), created on first use."""
        key = (client, task)
        rng = self._streams.get(key)
        if rng is None:
            rng = self._streams[key] = seeding.generator(self.seed, seeding.DELAY, client,
                                                                 self.stream_keys[task])
        return rng

    def can_accept(self, client: int) -> bool:
        """False when the client is idle and the cap of busy clients is reached."""
        return (self.available is None or self._pending[client] > 0
                or self.n_busy < self.available)

    def schedule(self, client: int, task: int, now: float) -> tuple[float, float]:
        """Queue one request of `task` on `client` at `now`; returns (start, finish)."""
        duration = self.delays[task].draw(self.stream(client, task), self._mult[client])
        start = max(now, self._busy[client])
        finish = start + duration
        self._busy[client] = finish
        if self._pending[client] == 0:
            self.n_busy += 1
        self._pending[client] += 1
        return start, finish

    def release(self, client: int) -> None:
        """A request of the client was processed or cancelled (its queue time stays)."""
        n = self._pending[client] - 1
        self._pending[client] = n
        if n == 0:
            self.n_busy -= 1
        elif n < 0:
            raise RuntimeError(f"client {client} released more requests than it had")

    def state_dict(self) -> dict:
        """Queues, pending counts and every delay stream's exact position (for checkpoints)."""
        keys = sorted(self._streams)
        return {"busy_until": self.busy_until, "pending": self.pending,
                "n_busy": int(self.n_busy),
                "stream_keys": np.array(keys, np.int64).reshape(-1, 2),
                "stream_states": json.dumps([self._streams[k].bit_generator.state for k in keys])}

    def load_state_dict(self, state: dict) -> None:
        self._busy = [float(x) for x in np.asarray(state["busy_until"], np.float64)]
        self._pending = [int(x) for x in np.asarray(state["pending"], np.int64)]
        self.n_busy = int(state["n_busy"])
        self._streams = {}
        for (client, task), st in zip(np.asarray(state["stream_keys"]).reshape(-1, 2),
                                      json.loads(state["stream_states"])):
            rng = self.stream(int(client), int(task))
            rng.bit_generator.state = st
