"""Realloc (PAPER.md §2): estimators, allocations, buffer/period/K rules and the Reallocator."""

import math

import numpy as np
import pytest

from fedast_mpi import aggregation
from fedast_mpi.realloc import (Reallocator, allocate_code, allocate_paper, code_buffer,
                                code_period, code_sample, normalized_variance, paper_period,
                                paper_sigma2, rescale_buffer)

NAN = float("nan")

# Three deltas of dimension 2, by hand: mean (2, 3), ||mean||² = 13;
# deviations (-1,-1), (1,-1), (0,2) → squared norms 2 + 2 + 4 = 8 → nv = 8 / (3·13) = 8/39.
# Masked to the first coordinate: values 1, 3, 2 → mean 2, ||mean||² = 4; 1 + 1 + 0 = 2
# → nv = 2 / (3·4) = 1/6.
HAND = [np.array([1.0, 2.0]), np.array([3.0, 2.0]), np.array([2.0, 5.0])]


# --------------------------------------------------------------------------------------------
# Estimators


def test_normalized_variance_by_hand():
    assert normalized_variance(HAND) == pytest.approx(8 / 39, rel=1e-12)
    assert normalized_variance(np.stack(HAND)) == pytest.approx(8 / 39, rel=1e-12)
    assert normalized_variance(HAND, np.array([True, False])) == pytest.approx(1 / 6, rel=1e-12)
    assert normalized_variance(HAND, np.array([False, True])) == pytest.approx(
        (1 + 1 + 4) / (3 * 9), rel=1e-12)  # values 2, 2, 5: mean 3


def test_normalized_variance_edge_cases():
    assert math.isnan(normalized_variance([np.array([1.0, -1.0]), np.array([-1.0, 1.0])]))
    assert math.isnan(normalized_variance(HAND, np.array([False, False])))
    assert normalized_variance([np.array([2.0, 3.0])] * 4) == 0.0
    with pytest.raises(ValueError):
        normalized_variance([])
    with pytest.raises(ValueError):
        normalized_variance(HAND, np.array([True]))


def test_normalized_variance_scale_invariant_and_float32_blocks():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((7, 200_003)) + 0.3).astype(np.float32)  # > one column block
    nv = normalized_variance(x)
    x64 = x.astype(np.float64)
    ref = np.sum((x64 - x64.mean(0)) ** 2) / (7 * np.sum(x64.mean(0) ** 2))
    assert nv == pytest.approx(ref, rel=1e-10)
    assert normalized_variance(-0.027 * x64) == pytest.approx(nv, rel=1e-10)  # δ = −τ η_c Δ
    mask = rng.random(x.shape[1]) < 0.5
    assert normalized_variance(list(x), mask) == pytest.approx(
        normalized_variance(x64[:, mask]), rel=1e-10)


def test_paper_sigma2_and_code_sample_by_hand():
    # paper: η_c η_s τ nv = 0.1 · 0.5 · 5 · 8/39
    assert paper_sigma2(8 / 39, 0.5, 0.1, 5) == pytest.approx(0.25 * 8 / 39)
    # code: (η_c η_s nv / (η_c τ)²) / 2 = (0.05 · 8/39 / 0.25) / 2 = 0.8/39
    assert code_sample(HAND, None, 0.5, 0.1, 5) == pytest.approx(0.8 / 39, rel=1e-12)
    assert code_sample(HAND, np.array([True, False]), 0.5, 0.1, 5) == pytest.approx(
        0.1 / 6, rel=1e-12)


def test_paper_and_code_disagree_on_local_lr():
    """PAPER.md §9 in miniature: same statistics, η_c 0.1 vs 7 (η_s 0.1, τ 27)."""
    rng = np.random.default_rng(2)
    deltas = rng.standard_normal((7, 50)) + 1.0
    slow, fast = (0.1, 0.1, 27), (0.1, 7.0, 27)
    nv = normalized_variance(deltas)
    sig = [paper_sigma2(nv, *slow), paper_sigma2(nv, *fast)]
    smp = [code_sample(deltas, None, *slow), code_sample(deltas, None, *fast)]
    assert sig[1] / sig[0] == pytest.approx(70)
    assert smp[0] / smp[1] == pytest.approx(70)
    paper = allocate_paper(384, sig, [True, True])
    code = allocate_code(384, smp, [True, True], 32)
    assert paper[1] > paper[0] and code[0] > code[1]
    assert paper[1] / paper[0] == pytest.approx(math.sqrt(70), rel=0.05)
    assert code == [352, 32]


# --------------------------------------------------------------------------------------------
# Allocation


