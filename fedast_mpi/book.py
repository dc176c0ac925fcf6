"""The request book: every live request of a run, from its scheduling to its retirement.

A request is *live* from the moment it is sent (or rejected) until the server is done with it:
- *outstanding*: sent for training, its update still wanted (a_m counts these for task m);
- *cancelled*: its task finished first; in the virtual clock it stays until its finish time,
  in the real clock until its update arrives (or the run ends, if the worker dropped it);
- *rejected*: never trained (beyond first-k in a sync round); it occupies its client until
  its finish time, when it is recorded.
The book alone writes `cancelled` and `rejected`, and alone releases a request's client.
Its checkpoint is the table of live requests: where each one waits follows from its flags and
the clock, so nothing else is stored.
"""

from __future__ import annotations

import heapq

from fedast_mpi import seeding
from fedast_mpi.clients import ClientPool
from fedast_mpi.records import Request, pack_requests, unpack_requests


class RequestBook:
    """Creates requests on their clients' queues and keeps every live one until retired.

    `due` orders what the clock pump takes next by (finish time, id): every live request in
    the virtual clock, only rejected ones in the real clock (updates arrive by themselves).
    """

    def __init__(self, seed: int, clients: ClientPool, n_tasks: int, real: bool) -> None:
        self.seed = seed
        self.clients = clients
        self.real = real
        self.live: dict[int, Request] = {}
        self.outstanding: list[dict[int, Request]] = [{} for _ in range(n_tasks)]
        self.due: list[tuple[float, int, Request]] = []
        self.next_id = 0
        self.n_dropped = 0

    # -- creation ----------------------------------------------------------------------------
    def new(self, task: int, version: int, client: int, now: float) -> Request:
        """A request of `task` from model `version`, queued on `client` at `now` (not yet sent):
        its finish time comes from the client's queue and delay stream, its seed from its id."""
        start, finish = self.clients.schedule(client, task, now)
        rid = self.next_id
        self.next_id += 1
        return Request(rid, task, client, version, now, finish,
                       seeding.int_seed(self.seed, seeding.REQUEST, rid), start_time=start)

    def drop(self) -> None:
        """A request that was not made: its client was idle and the availability cap reached."""
        self.n_dropped += 1

    def add(self, req: Request) -> None:
        """`req` was sent for training: live and outstanding."""
        self.live[req.id] = req
        self.outstanding[req.task][req.id] = req
        if not self.real:
            heapq.heappush(self.due, (req.finish_time, req.id, req))

    def reject(self, req: Request) -> None:
        """`req` is never trained: live until its finish time, then recorded."""
        req.rejected = True
        self.live[req.id] = req
        heapq.heappush(self.due, (req.finish_time, req.id, req))

    # -- retirement --------------------------------------------------------------------------
    def next_time(self) -> float | None:
        """Finish time of the next request in `due` order (None when there is none)."""
        return self.due[0][0] if self.due else None

    def pop(self) -> Request:
        """Virtual clock: retire the next request in (finish time, id) order."""
        return self._retire(heapq.heappop(self.due)[2])

    def pop_due(self, now: float) -> list[Request]:
        """Real clock: retire the rejected requests whose finish time has come."""
        out = []
        while self.due and self.due[0][0] <= now:
            out.append(self._retire(heapq.heappop(self.due)[2]))
        return out

    def arrived(self, rid: int) -> Request:
        """Real clock: the update of `rid` arrived; retire it."""
        return self._retire(self.live[rid])

    def _retire(self, req: Request) -> Request:
        del self.live[req.id]
        if not req.cancelled:  # a cancelled request's client was released when it was cancelled
            self.outstanding[req.task].pop(req.id, None)
            self.clients.release(req.client)
        return req

    def cancel_task(self, task: int) -> list[Request]:
        """Cancel every outstanding request of `task` (their clients are free again)."""
        reqs = list(self.outstanding[task].values())
        for req in reqs:
            req.cancelled = True
            self.clients.release(req.client)
        self.outstanding[task].clear()
        return reqs

    # -- counts ------------------------------------------------------------------------------
    def n_outstanding(self, task: int) -> int:
        """a_m: requests of `task` sent and still wanted."""
        return len(self.outstanding[task])

    def any_outstanding(self) -> bool:
        return any(self.outstanding)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"requests": pack_requests(list(self.live.values())), "next_id": self.next_id,
                "n_dropped": self.n_dropped}

    def load_state_dict(self, state: dict) -> None:
        self.next_id, self.n_dropped = int(state["next_id"]), int(state["n_dropped"])
        self.live, self.due = {}, []
        self.outstanding = [{} for _ in self.outstanding]
        for req in unpack_requests(state["requests"]):
            self.live[req.id] = req
            if not (req.cancelled or req.rejected):
                self.outstanding[req.task][req.id] = req
            if req.rejected or not self.real:
                self.due.append((req.finish_time, req.id, req))
        heapq.heapify(self.due)
