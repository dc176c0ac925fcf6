"""Tests of the flat parameter views and the flatten/unflatten helpers."""

import copy
import warnings

import numpy as np
import pytest
import torch

from fedast_mpi.models import build_model, n_params
from fedast_mpi.params import RNN_ALIGN, FlatModel, flatten, unflatten
from fedast_mpi.training import evaluate, local_train

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


# -- recurrent layers: weights where cuDNN reads them in place (no copy, no warning) --------------

def lstm_model(embed=5, hidden=12, vocab=13, seed=0):
    """A CharLSTM whose embedding (vocab × embed = 65 floats) puts the LSTM off alignment."""
    return build_model("lstm", {"embed": embed, "hidden": hidden}, (10,), vocab, seed)


def rnn_offsets(fm, rnn):
    """Wire offsets of an RNN's weights in fm.flat."""
    base = fm.flat.data_ptr()
    return [(w.data_ptr() - base) // 4 for w in rnn._flat_weights]


def test_rnn_weights_start_their_own_storage():
    """cuDNN takes an RNN's weights as one buffer from the start of their storage
    (`try_get_weight_buf`); the block is that storage, still inside fm.flat."""
    m = lstm_model()
    before = flatten(m)
    fm = FlatModel(m)
    assert np.array_equal(fm.numpy(), before)  # the wire order and values are unchanged
    weights = m.lstm._flat_weights
    start = m.embedding.weight.numel()
    offsets = rnn_offsets(fm, m.lstm)
    assert offsets == list(np.cumsum([start] + [w.numel() for w in weights[:-1]]))
    storage = weights[0].untyped_storage()
    assert storage.data_ptr() == weights[0].data_ptr() == fm.flat[start:].data_ptr()
    assert storage.nbytes() == 4 * sum(w.numel() for w in weights)
    assert all(w.untyped_storage().data_ptr() == storage.data_ptr() for w in weights)
    assert all(w.is_contiguous() for w in weights)
    # aligned like a buffer of cuDNN's own, counted from the start of fm.flat's allocation
    assert (fm.flat.storage_offset() + start) % RNN_ALIGN == 0 and fm.flat.storage_offset() > 0
    # still views, both ways
    w = np.arange(fm.n_params, dtype=np.float32)
    fm.load(w)
    assert np.array_equal(flatten(m), w)
    with torch.no_grad():
        m.lstm.bias_hh_l0[-1] = -3.0
    assert fm.flat[offsets[-1] + weights[-1].numel() - 1].item() == -3.0
    # the evaluation copy (runner.evaluate_chunk) gets its own, equally laid out
    twin = FlatModel(copy.deepcopy(m))
    assert twin.flat.data_ptr() != fm.flat.data_ptr() and np.array_equal(twin.numpy(), fm.numpy())
    assert twin.module.lstm.weight_ih_l0.untyped_storage().data_ptr() \
        == twin.module.lstm.weight_ih_l0.data_ptr()


def test_models_without_rnn_keep_the_plain_layout():
    fm = FlatModel(build_model("cnn", {}, SHAPE, 10, 0))
    assert fm.flat.storage_offset() == 0
    assert all(p.untyped_storage().data_ptr() == fm.flat.data_ptr() for p in fm.params)


def plain_views(fm):
    """The layout before recurrent layers got their own storage: every parameter a view of
    fm.flat's storage (what cuDNN had to copy on every call)."""
    off = 0
    for p in fm.params:
        p.data = fm.flat[off:off + p.numel()].view_as(p)
        off += p.numel()


def test_rnn_layout_trains_and_evaluates_to_the_same_bits():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 13, (40, 10), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 13, (40,), generator=gen)
    fm = FlatModel(lstm_model(seed=4))
    old = FlatModel(lstm_model(seed=4))
    plain_views(old)
    assert old.module.lstm.weight_ih_l0.untyped_storage().data_ptr() \
        == old.flat.untyped_storage().data_ptr() != old.module.lstm.weight_ih_l0.data_ptr()
    base = fm.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. cuDNN's "not part of single contiguous chunk"
        got = local_train(fm, base, x, y, np.arange(40), steps=5, batch_size=8, lr=0.3,
                          weight_decay=1e-3, seed=9)
        acc = evaluate(fm, base, x, y)
    want = local_train(old, base, x, y, np.arange(40), steps=5, batch_size=8, lr=0.3,
                       weight_decay=1e-3, seed=9)
    assert np.array_equal(got[0], want[0]) and got[1:] == want[1:] and got[0].any()
    assert acc == evaluate(old, base, x, y)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lstm_on_cuda_uses_its_weights_in_place():
    """No weight-format warning and no re-flattening: cuDNN reads the FlatModel's memory, with
    the same bits as a module flattened by PyTorch itself."""
    dev = torch.device("cuda", 0)
    fm = FlatModel(build_model("lstm", {}, (80,), 80, 0).to(dev))
    ref = build_model("lstm", {}, (80,), 80, 0).to(dev)  # .to() flattens into cuDNN's buffer
    offsets = rnn_offsets(fm, fm.module.lstm)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 80, (64, 80), generator=gen, dtype=torch.uint8).to(dev)
    y = torch.randint(0, 80, (64,), generator=gen).to(dev)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = []
        for model in (fm.module, ref):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.item())
        fm.module.eval()
        with torch.no_grad():
            fm.module(x)
    assert not [str(w.message) for w in caught if "contiguous" in str(w.message)]
    assert rnn_offsets(fm, fm.module.lstm) == offsets  # still views of fm.flat
    assert losses[0] == losses[1]
    for p, q in zip(fm.module.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)
