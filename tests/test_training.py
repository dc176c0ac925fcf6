"""Tests of local SGD training and evaluation against independent plain torch code."""

import types

import numpy as np
import pytest
import torch

from fedast_mpi.data import load_task_data
from fedast_mpi.models import build_model
from fedast_mpi.params import FlatModel, flatten, unflatten
from fedast_mpi.training import batch_indices, evaluate, local_train


@pytest.fixture(scope="module")
def digits():
    t = types.SimpleNamespace(name="d", dataset="digits", dataset_args={"test_fraction": 0.2},
                              data_dir=None,
                              partition=types.SimpleNamespace(kind="iid", alpha=None,
                                                              samples_per_client=60))
    return load_task_data(t, 10, 0)


def test_batch_indices_epochs():
    g = torch.Generator().manual_seed(5)
    b = batch_indices(10, 7, 3, g)
    assert [len(x) for x in b] == [3] * 7
    # 3 batches per epoch (drop_last), each epoch's batches are disjoint
    for e in range(2):
        ep = torch.cat(b[3 * e:3 * e + 3])
        assert len(set(ep.tolist())) == 9
    g2 = torch.Generator().manual_seed(5)
    p1 = torch.randperm(10, generator=g2)
    assert torch.equal(torch.cat(b[:3]), p1[:9])
    # an exact multiple uses every position of each permutation, in order
    b = batch_indices(9, 6, 3, torch.Generator().manual_seed(2))
    g3 = torch.Generator().manual_seed(2)
    assert torch.equal(torch.cat(b), torch.cat([torch.randperm(9, generator=g3) for _ in range(2)]))
    small = batch_indices(4, 3, 16, torch.Generator().manual_seed(0))
    assert all(sorted(x.tolist()) == [0, 1, 2, 3] for x in small)
    assert batch_indices(4, 0, 2, torch.Generator()) == []


def reference_train(name, base, x, y, shard, steps, bs, lr, wd, seed):
    """Plain torch loop on an ordinary (not flat) module: the behaviour local_train must match."""
    model = build_model(name, {}, (1, 8, 8), 10, 999)
    unflatten(model, base)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=wd, foreach=False)
    losses = []
    for pos in batch_indices(len(shard), steps, bs, torch.Generator().manual_seed(seed)):
        idx = torch.from_numpy(shard)[pos]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return flatten(model) - base, float(np.mean(losses))


@pytest.mark.parametrize("name,wd,shard_len", [("logreg", 0.0, 60), ("mlp", 1e-3, 60),
                                               ("cnn", 5e-4, 60), ("mlp", 0.0, 5)])
def test_local_train_matches_plain_loop(digits, name, wd, shard_len):
    fm = FlatModel(build_model(name, {}, (1, 8, 8), 10, 1))
    base = fm.numpy() + np.float32(0.01)
    shard = digits.shards[2][:shard_len]
    delta, loss, n = local_train(fm, base, digits.train_x, digits.train_y, shard,
                                 steps=9, batch_size=16, lr=0.1, weight_decay=wd, seed=11)
    ref_delta, ref_loss = reference_train(name, base, digits.train_x, digits.train_y, shard,
                                          9, 16, 0.1, wd, 11)
    assert n == shard_len
    assert delta.dtype == np.float32 and delta.shape == base.shape
    assert np.array_equal(delta, ref_delta)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert np.abs(delta).sum() > 0
    # fm now holds the trained model; delta is an independent copy
    assert np.allclose(fm.numpy(), base + delta, rtol=0, atol=1e-6)
    delta[:] = 0
    assert not np.array_equal(fm.numpy(), base)


def test_local_train_deterministic_and_rng_free(digits):
    fm = FlatModel(build_model("cnn", {}, (1, 8, 8), 10, 0))
    base = fm.numpy()
    args = dict(steps=6, batch_size=8, lr=0.05, weight_decay=1e-4)
    torch.manual_seed(0)
    a = local_train(fm, base, digits.train_x, digits.train_y, digits.shards[0], seed=3, **args)
    torch.manual_seed(1)
    b = local_train(fm, base, digits.train_x, digits.train_y, digits.shards[0], seed=3, **args)
    c = local_train(fm, base, digits.train_x, digits.train_y, digits.shards[0], seed=4, **args)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], c[0])


def test_loss_decreases_and_accuracy_rises(digits):
    fm = FlatModel(build_model("mlp", {}, (1, 8, 8), 10, 0))
    w = fm.numpy()
    acc0, loss0 = evaluate(fm, w, digits.test_x, digits.test_y)
    everything = np.arange(len(digits.train_y))
    losses = []
    for r in range(15):
        delta, loss, _ = local_train(fm, w, digits.train_x, digits.train_y, everything,
                                     steps=20, batch_size=32, lr=0.1, weight_decay=0.0, seed=r)
        w = w + delta
        losses.append(loss)
    acc1, loss1 = evaluate(fm, w, digits.test_x, digits.test_y)
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert loss1 < loss0 and acc1 > 0.85 > acc0


def test_evaluate_matches_manual(digits):
    model = build_model("logreg", {}, (1, 8, 8), 10, 2)
    fm = FlatModel(model)
    vec = fm.numpy() * np.float32(3.0)
    fm.load(np.zeros(fm.n_params, dtype=np.float32))
    model.train()
    acc, loss = evaluate(fm, vec, digits.test_x, digits.test_y, batch_size=100)
    assert model.training and np.array_equal(fm.numpy(), vec)
    ref = build_model("logreg", {}, (1, 8, 8), 10, 0)
    unflatten(ref, vec)
    with torch.no_grad():
        logits = ref(digits.test_x).double()
    y = digits.test_y
    ref_acc = (logits.argmax(1) == y).double().mean().item()
    ref_loss = -torch.log_softmax(logits, 1)[torch.arange(len(y)), y].mean().item()
    assert acc == ref_acc
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert 0.0 < acc < 1.0
