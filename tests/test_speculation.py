"""Speculation (fedast_mpi.speculation): evaluations that come late decide exactly what waiting
for them decides, rollbacks included. On the real server and policies over fake parts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fake_server import Harness, config, task
from fedast_mpi import schema, speculation


def _bytes(rows: list, dtype: np.dtype, wall: str = "wall") -> bytes:
    table = np.array(rows, dtype=dtype)
    table[wall] = 0.0  # wall-clock columns differ between any two runs
    return table.tobytes()  # (bytes: NaN equals NaN)


def rows(h: Harness) -> dict:
    """Every row the run wrote (wall-clock columns zeroed), and the final models."""
    s = h.sink
    return {"events": _bytes(s.events, schema.EVENT_DTYPE),
            "aggregations": _bytes(s.aggregations, schema.AGGREGATION_DTYPE),
            "allocation": np.array(s.allocations, dtype=schema.ALLOCATION_DTYPE).tobytes(),
            "evals": {m: _bytes(e, schema.EVAL_DTYPE) for m, e in s.evals.items()},
            "reached": dict(s.reached),
            "models": {i: t.model.tobytes() for i, t in enumerate(h.server.tasks)}}


CASES = {
    "fedast-static": (dict(), [task("a", eval_every=1), task("b", requests=6, buffer_size=3)]),
    "fedast-dynamic": (dict(allocation="dynamic", realloc={"window": 3}),
                       [task("a", eval_every=1), task("b", requests=6, buffer_size=3)]),
    "sync": (dict(algorithm="sync", first_k=2, available=10), [task("a"), task("b")]),
    "sync-ucb": (dict(algorithm="sync-ucb", first_k=2, available=10), [task("a"), task("b")]),
}


ACCURACY = {0: lambda v: 0.95 if v >= 6 else 0.1 * (v % 5),  # reaches at version 6
            1: lambda v: 0.95 if v >= 9 else 0.0}


def standing(h: Harness) -> list[int]:
    """The ids of the requests sent and not retracted (taken back at a rollback), in order."""
    gone = {id(r) for r in h.executor.retracted}
    return [r.id for r in h.executor.submitted if id(r) not in gone]


def waiting_and_late(case: str, delay: int) -> tuple[Harness, Harness]:
    """A case run twice: evaluations known at once, and `delay` polls late (speculation)."""
    algo, tasks = CASES[case]
    accuracy = ACCURACY
    kw = dict(max_time=120.0, clients=40, **algo)
    wait = Harness(config(tasks, **kw), accuracy)
    wait.run()
    late = Harness(config(tasks, **kw), accuracy, eval_delay=delay)
    late.run()
    return wait, late


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("delay", [1, 3, 12])
def test_late_evaluations_decide_what_waiting_decides(case, delay):
    wait, late = waiting_and_late(case, delay)
    spec = late.server.speculation
    assert spec is not None and spec.snapshots >= 1
    assert wait.server.tasks.all_finished()  # both completions happened...
    assert spec.rollbacks >= 1  # ...and the late run had speculated past at least one
    assert rows(late) == rows(wait)
    assert standing(late) == standing(wait) == [r.id for r in wait.executor.submitted]
    assert spec.sent_ahead > 0  # requests went out before their confirmation...
    if delay == 12:  # ...and at a rollback some were still unconfirmed: taken back
        assert spec.retracted > 0 and len(late.executor.retracted) == spec.retracted
    # cancelled requests are dropped by the executor, unless their update came already (taken
    # in a timeline that was rolled back)
    late_d, wait_d = set(late.executor.discarded), set(wait.executor.discarded)
    assert late_d <= wait_d
    assert not (wait_d - late_d) & set(late.executor.pending)


def test_held_effects_leave_in_order_once_confirmed(monkeypatch):
    monkeypatch.setattr(speculation, "SNAPSHOT_UPDATES", 25)  # many snapshots too
    h = Harness(config([task("a", eval_every=1)], max_time=150.0, clients=40),
                {0: lambda v: 0.0}, eval_delay=5)
    h.run()
    spec = h.server.speculation
    assert spec.rollbacks == 0 and spec.snapshots > 3 and not spec.held and not spec.pending()
    ev = np.array([r[9] for r in h.sink.events])
    assert np.all(np.diff(ev) >= 0)  # rows came out in processing order
    evals = h.sink.evals[0]
    assert [r[2] for r in evals] == list(range(len(evals)))  # every version, in order
    assert all(r[4] == 0.0 for r in evals)  # late results filled into their held rows
    assert not h.chunks.results  # every evaluation collected


def test_too_many_unconfirmed_evaluations_make_rank_0_wait(monkeypatch):
    monkeypatch.setattr(speculation, "MAX_PENDING", 2)
    h = Harness(config([task("a", eval_every=1, buffer_size=1)], max_time=60.0, clients=40),
                {0: lambda v: 0.0}, eval_delay=50)
    h.run()
    spec = h.server.speculation
    assert spec.waits > 0


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("delay", [3, 12])
def test_snapshots_during_a_replay_keep_what_it_still_needs(case, delay, monkeypatch):
    """A snapshot may come due while a rollback's replay still has logged updates to consume
    (and effects already sent to skip): the replay must neither wait for an update it took in
    the abandoned timeline (rank 0 waited for it forever: fedast-nobuffer in compare, seed 2)
    nor send again what went out. Snapshots every 3 updates make that the common case."""
    monkeypatch.setattr(speculation, "SNAPSHOT_UPDATES", 3)
    wait, late = waiting_and_late(case, delay)
    spec = late.server.speculation
    assert spec.rollbacks >= 1 and spec.snapshots > 3
    assert rows(late) == rows(wait)
    assert standing(late) == standing(wait) == [r.id for r in wait.executor.submitted]


@pytest.mark.parametrize("case", ["fedast-dynamic", "sync"])
def test_a_snapshot_taken_while_evaluations_were_out_is_the_state_waiting_had(case, monkeypatch):
    """Sending ahead, rank 0 is rarely at a confirmed state: snapshots are taken as candidates
    and promoted once what came before them is confirmed. A promoted snapshot must be the state
    the waiting run had at the same point (accuracies filled in with the late results)."""
    monkeypatch.setattr(speculation, "SNAPSHOT_UPDATES", 3)
    algo, tasks = CASES[case]
    accuracy = ACCURACY
    kw = dict(max_time=120.0, clients=40, **algo)
    states: dict[int, list] = {}

    def record(server):
        states.setdefault(server.tasks.n_processed, [t.state_dict() for t in server.tasks])

    wait = Harness(config(tasks, **kw), accuracy)
    wait.run(after_batch=record)
    late = Harness(config(tasks, **kw), accuracy, eval_delay=6)
    seen: list[dict] = []

    def snap(server):
        spec = server.speculation
        if spec.snapshot is not None and (not seen or seen[-1] is not spec.snapshot):
            seen.append(spec.snapshot)

    late.run(after_batch=snap)
    promoted = late.server.speculation.snapshots
    assert promoted > 3 and len(seen) > 3
    for state in seen[1:]:  # (the first: the start, before any batch)
        want = states[int(state["n_processed"])]
        for got, exp in zip(state["tasks"], want):
            assert got["accuracy"] == exp["accuracy"] or (math.isnan(got["accuracy"])
                                                          and math.isnan(exp["accuracy"]))
            assert got["version"] == exp["version"]
