"""Equivalence tests: the server's update sequence against independent numpy replays.

Each test runs a small job in-process (world size 1, virtual clock), reads the run
file, and recomputes the model sequence the algorithm (PAPER.md §1) prescribes from
the logged (request, client, base_version) triples, training each request with
`TaskRunner.train` and applying the server step with a few lines of numpy written
here, not with `fedast_mpi.aggregation`.

1. FedAsync-style: one task, buffer_size 1, random delays -> x <- x + η_s δ(x_stale).
2. FedAvg: buffer = all outstanding requests, equal delays -> synchronous rounds
   x_{r+1} = x_r + mean_i δ_i(x_r); plus a negative control (buffer_size 2) that must
   not match the FedAvg replay.
3. Two tasks, static allocation, shared clients: each task's models are its own
   single-task replay over its own events, and every finish time is recomputed from
   the per-(client, task) delay streams and the shared FIFO client queues.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

MPI = pytest.importorskip("mpi4py.MPI")

from fedast_mpi import seeding  # noqa: E402
from fedast_mpi.runner import TaskRunner  # noqa: E402
from fedast_mpi.schema import RUN_FILE  # noqa: E402

from inprocess import (EQUAL_DELAY, EQUAL_TIERS, digits_task,  # noqa: E402
                       make_config, run_and_read)


def request_seed(cfg, rid):
    return seeding.int_seed(cfg.run.seed, seeding.REQUEST, int(rid))


def train(runner, cfg, task, ev, model):
    """The delta of logged event `ev` trained from `model` (the request's own seed)."""
    delta, _, _ = runner.train(task, int(ev["client"]), model, request_seed(cfg, ev["request"]))
    return np.asarray(delta, dtype=np.float32)


def replay_async(cfg, events, task=0):
    """FedAsync/b=1 replay: every accepted update x <- x + η_s δ(x_{base}); all versions."""
    runner = TaskRunner(cfg)
    lr = np.float32(cfg.tasks[task].global_lr)
    versions = [runner.initial_model(task).astype(np.float32)]
    counters = []
    for ev in events:
        if ev["task"] != task or not ev["accepted"]:
            continue
        counters.append(len(versions) - 1)
        delta = train(runner, cfg, task, ev, versions[int(ev["base_version"])])
        versions.append(versions[-1] + lr * delta)
    return versions, np.array(counters, dtype=np.int64)


def replay_buffered(cfg, events, task=0):
    """General static FedAST replay: buffer deltas δ(x_base); when b are buffered,
    x <- x + η_s · mean(buffer) (applied to the current model). Returns the final model."""
    runner = TaskRunner(cfg)
    b = cfg.tasks[task].buffer_size
    lr = np.float64(cfg.tasks[task].global_lr)
    versions = [runner.initial_model(task).astype(np.float32)]
    buffer = []
    for ev in events:
        if ev["task"] != task or not ev["accepted"]:
            continue
        buffer.append(train(runner, cfg, task, ev, versions[int(ev["base_version"])]))
        if len(buffer) == b:
            step = lr * np.mean(np.stack(buffer).astype(np.float64), axis=0)
            versions.append((versions[-1].astype(np.float64) + step).astype(np.float32))
            buffer = []
    return versions


def fedavg_rounds(events):
    """Accepted events grouped by finish time (the rounds of a synchronous run), in order."""
    ev = events[events["accepted"] == 1]
    times = np.unique(ev["finish_time"])
    return [ev[ev["finish_time"] == t] for t in times]


def replay_fedavg(cfg, rounds, task=0):
    """x_{r+1} = x_r + η_s · mean_i δ_i(x_r), every client of round r trained from x_r."""
    runner = TaskRunner(cfg)
    lr = np.float64(cfg.tasks[task].global_lr)
    x = runner.initial_model(task).astype(np.float32)
    for group in rounds:
        deltas = [train(runner, cfg, task, ev, x) for ev in group]
        x = (x.astype(np.float64) + lr * np.mean(np.stack(deltas).astype(np.float64), axis=0))
        x = x.astype(np.float32)
    return x


def report_bitwise(label, a, b):
    """Print (visible with -s / in the captured output on failure) whether a == b bitwise."""
    same = a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) \
        if a.shape == b.shape else np.inf
    print(f"[equivalence] {label}: bitwise_equal={same} max_abs_diff={diff:.3g}")
    return same


# --------------------------------------------------------------------------- 1. FedAsync


@pytest.fixture(scope="module")
def async_run(tmp_path_factory):
    cfg = make_config([digits_task()], clients=50, max_time=40.0)
    events, aggs, finals, attrs = run_and_read(cfg, tmp_path_factory.mktemp("async"))
    return cfg, events, aggs, finals, attrs


