"""Client assignment of the synchronous baselines: shares, partitions, first-k, UCB, BODS."""

import numpy as np
import pytest

from fedast_mpi.selection import (BayesSelector, UcbScores, first_k, random_assignment,
                                  sync_shares)


def _check_disjoint(assignment, shares, n_clients):
    assert [len(a) for a in assignment] == list(shares)
    allc = np.concatenate(assignment) if assignment else np.zeros(0, np.int64)
    assert np.unique(allc).size == allc.size
    assert np.all((allc >= 0) & (allc < n_clients))
    assert all(a.dtype == np.int64 for a in assignment)


# ---------------------------------------------------------------- sync_shares
def test_sync_shares_paper_heterogeneous_weights():
    floors = np.array([100, 84, 47, 67])
    seen_extra = np.zeros(4)
    for seed in range(40):
        h = np.array(sync_shares(300, [100, 84, 47, 67], [True] * 4, np.random.default_rng(seed)))
        assert h.sum() == 300
        assert np.all(h >= floors) and (h - floors).sum() == 2
        seen_extra += h - floors
    assert np.all(seen_extra > 0)  # the 2 leftovers are drawn at random, every round anew


def test_sync_shares_proportional_and_deterministic():
    assert sync_shares(300, [1, 1, 1, 1], [True] * 4, np.random.default_rng(0)) == [75] * 4
    a = sync_shares(300, [100, 84, 47, 67], [True] * 4, np.random.default_rng(7))
    b = sync_shares(300, [100, 84, 47, 67], [True] * 4, np.random.default_rng(7))
    assert a == b


def test_sync_shares_inactive_tasks_get_nothing():
    h = sync_shares(300, [100, 84, 47, 67], [True, False, True, True], np.random.default_rng(1))
    assert h[1] == 0 and sum(h) == 300
    floors = np.floor(300 * np.array([100, 47, 67]) / 214).astype(int)  # 140, 65, 93
    assert np.all(np.array([h[0], h[2], h[3]]) >= floors)
    assert sync_shares(300, [1, 1], [False, False], np.random.default_rng(0)) == [0, 0]
    assert sync_shares(0, [1, 1], [True, True], np.random.default_rng(0)) == [0, 0]


def test_sync_shares_minimum_one_and_overflow():
    assert sync_shares(10, [1000, 1], [True, True], np.random.default_rng(0)) == [9, 1]
    # more active tasks than clients: one each, nothing taken back (documented)
    assert sync_shares(2, [1, 1, 1], [True] * 3, np.random.default_rng(0)) == [1, 1, 1]
    with pytest.raises(ValueError):
        sync_shares(10, [1, 1], [True], np.random.default_rng(0))