def test_allocate_paper_proportional_to_sqrt():
    assert allocate_paper(70, [1, 4, 16], [True] * 3) == [10, 20, 40]
    assert allocate_paper(70, [1, 4, 16, 9], [True, True, True, False]) == [10, 20, 40, 0]
    assert allocate_paper(10, [1e-9, 1.0, 1e6], [True] * 3) == [1, 1, 8]  # ≥ 1 each
    assert allocate_paper(2, [1.0, 1.0, 100.0], [True] * 3) == [0, 0, 2]  # total < #active
    assert allocate_paper(0, [1.0, 2.0], [True, True]) == [0, 0]
    with pytest.raises(ValueError):
        allocate_paper(5, [1.0], [False])


def test_allocate_paper_unknown_estimates():
    # NaN and 0 act as the smallest positive estimate (4): weights sqrt 2, 2, 2
    assert allocate_paper(6, [NAN, 4.0, 0.0, 9.0], [True, True, True, False]) == [2, 2, 2, 0]
    assert allocate_paper(7, [NAN, NAN], [True, True]) == [4, 3]  # equal; tie → lowest index
    assert allocate_paper(9, [NAN, 1.0, 4.0], [True, True, True]) == [2, 2, 5]


def _random_case(rng):
    m = int(rng.integers(1, 7))
    active = rng.random(m) < 0.8
    if not active.any():
        active[int(rng.integers(m))] = True
    est = rng.lognormal(0.0, 3.0, m)
    est[rng.random(m) < 0.1] = NAN
    est[rng.random(m) < 0.05] = 0.0
    total = int(rng.integers(0, 1000))
    return total, list(est), list(active)


def test_allocate_paper_properties():
    rng = np.random.default_rng(3)
    for _ in range(2000):
        total, est, active = _random_case(rng)
        out = allocate_paper(total, est, active)
        assert sum(out) == total
        assert all(r == 0 for r, a in zip(out, active) if not a)
        if total >= sum(active):
            assert all(r >= 1 for r, a in zip(out, active) if a)


def test_allocate_code_demo():
    # ideal = floor(384·a/10) − 32 = [6, 44, 83, 121]; eight more chunks by largest ideal
    out = allocate_code(384, [1.0, 2.0, 3.0, 4.0], [True] * 4, 32)
    assert out == [32, 64, 128, 160]
    assert sum(out) == 384 and all(r >= 32 and r % 32 == 0 for r in out)
    assert allocate_code(384, [1.0, 1.0, 1.0, 1.0], [True] * 4, 32) == [96] * 4
    assert allocate_code(384, [1.0, NAN, 5.0, 1.0], [True, False, True, True], 32) == [
        64, 0, 256, 64]


def test_allocate_code_truncates_and_falls_back():
    # authors: [64, 64] = 128 > 100; here the last chunk is cut to the 4 left
    assert allocate_code(100, [1.0, 1.0], [True, True], 32) == [64, 36]
    assert allocate_code(50, [1.0, 4.0], [True, True], 32) == [10, 40]  # < one chunk each
    with pytest.raises(ValueError):
        allocate_code(64, [1.0], [True], 0)


def test_allocate_code_properties():
    rng = np.random.default_rng(4)
    for _ in range(2000):
        total, est, active = _random_case(rng)
        chunk = int(rng.integers(1, 40))
        out = allocate_code(total, est, active, chunk)
        assert sum(out) == total
        assert all(r == 0 for r, a in zip(out, active) if not a)
        if total >= chunk * sum(active):
            assert all(r >= chunk for r, a in zip(out, active) if a)
            assert sum(r % chunk != 0 for r in out) <= 1


# --------------------------------------------------------------------------------------------
# Buffers, periods, K


def test_buffer_rules():
    assert rescale_buffer(3, 96, 192) == 6
    assert rescale_buffer(3, 96, 32) == 1
    assert rescale_buffer(3, 96, 0) == 1
    assert rescale_buffer(4, 0, 50) == 4
    assert rescale_buffer(0, 0, 50) == 1
    for r_new in range(1, 500):  # R/b kept within rounding
        b = rescale_buffer(5, 175, r_new)
        assert abs(b - 5 * r_new / 175) <= 0.5 or b == 1
    assert code_buffer(96, 32) == 3
    assert code_buffer(97, 32) == 4
    assert code_buffer(0, 32) == 1


def test_periods():
    assert paper_period(4, 384, 0.75) == 1152
    assert paper_period(3, 100, 0.7) == 210  # float noise 210.00000000000003 not rounded up
    assert paper_period(1, 3, 0.75) == 3
    assert paper_period(0, 0, 0.75) == 1
    assert code_period(4, 384, 0.75) == 1152  # demo: floor(0.75·384)·4
    assert code_period(3, 385, 0.75) == 288 * 3
    assert code_period(0, 384, 0.75) == 1


