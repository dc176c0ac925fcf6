"""Batched training (torch.func vmap) equals one-at-a-time training; groups form on rank 0."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from fedast_mpi.batched import batchable, local_train_batch, schedules
from fedast_mpi.records import Update, Work
from fedast_mpi.grouping import Grouper, group_sizes
from fedast_mpi.models import build_model
from fedast_mpi.params import FlatModel
from fedast_mpi.training import batch_indices, local_train

MODELS = {  # name: (input shape, classes, args, steps)
    "logreg": ((1, 8, 8), 10, {}, 4),
    "mlp": ((1, 28, 28), 10, {}, 3),
    "cnn": ((1, 8, 8), 10, {}, 3),
    "lenet5": ((1, 28, 28), 10, {"logits_relu": True}, 3),
    "cifar_cnn": ((3, 32, 32), 10, {}, 2),
    "lstm": ((80,), 80, {}, 2),
    "resnet18_gn": ((3, 32, 32), 10, {}, 1),
}


def data(name, n=120, seed=0):
    shape, classes, _, _ = MODELS[name]
    g = torch.Generator().manual_seed(seed)
    if name == "lstm":
        return (torch.randint(0, 80, (n, *shape), generator=g),
                torch.randint(0, classes, (n,), generator=g))
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_deltas_equal_one_at_a_time(name):
    """Different base versions, shard sizes (one below batch_size: padded), seeds, weight decay."""
    shape, classes, args, steps = MODELS[name]
    torch.manual_seed(0)
    fm = FlatModel(build_model(name, args, shape, classes, seed=1))
    x, y = data(name)
    rng = np.random.default_rng(0)
    bases = [fm.numpy() + 0.01 * rng.standard_normal(fm.n_params).astype(np.float32)
             for _ in range(3)]
    shards = [rng.choice(len(y), k, replace=False) for k in (25, 6, 40)]
    seeds = [101, 202, 303]
    kw = dict(steps=steps, batch_size=8, lr=0.05, weight_decay=1e-3)
    before = fm.numpy()
    outs = [np.full(fm.n_params, np.nan, np.float32) for _ in bases]
    got = local_train_batch(fm, bases, x, y, shards, seeds, **kw, outs=outs)
    assert np.array_equal(fm.numpy(), before)  # the architecture's own parameters are untouched
    for base, shard, seed, out, (delta, loss, n) in zip(bases, shards, seeds, outs, got):
        ref_delta, ref_loss, ref_n = local_train(fm, base, x, y, shard, seed=seed, **kw)
        assert delta is out and n == ref_n == len(shard)
        scale = np.linalg.norm(ref_delta)
        assert scale > 0
        # ResNet: 20 layers of float32 reordering can flip a ReLU near 0 (measured up to 3e-4)
        tol = 1e-3 if name == "resnet18_gn" else 1e-5
        assert np.linalg.norm(delta - ref_delta) <= tol * scale  # relative L2 error
        assert loss == pytest.approx(ref_loss, rel=1e-5)


def test_equal_batch_sizes_use_plain_means_and_padding_is_weighted():
    idx, w = schedules([np.arange(20), np.arange(30, 50)], [1, 2], steps=3, batch_size=8)
    assert idx.shape == (2, 3, 8) and w is None
    idx, w = schedules([np.arange(20), np.arange(100, 105)], [1, 2], steps=3, batch_size=8)
    assert idx.shape == (2, 3, 8)
    assert torch.all(w[0] == 1 / 8) and torch.all(w[1, :, :5] == 1 / 5) \
        and torch.all(w[1, :, 5:] == 0)
    mine = batch_indices(5, 3, 8, torch.Generator().manual_seed(2))
    assert all(torch.equal(idx[1, s, :5], 100 + mine[s]) for s in range(3))


def test_batchable_models():
    for name, (shape, classes, args, _) in MODELS.items():
        assert batchable(build_model(name, args, shape, classes, seed=0)) == (name != "lstm"), name
    assert not batchable(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)))


def fm_of(name):
    shape, classes, args, _ = MODELS[name]
    return FlatModel(build_model(name, args, shape, classes, seed=0))


def test_group_sizes_auto_rule():
    small, big, rnn = fm_of("lenet5"), fm_of("resnet18_gn"), fm_of("lstm")
    assert group_sizes(0, "cpu", [small, big, rnn]) == [1, 1, 1]
    assert group_sizes(0, "cuda", [small, big, rnn]) == [16, 1, 1]
    assert group_sizes(5, "cpu", [small, big]) == [5, 5]
    assert group_sizes(1, "cuda", [small]) == [1]


# ------------------------------------------------------------------------ grouping on rank 0
class Recorder:
    """A stand-in executor: records groups; an update's delta is [request id]."""

    def __init__(self):
        self.groups, self.discarded, self.freed, self.cancelled = [], [], [], []
        self.wait, self.compute_seconds = object(), 0.0

    def submit(self, items):
        self.groups.append([w.req.id for w in items])

    def wait_for(self, rid):
        return Update(rid, 0, 1, 0.0, 1, np.array([rid], np.float32), slot=object())

    def poll(self, timeout):
        return []

    def discard(self, rid):
        self.discarded.append(rid)

    def free(self, upd):
        self.freed.append(upd.request)

    def cancel_task(self, task):
        self.cancelled.append(task)


