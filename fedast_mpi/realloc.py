"""Realloc: dynamic split of the request budget over tasks (PAPER.md §2), pure numpy.

Two variants, chosen by ``variant`` (PAPER.md §9 lists the disagreements; "paper" is the default):

* ``"paper"`` — Algorithm 3 + Appendix A/Algorithm 4 as printed.
* ``"code"`` — what the authors' server.py does (`calculateUpdVariance`, `redistributeActiveWorks`),
  which is what produced the paper's numbers.

Both estimate, per task, the normalised variance of recent client deltas
nv = (1/n) Σ_i ||δ_i − δ̄||² / ||δ̄||² (scale-invariant, so raw deltas δ = −τ η_c Δ give the same
value as the paper's average gradients Δ) and then move requests between unfinished tasks while
keeping their total fixed. They differ in:

* weighting — paper: σ̂² = η_s η_c τ · nv, and R_m ∝ sqrt(σ̂²_m).
  code: sample = (η_c η_s · nv / (η_c τ)²) / 2, and R_m ∝ mean sample (linear, no sqrt). The /2
  is the authors' ``x**1/2`` (parsed (x**1)/2) where sqrt(x) was presumably meant; reproduced.
  Net ∝ η_s nv / (η_c τ²): the η_c factor is inverted w.r.t. the paper (Shakespeare's η_c = 7
  vs 0.1 is 70× up in the paper, 70× down in the code, PAPER.md §9).
* coordinates — paper: the whole Δ (``masks`` are ignored). code: non-bias parameters only
  (``masks[m]``).
* window — paper: the last V updates, one estimate taken at Realloc time. code: window of V;
  once full, the oldest is dropped and one sample is taken on the remaining V − 1 (7) after
  *every* update; Realloc uses the mean of the period's samples (NaN samples skipped), then
  clears them.
* allocation — paper: largest-remainder rounding of R · w_m / Σw, at least 1 per unfinished
  task. code: quantised in chunks of ``round(r_to_b)`` (32), one chunk minimum per unfinished
  task, extra chunks one at a time to the largest "ideal" (`allocate_code`).
* buffer — paper: b ← round(b · R_new / R_old) at Realloc (R/b kept fixed). code: unchanged at
  Realloc; the server sets b = max(1, ceil(outstanding / r_to_b)) after every update
  (`code_buffer`).
* K (new requests after an update) — paper (option D): clip(R − a, 0, 2): 0 while shrinking,
  1 steady, 2 while growing. code: min(R − a, ΣR − Σa, 2), at least 0.
* period — paper: c ≥ ceil(f · M_unfinished · ΣR_unfinished) and every unfinished window full.
  code: c ≥ floor(f · ΣR_initial) · M_unfinished, every task (finished ones too) > 8
  aggregations and every unfinished task ≥ 1 sample.

Choices the sources leave open or that depart from the authors' code (all so as never to lose
or invent a request: Σ new R over unfinished tasks == Σ old R over unfinished tasks, finished
tasks get 0):

* code allocation: when the total is not a multiple of the chunk the authors' last chunk
  overshoots the budget; here the last chunk is truncated to what is left.
* code allocation: when the total cannot give every unfinished task a whole chunk, the total is
  split proportionally to the mean samples instead (same rounding as the paper variant).
* an unknown (NaN, e.g. ||δ̄|| = 0 or an incomplete window) or zero estimate of an unfinished
  task is replaced by the smallest positive estimate among the unfinished tasks (equal split if
  none is positive), so no task is starved on a missing statistic.
* paper rounding is not specified [NF]: largest remainder (ties → lowest index), quotas below 1
  pinned to 1; with fewer requests than unfinished tasks some get 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fedast_mpi import aggregation

VARIANTS = ("paper", "code")
CODE_MIN_ROUNDS = 8
"""Code variant: Realloc waits until every task has done more than this many aggregations."""
_BLOCK = 1 << 16
"""Columns per float64 block in `normalized_variance` (bounds its temporary memory)."""


# --------------------------------------------------------------------------------------------
# Estimators


def normalized_variance(deltas: np.ndarray | Sequence[np.ndarray],
                        mask: np.ndarray | None = None) -> float:
    """(1/n) Σ_i ||δ_i − δ̄||² / ||δ̄||² over the masked coordinates, in float64.

    `deltas` is an (n, d) array or a list of n 1-D arrays of length d; `mask` is a boolean
    vector over d (None: all). NaN when ||δ̄|| == 0. Works on column blocks so that the float64
    temporaries stay small whatever d is.
    """
    rows = list(deltas) if not isinstance(deltas, np.ndarray) else deltas
    if isinstance(rows, np.ndarray) and rows.ndim != 2:
        raise ValueError(f"deltas must be 2-D (n, d), got shape {rows.shape}")
    n = len(rows)
    if n == 0:
        raise ValueError("need at least one delta")
    d = int(np.shape(rows[0])[0])
    if any(np.ndim(r) != 1 or np.shape(r)[0] != d for r in rows):
        raise ValueError("all deltas must be 1-D of the same length")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (d,):
            raise ValueError(f"mask must have shape ({d},), got {mask.shape}")
    dev2 = 0.0
    mean2 = 0.0
    for start in range(0, d, _BLOCK):
        sl = slice(start, min(start + _BLOCK, d))
        block = np.stack([np.asarray(r[sl], dtype=np.float64) for r in rows])
        if mask is not None:
            block = block[:, mask[sl]]
        mean = block.mean(axis=0)
        dev2 += float(np.sum((block - mean) ** 2))
        mean2 += float(np.dot(mean, mean))
    if mean2 == 0.0:
        return float("nan")
    return dev2 / (n * mean2)


def paper_sigma2(norm_var: float, global_lr: float, local_lr: float, local_steps: int) -> float:
    """Paper's σ̂² = η_c · η_s · τ · nv (PAPER.md §2.1, Algorithm 4)."""
    return float(local_lr * global_lr * local_steps * norm_var)


