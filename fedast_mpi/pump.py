"""The event pump of each clock: which update the policy gets next, and when a batch ends.

Virtual: updates are handled strictly in (finish time, request id) order, all updates with the
same finish time before the policy's `after_batch` (FedAST dispatches the replacements, Sync may
close its round): the documented tie-break that makes "buffer = all outstanding, equal delays"
exactly FedAvg. Real: updates are handled in arrival order, each batch that arrived together
before `after_batch`. Between batches the server is in a consistent state (`Server.tick`:
progress, run-file flush, checkpoint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedast_mpi.speculation import Rollback

if TYPE_CHECKING:
    from fedast_mpi.server import Server

DONE = "all tasks reached their targets"
IDLE = "no outstanding requests"
MAX_TIME = "max_time"


def run_virtual(server: "Server") -> str:
    """Simulated time: jump to the next finish time, hand its updates over; returns why it
    stopped. With speculation (fedast_mpi.speculation), a rollback restarts from its snapshot
    and the end waits until every evaluation is confirmed."""
    spec = server.speculation
    while True:
        try:
            reason = _virtual(server)
            if spec is not None:
                spec.settle()
            return reason
        except Rollback:
            assert spec is not None
            spec.rollback()


def _virtual(server: "Server") -> str:
    book, tasks, policy, clock = server.book, server.tasks, server.policy, server.clock
    spec = server.speculation
    max_time = server.cfg.run.max_time
    while True:
        if tasks.all_finished():
            return DONE
        finish = book.next_time()
        if finish is None:
            return IDLE
        if finish > max_time:
            clock.now = max_time
            return MAX_TIME
        clock.now = finish
        while book.next_time() == finish:
            req = book.pop()
            if req.cancelled or req.rejected:
                server.record_unused(req)
            else:
                policy.on_update(req, server.executor.wait_for(req.id))
        policy.after_batch()
        if spec is not None:
            spec.after_batch()
        server.tick()


def run_real(server: "Server") -> str:
    """Wall time: hand over updates as they arrive; returns why it stopped."""
    book, tasks, policy, clock, executor = (server.book, server.tasks, server.policy,
                                            server.clock, server.executor)
    max_time = server.cfg.run.max_time
    while True:
        if tasks.all_finished():
            return DONE
        if not book.any_outstanding():
            return IDLE
        clock.now = clock.sim_now()
        if clock.now >= max_time:
            clock.now = max_time
            return MAX_TIME
        for req in book.pop_due(clock.now):
            server.record_unused(req)
        for upd in executor.poll(min(0.05, (max_time - clock.now) * clock.time_scale)):
            req = book.arrived(upd.request)
            clock.now = clock.sim_now()
            if req.cancelled:
                server.recorder.event(req, upd, tasks[req.task].version, accepted=0)
                executor.free(upd)
            else:
                policy.on_update(req, upd)
        policy.after_batch()
        server.tick()