@pytest.mark.parametrize("variant,target,out,tot_t,tot_o,expected", [
    ("paper", 10, 9, 30, 29, 1),   # steady
    ("paper", 10, 5, 30, 30, 2),   # growing: at most two, no global slack check
    ("paper", 10, 10, 30, 29, 0),  # at target
    ("paper", 10, 12, 30, 29, 0),  # shrinking
    ("code", 10, 9, 30, 29, 1),
    ("code", 10, 5, 30, 25, 2),
    ("code", 10, 5, 30, 29, 1),    # global slack limits
    ("code", 10, 5, 30, 30, 0),
    ("code", 10, 12, 30, 29, 0),
])
def test_replacement_count(variant, target, out, tot_t, tot_o, expected):
    assert _make(variant).replacement_count(target, out, tot_t, tot_o) == expected
    if variant == "code":
        assert expected == aggregation.replacement_count(target, out, tot_t, tot_o)


# --------------------------------------------------------------------------------------------
# Reallocator


def _make(variant, window=3, d=(5, 4), initial=(4, 4), hyper=None, masks=None, buffers=None):
    return Reallocator(variant=variant, window=window, period_factor=0.75, r_to_b=2.0,
                       n_params=list(d), masks=masks or [None] * len(d),
                       hyper=hyper or [(1.0, 0.1, 2)] * len(d), initial_requests=list(initial),
                       initial_buffers=list(buffers or [2] * len(d)))


def _deltas(seed, n, d):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(d) + 0.5).astype(np.float32) for _ in range(n)]


def test_paper_window_keeps_last_v():
    ra = _make("paper")
    xs = _deltas(5, 5, 5)
    for x in xs[:2]:
        ra.observe(0, x)
    assert math.isnan(ra.estimates([False, False])[0])  # window not full yet
    for x in xs[2:]:
        ra.observe(0, x)
    est = ra.estimates([False, False])
    assert est[0] == pytest.approx(paper_sigma2(normalized_variance(xs[2:]), 1.0, 0.1, 2),
                                   rel=1e-12)
    assert est[0] != pytest.approx(paper_sigma2(normalized_variance(xs[:3]), 1.0, 0.1, 2))
    assert math.isnan(est[1])
    assert ra.counter == 5


def test_code_samples_on_window_minus_one():
    mask = np.array([True, True, False, True, False])
    ra = _make("code", hyper=[(0.5, 0.1, 5), (1.0, 0.1, 2)], masks=[mask, None])
    xs = _deltas(6, 5, 5)
    for x in xs[:2]:
        ra.observe(0, x)
    assert math.isnan(ra.estimates([False, False])[0])  # no sample before the window fills
    for x in xs[2:]:
        ra.observe(0, x)
    # samples after the 3rd, 4th, 5th updates on the last two deltas each
    samples = [code_sample(xs[k:k + 2], mask, 0.5, 0.1, 5) for k in (1, 2, 3)]
    assert ra.estimates([False, False])[0] == pytest.approx(np.mean(samples), rel=1e-12)
    assert math.isnan(ra.estimates([True, False])[0])  # NaN when finished


def test_due_paper():
    ra = _make("paper")  # period ceil(0.75 · 2 · 8) = 12
    xs = _deltas(7, 12, 5)
    for k in range(11):
        ra.observe(k % 2, xs[k][: 5 if k % 2 == 0 else 4])
    assert not ra.due([0, 0], [False, False], [4, 4])
    ra.observe(1, xs[11][:4])
    assert ra.due([0, 0], [False, False], [4, 4])
    assert not ra.due([0, 0], [False, False], [8, 4])  # period grows with ΣR: 18
    assert not ra.due([0, 0], [True, True], [0, 0])
    # windows must be full: twelve updates of task 0 only
    rb = _make("paper")
    for k in range(12):
        rb.observe(0, xs[k][:5])
    assert not rb.due([0, 0], [False, False], [4, 4])
    assert rb.due([0, 0], [False, True], [4, 0])  # finished task 1 does not count (period 3)


def test_due_code():
    ra = _make("code")  # period floor(0.75 · 8) · 2 = 12, whatever the current requests
    xs = _deltas(8, 12, 5)
    for k in range(11):
        ra.observe(k % 2, xs[k][: 5 if k % 2 == 0 else 4])
    assert not ra.due([9, 9], [False, False], [4, 4])
    ra.observe(1, xs[11][:4])
    assert ra.due([9, 9], [False, False], [100, 100])
    assert not ra.due([9, 8], [False, False], [4, 4])  # every task needs > 8 aggregations
    assert not ra.due([9, 8], [False, True], [4, 0])   # ... finished ones too (authors' code)
    rb = _make("code")
    for k in range(12):
        rb.observe(0, xs[k][:5])
    assert not rb.due([9, 9], [False, False], [4, 4])  # task 1 has no sample
    assert rb.due([9, 9], [False, True], [4, 0])       # period floor(6)·1 = 6


