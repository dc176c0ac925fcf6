"""On a CUDA device: pinned delta copies, run-to-run bits, batched against single, the default
job. Every test is marked `cuda`: it skips where torch sees no CUDA device, and runs after the
CPU tests (conftest), under the deterministic settings a CUDA run applies
(`fedast_mpi.devices.apply_cuda_settings`, restored at the end of the module)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import launch
from fedast_mpi import protocol as P
from fedast_mpi.batched import local_train_batch
from fedast_mpi.models import build_model
from fedast_mpi.params import FlatModel
from fedast_mpi.training import local_train, write_delta
from fedast_mpi.transport import MessagePool, pinned_block

pytestmark = pytest.mark.cuda

SHAPES = {"cifar_cnn": ((3, 32, 32), 10), "lstm": ((80,), 80), "lenet5": ((1, 28, 28), 10)}
"""name: (input shape, classes)"""
MODELS = ["cifar_cnn", "lstm"]  # a cuDNN convolution net and a cuDNN LSTM (not batchable)
KW = dict(steps=8, batch_size=32, lr=0.05, weight_decay=7e-4)


@pytest.fixture(scope="module", autouse=True)
def deterministic_cuda():
    """The settings of a `run.deterministic: true` CUDA rank, set before the first CUDA call."""
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
              torch.are_deterministic_algorithms_enabled())
    from fedast_mpi.devices import apply_cuda_settings
    apply_cuda_settings(True)
    yield
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = before[:4]
    torch.use_deterministic_algorithms(before[4])


def setup(name, n_shards=16, per_shard=64, seed=0):
    """A model on the GPU, random data there, shards and a base model."""
    dev = torch.device("cuda", 0)
    shape, classes = SHAPES[name]
    fm = FlatModel(build_model(name, {}, shape, classes, seed=seed).to(dev))
    g = torch.Generator().manual_seed(seed)
    n = n_shards * per_shard
    x = (torch.randint(0, 80, (n, *shape), generator=g) if name == "lstm"
         else torch.randn(n, *shape, generator=g)).to(dev)
    y = torch.randint(0, classes, (n,), generator=g).to(dev)
    shards = [np.arange(i * per_shard, (i + 1) * per_shard) for i in range(n_shards)]
    return fm, fm.numpy(), x, y, shards


def pinned_outs(pool, n_params, count):
    bufs = [pool.take(P.HEADER_BYTES + 4 * n_params) for _ in range(count)]
    for b in bufs:
        assert torch.from_numpy(b).is_pinned()
    outs = [P.update_payload(b) for b in bufs]
    for o in outs:
        o.fill(np.nan)
    return bufs, outs


def test_pool_buffers_are_page_locked_within_the_cap():
    nbytes = P.HEADER_BYTES + 4 * 1000
    pool = MessagePool(pinned=True, pinned_cap=4 * pinned_block(nbytes))
    bufs = [pool.take(nbytes) for _ in range(6)]
    assert [torch.from_numpy(b).is_pinned() for b in bufs] == [True] * 4 + [False] * 2
    assert pool.stats.pinned_reserved_bytes == 4 * pinned_block(nbytes)


@pytest.mark.parametrize("name", MODELS)
def test_pinned_non_blocking_delta_copies_are_bitwise_plain_copies(name):
    """Deltas copied without blocking into page-locked message payloads equal `.cpu()` copies,
    bit for bit, one request at a time and batched (10 rounds, payloads reset to NaN)."""
    fm, base, x, y, shards = setup(name)
    dev_base = torch.from_numpy(base).to(x.device)
    ref = [local_train(fm, dev_base, x, y, s, seed=i, **KW)[0].copy()
           for i, s in enumerate(shards)]
    pool = MessagePool(pinned=True)
    for _ in range(10):
        bufs, outs = pinned_outs(pool, fm.n_params, len(shards))
        got = [local_train(fm, dev_base, x, y, s, seed=i, out=o, **KW)[0]
               for i, (s, o) in enumerate(zip(shards, outs))]
        assert all(g is o for g, o in zip(got, outs))
        assert [a.tobytes() == b.tobytes() for a, b in zip(ref, got)] == [True] * len(shards)
        for b in bufs:
            pool.give(b)
    if name == "lstm":
        return  # not batchable (vmap)
    plain = local_train_batch(fm, [dev_base] * len(shards), x, y, shards,
                              list(range(len(shards))), **KW)
    for _ in range(3):
        bufs, outs = pinned_outs(pool, fm.n_params, len(shards))
        got = local_train_batch(fm, [dev_base] * len(shards), x, y, shards,
                                list(range(len(shards))), outs=outs, **KW)
        assert [a[0].tobytes() == b[0].tobytes() for a, b in zip(plain, got)] \
            == [True] * len(shards)
        for b in bufs:
            pool.give(b)


def test_write_delta_into_pinned_memory_is_complete_on_return():
    """steps == 0 reads no device value after the copy: `write_delta` itself must wait for it.
    A delta at the end of a long queue of kernels, read at once from the pinned buffer."""
    dev = torch.device("cuda", 0)
    pool = MessagePool(pinned=True)
    n = 16 << 20
    for rep in range(5):
        buf = pool.take(P.HEADER_BYTES + 4 * n)
        out = P.update_payload(buf)
        out.fill(np.nan)
        a = torch.randn(2048, 2048, device=dev)
        for _ in range(20):  # keep the stream busy well past the copy's queueing
            a = torch.tanh(a @ a * 1e-3)
        delta = torch.randn(n, device=dev, generator=torch.Generator(dev).manual_seed(rep))
        delta[: a.numel()] += a.flatten()
        got = write_delta(delta, out)
        assert not np.isnan(out).any()
        assert got.tobytes() == delta.cpu().numpy().tobytes()
        pool.give(buf)
    fm, base, x, y, shards = setup("cifar_cnn", n_shards=1)
    _, outs = pinned_outs(pool, fm.n_params, 1)
    delta, loss, n_samples = local_train(fm, torch.from_numpy(base).to(dev), x, y, shards[0],
                                         steps=0, batch_size=32, lr=0.1, weight_decay=0.0,
                                         seed=0, out=outs[0])
    assert delta is outs[0] and loss == 0.0 and n_samples == len(shards[0])
    assert np.array_equal(delta, np.zeros_like(delta))


@pytest.mark.parametrize("name", MODELS)
def test_same_request_twice_same_bits(name):
    fm, base, x, y, shards = setup(name, n_shards=4)
    for i, s in enumerate(shards):
        a = local_train(fm, base, x, y, s, seed=100 + i, **KW)
        b = local_train(fm, base, x, y, s, seed=100 + i, **KW)
        assert a[0].tobytes() == b[0].tobytes() and a[1] == b[1]
    if name != "lstm":
        seeds = list(range(len(shards)))
        a = local_train_batch(fm, [base] * len(shards), x, y, shards, seeds, **KW)
        b = local_train_batch(fm, [base] * len(shards), x, y, shards, seeds, **KW)
        assert all(p[0].tobytes() == q[0].tobytes() and p[1] == q[1] for p, q in zip(a, b))


@pytest.mark.parametrize("name", ["cifar_cnn", "lenet5"])
def test_batched_agrees_with_single_requests(name):
    """Groups of 16 (the automatic size on a GPU) against one request at a time: another float
    order, so a tolerance (relative L2; the CPU tests hold 1e-5 over fewer steps)."""
    fm, base, x, y, shards = setup(name)
    seeds = [7 * i for i in range(len(shards))]
    batched = local_train_batch(fm, [base] * len(shards), x, y, shards, seeds, **KW)
    for (delta, loss, n), s, seed in zip(batched, shards, seeds):
        ref, ref_loss, ref_n = local_train(fm, base, x, y, s, seed=seed, **KW)
        assert n == ref_n
        assert np.linalg.norm(delta - ref) <= 1e-4 * np.linalg.norm(ref)
        assert loss == pytest.approx(ref_loss, rel=1e-4)


@pytest.mark.launch
def test_default_job_on_cuda_is_repeatable_and_rank_count_free(tmp_path):
    """`mpiexec -n 3 fedast-mpi run --set run.device=cuda` twice, and once with -n 2: the same
    /events (apart from worker and wall) and the same final models, bit for bit."""
    from test_launch import assert_identical
    runs = {}
    for label, n in (("a", 3), ("b", 3), ("c", 2)):
        out = tmp_path / label
        res = launch(n, "run", "--out", str(out), "--set", "run.device=cuda",
                     "--set", "run.log_every=0", timeout=300)
        assert res.rc == 0, res.stderr[-2000:]
        runs[label] = out
    assert_identical(runs["a"], runs["b"])
    assert_identical(runs["a"], runs["c"])
