"""Each baseline follows its rules, read back from the run file (PAPER.md §4, SPEC §4)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from fedast_mpi import seeding
from fedast_mpi.runner import TaskRunner
from inprocess import digits_task, make_config, run_and_read

TWO_TASKS = [digits_task("a", requests=10, buffer_size=2),
             digits_task("b", requests=20, buffer_size=2, delay={"shift": 2.0, "exp_mean": 3.0,
                                                                  "local_multi": 1.0})]


def rounds(events, task):
    """Events of one task grouped by round (= base_version in a synchronous run)."""
    e = events[events["task"] == task]
    return {int(v): e[e["base_version"] == v] for v in np.unique(e["base_version"])}


def allocation(path):
    with h5py.File(path / "run.h5", "r") as f:
        return f["allocation"][()]


@pytest.mark.parametrize("name", ["sync", "sync-bayes"])
def test_sync_rounds_keep_the_first_k(tmp_path, name):
    k, available = 4, 24
    cfg = make_config(TWO_TASKS, clients=60, available=available, max_time=60.0, name=name,
                      first_k=k)
    events, aggs, _, _ = run_and_read(cfg, tmp_path)
    assert len(aggs) >= 2 * 5
    for m in (0, 1):
        by_round = rounds(events, m)
        complete = [v for v in by_round if v < max(by_round)]  # the last round may be cut off
        assert len(complete) >= 5
        for v in complete:
            e = by_round[v]
            kept, dropped = e[e["accepted"] == 1], e[e["accepted"] == 0]
            assert len(kept) == min(k, len(e))
            assert np.all(kept["staleness"] == 0)  # everyone trained the same global model
            if len(dropped):  # first-k by finish time, ties by request id
                assert kept["finish_time"].max() <= dropped["finish_time"].min()
                assert np.all(np.isnan(dropped["train_loss"]))  # never trained
            row = aggs[(aggs["task"] == m) & (aggs["version"] == v + 1)]
            assert len(row) == 1 and row["n_updates"][0] == min(k, len(e))
    # one global round: both tasks dispatch together and split the available clients disjointly
    for v in range(5):
        ea = events[(events["base_version"] == v)]
        assert len(np.unique(ea["dispatch_time"])) == 1
        assert len(ea) == available
        assert len(np.unique(ea["client"])) == available
    # weights 10:20 -> shares about 8:16 (leftovers random)
    r0 = events[events["base_version"] == 0]
    assert abs(np.count_nonzero(r0["task"] == 1) - 16) <= 2


def test_sync_without_first_k_waits_for_everyone(tmp_path):
    cfg = make_config(TWO_TASKS, clients=60, available=24, max_time=40.0, name="sync",
                      first_k=None)
    events, aggs, _, _ = run_and_read(cfg, tmp_path)
    done = events[events["base_version"] < events["base_version"].max()]
    assert np.all(done["accepted"] == 1)
    for row in aggs[aggs["task"] == 0]:
        e = events[(events["task"] == 0) & (events["base_version"] == row["version"] - 1)]
        assert row["n_updates"] == len(e)


def test_rejected_jobs_keep_their_client_busy(tmp_path):
    cfg = make_config(TWO_TASKS, clients=30, available=24, max_time=60.0, name="sync", first_k=2)
    events, _, _, _ = run_and_read(cfg, tmp_path)
    ev = events[np.argsort(events["request"])]
    queued = 0
    for c in np.unique(ev["client"]):
        e = ev[ev["client"] == c]
        for prev, cur in zip(e[:-1], e[1:]):
            assert cur["finish_time"] > prev["finish_time"]  # FIFO, rejected ones included
            if prev["accepted"] == 0 and cur["dispatch_time"] < prev["finish_time"]:
                queued += 1  # a later round's job waited for a rejected one
    assert queued > 0


def test_sync_ucb_round_zero_trains_every_client_on_every_task(tmp_path):
    n = 20
    cfg = make_config(TWO_TASKS, clients=n, available=10, max_time=80.0, name="sync-ucb",
                      first_k=3)
    events, aggs, _, _ = run_and_read(cfg, tmp_path)
    for m in (0, 1):
        r0 = rounds(events, m)[0]
        assert sorted(r0["client"].tolist()) == list(range(n))
        assert np.all(r0["accepted"] == 1)  # no first-k in round 0
        assert aggs[(aggs["task"] == m) & (aggs["version"] == 1)]["n_updates"][0] == n
        r1 = rounds(events, m)[1]
        assert np.count_nonzero(r1["accepted"]) == 3
    # from round 1 on, the available clients are split between the tasks
    assert len(events[events["base_version"] == 1]) == 10


def test_fedbuff_is_fedast_with_one_task(tmp_path):
    task = [digits_task(requests=6, buffer_size=3)]
    ev1, _, fin1, _ = run_and_read(make_config(task, name="fedast"), tmp_path / "fedast")
    ev2, _, fin2, _ = run_and_read(make_config(task, name="fedbuff"), tmp_path / "fedbuff")
    # every column but wall
    for col in ("request", "client", "base_version", "version", "finish_time", "train_loss"):
        assert np.array_equal(ev1[col], ev2[col])
    assert fin1["digits"].tobytes() == fin2["digits"].tobytes()


def test_fedasync_weights_updates_by_staleness(tmp_path):
    task = [digits_task(requests=6, buffer_size=1, global_lr=0.8)]
    cfg = make_config(task, name="fedasync", staleness_exponent=0.5, max_time=30.0)
    events, _, finals, _ = run_and_read(cfg, tmp_path)
    runner = TaskRunner(cfg)
    versions = [runner.initial_model(0)]
    for ev in events[events["accepted"] == 1]:
        delta, _, _ = runner.train(0, int(ev["client"]), versions[int(ev["base_version"])],
                                   seeding.int_seed(cfg.run.seed, seeding.REQUEST,
                                                    int(ev["request"])))
        s = int(ev["staleness"])
        versions.append(versions[-1] + np.float32(0.8) * (np.float32((1 + s) ** -0.5) * delta))
    assert events["staleness"].max() >= 2
    np.testing.assert_allclose(finals["digits"], versions[-1], rtol=1e-5, atol=1e-6)
    unweighted = make_config(task, name="fedast", max_time=30.0)
    _, _, plain, _ = run_and_read(unweighted, tmp_path / "plain")
    assert not np.allclose(plain["digits"], finals["digits"])


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_dynamic_allocation_favours_the_heterogeneous_task(tmp_path, variant):
    common_task = dict(requests=20, buffer_size=2, local_steps=10, global_lr=1.0)
    tasks = [digits_task("iid", partition={"kind": "iid", "samples_per_client": 40}, **common_task),
             digits_task("skewed", partition={"kind": "dirichlet", "alpha": 0.05,
                                              "samples_per_client": 40}, **common_task)]
    common = dict(clients=100, max_time=150.0, r_to_b=10)
    dyn = make_config(tasks, allocation="dynamic", realloc={"variant": variant, "window": 8},
                      **common)
    run_and_read(dyn, tmp_path / "dynamic")
    run_and_read(make_config(tasks, **common), tmp_path / "static")
    a_dyn, a_static = allocation(tmp_path / "dynamic"), allocation(tmp_path / "static")
    assert np.all(a_static["requests"] == 20)  # static never moves
    later = a_dyn[a_dyn["time"] > 0]
    assert len(np.unique(later["time"])) >= 3, "Realloc ran fewer than 3 times"
    assert np.all(np.isfinite(later["sigma2"]))
    for t in np.unique(later["time"]):
        rows = later[later["time"] == t]
        assert rows["requests"].sum() == 40  # never loses or invents a request
    skewed, iid = later[later["task"] == 1], later[later["task"] == 0]
    assert np.mean(skewed["sigma2"]) > np.mean(iid["sigma2"])
    assert np.mean(skewed["requests"]) > 20 > np.mean(iid["requests"])
    if variant == "paper":  # R/b stays at its initial 10
        assert np.all(np.abs(later["requests"] / later["buffer_size"] - 10) <= 5)
