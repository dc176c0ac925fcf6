"""Aggregation rules as pure functions over flat float32 vectors."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def buffer_mean(deltas: Sequence[np.ndarray]) -> np.ndarray:
    """Uniform mean of the buffered deltas, summed in buffer order (deterministic)."""
    if not deltas:
        raise ValueError("cannot average an empty buffer")
    acc = np.array(deltas[0], dtype=np.float32, copy=True)
    for d in deltas[1:]:
        acc += d
    acc *= np.float32(1.0 / len(deltas))
    return acc


def server_step(model: np.ndarray, deltas: Sequence[np.ndarray], global_lr: float) -> np.ndarray:
    """FedAST/FedBuff server update x + η_s · mean(δ), as a NEW array (old versions stay intact)."""
    out = buffer_mean(deltas)
    out *= np.float32(global_lr)
    return np.add(model, out, out=out)  # model + mean in place of the mean: one new array


def polynomial_staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """FedAsync's polynomial staleness weight (1 + s)^-a."""
    return float((1.0 + staleness) ** (-exponent))


def replacement_count(target: int, outstanding: int, total_target: int, total_outstanding: int,
                      max_new: int = 2) -> int:
    """New requests to send after an update (authors' code, PAPER.md §1.3 step 5).

    min(R_m − a_m, Σ R − Σ a, max_new) when the task is below its target, else 0:
    one in steady state, at most two while a task grows, none while it shrinks.
    """
    if outstanding >= target:
        return 0
    return max(0, min(target - outstanding, total_target - total_outstanding, max_new))


def split_budget(budget: int, weights: Sequence[int], rng: np.random.Generator) -> list[int]:
    """Split `budget` requests over tasks in proportion to `weights` (PAPER.md §1.5).

    floor of the proportional share, then the leftover units one by one to
    tasks drawn at random among those with a positive weight. Never loses or
    invents a request: the result sums to `budget`.
    """
    w = np.asarray(weights, dtype=np.float64)
    if budget <= 0 or w.sum() <= 0:
        return [0] * len(w)
    share = np.floor(budget * w / w.sum()).astype(np.int64)
    eligible = np.flatnonzero(w > 0)
    for _ in range(budget - int(share.sum())):
        share[rng.choice(eligible)] += 1
    return [int(s) for s in share]