def test_fedasync_sequence_matches_replay(async_run):
    cfg, events, aggs, finals, attrs = async_run
    acc = events[events["accepted"] == 1]
    assert len(acc) == len(events), "no task finishes, so nothing is cancelled"
    assert len(acc) >= 20, "the run should process a fair number of updates"
    # processing order = (finish_time, request) order of the virtual clock
    keys = list(zip(acc["finish_time"], acc["request"]))
    assert keys == sorted(keys)
    assert np.all(acc["time"] == acc["finish_time"])

    versions, counters = replay_async(cfg, events)
    # b = 1: every update is one aggregation, so one version per update
    assert len(versions) - 1 == len(acc) == len(aggs)
    np.testing.assert_array_equal(acc["version"], counters)
    np.testing.assert_array_equal(aggs["version"], np.arange(1, len(acc) + 1))
    np.testing.assert_array_equal(acc["staleness"], acc["version"] - acc["base_version"])
    assert np.all(acc["staleness"] >= 0)
    assert np.any(acc["staleness"] > 0), "the test must exercise stale updates"
    assert np.max(acc["staleness"]) >= 2
    np.testing.assert_array_equal(aggs["max_staleness"], acc["staleness"])
    # a request's base version is the version current at its dispatch
    # (b = 1: that is the number of updates processed at or before the dispatch time)
    for ev in acc:
        assert ev["base_version"] == np.count_nonzero(acc["time"] <= ev["dispatch_time"])

    final = finals[cfg.tasks[0].name]
    assert final.dtype == np.float32
    np.testing.assert_allclose(final, versions[-1], rtol=1e-6, atol=1e-7)
    report_bitwise("fedasync final_model vs replay", final, versions[-1])
    # the stale base matters: replaying every update from the *current* model differs
    runner = TaskRunner(cfg)
    x = runner.initial_model(0)
    for ev in acc:
        x = x + np.float32(cfg.tasks[0].global_lr) * train(runner, cfg, 0, ev, x)
    assert not np.allclose(final, x, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- 2. FedAvg


def fedavg_config(buffer_size):
    task = digits_task(requests=5, buffer_size=buffer_size, global_lr=1.0,
                       delay=dict(EQUAL_DELAY))
    return make_config([task], clients=2000, max_time=3.5, tiers=EQUAL_TIERS)


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory):
    cfg = fedavg_config(5)
    return (cfg, *run_and_read(cfg, tmp_path_factory.mktemp("fedavg")))


def test_fedavg_rounds_structure(fedavg_run):
    cfg, events, aggs, finals, attrs = fedavg_run
    assert len(events) == 15 and np.all(events["accepted"] == 1)
    rounds = fedavg_rounds(events)
    assert len(rounds) == 3
    for r, group in enumerate(rounds):
        assert len(group) == 5
        # precondition: no two requests of one round share a client (else they queue)
        assert len(np.unique(group["client"])) == 5, "client collision: pick another seed"
        assert np.all(group["finish_time"] == float(r + 1))
        assert np.all(group["dispatch_time"] == float(r))
        assert np.all(group["base_version"] == r), "every client trains the same global model"
        assert np.all(group["version"] == r)
        assert np.all(group["staleness"] == 0)
    # events in processing order: round by round, request ids increasing within a round
    np.testing.assert_array_equal(events["request"], np.arange(15))
    assert len(aggs) == 3
    np.testing.assert_array_equal(aggs["version"], [1, 2, 3])
    np.testing.assert_array_equal(aggs["n_updates"], [5, 5, 5])
    np.testing.assert_array_equal(aggs["max_staleness"], [0, 0, 0])
    np.testing.assert_array_equal(aggs["mean_staleness"], [0, 0, 0])
    np.testing.assert_array_equal(aggs["time"], [1.0, 2.0, 3.0])


def test_fedavg_matches_numpy_replay(fedavg_run):
    cfg, events, aggs, finals, attrs = fedavg_run
    rounds = fedavg_rounds(events)
    assert [len(g) for g in rounds] == [5, 5, 5]
    x = replay_fedavg(cfg, rounds)
    final = finals[cfg.tasks[0].name]
    np.testing.assert_allclose(final, x, rtol=1e-5, atol=1e-6)
    report_bitwise("fedavg final_model vs float64 numpy replay", final, x)
    x0 = TaskRunner(cfg).initial_model(0)
    assert not np.allclose(final, x0, rtol=1e-5, atol=1e-6), "the model must have moved"


