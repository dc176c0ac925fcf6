"""Tiers, delay distribution, FIFO queues and the availability cap."""

from types import SimpleNamespace

import numpy as np
import pytest

from fedast_mpi.clients import ClientPool, DelayModel, assign_tiers


def tiers(slow=0.25, normal=0.5, fast=0.25, mults=(1.3, 1.0, 0.7)):
    t = lambda f, m: SimpleNamespace(fraction=f, multiplier=m)  # noqa: E731
    return SimpleNamespace(slow=t(slow, mults[0]), normal=t(normal, mults[1]),
                           fast=t(fast, mults[2]))


def test_tier_fractions_and_multipliers():
    code, mult = assign_tiers(1000, tiers(), seed=3)
    assert np.bincount(code, minlength=3).tolist() == [250, 500, 250]
    assert set(np.round(mult[code == 0], 6)) == {np.float32(1.3).round(6)}
    assert np.all(mult[code == 2] == np.float32(0.7))
    again, _ = assign_tiers(1000, tiers(), seed=3)
    other, _ = assign_tiers(1000, tiers(), seed=4)
    assert np.array_equal(code, again) and not np.array_equal(code, other)


def test_tier_rounding_covers_every_client():
    code, _ = assign_tiers(7, tiers(0.3, 0.3, 0.4), seed=0)
    assert len(code) == 7 and set(code) <= {0, 1, 2}


@pytest.mark.parametrize("shift,exp_mean,multi,mult",
                         [(1.0, 2.0, 1.0, 1.0), (0.074, 0.148, 27, 1.3)])
def test_shifted_exponential_mean_and_shift(shift, exp_mean, multi, mult):
    model = DelayModel(shift, exp_mean, multi)
    rng = np.random.default_rng(0)
    draws = np.array([model.draw(rng, mult) for _ in range(40000)])
    scale = multi * mult
    assert draws.min() >= shift * scale
    assert draws.min() < shift * scale + 0.01 * exp_mean * scale
    assert abs(draws.mean() - scale * (shift + exp_mean)) < 0.03 * scale * (shift + exp_mean)
    # the exponential part: std equals its mean
    assert abs(draws.std() - scale * exp_mean) < 0.05 * scale * exp_mean


def test_zero_exp_mean_is_constant():
    model = DelayModel(2.0, 0.0, 3.0)
    rng = np.random.default_rng(0)
    assert {model.draw(rng, 0.5) for _ in range(10)} == {3.0}


def pool(n=4, available=None, shift=1.0, exp_mean=0.0):
    code = np.ones(n, np.int8)
    mult = np.ones(n, np.float32)
    return ClientPool(code, mult, [DelayModel(shift, exp_mean, 1.0)], seed=0, available=available)


def test_fifo_queue_times():
    p = pool(shift=2.0)
    assert p.schedule(0, 0, now=1.0) == (1.0, 3.0)
    assert p.schedule(0, 0, now=1.5) == (3.0, 5.0)  # queued behind the first
    assert p.schedule(0, 0, now=10.0) == (10.0, 12.0)  # idle again
    assert p.schedule(1, 0, now=1.5) == (1.5, 3.5)  # other clients independent


def test_release_does_not_roll_back_queue():
    p = pool(shift=2.0)
    p.schedule(0, 0, 0.0)
    p.release(0)
    assert p.schedule(0, 0, 0.5) == (2.0, 4.0)


def test_availability_cap_counts_distinct_busy_clients():
    p = pool(n=5, available=2)
    p.schedule(0, 0, 0.0)
    p.schedule(1, 0, 0.0)
    assert p.n_busy == 2
    assert not p.can_accept(2)  # idle client over the cap
    assert p.can_accept(0)  # a busy client can queue more
    p.schedule(0, 0, 0.0)
    assert p.n_busy == 2
    p.release(1)
    assert p.can_accept(2)
    with pytest.raises(RuntimeError):
        p.release(1)


def test_delay_streams_are_per_client_and_task():
    code = np.ones(3, np.int8)
    mult = np.ones(3, np.float32)
    delays = [DelayModel(1.0, 1.0, 1.0)] * 2
    a = ClientPool(code, mult, delays, seed=5, available=None)
    b = ClientPool(code, mult, delays, seed=5, available=None)
    # draw in a different interleaving: each (client, task) stream is unaffected
    a1 = [a.schedule(0, 0, 100.0 * k)[1] - 100.0 * k for k in range(3)]
    b.schedule(1, 1, 0.0)
    b.schedule(2, 0, 0.0)
    b1 = [b.schedule(0, 0, 100.0 * k)[1] - 100.0 * k for k in range(3)]
    assert a1 == b1
