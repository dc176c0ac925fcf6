"""The wire under MPI (run with `mpiexec -n K python -m pytest --with-mpi`, K >= 2).

Rank 0 drives a ServerTransport, every other rank runs the real Worker loop
with a stand-in runner whose deltas say which model and request they came from.
"""

from __future__ import annotations

import time
import types

import numpy as np
import pytest
from mpi4py import MPI

from fedast_mpi.records import Request, Work
from fedast_mpi.transport import MAX_PASSES, ServerTransport
from fedast_mpi.worker import Worker

pytestmark = pytest.mark.mpi(min_size=2)

N_PARAMS = [3, 70_000]  # the second is past MPICH's eager limit (rendezvous protocol)


class EchoRunner:
    """delta = model + (seed mod 1000); loss = client; n_samples = task + 1."""

    device = types.SimpleNamespace(type="cpu")
    n_params = N_PARAMS

    @staticmethod
    def resident(model):
        return model

    def __init__(self, sleep: float = 0.0, steps: int = 1):
        self.sleep = sleep
        self.steps = steps
        self.groups: list[list[int]] = []  # seeds of every group trained, in order
        self.on_step = None

    def train_group(self, task, items, outs):
        for _ in range(self.steps):  # like local SGD: the worker may evaluate between steps
            if self.sleep:
                time.sleep(self.sleep / self.steps)
            if self.on_step is not None:
                self.on_step()
        self.groups.append([seed for _, _, seed in items])
        for (_client, model, seed), out in zip(items, outs):
            out[:] = model + np.float32(seed % 1000)
        return [(out, float(client), task + 1) for (client, _, _), out in zip(items, outs)]

    @staticmethod
    def evaluate_chunk(task, model, chunk):
        """(first model value + chunk, 1000 task + chunk): says which model and chunk it saw."""
        return float(model[0]) + chunk, 1000.0 * task + chunk


def model(task, version):
    return np.full(N_PARAMS[task], 10.0 * task + version, np.float32)


def with_workers(server_fn, runner=None, real=False, arrival_order=False):
    comm = MPI.COMM_WORLD.Dup()
    try:
        if comm.rank == 0:
            st = ServerTransport(comm, N_PARAMS, arrival_order=arrival_order)
            try:
                server_fn(st)
            finally:
                st.shutdown(timeout=60.0)
        else:
            Worker(comm, runner or EchoRunner(), real_clock=real).run()
    finally:
        comm.Free()


