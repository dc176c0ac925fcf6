"""The rules of FedAST and Sync, one by one, on the real server and policies over fake parts.

No torch, MPI or HDF5 (tests/fake_server.py): each test runs in milliseconds.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fake_server import Harness, config, fake_delta, task
from fedast_mpi import selection
from fedast_mpi.realloc import code_period, paper_period, rescale_buffer


def outstanding_after_each_batch(h: Harness, m: int) -> list[int]:
    seen: list[int] = []
    h.run(after_batch=lambda s: seen.append(s.book.n_outstanding(m)))
    return seen


# ----------------------------------------------------------------------------------- FedAST
def test_every_aggregation_uses_exactly_b_updates_in_finish_time_order():
    h = Harness(config([task("a", requests=6, buffer_size=3)], max_time=80.0))
    assert h.run() == "max_time"
    ev, agg = h.events, h.aggregations
    accepted = ev[ev["accepted"] == 1]
    assert len(agg) == len(accepted) // 3 > 10
    assert np.all(agg["n_updates"] == 3)
    assert np.all(ev["time"] == ev["finish_time"])  # virtual clock: processed at finish time
    order = list(zip(ev["time"], ev["request"]))
    assert order == sorted(order)


def test_staleness_is_the_task_version_when_processed_minus_the_base_version():
    h = Harness(config([task("a", requests=8, buffer_size=2), task("b", requests=5, buffer_size=1)],
                       max_time=60.0))
    h.run()
    version = {0: 0, 1: 0}
    checked = 0
    for kind, row in h.sink.order:
        if kind == "aggregation":
            version[row[0]] += 1
            assert row[1] == version[row[0]]
        elif kind == "event" and row[-1] == 1:
            _, m, _, _, base, ver, stale = row[:7]
            assert ver == version[m] and stale == ver - base >= 0
            checked += 1
    assert checked > 50 and max(r[6] for r in h.sink.events) > 0  # staleness really occurs


def test_static_replacements_keep_R_outstanding_after_every_batch():
    h = Harness(config([task("a", requests=7, buffer_size=2)], max_time=50.0))
    seen = outstanding_after_each_batch(h, 0)
    assert len(seen) > 20 and set(seen) == {7}


def test_availability_cap_drops_requests_to_idle_clients():
    h = Harness(config([task("a", requests=10, buffer_size=2)], clients=40, available=4,
                       max_time=60.0))
    h.run()
    assert h.server.book.n_dropped > 0
    sent = [r for r in h.created if r.dispatch_time > 0]
    busy_at = {}  # a new client is only taken while fewer than 4 are busy
    for r in sent:
        busy = {q.client for q in h.created
                if q.dispatch_time < r.dispatch_time and q.finish_time > r.dispatch_time}
        if r.client not in busy:
            busy_at[r.id] = len(busy)
    assert busy_at and max(busy_at.values()) < 4


def test_completion_cancels_the_task_and_hands_its_budget_over_at_once_static():
    h = Harness(config([task("easy", requests=4, buffer_size=2), task("hard", requests=6,
                                                                       buffer_size=3)]),
                accuracy={0: lambda v: 1.0 if v >= 3 else 0.0})
    seen = outstanding_after_each_batch(h, 1)
    reached = h.server.tasks[0].reached_time
    assert math.isfinite(reached) and h.executor.cancelled == [0]
    ev = h.events
    late = ev[(ev["task"] == 0) & (ev["time"] > reached)]
    assert len(late) and np.all(late["accepted"] == 0)  # cancelled, recorded at finish time
    assert sorted(h.executor.discarded) == sorted(late["request"])
    assert not any(r.task == 0 and r.dispatch_time > reached for r in h.created)
    alloc = h.allocation[h.allocation["time"] == reached]
    assert list(alloc["requests"]) == [0, 10]
    assert alloc["buffer_size"][1] == rescale_buffer(3, 6, 10) == 5
    assert seen[-1] == 10 and max(seen) == 10  # the extra 4 went out in one batch
    jumps = np.diff(seen)
    assert 4 in jumps


def test_dynamic_handover_is_phased_in_at_most_two_per_update():
    h = Harness(config([task("easy", requests=4, buffer_size=2), task("hard", requests=6,
                                                                       buffer_size=3)],
                       allocation="dynamic", max_time=80.0),
                accuracy={0: lambda v: 1.0 if v >= 3 else 0.0})
    per_batch = []
    h.run(after_batch=lambda s: per_batch.append((s.book.n_outstanding(1), s.clock.now)))
    reached = h.server.tasks[0].reached_time
    ev = h.events
    after = [(n, t) for n, t in per_batch if t > reached]
    for (n0, _), (n1, t1) in zip(after, after[1:]):
        updates = np.count_nonzero((ev["task"] == 1) & (ev["time"] == t1) & (ev["accepted"] == 1))
        assert n1 - n0 <= updates  # K <= 2: one replaces the update, one grows the task
    assert after[-1][0] == 10 and after[0][0] < 10


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_realloc_runs_every_period_and_keeps_the_total(variant):
    tasks = [task("a", requests=6, buffer_size=2), task("b", requests=6, buffer_size=2,
                                                         local_lr=0.5)]
    h = Harness(config(tasks, allocation="dynamic", max_time=300.0, clients=60,
                       realloc={"variant": variant, "window": 4}, r_to_b=3))
    h.run()
    period = (paper_period(2, 12, 0.75) if variant == "paper" else code_period(2, 12, 0.75))
    counts, n, rows = [], 0, 0
    for kind, row in h.sink.order:
        if kind == "event" and row[-1] == 1:
            n += 1
        elif kind == "allocation" and not math.isnan(row[4]):
            rows += 1
            if rows % 2 == 0:  # one row per task per Realloc
                counts.append(n)
                n = 0
    assert len(counts) >= 3
    if variant == "paper":
        assert counts == [period] * len(counts)
    else:  # the first waits until every task has more than 8 versions
        assert counts[0] >= period and counts[1:] == [period] * (len(counts) - 1)
    alloc = h.allocation[~np.isnan(h.allocation["sigma2"])]
    assert np.all(alloc["requests"].reshape(-1, 2).sum(axis=1) == 12)


def test_nobuffer_aggregates_every_update_even_under_code_realloc():
    h = Harness(config([task("a", requests=40), task("b", requests=40)],
                       algorithm="fedast-nobuffer", allocation="dynamic",
                       realloc={"variant": "code"}, clients=100, max_time=40.0))
    h.run()
    assert len(h.aggregations) > 100 and np.all(h.aggregations["n_updates"] == 1)
    assert np.all(h.allocation["buffer_size"] == 1)


def test_fedasync_weights_updates_by_staleness():
    h = Harness(config([task("a", requests=5, buffer_size=1)], algorithm="fedasync", max_time=30.0,
                       staleness_exponent=0.5))
    h.run()
    made = {r.id: r for r in h.created}
    model = np.zeros(4, np.float32)
    for rid, stale in zip(h.events["request"], h.events["staleness"]):
        model = model + np.float32((1.0 + stale) ** -0.5) * fake_delta(made[rid])
    assert np.array_equal(model, h.server.tasks[0].model)
    assert h.events["staleness"].max() > 0


# ------------------------------------------------------------------------------------- Sync
def rounds(h: Harness, m: int) -> dict[float, list]:
    """Task m's requests by round (a round's requests share their dispatch time)."""
    out: dict[float, list] = {}
    for r in h.created:
        if r.task == m:
            out.setdefault(r.dispatch_time, []).append(r)
    return out


def test_sync_keeps_the_first_k_of_each_round_and_rejects_the_rest():
    h = Harness(config([task("a"), task("b")], algorithm="sync", clients=40, available=20,
                       first_k=3, max_time=100.0))
    h.run()
    ev = h.events
    accepted = set(ev["request"][ev["accepted"] == 1])
    sent = {r.id for r in h.executor.submitted} | h.server.executor.parked  # parked: past max_time
    checked = 0
    for m in (0, 1):
        for reqs in rounds(h, m).values():
            first = sorted(reqs, key=lambda r: (r.finish_time, r.id))[:3]
            assert {r.id for r in first} == {r.id for r in reqs if r.id in sent}
            for r in reqs:
                if r.id not in sent:
                    assert r.rejected and r.worker == -1
            done = [r for r in reqs if r.id in accepted]
            if done:
                checked += 1
                assert {r.id for r in done} == {r.id for r in first}
    aggs = h.aggregations
    assert checked > 10 and np.all(aggs["n_updates"] == 3)
    rejected = ev[np.isin(ev["request"], [r.id for r in h.created if r.rejected])]
    assert len(rejected) and np.all(rejected["accepted"] == 0) and np.all(rejected["worker"] == -1)


def test_rejected_jobs_keep_their_client_busy():
    h = Harness(config([task("a")], algorithm="sync", clients=12, available=12, first_k=2,
                       max_time=120.0))
    h.run()
    waited = 0
    by_client: dict[int, list] = {}
    for r in sorted(h.created, key=lambda r: r.id):
        prev = by_client.setdefault(r.client, [])
        if prev:
            assert r.start_time == max(r.dispatch_time, prev[-1].finish_time)  # FIFO
            waited += prev[-1].rejected and prev[-1].finish_time > r.dispatch_time
        prev.append(r)
    assert waited > 0  # some request queued behind a job that was never trained


def test_ucb_round_zero_trains_every_client_on_every_task():
    h = Harness(config([task("a"), task("b")], algorithm="sync-ucb", clients=15, available=6,
                       first_k=2, max_time=200.0))
    h.run()
    for m in (0, 1):
        by_round = rounds(h, m)
        zero = by_round[0.0]
        assert sorted(r.client for r in zero) == list(range(15))
        assert not any(r.rejected for r in zero)  # round 0 waits for all
        later = [reqs for t, reqs in by_round.items() if t > 0]
        assert later and all(len(reqs) == 3 for reqs in later)  # then the shares of 6


def test_bayes_picks_the_candidate_with_the_highest_expected_improvement(monkeypatch):
    seen = []
    predict = selection.GaussianProcess.predict
    ei = selection.expected_improvement

    def spy_predict(self, x):
        seen.append({"x": np.array(x)})
        return predict(self, x)

    def spy_ei(mean, std, best):
        out = ei(mean, std, best)
        seen[-1]["ei"] = out
        return out

    monkeypatch.setattr(selection.GaussianProcess, "predict", spy_predict)
    monkeypatch.setattr(selection, "expected_improvement", spy_ei)
    h = Harness(config([task("a"), task("b")], algorithm="sync-bayes", clients=20, available=8,
                       first_k=2, bayes_candidates=7, max_time=100.0))
    h.run()
    policy = h.server.policy
    assert len(seen) >= 5 and all(len(s["x"]) == len(s["ei"]) == 7 for s in seen)
    starts = sorted({r.dispatch_time for r in h.created})[1:]  # rounds chosen by the GP
    for s, start in zip(seen, starts):
        chosen = [np.array(sorted(r.client for r in h.created
                                  if r.task == m and r.dispatch_time == start)) for m in (0, 1)]
        x = policy.bayes.encode(chosen)
        assert np.array_equal(x, s["x"][int(np.argmax(s["ei"]))])
    assert len(policy.bayes.ys) == policy.round  # one observation per finished round


def test_the_rules_need_no_torch_mpi_or_hdf5():
    code = ("import sys; sys.path.insert(0, 'tests'); import fake_server, test_rules; "
            "import fedast_mpi.algorithms.fedast, fedast_mpi.algorithms.sync; "
            "bad = [m for m in ('torch', 'mpi4py', 'h5py') if m in sys.modules]; "
            "assert not bad, bad")
    root = Path(__file__).parent.parent
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
