"""What every algorithm's policy is: the decisions, over the server's parts.

A policy decides; the server's parts (`fedast_mpi.server.Server`: tasks, request book,
clients, executor, clock) carry the decisions out and report back. The parts never call a
policy: the event pump hands it each update and each end of a batch, and the policy calls
the parts. So one update is followed top to bottom in the policy's `on_update`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedast_mpi.records import Request, Update
from fedast_mpi.tasks import TaskState

if TYPE_CHECKING:
    from fedast_mpi.server import Server


class Policy:
    """Base of the algorithms' policies: the hooks the event pump calls, and shared steps."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.spec = server.spec
        self.tasks = server.tasks
        self.book = server.book

    # -- hooks ------------------------------------------------------------------------------
    def start(self) -> None:
        """Before the first update: the initial allocation rows, requests, evaluations."""
        raise NotImplementedError

    def on_update(self, req: Request, upd: Update) -> None:
        """One update of a live request (virtual: in finish-time order; real: arrival order)."""
        raise NotImplementedError

    def after_batch(self) -> None:
        """Every update of one finish time (virtual) or one arrival batch (real) was handled."""

    def hand_over(self, t: TaskState) -> None:
        """Task t finished: give its request budget to the others (nothing by default)."""

    def state_dict(self) -> dict:
        """The policy's own state, merged into the checkpoint's top level."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore from the checkpoint's top level."""

    # -- shared steps -------------------------------------------------------------------------
    def evaluate_all(self) -> None:
        """Evaluate every task (version 0 at the start); a task at its target completes."""
        for t in self.tasks:
            if self.tasks.evaluate(t):
                self.complete(t)

    def aggregate(self, t: TaskState, weights: list[float] | None = None) -> None:
        """Aggregate t's buffer; complete t if the evaluation this triggers reaches its target."""
        if self.tasks.aggregate(t, weights):
            self.complete(t)

    def complete(self, t: TaskState) -> None:
        """t reached its target: retire it (its requests cancelled), hand its budget over,
        log the new allocation of every task (PAPER.md §1.5)."""
        self.server.retire_task(t)
        self.hand_over(t)
        t.requests = 0
        self.tasks.log_allocations()
