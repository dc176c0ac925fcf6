"""A small Gaussian process (Matern ν=1.5) and expected improvement, for Sync-Bayes-ST.

Replaces the authors' sklearn GaussianProcessRegressor(kernel=Matern()) (PAPER.md §4.2).
Exact GP regression on n observations: O(n³) in n, vectorised distances, so
binary inputs of a few thousand dimensions and a few hundred points stay cheap.
The length scale is chosen on a log grid by the log marginal likelihood instead of
sklearn's L-BFGS restarts: deterministic and needs no random state.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.linalg import cho_solve, solve_triangular
from scipy.stats import norm

_SQRT3 = np.sqrt(3.0)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of a (n, d) and b (m, d), shape (n, m)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    sq = (np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :]
          - 2.0 * (a @ b.T))
    return np.sqrt(np.maximum(sq, 0.0))


def matern32(a: np.ndarray, b: np.ndarray, length_scale: float) -> np.ndarray:
    """Matern ν=1.5 kernel (1 + √3 r/ℓ) exp(−√3 r/ℓ) between the rows of a and b."""
    if length_scale <= 0:
        raise ValueError(f"length_scale must be positive, got {length_scale}")
    s = _SQRT3 * pairwise_distances(a, b) / float(length_scale)
    return (1.0 + s) * np.exp(-s)


def _cholesky(k: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor, adding growing jitter to the diagonal if needed."""
    jitter = 0.0
    eye = np.eye(len(k))
    for _ in range(8):
        try:
            return np.linalg.cholesky(k + jitter * eye)
        except np.linalg.LinAlgError:
            jitter = 1e-10 if jitter == 0.0 else jitter * 10.0
    raise np.linalg.LinAlgError("kernel matrix not positive definite even with jitter")


class GaussianProcess:
    """Zero-mean GP on standardised targets, unit signal variance, Matern ν=1.5 kernel.

    `noise` is the variance added to the kernel diagonal (in standardised units).
    `length_scales` is the grid searched by `fit`; None means the median pairwise
    distance of the training inputs × logspace(0.1, 10, 12).
    """

    def __init__(self, noise: float = 1e-6, length_scales: Sequence[float] | None = None):
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.noise = float(noise)
        self.length_scales = None if length_scales is None else [float(v) for v in length_scales]
        self.length_scale: float | None = None
        self.log_marginal_likelihood: float | None = None
        self._x: np.ndarray | None = None

    def _grid(self, x: np.ndarray) -> np.ndarray:
        if self.length_scales is not None:
            return np.asarray(self.length_scales, dtype=np.float64)
        d = pairwise_distances(x, x)[np.triu_indices(len(x), k=1)]
        d = d[d > 0]
        scale = float(np.median(d)) if d.size else 1.0
        return scale * np.logspace(-1.0, 1.0, 12)

    def fit(self, x: np.ndarray, y: np.ndarray) -> "GaussianProcess":
        """Standardise y, pick the grid length scale with the best log marginal likelihood."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        y = np.asarray(y, dtype=np.float64).ravel()
        if len(x) != len(y) or len(y) == 0:
            raise ValueError(f"need matching, non-empty x and y, got {len(x)} and {len(y)}")
        self._y_mean = float(y.mean())
        std = float(y.std())
        self._y_std = std if std > 0 else 1.0
        z = (y - self._y_mean) / self._y_std
        dist = pairwise_distances(x, x)
        n = len(z)
        best: tuple[float, float, np.ndarray, np.ndarray] | None = None
        for ell in self._grid(x):
            s = _SQRT3 * dist / ell
            k = (1.0 + s) * np.exp(-s)
            k[np.diag_indices(n)] += self.noise
            chol = _cholesky(k)
            alpha = cho_solve((chol, True), z)
            lml = (-0.5 * float(z @ alpha) - float(np.log(np.diag(chol)).sum())
                   - 0.5 * n * np.log(2.0 * np.pi))
            if best is None or lml > best[0]:  # ties keep the smaller length scale
                best = (lml, float(ell), chol, alpha)
        if best is None:
            raise ValueError("GaussianProcess.fit: the length-scale grid is empty")
        self.log_marginal_likelihood, self.length_scale, self._chol, self._alpha = best
        self._x = x
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation (>= 0) in the original y units."""
        if self._x is None or self.length_scale is None:
            raise RuntimeError("GaussianProcess.predict called before fit")
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        k_star = matern32(self._x, x, self.length_scale)  # (n_train, n_query)
        mean = k_star.T @ self._alpha
        v = solve_triangular(self._chol, k_star, lower=True)
        var = np.maximum(1.0 - np.einsum("ij,ij->j", v, v), 0.0)
        return mean * self._y_std + self._y_mean, np.sqrt(var) * self._y_std


def expected_improvement(mean, std, y_best) -> np.ndarray:
    """Expected improvement for MINIMISATION: (y_best − μ)Φ(z) + σφ(z), z = (y_best − μ)/σ.

    Exactly 0 where σ == 0 (what the authors' code intended; PAPER.md §8 item 7).
    """
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    imp = float(y_best) - mean
    pos = std > 0
    z = np.divide(imp, std, out=np.zeros(np.broadcast_shapes(imp.shape, std.shape)), where=pos)
    ei = imp * norm.cdf(z) + std * norm.pdf(z)
    return np.where(pos, np.maximum(ei, 0.0), 0.0)