def _fill_both(ra, seed, n=9):
    xs = _deltas(seed, n, 5)
    for k, x in enumerate(xs):
        ra.observe(0, x)
        ra.observe(1, (x[:4] * (1 + k)).astype(np.float32) + 0.1 * k)


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_reallocate_preserves_total_and_resets(variant):
    ra = _make(variant, d=(5, 4, 3), initial=(5, 6, 7), buffers=(2, 3, 4))
    _fill_both(ra, 9)
    before = ra.counter
    assert before > 0
    new, buffers, sig = ra.reallocate([5, 6, 7], [2, 3, 4], [False, False, True])
    assert sum(new) == 11 and new[2] == 0 and buffers[2] == 4
    assert math.isnan(sig[2]) and not math.isnan(sig[0])
    assert ra.counter == 0
    if variant == "paper":
        assert buffers[:2] == [rescale_buffer(2, 5, new[0]), rescale_buffer(3, 6, new[1])]
        # later rounds rescale from the initial R/b again: the rounding never drifts
        _fill_both(ra, 9)
        new2, buffers2, _ = ra.reallocate(new, buffers, [False, False, True])
        assert buffers2[:2] == [rescale_buffer(2, 5, new2[0]), rescale_buffer(3, 6, new2[1])]
    else:
        assert buffers == [2, 3, 4]
        assert all(math.isnan(e) for e in ra.estimates([False, False, False]))  # samples cleared
        ra.observe(0, _deltas(10, 1, 5)[0])  # window kept: one update gives a sample again
        assert not math.isnan(ra.estimates([False, False, False])[0])


def test_reallocate_code_chunks():
    ra = Reallocator(variant="code", window=3, period_factor=0.75, r_to_b=32.0, n_params=[5, 4],
                     masks=[None, None], hyper=[(0.1, 0.1, 27), (0.1, 7.0, 27)],
                     initial_requests=[96, 96], initial_buffers=[3, 3])
    _fill_both(ra, 11)
    new, _, sig = ra.reallocate([96, 96], [3, 3], [False, False])
    assert sum(new) == 192 and all(r % 32 == 0 and r >= 32 for r in new)
    assert sig[0] > sig[1] and new[0] > new[1]


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_state_dict_round_trip(variant):
    a = _make(variant)
    _fill_both(a, 12, n=5)
    state = a.state_dict()
    for key, value in state.items():
        assert isinstance(value, (np.ndarray, int, float, str)), key
    b = _make(variant)
    b.load_state_dict(state)
    _fill_both(a, 13, n=4)  # mutating a afterwards must not change the snapshot
    c = _make(variant)
    c.load_state_dict(state)
    for r in (b, c):
        _fill_both(r, 13, n=4)
    def outcome(r):
        seen = (r.counter, r.due([9, 9], [False, False], [4, 4]), r.estimates([False, False]),
                r.reallocate([4, 4], [2, 2], [False, False]))
        _fill_both(r, 15, n=2)  # and after a Realloc
        return seen + (r.counter, r.estimates([False, False]))

    expected = outcome(a)
    assert expected[0] == 18
    for r in (b, c):
        np.testing.assert_equal(outcome(r), expected)
    with pytest.raises(ValueError):
        _make("code" if variant == "paper" else "paper").load_state_dict(state)


def test_forget_frees_and_round_trips():
    ra = _make("code")
    _fill_both(ra, 14, n=4)
    ra.forget(1)
    assert ra._rings[1] is None
    assert math.isnan(ra.estimates([False, False])[1])
    with pytest.raises(ValueError):
        ra.observe(1, np.zeros(4, np.float32))
    state = ra.state_dict()
    assert state["ring_1"].size == 0 and state["samples_1"].size == 0
    rb = _make("code")
    rb.load_state_dict(state)
    assert rb._rings[1] is None
    new, _, _ = rb.reallocate([4, 4], [1, 1], [False, True])
    assert new == [4, 0]


def test_observe_checks_size_and_copies():
    ra = _make("paper")
    with pytest.raises(ValueError):
        ra.observe(0, np.zeros(4, np.float32))
    x = np.ones(5, np.float32)
    ra.observe(0, x)
    x[:] = 7.0  # the window holds a copy
    assert ra.state_dict()["ring_0"][0].tolist() == [1.0] * 5
    with pytest.raises(ValueError):
        _make("other")