def test_fedavg_negative_control_buffer_2(tmp_path):
    """buffer_size 2 of 5 outstanding is not FedAvg: its final model must not match."""
    cfg = fedavg_config(2)
    events, aggs, finals, attrs = run_and_read(cfg, tmp_path)
    final = finals[cfg.tasks[0].name]
    # replay FedAvg over the same logged requests (grouped by finish time)
    rounds = fedavg_rounds(events)
    x = replay_fedavg(cfg, rounds)
    assert not np.allclose(final, x, rtol=1e-5, atol=1e-6)
    # the run is not simply broken: stale updates occur, and the general buffered
    # replay (b = 2, mean of the buffer, stale bases) reproduces it
    assert np.all(aggs["n_updates"] == 2)
    assert np.any(events["staleness"] > 0)
    versions = replay_buffered(cfg, events)
    assert len(versions) - 1 == len(aggs)
    np.testing.assert_allclose(final, versions[-1], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- 3. two tasks


def replay_clock(cfg, events, multiplier):
    """Finish time of every logged request, recomputed from its dispatch time and client.

    FIFO per client: start = max(dispatch, busy_until), finish = start + local_multi ×
    tier multiplier × (shift + Exp(exp_mean)), one draw per request from the (client, task)
    delay stream, in dispatch (= request id) order. Requests still outstanding at max_time
    are not logged; any later request of the same client would finish even later, so the
    logged ones are enough. Returns (finish times in event order, number of queued requests).
    """
    order = np.argsort(events["request"], kind="stable")
    busy: dict[int, float] = {}
    streams: dict[tuple[int, int], np.random.Generator] = {}
    finish = np.empty(len(events), np.float64)
    queued = 0
    for i in order:
        ev = events[i]
        client, task = int(ev["client"]), int(ev["task"])
        d = cfg.tasks[task].delay
        rng = streams.setdefault((client, task),
                                 seeding.generator(cfg.run.seed, seeding.DELAY, client, task))
        expo = rng.exponential(d.exp_mean) if d.exp_mean > 0 else 0.0
        start = max(float(ev["dispatch_time"]), busy.get(client, 0.0))
        queued += start > ev["dispatch_time"]
        finish[i] = busy[client] = (start + d.local_multi * float(multiplier[client])
                                    * (d.shift + expo))
    return finish, queued


def test_two_tasks_are_independent_but_for_the_clock(tmp_path):
    """Static allocation, two tasks sharing 12 clients: each task's model sequence is its own
    single-task replay over its own events (the other task touches only the timing), and the
    timing is the shared FIFO client queues."""
    tasks = [
        digits_task("a", requests=3, buffer_size=1, global_lr=0.5),
        digits_task("b", requests=4, buffer_size=2, global_lr=1.0, local_lr=0.1, local_steps=3,
                    model="mlp", model_args={"hidden": [16]},
                    delay={"shift": 0.5, "exp_mean": 1.0, "local_multi": 1.5}),
    ]
    cfg = make_config(tasks, clients=12, max_time=25.0)
    events, aggs, finals, _ = run_and_read(cfg, tmp_path)
    with h5py.File(tmp_path / RUN_FILE, "r", locking=False) as f:
        multiplier = f["/clients/multiplier"][()]
    assert np.all(events["accepted"] == 1)
    counts = np.bincount(events["task"], minlength=2)
    assert counts[0] >= 10 and counts[1] >= 10
    keys = list(zip(events["finish_time"], events["request"]))
    assert keys == sorted(keys)

    finish, queued = replay_clock(cfg, events, multiplier)
    np.testing.assert_allclose(events["finish_time"], finish, rtol=1e-12, atol=1e-12)
    report_bitwise("two-task finish times vs clock replay", events["finish_time"], finish)
    assert queued > 0, "the test must exercise queued requests (FIFO coupling)"
    shared = set(events["client"][events["task"] == 0]) & set(events["client"][events["task"] == 1])
    assert shared, "the tasks must share clients"

    for m, task in enumerate(cfg.tasks):
        mine = events[events["task"] == m]
        np.testing.assert_array_equal(mine["staleness"], mine["version"] - mine["base_version"])
        versions = replay_buffered(cfg, mine, task=m)
        assert len(versions) - 1 == np.count_nonzero(aggs["task"] == m)
        np.testing.assert_allclose(finals[task.name], versions[-1], rtol=1e-5, atol=1e-6)
        if task.buffer_size == 1:
            report_bitwise(f"two-task {task.name} final_model vs replay", finals[task.name],
                           versions[-1])
