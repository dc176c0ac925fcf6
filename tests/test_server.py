"""Server behaviour on small in-process runs: availability cap, stops, completion, nobuffer."""

from __future__ import annotations

import h5py
import numpy as np

from inprocess import digits_task, make_config, run_and_read


def busy_clients_before(events, t, end):
    """Distinct clients with a request dispatched before t and not yet processed at t."""
    live = (events["dispatch_time"] < t) & (end > t)
    return set(events["client"][live].tolist())


def test_availability_cap_limits_distinct_busy_clients(tmp_path):
    cap = 3
    cfg = make_config([digits_task(requests=6, buffer_size=2)], clients=40, max_time=60.0,
                      available=cap)
    events, _, _, attrs = run_and_read(cfg, tmp_path)
    assert attrs["requests_dropped"] > 0  # the cap really bit
    end = events["time"]
    later = events[events["dispatch_time"] > 0]
    assert len(later) > 20
    for ev in later:
        busy = busy_clients_before(events, ev["dispatch_time"], end)
        if ev["client"] not in busy:  # a new client may only join below the cap
            assert len(busy) < cap, (ev["request"], sorted(busy))


def test_max_time_stops_the_run(tmp_path):
    cfg = make_config([digits_task()], max_time=25.0)
    events, _, _, attrs = run_and_read(cfg, tmp_path)
    assert attrs["stop_reason"] == "max_time" and attrs["status"] == "completed"
    assert attrs["final_time"] == 25.0
    assert events["time"].max() <= 25.0


def test_completion_cancels_requests_and_hands_over(tmp_path):
    easy = digits_task("easy", target_accuracy=0.5, eval_every=1, requests=6, buffer_size=2,
                       local_steps=10)
    hard = digits_task("hard", requests=6, buffer_size=2, target_accuracy=1.0)
    cfg = make_config([easy, hard], max_time=200.0)
    events, aggs, _, attrs = run_and_read(cfg, tmp_path)
    with h5py.File(tmp_path / "run.h5", "r") as f:
        reached = f["tasks/easy"].attrs["reached_time"]
        alloc = f["allocation"][()]
    assert np.isfinite(reached)
    easy_ev = events[events["task"] == 0]
    cancelled = easy_ev[easy_ev["accepted"] == 0]
    assert len(cancelled) > 0  # in flight when the target was reached
    assert np.all(cancelled["dispatch_time"] <= reached) and np.all(cancelled["time"] >= reached)
    assert np.all(np.isnan(cancelled["train_loss"]))
    assert not np.any((easy_ev["accepted"] == 1) & (easy_ev["time"] > reached))
    # every new request after completion goes to the other task, whose budget doubled
    assert np.all(events[events["dispatch_time"] > reached]["task"] == 1)
    after = alloc[alloc["time"] == reached]
    assert after[after["task"] == 0]["requests"][0] == 0
    assert after[after["task"] == 1]["requests"][0] == 12
    assert after[after["task"] == 1]["buffer_size"][0] == 4  # R/b ratio kept
    hard_aggs = aggs[(aggs["task"] == 1) & (aggs["time"] > reached)]
    assert len(hard_aggs) and np.all(hard_aggs["n_updates"] == 4)


def test_nobuffer_aggregates_every_update(tmp_path):
    cfg = make_config([digits_task(requests=5, buffer_size=3)], max_time=30.0,
                      name="fedast-nobuffer")  # resolution forces b = 1
    assert cfg.tasks[0].buffer_size == 1
    events, aggs, _, _ = run_and_read(cfg, tmp_path)
    assert len(aggs) == np.count_nonzero(events["accepted"]) > 10
    assert np.all(aggs["n_updates"] == 1)
