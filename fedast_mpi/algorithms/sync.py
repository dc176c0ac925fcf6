"""Synchronous simultaneous training (PAPER.md §4): Sync-ST, Sync-Bayes-ST, Sync-UCB-ST.

One global round for all tasks: the available clients are split disjointly
among the unfinished tasks (∝ their `requests`, the paper's weights), every
selected client trains its task on the current model, and the round ends
when every task has its first min(k, clients) updates (by finish time). Jobs
beyond first-k are never trained — their finish times are known at dispatch —
but keep their client busy and appear in /events with accepted = 0 at their
finish time (PAPER.md §4.0). Each task then aggregates x ← x + η_s · mean and
the next round starts at the time of the last kept update.
"""

from __future__ import annotations

import json

import numpy as np

from fedast_mpi import selection
from fedast_mpi.algorithms.base import Policy
from fedast_mpi.records import Request, Update


class Sync(Policy):
    """Round-based baselines; the registry's `selector` trait picks how clients are assigned."""

    def __init__(self, server) -> None:
        super().__init__(server)
        cfg = server.cfg
        algo = cfg.algorithm
        self.available = cfg.clients.available or cfg.clients.count
        self.round = 0
        self.remaining: dict[int, int] = {}
        self.round_requests: dict[int, tuple[int, int]] = {}  # id -> (task, client), kept jobs
        self.assignment: list[np.ndarray] = []
        self.kept: list[np.ndarray] = []
        self.durations: list[np.ndarray] = []
        self.losses: dict[int, float] = {}
        m, n = len(cfg.tasks), cfg.clients.count
        selector = self.spec.selector
        self.ucb = selection.UcbScores(m, n, algo.ucb_gamma) if selector == "ucb" else None
        self.bayes = (selection.BayesSelector(m, n, algo.bayes_alpha, algo.bayes_candidates)
                      if selector == "bayes" else None)

    def state_dict(self) -> dict:
        rr = sorted(self.round_requests.items())
        return {"sync": {
            "round": self.round,
            "remaining": json.dumps({str(k): v for k, v in self.remaining.items()}),
            "assignment": list(self.assignment), "kept": list(self.kept),
            "durations": list(self.durations),
            "losses": json.dumps({str(k): v for k, v in self.losses.items()}),
            "round_requests": np.array([(r, t, c) for r, (t, c) in rr], np.int64).reshape(-1, 3),
            "ucb": self.ucb.state_dict() if self.ucb is not None else None,
            "bayes": self.bayes.state_dict() if self.bayes is not None else None}}

    def load_state_dict(self, state: dict) -> None:
        s = state["sync"]
        self.round = int(s["round"])
        self.remaining = {int(k): int(v) for k, v in json.loads(s["remaining"]).items()}
        self.assignment = [np.asarray(a, np.int64) for a in s["assignment"]]
        self.kept = [np.asarray(a, bool) for a in s["kept"]]
        self.durations = [np.asarray(a, np.float64) for a in s["durations"]]
        self.losses = {int(k): float(v) for k, v in json.loads(s["losses"]).items()}
        self.round_requests = {int(r): (int(t), int(c)) for r, t, c in s["round_requests"]}
        if self.ucb is not None:
            self.ucb.load_state_dict(s["ucb"])
        if self.bayes is not None:
            self.bayes.load_state_dict(s["bayes"])

    def start(self) -> None:
        """The initial allocation rows, version 0's evaluations, then the first round."""
        self.tasks.log_allocations()
        self.evaluate_all()
        self.start_round()

    # -- a round -----------------------------------------------------------------------
    def select(self) -> tuple[list[np.ndarray], int | None]:
        """The round's clients per task, and k (None: wait for all)."""
        active = [not t.finished for t in self.tasks]
        n = self.server.cfg.clients.count
        if self.ucb is not None and self.round == 0:  # every client trains every task
            return [np.arange(n) if a else np.zeros(0, np.int64) for a in active], None
        rng = self.server.select_rng
        shares = selection.sync_shares(self.available, [t.requests for t in self.tasks],
                                       active, rng)
        if self.ucb is not None:
            chosen = self.ucb.select(shares, self.round, rng)
        elif self.bayes is not None:
            chosen = self.bayes.select(shares, rng)
        else:
            chosen = selection.random_assignment(n, shares, rng)
        return chosen, self.server.cfg.algorithm.first_k

    def start_round(self) -> None:
        """Dispatch a round: schedule every job, train only the first k of each task."""
        if self.tasks.all_finished():
            return
        chosen, k = self.select()
        self.assignment, self.kept, self.durations = [], [], []
        self.remaining, self.losses, self.round_requests = {}, {}, {}
        now = self.server.clock.now
        for t, clients in zip(self.tasks, chosen):
            reqs = ([self.book.new(t.index, t.version, int(c), now) for c in clients]
                    if not t.finished else [])
            keep = selection.first_k([r.finish_time for r in reqs], [r.id for r in reqs], k)
            for req, kept in zip(reqs, keep):
                if kept:
                    self.server.send(req)
                    self.round_requests[req.id] = (req.task, req.client)
                else:
                    self.book.reject(req)
            self.assignment.append(np.asarray(clients, np.int64))
            self.kept.append(np.asarray(keep, bool))
            self.durations.append(np.array([r.finish_time - r.start_time for r in reqs]))
            if reqs:
                self.remaining[t.index] = int(np.count_nonzero(keep))

    def on_update(self, req: Request, upd: Update) -> None:
        self.tasks.accept(req, upd)
        self.remaining[req.task] -= 1
        self.losses[req.id] = upd.train_loss

    def after_batch(self) -> None:
        if self.remaining and not any(self.remaining.values()):
            self.end_round()
            self.start_round()

    def end_round(self) -> None:
        """Every task aggregates its round (version += 1), then the selectors learn from it."""
        for m in self.remaining:
            t = self.tasks[m]
            if not t.finished and t.buffer:
                self.aggregate(t)
        if self.bayes is not None:
            self.bayes.observe(self.assignment, self.kept, self.durations)
        if self.ucb is not None:
            trained, losses = [], []
            by_client: dict[int, list[tuple[int, float]]] = {}
            for rid, loss in self.losses.items():
                task, client = self.round_requests[rid]
                by_client.setdefault(task, []).append((client, loss))
            for m in range(len(self.tasks)):
                pairs = by_client.get(m, [])
                trained.append(np.array([c for c, _ in pairs], np.int64))
                losses.append(np.array([x for _, x in pairs], np.float64))
            self.ucb.update(trained, losses)
        self.round += 1
        self.remaining = {}
