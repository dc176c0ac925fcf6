"""A worker's message buffers (transport.MessagePool): recycled within bounds, page-locked
within a byte cap; and the delta copy into a given buffer (training.write_delta)."""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MPIEXEC, cpu_pinned
from fedast_mpi import protocol as P
from fedast_mpi.models import build_model
from fedast_mpi.params import FlatModel
from fedast_mpi.training import local_train, write_delta
from fedast_mpi.transport import SPARE_PER_SIZE, MessagePool, pinned_block

HELPER = str(Path(__file__).parent / "helpers" / "pool_stats_rank.py")


class FakePinned:
    """Stands in for torch's page-locked allocation: numpy memory, remembered."""

    def __init__(self):
        self.made: list[int] = []

    def __call__(self, nbytes: int) -> np.ndarray:
        self.made.append(nbytes)
        return np.empty(nbytes, np.uint8)


def test_pinned_block_is_pytorch_rounding():
    assert [pinned_block(n) for n in (1, 2, 3, 4096, 4097, 32 + 4 * 1000)] == [
        1, 2, 4, 4096, 8192, 4096]
    assert pinned_block(P.HEADER_BYTES + 4 * 2_000_000) == 8 << 20  # largest auto-batched model


def test_plain_pool_recycles_by_size_and_keeps_at_most_max_spare():
    pool = MessagePool(pinned=False, max_spare=3)
    bufs = [pool.take(100) for _ in range(5)]
    assert all(b.nbytes == 100 and b.dtype == np.uint8 for b in bufs)
    assert pool.stats.plain_allocs == 5 and pool.stats.pinned_allocs == 0
    for b in bufs:
        pool.give(b)
    assert pool.spare_count == 3 and pool.spare_bytes == 300 and pool.stats.dropped == 2
    other = pool.take(200)  # another size: never served from the 100-byte spares
    assert other.nbytes == 200 and pool.stats.plain_allocs == 6
    again = [pool.take(100) for _ in range(3)]
    assert {id(b) for b in again} <= {id(b) for b in bufs}
    assert pool.stats.reused == 3 and pool.spare_count == 0
    del bufs, again, b
    gc.collect()
    assert pool.stats.live == 1 and pool.stats.live_bytes == 200  # `other`
    assert pool.stats.peak_live == 6


def test_pinned_pool_stays_within_its_cap_however_many_buffers_are_held():
    """Held real-clock updates: buffers taken and not given back. Page-locked ones stop at the
    cap (as PyTorch reserves them: powers of two); the rest are plain memory."""
    fake = FakePinned()
    nbytes = P.HEADER_BYTES + 4 * 1000  # a 4 KiB block
    pool = MessagePool(pinned=True, pinned_cap=10 * 4096, alloc_pinned=fake)
    held = [pool.take(nbytes) for _ in range(50)]
    assert pool.stats.pinned_allocs == 10 == len(fake.made)
    assert pool.stats.plain_allocs == 40
    assert pool.stats.pinned_reserved_bytes == 10 * 4096 <= pool.pinned_cap
    assert len(pool.pinned_ids) == 10
    # a bigger size class does not fit any more: plain
    big = pool.take(5000)
    assert pool.stats.plain_allocs == 41 and pool.stats.pinned_reserved_bytes == 10 * 4096
    # buffers dropped by the caller (a cancelled task's held updates) are noticed: their blocks
    # stay reserved in PyTorch's cache, and new buffers of that class reuse them
    pinned_held = [b for b in held if id(b) in pool.pinned_ids]
    del held, big
    gc.collect()
    assert pool.stats.live == len(pinned_held) == 10
    del pinned_held
    gc.collect()
    assert pool.stats.live == 0 and not pool.pinned_ids
    assert pool.stats.pinned_reserved_bytes == 10 * 4096  # PyTorch never gives them back
    again = [pool.take(nbytes) for _ in range(12)]
    assert pool.stats.pinned_allocs == 20 and pool.stats.plain_allocs == 43
    assert pool.stats.pinned_reserved_bytes == 10 * 4096  # reused, not grown
    assert sum(id(b) in pool.pinned_ids for b in again) == 10