def test_updates_land_in_their_task_and_models_travel_once():
    def server(st):
        reqs = []
        for version in range(3):
            for task in (0, 1):
                for k in range(4):
                    rid = len(reqs)
                    req = Request(rid, task, client=k, base_version=version, dispatch_time=0.0,
                                  finish_time=float(rid), seed=rid)
                    st.submit([Work(req, model(task, version))])
                    reqs.append(req)
        for req in reversed(reqs):  # ask in any order: each lands in its own slot
            upd = st.wait_for(req.id)
            assert upd.task == req.task and upd.worker == req.worker
            assert upd.n_samples == req.task + 1 and upd.train_loss == req.client
            assert upd.delta.size == N_PARAMS[req.task]
            assert np.all(upd.delta == model(req.task, req.base_version) + np.float32(req.seed))
            st.free(upd)
        assert st.model_sends == len({(r.worker, r.task, r.base_version) for r in reqs})
        workers = {r.worker for r in reqs}
        assert workers == set(range(1, st.comm.size))  # load spread over every worker
        assert not st.landed
        # a wake-up's passes that land nothing: one with few workers, one per two up to the cap
        assert st.passes == max(1, min(MAX_PASSES, (st.comm.size - 1) // 2))

    with_workers(server)


def test_cancelled_task_is_dropped_and_drained():
    def server(st):
        doomed = []
        for rid in range(6):
            req = Request(rid, 1, client=rid, base_version=0, dispatch_time=0.0,
                          finish_time=float(rid), seed=rid)
            st.submit([Work(req, model(1, 0))])
            doomed.append(rid)
        st.cancel_task(1)
        for rid in doomed:
            st.discard(rid)
        keep = Request(100, 0, client=0, base_version=0, dispatch_time=0.0, finish_time=0.0, seed=7)
        st.submit([Work(keep, model(0, 0))])
        upd = st.wait_for(100)
        assert np.all(upd.delta == model(0, 0) + 7)
        st.free(upd)
        for rid in doomed:
            assert rid not in st.landed

    with_workers(server)


def test_real_clock_holds_updates_until_release():
    def server(st):
        now = time.time()
        releases = {}
        for rid in range(4):
            req = Request(rid, 0, client=rid, base_version=0, dispatch_time=0.0,
                          finish_time=0.0, seed=rid)
            releases[rid] = now + 0.3 * (rid + 1)
            st.submit([Work(req, model(0, 0), releases[rid])])
        got = []
        while len(got) < 4:
            for upd in st.poll(0.05):
                got.append((time.time(), upd.request))
                st.free(upd)
        for arrived, rid in got:
            assert arrived >= releases[rid] - 1e-3
        assert [rid for _, rid in got] == sorted(rid for _, rid in got)

    with_workers(server, real=True, arrival_order=True)


def test_server_does_not_spin_while_waiting():
    def server(st):
        req = Request(0, 0, client=0, base_version=0, dispatch_time=0.0, finish_time=0.0, seed=1)
        st.submit([Work(req, model(0, 0))])
        wall, cpu = time.perf_counter(), time.process_time()
        st.free(st.wait_for(0))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert wall > 0.5
        assert cpu / wall < 0.25, f"server used {100 * cpu / wall:.0f}% of a core while waiting"

    with_workers(server, runner=EchoRunner(sleep=0.8))


def test_a_wait_lands_everything_that_arrived_before_sleeping():
    """Far more updates than posted receives wait at rank 0 (workers that trained ahead): the
    first wait lands them all, pass after pass, with (nearly) no sleep in between (one pass lands at
    most the posted receives; sleeping after each stalled rank 0 for ~1 s at 16 workers)."""
    n = 40

    def server(st):
        for rid in range(n):
            req = Request(rid, 1, client=rid, base_version=0, dispatch_time=0.0,
                          finish_time=float(rid), seed=rid)
            st.submit([Work(req, model(1, 0))])
        time.sleep(2.0)  # every worker has trained and sent its share (EchoRunner: at once)
        before = st.wait.wakeups
        for rid in reversed(range(n)):
            st.free(st.wait_for(rid))
        # a pass may find a transfer under way (one sleep); landing 8 per sleep took ~40
        assert st.wait.wakeups - before <= 2, "rank 0 slept while updates were waiting"
        assert not st.landed

    with_workers(server)


def test_groups_go_to_one_worker_with_each_model_once():
    """A group mixes base versions (non-decreasing by id); all of it lands, from one worker."""
    def server(st):
        groups, rid = [], 0
        for versions in ([0, 0, 1], [1, 2, 2], [2, 3], [3]):
            for task in (0, 1):
                items = []
                for v in versions:
                    req = Request(rid, task, client=rid % 5, base_version=v, dispatch_time=0.0,
                                  finish_time=float(rid), seed=rid)
                    items.append(Work(req, model(task, v)))
                    rid += 1
                st.submit(items)
                groups.append([w.req for w in items])
        for group in groups:
            workers = set()
            for req in group:
                upd = st.wait_for(req.id)
                assert np.all(upd.delta == model(req.task, req.base_version) + np.float32(req.seed))
                workers.add(upd.worker)
                st.free(upd)
            assert workers == {group[0].worker}
        assert st.model_sends == len({(r.worker, r.task, r.base_version)
                                      for group in groups for r in group})

    with_workers(server)


def test_evaluation_chunks_spread_over_workers_and_come_back_in_order():
    def server(st):
        for eval_id, (task, version, chunks) in enumerate([(1, 3, 7), (0, 2, 1), (1, 4, 3)]):
            m = model(task, version)
            st.evaluate(eval_id, task, m, chunks)
            sums = st.wait_eval(eval_id, chunks)
            assert sums == [(float(m[0]) + c, 1000.0 * task + c) for c in range(chunks)]
        assert not st.eval_sums and not any(st.eval_load.values())
        assert set(st.evals_received) == set(st.workers[:7])  # 7 chunks: one per worker first

    with_workers(server)


def test_workers_evaluate_between_the_steps_of_a_training():
    def server(st):
        req = Request(0, 1, client=0, base_version=0, dispatch_time=0.0, finish_time=0.0, seed=3)
        st.submit([Work(req, model(1, 0))])
        time.sleep(0.3)  # the worker is training now (3 s in 30 steps)
        st.evaluate(0, 0, model(0, 5), 1)
        assert st.wait_eval(0, 1) == [(5.0, 0.0)]
        st.progress()
        assert 0 not in st.landed  # answered between two steps, not after the request
        st.free(st.wait_for(0))

    with_workers(server, runner=EchoRunner(sleep=3.0, steps=30))


def test_retracted_requests_never_pass_for_the_ones_sent_again():
    """A rollback retracts requests sent ahead: the same ids go out again with other contents
    (another seed, a model version of the same number with other values). Only the new updates
    are handed out, whether the stale ones landed before the retraction or come after; and each
    (worker, task) the retracted requests went to gets its model again."""
    n = 3 * (MPI.COMM_WORLD.size - 1)

    def server(st):
        first = []
        for rid in range(n):
            req = Request(rid, 0, client=rid, base_version=1, dispatch_time=0.0,
                          finish_time=float(rid), seed=rid)
            st.submit([Work(req, model(0, 1))])
            first.append(req)
        st.free(st.wait_for(0))  # one consumed, some landed, some still to come
        time.sleep(0.1)
        st.progress()
        landed = sum(r.id in st.landed for r in first[1:])
        st.retract(first[1:])
        sends = st.model_sends
        other = np.full(N_PARAMS[0], -5.0, np.float32)  # "version 1" of the new timeline
        again = []
        for rid in range(1, n):
            req = Request(rid, 0, client=rid, base_version=1, dispatch_time=0.0,
                          finish_time=float(rid), seed=500 + rid)
            st.submit([Work(req, other)])
            again.append(req)
        assert st.model_sends - sends == len({r.worker for r in first[1:]} & {
            r.worker for r in again})  # the model again wherever the retracted went
        for req in again:
            upd = st.wait_for(req.id)
            assert np.all(upd.delta == other + np.float32(req.seed)), req.id
            st.free(upd)
        deadline = time.monotonic() + 10
        while st.stale + landed < n - 1 and time.monotonic() < deadline:
            st.progress()
            time.sleep(0.01)
        assert st.stale + landed == n - 1  # every retracted one trained, and dropped
        assert not st.landed

    with_workers(server, runner=EchoRunner(sleep=0.02))
