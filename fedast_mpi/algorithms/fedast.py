"""FedAST (PAPER.md §1-2): per-task buffers, static or dynamic allocation, and its relatives.

The same policy runs `fedast-nobuffer` (b = 1), `fedbuff` (one task) and `fedasync` (one task,
b = 1, each update weighted by (1 + staleness)^-a); the registry's traits say which.
"""

from __future__ import annotations

from fedast_mpi.aggregation import polynomial_staleness_weight, split_budget
from fedast_mpi.algorithms.base import Policy
from fedast_mpi.allocation import make_allocation
from fedast_mpi.realloc import Reallocator
from fedast_mpi.records import Request, Update
from fedast_mpi.tasks import TaskState


class FedAST(Policy):
    """Aggregate a task as soon as its buffer is full; replace every processed request.

    Replacements are reserved while a batch is processed and sent after it (`after_batch`):
    updates with the same finish time are all processed before any replacement is dispatched.
    """

    def __init__(self, server) -> None:
        super().__init__(server)
        cfg = server.cfg
        models = server.models
        self.allocation = make_allocation(cfg, [m.size for m in models.initial],
                                          models.weight_mask)
        self.realloc = self.allocation if isinstance(self.allocation, Reallocator) else None
        self.exponent = cfg.algorithm.staleness_exponent if self.spec.staleness_weighted else None
        self.reserved = [0] * len(self.tasks)
        self.to_dispatch: list[int] = []

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.to_dispatch:
            raise RuntimeError("checkpoint taken with replacements still to dispatch")
        return {} if self.realloc is None else {"realloc": self.realloc.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.to_dispatch = []  # (a batch boundary: also after a rollback mid-batch)
        self.reserved = [0] * len(self.tasks)
        if self.realloc is not None:
            self.realloc.load_state_dict(state["realloc"])

    # -- the algorithm ------------------------------------------------------------------------
    def start(self) -> None:
        """The initial burst, then version 0's evaluations: workers train while rank 0 evaluates.

        The burst ignores the availability cap (PAPER.md §1.3). A task whose initial model
        already meets its target completes at time 0 and its burst is cancelled.
        """
        self.tasks.log_allocations()
        for t in self.tasks:
            for _ in range(t.requests):
                self.dispatch(t, cap=False)
        self.evaluate_all()

    def on_update(self, req: Request, upd: Update) -> None:
        """PAPER.md §1.3: buffer, Realloc when due, aggregate when full, replacements."""
        t = self.tasks[req.task]
        self.tasks.accept(req, upd)
        if self.realloc is not None:
            self.realloc.observe(t.index, upd.delta)
            b = self.realloc.buffer_after_update(self.book.n_outstanding(t.index))
            if b is not None:
                t.buffer_size = self.spec.buffer(b)
            if self.realloc.due([u.version for u in self.tasks], [u.finished for u in self.tasks],
                                [u.requests for u in self.tasks]):
                self.reallocate()
        if len(t.buffer) >= t.buffer_size:
            weights = None
            if self.exponent is not None:
                weights = [polynomial_staleness_weight(s, self.exponent) for s in t.staleness]
            self.aggregate(t, weights)
        if not t.finished:
            self.replace(t)

    def replace(self, t: TaskState) -> None:
        """Reserve K new requests of t (the allocation's rule), sent after the batch."""
        total_r = total_a = 0
        for u in self.tasks:
            if not u.finished:
                total_r += u.requests
                total_a += self.book.n_outstanding(u.index) + self.reserved[u.index]
        k = self.allocation.replacement_count(
            t.requests, self.book.n_outstanding(t.index) + self.reserved[t.index], total_r, total_a)
        self.reserved[t.index] += k
        self.to_dispatch.extend([t.index] * k)

    def reallocate(self) -> None:
        """New R_m (and b_m) from the heterogeneity estimates; logged to /allocation."""
        if self.realloc is None:  # only called under dynamic allocation
            raise RuntimeError("reallocate needs dynamic allocation (a Reallocator)")
        requests, buffers, sigma2 = self.realloc.reallocate(
            [t.requests for t in self.tasks], [t.buffer_size for t in self.tasks],
            [t.finished for t in self.tasks])
        for t, r, b, s2 in zip(self.tasks, requests, buffers, sigma2):
            if not t.finished:
                t.requests, t.buffer_size = r, self.spec.buffer(b)
            self.tasks.log_allocation(t, s2)

    def after_batch(self) -> None:
        pending, self.to_dispatch = self.to_dispatch, []
        for m in pending:
            self.reserved[m] -= 1
            t = self.tasks[m]
            if not t.finished:
                self.dispatch(t)

    def dispatch(self, t: TaskState, cap: bool = True) -> None:
        """One request of t to a uniformly drawn client (dropped if over the availability cap)."""
        server = self.server
        client = server.draw_client()
        if cap and not server.clients.can_accept(client):
            self.book.drop()
            return
        server.send(self.book.new(t.index, t.version, client, server.clock.now))

    def hand_over(self, t: TaskState) -> None:
        """t's budget split over the unfinished tasks ∝ their R (PAPER.md §1.5): sent at once
        (static) or phased in by the K <= 2 rule (dynamic); their buffers follow their R."""
        self.to_dispatch = [m for m in self.to_dispatch if m != t.index]
        self.reserved[t.index] = 0
        others = self.tasks.unfinished()
        shares = split_budget(t.requests, [u.requests for u in others], self.server.handover_rng)
        for u, extra in zip(others, shares):
            u.requests += extra
            u.buffer_size = self.spec.buffer(self.allocation.buffer_after_handover(u.index,
                                                                                 u.requests))
            if self.allocation.immediate_handover:
                self.reserved[u.index] += extra
                self.to_dispatch.extend([u.index] * extra)
        if self.realloc is not None:
            self.realloc.forget(t.index)