def test_spares_prefer_pinned_buffers():
    fake = FakePinned()
    pool = MessagePool(pinned=True, max_spare=2, pinned_cap=2 * 4096, alloc_pinned=fake)
    bufs = [pool.take(4000) for _ in range(4)]  # 2 page-locked, then 2 plain
    pinned = [b for b in bufs if id(b) in pool.pinned_ids]
    plain = [b for b in bufs if id(b) not in pool.pinned_ids]
    assert len(pinned) == len(plain) == 2
    for b in plain + pinned:  # the plain ones come back first and fill the spares
        pool.give(b)
    assert pool.spare_count == 2 and pool.stats.dropped == 2
    assert all(id(pool.take(4000)) in pool.pinned_ids for _ in range(2))  # the pinned ones


def test_worker_default_bounds():
    pool = MessagePool()
    assert pool.max_spare == SPARE_PER_SIZE == 32 and pool.pinned_cap == 512 << 20
    assert not pool.pinned


@pytest.mark.parametrize("name", ["logreg", "cnn"])
def test_zero_steps_into_a_given_buffer(name):
    """steps == 0 reads no device value after the copy: `out` must still hold the (zero) delta."""
    fm = FlatModel(build_model(name, {}, (1, 8, 8), 10, 0))
    base = (np.arange(fm.n_params, dtype=np.float32) * 1e-3)
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64)
    out = np.full(fm.n_params, np.nan, np.float32)
    delta, loss, n = local_train(fm, base, x, y, np.arange(4), steps=0, batch_size=2, lr=0.1,
                                 weight_decay=0.0, seed=1, out=out)
    assert delta is out and loss == 0.0 and n == 4
    assert not np.isnan(out).any() and np.array_equal(out, np.zeros_like(out))
    np.testing.assert_array_equal(fm.numpy(), base)  # the model is left at base


def test_write_delta_into_a_message_payload():
    msg = np.full(P.HEADER_BYTES + 4 * 5, 255, np.uint8)
    delta = torch.tensor([1.5, -2.0, 0.0, 3.25, 1e-8])
    got = write_delta(delta, P.update_payload(msg))
    assert np.shares_memory(got, msg)
    np.testing.assert_array_equal(P.update_payload(msg), delta.numpy())
    assert (msg[:P.HEADER_BYTES] == 255).all()
    np.testing.assert_array_equal(write_delta(delta, None), delta.numpy())


@pytest.mark.launch
def test_a_gpu_workers_page_locked_bytes_stay_bounded_in_a_real_clock_run(tmp_path):
    """The default job (real clock: updates held until their release) with every worker's pool
    acting as a CUDA worker's, capped at 16 KiB: the run completes and no worker reserves more."""
    prefix = tmp_path / "pool"
    args = cpu_pinned(["run", "--out", str(tmp_path / "run"), "--set", "run.log_every=0",
                       "--set", "run.clock=real", "--set", "run.time_scale=0.1",
                       "--set", "run.max_time=40"])
    cap = 16 << 10
    env = {**os.environ, "FEDAST_TEST_POOL": f"{cap},{SPARE_PER_SIZE}", "PYTHONUNBUFFERED": "1"}
    import subprocess
    proc = subprocess.run([MPIEXEC, "-n", "3", sys.executable, HELPER, str(prefix), *args],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for rank in (1, 2):
        figures = json.loads(Path(f"{prefix}.{rank}.json").read_text())
        assert 0 < figures["pinned_reserved_bytes"] <= cap, figures
        assert figures["plain_allocs"] > 0, figures  # the cap was reached: the rest is plain
        assert figures["spare"] <= 3 * SPARE_PER_SIZE  # three message sizes (three tasks)
        assert figures["reused"] > 0