# ---------------------------------------------------------- random_assignment
def test_random_assignment():
    shares = [5, 0, 7, 3]
    a = random_assignment(40, shares, np.random.default_rng(3))
    _check_disjoint(a, shares, 40)
    b = random_assignment(40, shares, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = random_assignment(40, shares, np.random.default_rng(4))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    full = random_assignment(6, [2, 4], np.random.default_rng(0))
    assert sorted(np.concatenate(full)) == list(range(6))
    with pytest.raises(ValueError):
        random_assignment(5, [3, 3], np.random.default_rng(0))


# -------------------------------------------------------------------- first_k
def test_first_k():
    t = [3.0, 1.0, 2.0, 1.0]
    ids = [10, 11, 12, 9]
    assert first_k(t, ids, 2).tolist() == [False, True, False, True]
    assert first_k(t, ids, 3).tolist() == [False, True, True, True]
    assert first_k(t, ids, 1).tolist() == [False, False, False, True]  # tie → lower id
    assert first_k(t, ids, None).all()
    assert first_k(t, ids, 10).all()
    assert not first_k(t, ids, 0).any()
    assert first_k([5.0, 5.0, 5.0], [5, 3, 4], 1).tolist() == [False, True, False]
    assert first_k([], [], 3).size == 0
    with pytest.raises(ValueError):
        first_k(t, ids, -1)


# ----------------------------------------------------------------------- UCB
def test_ucb_hand_computed_two_rounds():
    u = UcbScores(2, 3, gamma=0.5)
    assert np.all(np.isinf(u.scores()))
    u.update([np.array([0, 1]), np.array([2])], [np.array([1.0, 2.0]), np.array([4.0])])
    np.testing.assert_allclose(u.counts, [[1, 1, 0], [0, 0, 1]])
    # r = 1: Σγ^s = 1, no exploration bonus
    s1 = u.scores()
    np.testing.assert_allclose(s1[np.isfinite(s1)], [1.0, 2.0, 4.0])
    u.update([np.array([0]), np.array([0, 2])], [np.array([3.0]), np.array([1.0, 2.0])])
    np.testing.assert_allclose(u.counts, [[1.5, 0.5, 0], [1, 0, 1.5]])
    np.testing.assert_allclose(u.losses, [[3.5, 1.0, 0], [1.0, 0, 4.0]])
    assert u.rounds == 2 and u.discount_sum() == pytest.approx(1.5)
    lg = np.log(1.5)
    expected = np.array([
        [3.5 / 1.5 + np.sqrt(2 * lg / 1.5), 1.0 / 0.5 + np.sqrt(2 * lg / 0.5), np.inf],
        [1.0 + np.sqrt(2 * lg), np.inf, 4.0 / 1.5 + np.sqrt(2 * lg / 1.5)],
    ])
    np.testing.assert_allclose(u.scores(), expected)


def test_ucb_undiscounted_bonus():
    u = UcbScores(1, 2, gamma=1.0)
    for _ in range(3):
        u.update([np.array([0])], [np.array([0.0])])
    assert u.discount_sum() == 3.0
    np.testing.assert_allclose(u.scores(), [[np.sqrt(2 * np.log(3.0) / 3.0), np.inf]])


def test_ucb_update_validates():
    u = UcbScores(2, 3, gamma=0.9)
    with pytest.raises(ValueError):
        u.update([np.array([0, 0]), np.array([], np.int64)], [np.array([1.0, 1.0]), np.array([])])
    with pytest.raises(ValueError):
        u.update([np.array([0])], [np.array([1.0])])


def _ranked_ucb(n_tasks=2, n_clients=10):
    """After one round where everybody trained: score of client i on every task = i."""
    u = UcbScores(n_tasks, n_clients, gamma=0.9)
    u.update([np.arange(n_clients)] * n_tasks, [np.arange(n_clients, dtype=float)] * n_tasks)
    return u


def test_ucb_select_prefers_high_scores_and_rotates_start():
    u = _ranked_ucb()
    a0 = u.select([2, 3], round_index=0, rng=np.random.default_rng(0), pool_extra=5)  # pool = all
    _check_disjoint(a0, [2, 3], 10)
    assert a0[0].tolist() == [9, 8] and a0[1].tolist() == [7, 6, 5]
    a1 = u.select([2, 3], round_index=1, rng=np.random.default_rng(0), pool_extra=5)
    assert a1[1].tolist() == [9, 8, 7] and a1[0].tolist() == [6, 5]
    a2 = u.select([2, 3], round_index=2, rng=np.random.default_rng(0), pool_extra=5)
    assert [x.tolist() for x in a2] == [x.tolist() for x in a0]


def test_ucb_select_ties_go_to_lower_index():
    u = UcbScores(2, 6, gamma=0.9)  # all +inf
    a = u.select([2, 2], round_index=0, rng=np.random.default_rng(0), pool_extra=2)
    assert a[0].tolist() == [0, 1] and a[1].tolist() == [2, 3]


def test_ucb_select_stays_in_pool():
    u = _ranked_ucb(n_clients=50)
    for seed in range(10):
        a = u.select([3, 2], round_index=0, rng=np.random.default_rng(seed), pool_extra=0)
        _check_disjoint(a, [3, 2], 50)
        union = np.sort(np.concatenate(a))
        # the pool has exactly 5 random clients; task 0 (served first) has its best 3
        assert sorted(a[0].tolist()) == union[-3:].tolist()
    picks = {tuple(np.sort(np.concatenate(u.select([3, 2], 0, np.random.default_rng(s), 0))))
             for s in range(10)}
    assert len(picks) > 1  # pools are random, not always the global top clients


def test_ucb_state_dict_round_trip():
    u = _ranked_ucb()
    u.update([np.array([1, 2]), np.array([3])], [np.array([0.5, 0.1]), np.array([2.0])])
    v = UcbScores(2, 10, gamma=0.1)
    v.load_state_dict(u.state_dict())
    assert v.gamma == u.gamma and v.rounds == u.rounds
    np.testing.assert_array_equal(v.scores(), u.scores())
    a = u.select([3, 3], 5, np.random.default_rng(2))
    b = v.select([3, 3], 5, np.random.default_rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError):
        UcbScores(3, 10, 0.9).load_state_dict(u.state_dict())


# ----------------------------------------------------------------------- BODS
def test_bods_encode():
    b = BayesSelector(2, 4)
    x = b.encode([np.array([0, 3]), np.array([1])])
    assert x.tolist() == [1, 0, 0, 1, 0, 1, 0, 0]


def test_bods_observe_by_hand():
    b = BayesSelector(2, 3, alpha=0.25)
    y1 = b.observe([np.array([0, 1]), np.array([2])],
                   [np.array([True, False]), np.array([True])],
                   [np.array([2.0, 5.0]), np.array([3.0])])
    # counts [[1,0,0],[0,0,1]]: variance 2/9 per task; times 2 (5 was discarded) + 3
    assert y1 == pytest.approx(0.25 * 5.0 + 0.75 * (4.0 / 9.0))
    np.testing.assert_array_equal(b.counts, [[1, 0, 0], [0, 0, 1]])
    y2 = b.observe([np.array([0]), np.array([1, 2])],
                   [np.array([False]), np.array([True, True])],
                   [np.array([9.0]), np.array([1.0, 4.0])])
    # task 0 kept nothing → 0 time; counts [[1,0,0],[0,1,2]]: variances 2/9 and 2/3
    np.testing.assert_array_equal(b.counts, [[1, 0, 0], [0, 1, 2]])
    assert y2 == pytest.approx(0.25 * 4.0 + 0.75 * (2.0 / 9.0 + 2.0 / 3.0))
    assert b.xs.shape == (2, 6) and b.ys.tolist() == pytest.approx([y1, y2])
    assert b.xs[1].tolist() == [1, 0, 0, 0, 1, 1]  # x is the whole assignment, kept or not


def test_bods_first_select_is_random_assignment():
    b = BayesSelector(3, 20)
    a = b.select([4, 5, 6], np.random.default_rng(11))
    r = random_assignment(20, [4, 5, 6], np.random.default_rng(11))
    assert all(np.array_equal(x, y) for x, y in zip(a, r))


def test_bods_select_valid_after_observations():
    b = BayesSelector(2, 30, candidates=20)
    rng = np.random.default_rng(0)
    for _ in range(4):
        a = b.select([5, 4], rng)
        _check_disjoint(a, [5, 4], 30)
        b.observe(a, [np.ones(len(x), bool) for x in a], [rng.random(len(x)) for x in a])
    a = b.select([5, 4], rng)
    _check_disjoint(a, [5, 4], 30)


def _bad_client_history(n_obs=40, seed=0):
    """Observations where client 0 on task 0 costs 10, everything else ~0."""
    n_tasks, n_clients, shares = 2, 10, [3, 3]
    b = BayesSelector(n_tasks, n_clients)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n_obs):
        a = random_assignment(n_clients, shares, rng)
        xs.append(b.encode(a))
        ys.append(10.0 * (0 in a[0]) + 0.01 * rng.random())
    state = b.state_dict()
    state["xs"], state["ys"] = np.array(xs), np.array(ys)
    b.load_state_dict(state)
    return b, shares


