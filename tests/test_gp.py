"""Gaussian process (Matern ν=1.5) and expected improvement for Sync-Bayes-ST."""

import numpy as np
import pytest
from scipy.stats import norm

from fedast_mpi.gp import GaussianProcess, expected_improvement, matern32, pairwise_distances


def test_matern32_by_hand():
    a = np.array([[0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 0.0]])
    k = matern32(a, b, length_scale=2.0)
    assert k.shape == (2, 1)
    assert k[0, 0] == pytest.approx(1.0)
    s = np.sqrt(3.0) * 5.0 / 2.0  # r = 5
    assert k[1, 0] == pytest.approx((1 + s) * np.exp(-s), rel=1e-12)
    np.testing.assert_allclose(matern32(a, a, 1.0), matern32(a, a, 1.0).T)
    with pytest.raises(ValueError):
        matern32(a, b, 0.0)


def test_pairwise_distances_binary_vectors():
    rng = np.random.default_rng(0)
    x = (rng.random((6, 500)) < 0.3).astype(np.uint8)
    d = pairwise_distances(x, x)
    ref = np.sqrt(((x[:, None, :].astype(float) - x[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(d, ref, atol=1e-9)
    assert np.all(np.diag(d) == 0)


def test_interpolates_and_uncertainty_grows_away_from_data():
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array([0.0, 1.0, 4.0, 9.0])
    gp = GaussianProcess().fit(x, y)
    mean, std = gp.predict(x)
    np.testing.assert_allclose(mean, y, atol=1e-3)
    assert np.all(std >= 0) and np.all(std < 1e-2)
    _, far = gp.predict(np.array([[3.2], [4.0], [6.0], [50.0]]))
    assert np.all(far >= 0)
    assert far[0] > 1e-2 and far[1] > far[0] and far[2] > far[1] and far[3] > far[2]
    assert far[3] == pytest.approx(np.std(y), rel=1e-3)  # prior std in y units


def test_fit_picks_sensible_length_scale():
    x = np.linspace(0.0, 2 * np.pi, 15)[:, None]
    y = 10.0 + 3.0 * np.sin(x[:, 0])
    gp = GaussianProcess().fit(x, y)
    d = np.abs(x - x.T)[np.triu_indices(15, 1)]
    grid = np.median(d) * np.logspace(-1, 1, 12)
    assert np.isclose(grid, gp.length_scale).any()
    assert grid[3] < gp.length_scale < grid[-1]  # neither the tiny nor the huge ones
    for ell in grid:  # the chosen scale maximises the log marginal likelihood over the grid
        other = GaussianProcess(length_scales=[ell]).fit(x, y).log_marginal_likelihood
        assert gp.log_marginal_likelihood >= other - 1e-9
    xt = np.linspace(0.2, 6.0, 23)[:, None]
    mean, _ = gp.predict(xt)
    assert np.max(np.abs(mean - (10.0 + 3.0 * np.sin(xt[:, 0])))) < 0.05
    # a too-short fixed length scale predicts the held-out points much worse
    bad, _ = GaussianProcess(length_scales=[0.05]).fit(x, y).predict(xt)
    assert np.max(np.abs(bad - (10.0 + 3.0 * np.sin(xt[:, 0])))) > 1.0


def test_fit_with_duplicate_inputs_and_constant_targets():
    x = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    gp = GaussianProcess().fit(x, np.array([2.0, 2.0, 2.0]))
    mean, std = gp.predict(np.array([[0.5, 0.5]]))
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    assert mean[0] == pytest.approx(2.0)


def test_predict_before_fit_raises():
    with pytest.raises(RuntimeError):
        GaussianProcess().predict(np.zeros((1, 2)))


def test_expected_improvement():
    mean = np.array([0.0, 1.0, 2.0, 3.0, 0.5])
    std = np.array([0.0, 0.0, 1.0, 1.0, 2.0])
    ei = expected_improvement(mean, std, y_best=2.5)
    assert ei[0] == 0.0 and ei[1] == 0.0  # σ == 0 → exactly 0, even with μ < y_best
    z = (2.5 - 2.0) / 1.0
    assert ei[2] == pytest.approx(0.5 * norm.cdf(z) + norm.pdf(z))
    assert ei[3] > 0 and ei[2] > ei[3]
    assert np.all(ei >= 0)
    grid = expected_improvement(np.linspace(-3, 3, 50), np.full(50, 0.7), 0.0)
    assert np.all(np.diff(grid) < 0)  # lower mean → larger improvement (minimisation)
    assert np.all(grid > 0)