def code_sample(deltas_7: np.ndarray | Sequence[np.ndarray], mask: np.ndarray | None,
                global_lr: float, local_lr: float, local_steps: int) -> float:
    """One code-variant sample: (η_c η_s · nv / (η_c τ)²) / 2 (PAPER.md §2.2).

    The final /2 reproduces the authors' ``x**1/2`` (parsed as (x**1)/2, not a square root).
    """
    ratio = normalized_variance(deltas_7, mask)
    value = local_lr * global_lr * ratio / (local_lr * local_steps) ** 2
    return float(value / 2)  # the authors' `value**1/2`


# --------------------------------------------------------------------------------------------
# Allocation


def _clean_weights(values: Sequence[float],
                   active: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Weights of active tasks with unknown (NaN/inf) or non-positive entries replaced by the
    smallest positive one (all 1 if none is positive); inactive tasks get 0."""
    v = np.asarray(values, dtype=np.float64)
    act = np.asarray(active, dtype=bool)
    if v.shape != act.shape:
        raise ValueError("estimates and active flags must have the same length")
    good = act & np.isfinite(v) & (v > 0)
    w = np.zeros_like(v)
    if good.any():
        w[act] = v[good].min()
        w[good] = v[good]
    else:
        w[act] = 1.0
    return w


def _largest_remainder(total: int, weights: np.ndarray, active: np.ndarray) -> list[int]:
    """Integer split of `total` ∝ `weights` over `active`, ≥ 1 each when total ≥ #active.

    Tasks whose proportional quota falls below 1 are pinned to 1 and the rest re-split
    (repeated until stable); the free tasks get the floor of their quota, then the leftover
    units go to the largest fractional parts (ties → lowest index). Sums to `total` exactly.
    """
    idx = [int(i) for i in np.flatnonzero(active)]
    out = [0] * len(weights)
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if not idx:
        if total:
            raise ValueError("requests to allocate but no active task")
        return out
    pinned: set[int] = set()
    while True:
        free = [i for i in idx if i not in pinned]
        budget = total - len(pinned)
        wsum = float(sum(weights[i] for i in free))
        quota = {i: budget * float(weights[i]) / wsum for i in free}
        low = [i for i in free if quota[i] < 1.0] if total >= len(idx) else []
        if not low:
            break
        pinned.update(low)
    for i in pinned:
        out[i] = 1
    for i in free:
        out[i] = int(math.floor(quota[i]))
    left = total - sum(out)
    order = sorted(free, key=lambda i: (-(quota[i] - math.floor(quota[i])), i))
    for i in order[:left]:
        out[i] += 1
    return out


def allocate_paper(total: int, sigma2: Sequence[float], active: Sequence[bool]) -> list[int]:
    """Paper Realloc (eq. 3): R_m ∝ sqrt(σ̂²_m) over active tasks, summing to `total`.

    Largest-remainder rounding, at least 1 per active task when total ≥ #active, 0 for
    inactive ones. NaN/zero estimates: see `_clean_weights`.
    """
    w = np.sqrt(_clean_weights(sigma2, active))
    return _largest_remainder(int(total), w, np.asarray(active, dtype=bool))


def allocate_code(total: int, mean_samples: Sequence[float], active: Sequence[bool],
                  chunk: int) -> list[int]:
    """Code Realloc (`redistributeActiveWorks`, PAPER.md §2.2): R_m ∝ mean sample, in chunks.

    Every active task starts with one chunk; ideal_m = floor(total · a_m / Σa) − chunk; then one
    more chunk at a time to the largest ideal (ties → lowest index), which loses a chunk of
    ideal, until nothing is left. The last chunk is truncated so the result sums to `total`
    (the authors' code overshoots there). If total < chunk · #active, falls back to a
    proportional split ∝ mean sample (largest remainder, ≥ 1 each).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    total = int(total)
    act = np.asarray(active, dtype=bool)
    a = _clean_weights(mean_samples, act)
    idx = [int(i) for i in np.flatnonzero(act)]
    if total < chunk * len(idx) or not idx:
        return _largest_remainder(total, a, act)
    asum = float(a[idx].sum())
    out = [0] * len(a)
    ideal = {}
    for i in idx:
        out[i] = chunk
        ideal[i] = math.floor(total * float(a[i]) / asum) - chunk
    left = total - chunk * len(idx)
    while left > 0:
        best = max(idx, key=lambda i: (ideal[i], -i))
        give = min(chunk, left)
        out[best] += give
        ideal[best] -= chunk
        left -= give
    return out


# --------------------------------------------------------------------------------------------
# Buffers, periods, replacements


def rescale_buffer(b_old: int, r_old: int, r_new: int) -> int:
    """Paper buffer rule b ← b · R_new / R_old (R/b stays fixed), rounded (Python `round`,
    half to even), at least 1; R_old == 0 keeps max(1, b_old)."""
    if r_old <= 0:
        return max(1, int(b_old))
    return max(1, int(round(b_old * r_new / r_old)))


def code_buffer(outstanding: int, r_to_b: float) -> int:
    """Code buffer rule b = max(1, ceil(a / R_bs_ratio)) with a the outstanding requests."""
    return max(1, int(math.ceil(outstanding / r_to_b)))


def paper_period(n_unfinished: int, total_requests: int, period_factor: float) -> int:
    """Paper Realloc period c_period = 0.75 · M · ΣR (App. A), rounded up, at least 1.

    A relative 1e-12 slack keeps float noise (e.g. 0.7·3·100 = 210.00000000000003) from
    adding one update.
    """
    x = period_factor * n_unfinished * total_requests
    return max(1, int(math.ceil(x - 1e-12 * max(1.0, abs(x)))))


def code_period(n_unfinished: int, initial_total_requests: int, period_factor: float) -> int:
    """Code Realloc period floor(0.75 · ΣR_initial) · #unfinished, at least 1 (plain float floor,
    as the authors' ``int(...)``)."""
    return max(1, int(math.floor(period_factor * initial_total_requests)) * n_unfinished)


# --------------------------------------------------------------------------------------------
# Stateful part used by the server


class Reallocator:
    """Dynamic allocation: per-task delta windows, the update counter c, the Realloc trigger,
    and the variant's buffer and replacement rules (see module doc).

    Memory: one preallocated (window, d) float32 ring per task, freed by `forget`; `observe`
    only copies into it (the code variant additionally computes one sample per update).
    """

    immediate_handover = False
    """A finished task's requests are phased in by the K <= 2 rule, not sent at once."""

    def __init__(self, *, variant: str, window: int, period_factor: float, r_to_b: float,
                 n_params: Sequence[int], masks: Sequence[np.ndarray | None],
                 hyper: Sequence[tuple[float, float, int]], initial_requests: Sequence[int],
                 initial_buffers: Sequence[int]):
        if variant not in VARIANTS:
            raise ValueError(f"unknown Realloc variant {variant!r}; expected one of {VARIANTS}")
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        m = len(n_params)
        if not (len(masks) == len(hyper) == len(initial_requests) == len(initial_buffers) == m):
            raise ValueError("n_params, masks, hyper, initial_requests and initial_buffers "
                             "must have equal length")
        self.variant = variant
        self.window = int(window)
        self.period_factor = float(period_factor)
        self.r_to_b = float(r_to_b)
        self.chunk = max(1, int(round(r_to_b)))
        self.n_params = [int(d) for d in n_params]
        self.masks = [None if mk is None else np.asarray(mk, dtype=bool) for mk in masks]
        for d, mk in zip(self.n_params, self.masks):
            if mk is not None and mk.shape != (d,):
                raise ValueError(f"mask shape {mk.shape} does not match {d} parameters")
        self.hyper = [(float(g), float(lr), int(t)) for g, lr, t in hyper]
        self.initial_requests = [int(r) for r in initial_requests]
        self.initial_buffers = [int(b) for b in initial_buffers]
        self._rings: list[np.ndarray | None] = [np.zeros((self.window, d), dtype=np.float32)
                                                for d in self.n_params]
        self._head = [0] * m   # next slot to write
        self._fill = [0] * m   # valid rows in the ring
        self._samples: list[list[float]] = [[] for _ in range(m)]
        self._forgotten = [False] * m
        self.counter = 0

    # -- the variant's rules ---------------------------------------------------------------

    def replacement_count(self, target: int, outstanding: int, total_target: int,
                          total_outstanding: int) -> int:
        """New requests K to send for a task after one of its updates (outstanding already
        decremented). paper (option D): clip(R − a, 0, 2): 0 above target, 1 in steady state,
        2 while growing. code: `aggregation.replacement_count` (also capped by the global slack).
        """
        if self.variant == "paper":
            return int(min(max(target - outstanding, 0), 2))
        return aggregation.replacement_count(target, outstanding, total_target, total_outstanding)

    def buffer_after_update(self, outstanding: int) -> int | None:
        """A task's new b after one of its updates (code: from its a_m), None: unchanged."""
        return code_buffer(outstanding, self.r_to_b) if self.variant == "code" else None

    def buffer_after_handover(self, task: int, requests: int) -> int:
        """b of a task whose R grew by a hand-over (PAPER.md §1.5): code round(R / R_bs_ratio),
        paper the task's initial R/b ratio kept."""
        if self.variant == "code":
            return max(1, round(requests / self.r_to_b))
        return rescale_buffer(self.initial_buffers[task], self.initial_requests[task], requests)

    # -- window ---------------------------------------------------------------------------

    def _rows(self, task: int, skip_oldest: bool = False) -> list[np.ndarray]:
        """Valid ring rows of `task`, oldest first (views, no copies)."""
        ring = self._rings[task]
        if ring is None:  # callers skip finished tasks
            raise ValueError(f"task {task} is finished; its window was dropped")
        fill, head = self._fill[task], self._head[task]
        order = [(head - fill + k) % self.window for k in range(fill)]
        if skip_oldest:
            order = order[1:]
        return [ring[i] for i in order]

    def observe(self, task: int, delta: np.ndarray) -> None:
        """Record an accepted update of `task`: c += 1 and copy `delta` into its window.

        Code variant: once the window holds `window` deltas the oldest is dropped and one sample
        is computed on the remaining window − 1.
        """
        ring = self._rings[task]  # None exactly when the task is forgotten
        if self._forgotten[task] or ring is None:
            raise ValueError(f"task {task} is finished; its updates are not observed")
        delta = np.asarray(delta)
        if delta.size != self.n_params[task]:
            raise ValueError(f"task {task}: delta has {delta.size} values, "
                             f"expected {self.n_params[task]}")
        self.counter += 1
        np.copyto(ring[self._head[task]], delta.reshape(-1), casting="same_kind")
        self._head[task] = (self._head[task] + 1) % self.window
        self._fill[task] = min(self._fill[task] + 1, self.window)
        if self.variant == "code" and self._fill[task] == self.window:
            g, lr, tau = self.hyper[task]
            rows = self._rows(task, skip_oldest=True)
            self._samples[task].append(code_sample(rows, self.masks[task], g, lr, tau))
            self._fill[task] = self.window - 1

    # -- trigger and estimates --------------------------------------------------------------

    def due(self, versions: Sequence[int], finished: Sequence[bool],
            requests: Sequence[int]) -> bool:
        """Whether Realloc should run now (period and readiness rules of the variant)."""
        unf = [m for m, f in enumerate(finished) if not f]
        if not unf:
            return False
        if self.variant == "paper":
            period = paper_period(len(unf), sum(int(requests[m]) for m in unf),
                                  self.period_factor)
            return (self.counter >= period
                    and all(self._fill[m] == self.window for m in unf))
        period = code_period(len(unf), sum(self.initial_requests), self.period_factor)
        return (self.counter >= period
                and all(int(v) > CODE_MIN_ROUNDS for v in versions)
                and all(len(self._samples[m]) >= 1 for m in unf))

    def estimates(self, finished: Sequence[bool]) -> list[float]:
        """Current σ² per task: paper σ̂² of the full window, or the code variant's mean sample
        of the period (NaN samples skipped). NaN when unknown or finished."""
        out = []
        for m, fin in enumerate(finished):
            if fin or self._forgotten[m]:
                out.append(float("nan"))
            elif self.variant == "paper":
                if self._fill[m] < self.window:
                    out.append(float("nan"))
                else:
                    g, lr, tau = self.hyper[m]
                    out.append(paper_sigma2(normalized_variance(self._rows(m)), g, lr, tau))
            else:
                s = np.asarray(self._samples[m], dtype=np.float64)
                s = s[np.isfinite(s)]
                out.append(float(s.mean()) if s.size else float("nan"))
        return out

    def reallocate(self, requests: Sequence[int], buffer_sizes: Sequence[int],
                   finished: Sequence[bool]) -> tuple[list[int], list[int], list[float]]:
        """Run Realloc: (new requests, new buffer sizes, σ² used); resets c.

        The total over unfinished tasks is kept exactly; finished tasks get 0 requests and keep
        their buffer. Paper: b keeps each task's initial R/b ratio, computed from the initial
        values every time so that rounding never accumulates. Code: buffers unchanged (the server
        applies `code_buffer` after each update) and the samples are cleared (windows stay).
        """
        active = [not f for f in finished]
        total = sum(int(r) for r, a in zip(requests, active) if a)
        sigma2 = self.estimates(finished)
        buffers = [int(b) for b in buffer_sizes]
        if self.variant == "paper":
            new = allocate_paper(total, sigma2, active)
            for m, a in enumerate(active):
                if a:
                    buffers[m] = rescale_buffer(self.initial_buffers[m], self.initial_requests[m],
                                                new[m])
        else:
            new = allocate_code(total, sigma2, active, self.chunk)
            for s in self._samples:
                s.clear()
        self.counter = 0
        return new, buffers, sigma2

    def forget(self, task: int) -> None:
        """A task finished: drop its window and samples."""
        self._rings[task] = None
        self._samples[task] = []
        self._fill[task] = 0
        self._head[task] = 0
        self._forgotten[task] = True

    # -- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Copy of the mutable state: plain Python scalars/strings and numpy arrays only
        (flat keys, HDF5-friendly). Forgotten tasks store a (0, 0) ring."""
        m = len(self.n_params)
        state: dict = {
            "variant": self.variant,
            "window": self.window,
            "counter": int(self.counter),
            "head": np.asarray(self._head, dtype=np.int64),
            "fill": np.asarray(self._fill, dtype=np.int64),
            "forgotten": np.asarray(self._forgotten, dtype=bool),
        }
        for t in range(m):
            ring = self._rings[t]
            state[f"ring_{t}"] = (np.zeros((0, 0), dtype=np.float32) if ring is None
                                  else ring.copy())
            state[f"samples_{t}"] = np.asarray(self._samples[t], dtype=np.float64)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` output; the configuration must match this instance."""
        if str(state["variant"]) != self.variant or int(state["window"]) != self.window:
            raise ValueError("Realloc state was saved with a different variant or window")
        m = len(self.n_params)
        forgotten = [bool(x) for x in np.asarray(state["forgotten"])]
        if len(forgotten) != m:
            raise ValueError(f"Realloc state has {len(forgotten)} tasks, expected {m}")
        for t in range(m):
            if forgotten[t]:
                self._rings[t] = None
                continue
            ring = np.asarray(state[f"ring_{t}"])
            if ring.shape != (self.window, self.n_params[t]):
                raise ValueError(f"task {t}: ring shape {ring.shape} does not match")
            dest = self._rings[t]
            if dest is None:
                dest = self._rings[t] = np.zeros((self.window, self.n_params[t]),
                                                 dtype=np.float32)
            np.copyto(dest, ring, casting="same_kind")
        self._forgotten = forgotten
        self._head = [int(x) for x in np.asarray(state["head"])]
        self._fill = [int(x) for x in np.asarray(state["fill"])]
        self._samples = [[float(x) for x in np.asarray(state[f"samples_{t}"])] for t in range(m)]
        self.counter = int(state["counter"])
