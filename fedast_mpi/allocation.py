"""How a FedAST policy shares the request budget over tasks: fixed (static) or by Realloc.

Both kinds answer the same questions (`Allocation`): how many replacements after an update,
the buffer of a task whose budget grew by a hand-over, and whether hand-over requests go out at
once. Dynamic allocation (`fedast_mpi.realloc.Reallocator`) also estimates heterogeneity and
moves requests between tasks.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from fedast_mpi import aggregation
from fedast_mpi.realloc import Reallocator, rescale_buffer


class Allocation(Protocol):
    immediate_handover: bool

    def replacement_count(self, target: int, outstanding: int, total_target: int,
                          total_outstanding: int) -> int: ...

    def buffer_after_handover(self, task: int, requests: int) -> int: ...


class StaticAllocation:
    """R_m fixed but for hand-overs; the authors' replacement rule (PAPER.md §1.3 step 5)."""

    immediate_handover = True
    """A finished task's requests go out to the others at once (PAPER.md §1.5)."""

    def __init__(self, initial_requests: Sequence[int], initial_buffers: Sequence[int]) -> None:
        self.initial_requests = [int(r) for r in initial_requests]
        self.initial_buffers = [int(b) for b in initial_buffers]

    def replacement_count(self, target: int, outstanding: int, total_target: int,
                          total_outstanding: int) -> int:
        return aggregation.replacement_count(target, outstanding, total_target, total_outstanding)

    def buffer_after_handover(self, task: int, requests: int) -> int:
        """The task's initial R/b ratio kept."""
        return rescale_buffer(self.initial_buffers[task], self.initial_requests[task], requests)


def make_allocation(cfg, n_params: Sequence[int],
                    weight_mask: Callable[[int], np.ndarray]) -> Allocation:
    """The allocation `cfg.algorithm.allocation` asks for, over the config's tasks."""
    algo = cfg.algorithm
    requests = [t.requests for t in cfg.tasks]
    buffers = [t.buffer_size for t in cfg.tasks]
    if algo.allocation != "dynamic":
        return StaticAllocation(requests, buffers)
    masks = [weight_mask(i) if algo.realloc.variant == "code" else None
             for i in range(len(cfg.tasks))]
    return Reallocator(variant=algo.realloc.variant, window=algo.realloc.window,
                       period_factor=algo.realloc.period_factor, r_to_b=algo.r_to_b,
                       n_params=n_params, masks=masks,
                       hyper=[(t.global_lr, t.local_lr, t.local_steps) for t in cfg.tasks],
                       initial_requests=requests, initial_buffers=buffers)