def req(rid, task=0, finish=None):
    return types.SimpleNamespace(id=rid, task=task, group=-1,
                                 finish_time=float(rid if finish is None else finish))


def test_groups_fill_flush_early_and_skip_single_tasks():
    inner = Recorder()
    g = Grouper(inner, [3, 1])
    reqs = {i: req(i, 0 if i < 7 else 1) for i in range(9)}
    for i in (2, 0, 1):
        g.submit([Work(reqs[i], None)])
    assert inner.groups == [[0, 1, 2]] and reqs[2].group == 0  # full: sent, sorted by id
    g.submit([Work(reqs[7], None)])
    assert inner.groups[-1] == [7] and reqs[7].group == 7  # task 1 is not grouped
    g.submit([Work(reqs[3], None)])
    g.submit([Work(reqs[4], None)])
    assert len(inner.groups) == 2
    g.discard(4)  # pending: never sent
    assert g.wait_for(3).request == 3  # needed before its group filled: sent early
    assert inner.groups[-1] == [3] and inner.discarded == []
    g.submit([Work(reqs[5], None)])
    g.submit([Work(reqs[6], None)])
    assert g.poll(0.0) == [] and inner.groups[-1] == [5, 6]  # real clock: poll sends pending
    g.submit([Work(reqs[8], None)])
    g.cancel_task(1)
    assert inner.cancelled == [1]


def test_open_groups_are_pulled_for_a_checkpoint_and_resubmitted_exactly():
    inner = Recorder()
    g = Grouper(inner, [3])
    reqs = [req(i) for i in range(8)]
    for r in reqs:
        g.submit([Work(r, None)])  # groups [0,1,2], [3,4,5]; 6, 7 pending
    g.wait_for(1)  # group 0 is now open
    ready = g.pull_open()
    assert sorted(ready) == [0, 2] and sorted(inner.freed) == [0, 2]
    assert ready[2].slot is None and ready[2].delta[0] == 2  # copied out of the slot
    # a resumed server: fresh executor, the ready updates restored
    inner2 = Recorder()
    g2 = Grouper(inner2, [3])
    g2.preload(list(ready.values()))
    live = [Work(r, None) for r in reqs if r.id != 1]
    g2.resubmit(live, real=False)
    assert inner2.groups == [[3, 4, 5]]  # the unconsumed group again; 0, 2 ready; 6, 7 pending
    assert g2.wait_for(2).delta[0] == 2 and inner2.groups == [[3, 4, 5]]
    g2.wait_for(7)
    assert inner2.groups[-1] == [6, 7]


def test_requests_past_the_horizon_are_never_sent():
    inner = Recorder()
    g = Grouper(inner, [1], horizon=10.0)
    g.submit([Work(req(0, finish=10.0), None)])
    g.submit([Work(req(1, finish=10.5), None)])
    assert inner.groups == [[0]] and g.parked == {1}
    g.discard(1)  # its task completed: nothing to tell the executor
    assert inner.discarded == [] and not g.parked
