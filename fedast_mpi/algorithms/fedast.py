"""FedAST (PAPER.md §1-2): per-task buffers, static or dynamic allocation, and its relatives.

The same loop runs `fedast-nobuffer` (b = 1), `fedbuff` (one task) and
`fedasync` (one task, b = 1, each update weighted by (1 + staleness)^-a).
"""

from __future__ import annotations

from fedast_mpi import realloc
from fedast_mpi.aggregation import polynomial_staleness_weight, replacement_count
from fedast_mpi.server import ServerBase, TaskState


class FedAST(ServerBase):
    """Aggregate a task as soon as its buffer is full; replace every processed request."""

    def __init__(self, cfg, runner, executor, runlog, progress, wall0=None, fresh=True):
        super().__init__(cfg, runner, executor, runlog, progress, wall0, fresh)
        algo = cfg.algorithm
        self.dynamic = algo.allocation == "dynamic"
        self.variant = algo.realloc.variant
        self.fedasync = algo.name == "fedasync"
        self.nobuffer = algo.name in ("fedast-nobuffer", "fedasync")
        self.reallocator = None
        if self.dynamic:
            self.reallocator = realloc.Reallocator(
                variant=self.variant, window=algo.realloc.window,
                period_factor=algo.realloc.period_factor, r_to_b=algo.r_to_b,
                n_params=runner.n_params,
                masks=[runner.weight_mask(i) for i in range(len(cfg.tasks))],
                hyper=[(t.global_lr, t.local_lr, t.local_steps) for t in cfg.tasks],
                initial_requests=[t.requests for t in cfg.tasks],
                initial_buffers=[t.buffer_size for t in cfg.tasks])

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.reallocator is not None:
            state["realloc"] = self.reallocator.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.reallocator is not None:
            self.reallocator.load_state_dict(state["realloc"])

    def start(self) -> None:
        """The initial burst, then version 0's evaluations: workers train while rank 0 evaluates.

        (A task whose initial model already meets its target completes at time 0 and its
        burst is cancelled, as at any other completion.)
        """
        self.begin()
        for t in self.tasks:  # the initial burst ignores the availability cap (PAPER.md §1.3)
            for _ in range(t.requests):
                self.dispatch(t, cap=False)
        self.evaluate_initial()

    def process(self, req, upd) -> None:
        """PAPER.md §1.3: buffer, Realloc when due, aggregate when full, replacements."""
        t = self.tasks[req.task]
        self.accept(req, upd)
        if self.dynamic:
            self.reallocator.observe(t.index, upd.delta)
            if self.variant == "code":
                t.buffer_size = realloc.code_buffer(len(t.outstanding), self.cfg.algorithm.r_to_b)
            if self.reallocator.due([u.version for u in self.tasks],
                                    [u.finished for u in self.tasks],
                                    [u.requests for u in self.tasks]):
                self.reallocate()
        if len(t.buffer) >= t.buffer_size:
            weights = None
            if self.fedasync:
                a = self.cfg.algorithm.staleness_exponent
                weights = [polynomial_staleness_weight(s, a) for s in t.staleness]
            self.aggregate(t, weights)
        if not t.finished:
            self.replace(t)

    def replace(self, t: TaskState) -> None:
        """Reserve K new requests of t, sent once the current batch is processed."""
        total_r = total_a = 0
        for u in self.tasks:
            if not u.finished:
                total_r += u.requests
                total_a += len(u.outstanding) + u.reserved
        args = (t.requests, len(t.outstanding) + t.reserved, total_r, total_a)
        if self.dynamic:
            k = realloc.replacement_count(self.variant, *args)
        else:
            k = replacement_count(*args)
        t.reserved += k
        self.to_dispatch.extend([t.index] * k)

    def reallocate(self) -> None:
        """New R_m (and b_m) from the heterogeneity estimates; logged to /allocation."""
        finished = [t.finished for t in self.tasks]
        requests, buffers, sigma2 = self.reallocator.reallocate(
            [t.requests for t in self.tasks], [t.buffer_size for t in self.tasks], finished)
        for t, r, b, s2 in zip(self.tasks, requests, buffers, sigma2):
            if not t.finished:
                t.requests, t.buffer_size = r, (1 if self.nobuffer else b)
            self.log_allocation(t, s2)

    def buffer_for(self, t: TaskState) -> int:
        """b_m for the current R_m at the task's initial R/b ratio (b = 1 without a buffer)."""
        if self.nobuffer:
            return 1
        return realloc.rescale_buffer(t.cfg.buffer_size, t.cfg.requests, t.requests)

    def after_batch(self) -> None:
        pending, self.to_dispatch = self.to_dispatch, []
        for m in pending:
            t = self.tasks[m]
            t.reserved -= 1
            if not t.finished:
                self.dispatch(t)

    def dispatch(self, t: TaskState, cap: bool = True) -> None:
        """One request of t to a uniformly drawn client (dropped if over the availability cap)."""
        client = self.draw_client()
        if cap and not self.clients.can_accept(client):
            self.n_dropped += 1
            return
        self.submit(self.schedule(t, client))

    def on_complete(self, t: TaskState) -> None:
        """Static: the extra requests go out at once; dynamic: phased in by the K <= 2 rule."""
        for u, extra in self.handover_shares(t):
            u.requests += extra
            u.buffer_size = self.buffer_for(u)
            if self.dynamic and self.variant == "code":  # PAPER.md §1.5: round(R / R_bs_ratio)
                u.buffer_size = max(1, round(u.requests / self.cfg.algorithm.r_to_b))
            if not self.dynamic:
                u.reserved += extra
                self.to_dispatch.extend([u.index] * extra)
        if self.reallocator is not None:
            self.reallocator.forget(t.index)
