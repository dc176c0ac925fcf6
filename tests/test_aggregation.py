"""Aggregation, replacement rule and budget split."""

import numpy as np
import pytest

from fedast_mpi.aggregation import (buffer_mean, polynomial_staleness_weight, replacement_count,
                                    server_step, split_budget)


def test_buffer_mean_and_server_step():
    rng = np.random.default_rng(0)
    deltas = [rng.standard_normal(7).astype(np.float32) for _ in range(4)]
    x = rng.standard_normal(7).astype(np.float32)
    np.testing.assert_allclose(buffer_mean(deltas), np.mean(deltas, axis=0), rtol=1e-6)
    new = server_step(x, deltas, 0.5)
    np.testing.assert_allclose(new, x + 0.5 * np.mean(deltas, axis=0), rtol=1e-6, atol=1e-7)
    assert new is not x and new.dtype == np.float32
    before = deltas[0].copy()
    server_step(x, deltas, 1.0)
    assert np.array_equal(deltas[0], before)  # inputs untouched


def test_buffer_mean_empty():
    with pytest.raises(ValueError):
        buffer_mean([])


def test_staleness_weight():
    assert polynomial_staleness_weight(0) == 1.0
    assert polynomial_staleness_weight(3, 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize("target,out,tot_t,tot_o,expected", [
    (10, 9, 30, 29, 1),   # steady state
    (10, 7, 30, 27, 2),   # growing: at most two
    (10, 10, 30, 29, 0),  # at target
    (10, 12, 30, 29, 0),  # shrinking
    (10, 7, 30, 29, 1),   # global slack limits
    (10, 7, 30, 30, 0),
])
def test_replacement_count(target, out, tot_t, tot_o, expected):
    assert replacement_count(target, out, tot_t, tot_o) == expected


def test_split_budget_keeps_sum_and_proportion():
    rng = np.random.default_rng(0)
    for budget in range(0, 40):
        shares = split_budget(budget, [10, 20, 0, 5], rng)
        assert sum(shares) == budget
        assert shares[2] == 0
    assert split_budget(35, [10, 20, 5], rng) == [10, 20, 5]
