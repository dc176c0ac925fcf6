"""Tests of the flat parameter views and the flatten/unflatten helpers."""

import numpy as np
import pytest
import torch

from fedast_mpi.models import build_model, n_params
from fedast_mpi.params import FlatModel, flatten, unflatten

SHAPE = (1, 8, 8)


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_flatten_unflatten_round_trip(name):
    m = build_model(name, {}, SHAPE, 10, 0)
    v = flatten(m)
    assert v.dtype == np.float32 and v.shape == (n_params(m),)
    w = np.random.default_rng(1).standard_normal(v.shape).astype(np.float32)
    unflatten(m, w)
    assert np.array_equal(flatten(m), w)
    # order is module.parameters() order
    assert np.array_equal(np.concatenate([p.detach().numpy().ravel() for p in m.parameters()]), w)
    with pytest.raises(ValueError):
        unflatten(m, w[:-1])


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_flat_model_keeps_values_and_views(name):
    m = build_model(name, {}, SHAPE, 10, 3)
    before = flatten(m)
    fm = FlatModel(m)
    assert fm.n_params == n_params(m) == fm.flat.numel()
    assert np.array_equal(fm.numpy(), before)
    # flat -> parameters
    with torch.no_grad():
        fm.flat[0] = 42.0
    assert next(m.parameters()).reshape(-1)[0].item() == 42.0
    # parameters -> flat
    last = list(m.parameters())[-1]
    with torch.no_grad():
        last.reshape(-1)[-1] = -7.0
    assert fm.flat[-1].item() == -7.0
    # load and numpy is a copy
    w = np.arange(fm.n_params, dtype=np.float32)
    fm.load(w)
    assert np.array_equal(flatten(m), w)
    copy = fm.numpy()
    copy[:] = 0
    assert np.array_equal(fm.numpy(), w)
    fm.load(torch.zeros(fm.n_params))
    assert not flatten(m).any()
    with pytest.raises(ValueError):
        fm.load(np.zeros(fm.n_params + 1, dtype=np.float32))


def test_gradients_flow_through_views():
    m = build_model("mlp", {}, SHAPE, 10, 0)
    ref = build_model("mlp", {}, SHAPE, 10, 0)
    fm = FlatModel(m)
    x = torch.rand(5, *SHAPE)
    y = torch.tensor([0, 1, 2, 3, 4])
    for model in (m, ref):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for p, q in zip(m.parameters(), ref.parameters()):
        assert p.grad is not None and torch.equal(p.grad, q.grad)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    opt.step()
    assert np.array_equal(fm.numpy(), flatten(m))
    assert not np.array_equal(fm.numpy(), flatten(ref))


def test_buffers_untouched():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    fm = FlatModel(m)
    assert fm.n_params == 3 * 4 + 4 + 4 + 4
    assert m[1].running_mean.data_ptr() != fm.flat.data_ptr()