def test_bods_select_avoids_predicted_bad_assignment():
    b, shares = _bad_client_history()
    bad = 0
    trials = 30
    for seed in range(trials):
        a = b.select(shares, np.random.default_rng(100 + seed))
        _check_disjoint(a, shares, 10)
        bad += int(0 in a[0])
    # chance level: client 0 lands in task 0 with probability 3/10
    assert bad / trials < 0.1


def test_bods_state_dict_round_trip():
    b, shares = _bad_client_history(n_obs=8)
    b.observe([np.array([1, 2, 3]), np.array([4, 5, 6])],
              [np.array([True, True, False]), np.array([True, False, True])],
              [np.ones(3), np.ones(3)])
    c = BayesSelector(2, 10, alpha=0.9)
    c.load_state_dict(b.state_dict())
    assert c.alpha == b.alpha
    np.testing.assert_array_equal(c.counts, b.counts)
    np.testing.assert_array_equal(c.xs, b.xs)
    np.testing.assert_array_equal(c.ys, b.ys)
    x = b.select(shares, np.random.default_rng(5))
    y = c.select(shares, np.random.default_rng(5))
    assert all(np.array_equal(p, q) for p, q in zip(x, y))
    with pytest.raises(ValueError):
        BayesSelector(2, 11).load_state_dict(b.state_dict())
