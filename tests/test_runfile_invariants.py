"""Invariants of a real MPI run, read back from its run file (SPEC §8, PAPER.md §1)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.launch


@pytest.fixture(scope="module")
def run(default_runs):
    out, _ = default_runs[4]
    with h5py.File(out / "run.h5", "r") as f:
        data = {
            "events": f["events"][()],
            "aggregations": f["aggregations"][()],
            "allocation": f["allocation"][()],
            "tier_mult": f["clients/multiplier"][()],
            "config": yaml.safe_load(f.attrs["config"]),
            "tasks": {g.attrs["index"]: dict(g.attrs) for g in f["tasks"].values()},
        }
    return data


def buffer_size_at(alloc, task, time):
    rows = alloc[(alloc["task"] == task) & (alloc["time"] <= time)]
    return int(rows["buffer_size"][-1])


def test_every_aggregation_used_exactly_b_accepted_updates(run):
    ev, agg, alloc = run["events"], run["aggregations"], run["allocation"]
    acc = ev[ev["accepted"] == 1]
    assert len(agg) > 0
    for row in agg:
        m, v = int(row["task"]), int(row["version"])
        used = np.count_nonzero((acc["task"] == m) & (acc["version"] == v - 1))
        assert used == row["n_updates"], (m, v)
        assert row["n_updates"] == buffer_size_at(alloc, m, row["time"]), (m, v)


def test_staleness_is_version_minus_base(run):
    ev = run["events"]
    assert np.array_equal(ev["staleness"], ev["version"] - ev["base_version"])
    assert np.all(ev["staleness"] >= 0)
    assert ev["staleness"].max() > 0  # asynchrony is real
    agg = run["aggregations"]
    assert np.all(agg["max_staleness"] >= agg["mean_staleness"])


def test_outstanding_requests_never_exceed_target(run):
    ev, alloc = run["events"], run["allocation"]
    for m, attrs in run["tasks"].items():
        e = ev[ev["task"] == m]
        # cancelled: at completion
        end = np.where(e["accepted"] == 1, e["time"], attrs["reached_time"])
        r_max = alloc[alloc["task"] == m]["requests"]
        for t in np.unique(e["dispatch_time"]):
            live = np.count_nonzero((e["dispatch_time"] <= t) & (end > t))
            limit = alloc[(alloc["task"] == m) & (alloc["time"] <= t)]["requests"][-1]
            assert live <= limit <= r_max.max(), (m, t, live, limit)


def test_clients_are_fifo_and_durations_respect_the_shift(run):
    ev = run["events"]
    cfg = run["config"]
    mult = run["tier_mult"]
    ev = ev[np.argsort(ev["request"], kind="stable")]
    for m, task in enumerate(cfg["tasks"]):
        d = task["delay"]
        e = ev[ev["task"] == m]
        min_duration = d["local_multi"] * d["shift"] * mult[e["client"]]
        assert np.all(e["finish_time"] - e["dispatch_time"] >= min_duration * (1 - 1e-6))
    # per client, in dispatch order: each request starts when the previous one finished
    for c in np.unique(ev["client"]):
        e = ev[ev["client"] == c]
        prev_finish = -np.inf
        for row in e:
            start = max(row["dispatch_time"], prev_finish)
            task = cfg["tasks"][row["task"]]["delay"]
            shortest = task["local_multi"] * task["shift"] * mult[c]
            assert row["finish_time"] - start >= shortest * (1 - 1e-6), (c, row["request"])
            prev_finish = row["finish_time"]


def test_virtual_clock_processes_in_finish_time_order(run):
    ev = run["events"]
    assert np.array_equal(ev["time"], ev["finish_time"])
    key = np.lexsort((ev["request"], ev["finish_time"]))
    assert np.array_equal(key, np.arange(len(ev)))


def test_completed_tasks_handed_over_their_budget(run):
    alloc = run["allocation"]
    total = alloc[alloc["time"] == 0]["requests"].sum()
    last = max(a["reached_time"] for a in run["tasks"].values())
    handovers = [t for t in np.unique(alloc["time"]) if 0 < t < last]
    assert handovers, "no task finished before the last one: nothing was handed over"
    for t in handovers:
        rows = alloc[alloc["time"] == t]
        assert len(rows) == len(run["tasks"])
        assert rows["requests"].sum() == total  # never loses or invents a request
        for m, a in run["tasks"].items():
            r = rows[rows["task"] == m][0]
            if a["reached_time"] <= t:
                assert r["requests"] == 0
    final = alloc[alloc["time"] == last]
    assert final["requests"].sum() == 0  # every task done: nothing left to allocate
