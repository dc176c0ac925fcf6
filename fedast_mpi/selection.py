"""Client assignment for the synchronous baselines (PAPER.md §4): pure functions and small states.

Sync-ST: proportional shares + a fresh random partition per round; first-k straggler
mitigation; Sync-UCB-ST: discounted UCB scores per (task, client); Sync-BODS-ST:
a Gaussian process over binary assignment vectors and expected improvement.
Every random draw comes from an explicit np.random.Generator.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedast_mpi.gp import GaussianProcess, expected_improvement


def sync_shares(available: int, weights: Sequence[float], active: Sequence[bool],
                rng: np.random.Generator) -> list[int]:
    """Clients per task for one synchronous round (PAPER.md §4.1).

    h_m = max(1, floor(available · w_m / Σ_active w)) for active tasks with w_m > 0
    (the authors' max(min(w_m, 1), ·) for integer weights), 0 otherwise; then the
    leftover available − Σ h goes one by one to active positive-weight tasks drawn
    with replacement (one rng.choice call), redrawn every round. If the minimum of one
    client per task already pushes Σ h above `available` (more active tasks than
    clients), nothing is taken back, as in the authors' code: the sum then exceeds
    `available`.
    """
    w = np.asarray(weights, dtype=np.float64)
    act = np.asarray(active, dtype=bool)
    if w.shape != act.shape:
        raise ValueError(f"weights and active differ in length: {w.shape} vs {act.shape}")
    eligible = np.flatnonzero(act & (w > 0))
    shares = np.zeros(len(w), np.int64)
    if available <= 0 or eligible.size == 0:
        return [int(s) for s in shares]
    total = w[eligible].sum()
    shares[eligible] = np.maximum(1, np.floor(available * w[eligible] / total)).astype(np.int64)
    leftover = int(available - shares.sum())
    if leftover > 0:
        np.add.at(shares, rng.choice(eligible, size=leftover, replace=True), 1)
    return [int(s) for s in shares]


def random_assignment(n_clients: int, shares: Sequence[int],
                      rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint client sets: a fresh permutation of all clients cut into consecutive shares."""
    bounds = np.concatenate([[0], np.cumsum(np.asarray(shares, dtype=np.int64))])
    if bounds[-1] > n_clients:
        raise ValueError(f"shares need {bounds[-1]} clients, only {n_clients} exist")
    perm = rng.permutation(n_clients).astype(np.int64)
    return [perm[bounds[m]:bounds[m + 1]].copy() for m in range(len(bounds) - 1)]


def first_k(finish_times: Sequence[float], request_ids: Sequence[int], k: int | None) -> np.ndarray:
    """Mask of the requests kept by first-k (PAPER.md §4.0).

    The min(k, n) earliest by (finish time, request id); k None keeps everything.
    """
    t = np.asarray(finish_times, dtype=np.float64)
    ids = np.asarray(request_ids)
    if t.shape != ids.shape:
        raise ValueError(f"finish_times and request_ids differ in length: {t.shape} vs {ids.shape}")
    if k is None:
        return np.ones(len(t), dtype=bool)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    keep = np.zeros(len(t), dtype=bool)
    keep[np.lexsort((ids, t))[:k]] = True
    return keep


def _draw_pool(n_clients: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` distinct random clients (capped at n_clients)."""
    return rng.choice(n_clients, size=min(size, n_clients), replace=False).astype(np.int64)


class UcbScores:
    """Discounted UCB statistics of Sync-UCB-ST (PAPER.md §4.3).

    N[m, i] and L[m, i] are discounted counts and summed losses of client i on task m;
    `rounds` is the number of updates so far (r in the bonus sqrt(2 log Σ_{s<r} γ^s / N)).
    Higher training loss → higher score → picked first.
    """

    def __init__(self, n_tasks: int, n_clients: int, gamma: float):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.n_tasks = n_tasks
        self.n_clients = n_clients
        self.gamma = float(gamma)
        self.counts = np.zeros((n_tasks, n_clients), np.float64)
        self.losses = np.zeros((n_tasks, n_clients), np.float64)
        self.rounds = 0

    def update(self, trained: list[np.ndarray], losses: list[np.ndarray]) -> None:
        """One round: N ← γN + 1[trained], L ← γL + loss (kept jobs only; others add 0)."""
        if len(trained) != self.n_tasks or len(losses) != self.n_tasks:
            raise ValueError(f"need {self.n_tasks} client and loss arrays per update")
        self.counts *= self.gamma
        self.losses *= self.gamma
        for m, (clients, loss) in enumerate(zip(trained, losses)):
            clients = np.asarray(clients, dtype=np.int64)
            loss = np.asarray(loss, dtype=np.float64)
            if clients.shape != loss.shape:
                raise ValueError(f"task {m}: {clients.size} clients but {loss.size} losses")
            if np.unique(clients).size != clients.size:
                raise ValueError(f"task {m}: a client appears twice in one round")
            self.counts[m, clients] += 1.0
            self.losses[m, clients] += loss
        self.rounds += 1

    def discount_sum(self) -> float:
        """Σ_{s=0}^{r−1} γ^s for the current round counter r."""
        if self.gamma == 1.0:
            return float(self.rounds)
        return float((1.0 - self.gamma ** self.rounds) / (1.0 - self.gamma))

    def scores(self) -> np.ndarray:
        """(M, N) scores L/N + sqrt(2 log Σγ^s / N); +inf where N == 0."""
        seen = self.counts > 0
        out = np.full(self.counts.shape, np.inf)
        n = self.counts[seen]
        log_sum = np.log(self.discount_sum()) if self.rounds > 0 else 0.0
        out[seen] = self.losses[seen] / n + np.sqrt(2.0 * max(log_sum, 0.0) / n)
        return out

    def select(self, shares: Sequence[int], round_index: int, rng: np.random.Generator,
               pool_extra: int = 5) -> list[np.ndarray]:
        """Disjoint client sets of the given sizes from a random pool, by descending score.

        Pool: Σ shares + pool_extra distinct random clients. Task (round_index + j) mod M
        is served j-th and takes its shares[m] best remaining pool clients (ties → lower
        client index), so the task served first rotates with the round.
        """
        if len(shares) != self.n_tasks:
            raise ValueError(f"need {self.n_tasks} shares, got {len(shares)}")
        need = int(sum(shares))
        pool = np.sort(_draw_pool(self.n_clients, need + pool_extra, rng))
        if need > pool.size:
            raise ValueError(f"shares need {need} clients, only {pool.size} exist")
        sc = self.scores()
        free = np.ones(pool.size, dtype=bool)
        out: list[np.ndarray] = [np.zeros(0, np.int64)] * self.n_tasks
        for j in range(self.n_tasks):
            m = (round_index + j) % self.n_tasks
            idx = np.flatnonzero(free)
            order = idx[np.lexsort((pool[idx], -sc[m, pool[idx]]))][:int(shares[m])]
            free[order] = False
            out[m] = pool[order].copy()
        return out

    def state_dict(self) -> dict:
        return {"gamma": self.gamma, "rounds": self.rounds,
                "counts": self.counts.copy(), "losses": self.losses.copy()}

    def load_state_dict(self, state: dict) -> None:
        counts = np.asarray(state["counts"], dtype=np.float64)
        if counts.shape != (self.n_tasks, self.n_clients):
            raise ValueError(f"state shape {counts.shape} != {(self.n_tasks, self.n_clients)}")
        self.gamma = float(state["gamma"])
        self.rounds = int(state["rounds"])
        self.counts = counts.copy()
        self.losses = np.asarray(state["losses"], dtype=np.float64).copy()


class BayesSelector:
    """Sync-Bayes-ST / BODS (PAPER.md §4.2): GP over assignment vectors, expected improvement.

    Observations (x, y): x the binary (task, client) vector of the whole assignment of a
    round (kept or not, as in the authors' code), y = α · Σ_m max kept service duration
    + (1 − α) · Σ_m Var_i(count[m, i]) with count the cumulative kept selections.
    """

    def __init__(self, n_tasks: int, n_clients: int, alpha: float = 0.25, candidates: int = 75,
                 pool_extra: int = 5):
        self.n_tasks = n_tasks
        self.n_clients = n_clients
        self.alpha = float(alpha)
        self.candidates = int(candidates)
        self.pool_extra = int(pool_extra)
        self.counts = np.zeros((n_tasks, n_clients), np.int64)
        self.xs = np.zeros((0, n_tasks * n_clients), np.uint8)
        self.ys = np.zeros(0, np.float64)

    def encode(self, assignment: list[np.ndarray]) -> np.ndarray:
        """Binary vector of length M·N, entry m·N + i set when client i is assigned to task m."""
        if len(assignment) != self.n_tasks:
            raise ValueError(f"need {self.n_tasks} client arrays, got {len(assignment)}")
        x = np.zeros((self.n_tasks, self.n_clients), np.uint8)
        for m, clients in enumerate(assignment):
            x[m, np.asarray(clients, dtype=np.int64)] = 1
        return x.ravel()

    def observe(self, assignment: list[np.ndarray], kept_mask: list[np.ndarray],
                durations: list[np.ndarray]) -> float:
        """Record one round and return its cost y.

        kept_mask[m] is a bool array over assignment[m] (the first-k survivors) and
        durations[m] the service durations (finish − start, queue wait excluded) of
        assignment[m]. Counts are updated with the kept clients first, then y computed
        (population variance over all N clients; a task with no kept job adds 0 time).
        """
        x = self.encode(assignment)
        time_cost = 0.0
        for m, clients in enumerate(assignment):
            clients = np.asarray(clients, dtype=np.int64)
            keep = np.asarray(kept_mask[m], dtype=bool)
            dur = np.asarray(durations[m], dtype=np.float64)
            if keep.shape != clients.shape or dur.shape != clients.shape:
                raise ValueError(f"task {m}: kept_mask/durations must match its "
                                 f"{clients.size} clients")
            np.add.at(self.counts[m], clients[keep], 1)
            if keep.any():
                time_cost += float(dur[keep].max())
        fairness = float(self.counts.var(axis=1).sum())
        y = self.alpha * time_cost + (1.0 - self.alpha) * fairness
        self.xs = np.vstack([self.xs, x[None, :]])
        self.ys = np.append(self.ys, y)
        return y

    def select(self, shares: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
        """Random partition before any observation; afterwards the candidate with max EI.

        Candidates: `candidates` shuffles of one pool of Σ shares + pool_extra random
        clients, each cut into consecutive shares; ties in EI go to the first candidate.
        """
        if len(shares) != self.n_tasks:
            raise ValueError(f"need {self.n_tasks} shares, got {len(shares)}")
        if self.ys.size == 0:
            return random_assignment(self.n_clients, shares, rng)
        need = int(sum(shares))
        pool = _draw_pool(self.n_clients, need + self.pool_extra, rng)
        if need > pool.size:
            raise ValueError(f"shares need {need} clients, only {pool.size} exist")
        bounds = np.concatenate([[0], np.cumsum(np.asarray(shares, dtype=np.int64))])
        cands = []
        for _ in range(max(1, self.candidates)):
            perm = rng.permutation(pool)
            cands.append([perm[bounds[m]:bounds[m + 1]].copy() for m in range(self.n_tasks)])
        gp = GaussianProcess().fit(self.xs, self.ys)
        mean, std = gp.predict(np.stack([self.encode(c) for c in cands]))
        ei = expected_improvement(mean, std, float(self.ys.min()))
        return cands[int(np.argmax(ei))]

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "counts": self.counts.copy(),
                "xs": self.xs.copy(), "ys": self.ys.copy()}

    def load_state_dict(self, state: dict) -> None:
        counts = np.asarray(state["counts"], dtype=np.int64)
        if counts.shape != (self.n_tasks, self.n_clients):
            raise ValueError(f"state shape {counts.shape} != {(self.n_tasks, self.n_clients)}")
        self.alpha = float(state["alpha"])
        self.counts = counts.copy()
        width = self.n_tasks * self.n_clients
        self.xs = np.asarray(state["xs"], dtype=np.uint8).reshape(-1, width).copy()
        self.ys = np.asarray(state["ys"], dtype=np.float64).copy()
