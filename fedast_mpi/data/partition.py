"""Client partitions of a training set: index arrays drawn from a numpy Generator."""

import numpy as np

from fedast_mpi.errors import ConfigError


def _stream(n_items: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """The first `length` items of a stream of concatenated fresh permutations of range(n_items)."""
    n_perms = -(-length // n_items) if length else 0
    if n_perms == 0:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([rng.permutation(n_items)
                           for _ in range(n_perms)])[:length].astype(np.int64)


def iid_partition(n_items: int, n_clients: int, samples_per_client: int | None,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random client shards.

    samples_per_client None: a disjoint, near-equal split of one permutation (when there are
    fewer items than clients, the permutation is continued by fresh ones so each client gets
    one item). Given: client k takes the next samples_per_client items of a stream of
    concatenated fresh permutations (items repeat only once the stream wraps).
    """
    _check(n_items, n_clients, samples_per_client)
    if samples_per_client is None:
        return [a.copy() for a in np.array_split(_stream(n_items, max(n_items, n_clients), rng),
                                                 n_clients)]
    s = _stream(n_items, n_clients * samples_per_client, rng)
    return [s[k * samples_per_client:(k + 1) * samples_per_client].copy() for k in range(n_clients)]


def _largest_remainder(p: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing exactly to `total`, proportional to p (largest-remainder rounding)."""
    raw = p * total
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        order = np.argsort(-(raw - counts), kind="stable")  # ties: lowest class first
        counts[order[:short]] += 1
    return counts


def _class_probs(alpha: float, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """p ~ Dir(alpha * 1_C); a degenerate draw (tiny alpha underflow) becomes a random one-hot."""
    p = rng.dirichlet(np.full(n_classes, float(alpha)))
    if not np.all(np.isfinite(p)) or p.sum() <= 0:
        p = np.zeros(n_classes)
        p[rng.integers(n_classes)] = 1.0
    return p / p.sum()


def dirichlet_partition(labels: np.ndarray, n_clients: int, alpha: float,
                        samples_per_client: int | None,
                        rng: np.random.Generator, refill: str = "class") -> list[np.ndarray]:
    """Label-skewed client shards after the authors' DirichletLoader (PAPER.md §6.1).

    Per client: p ~ Dir(alpha * 1_C) over the classes present in `labels`; counts of each
    class by largest-remainder rounding of samples_per_client * p, so every client has
    exactly samples_per_client samples (None: n_items // n_clients, at least 1), unlike the
    authors' round() that can be off by a few. Each class has a pool taken sequentially
    across clients. `refill="class"`: an exhausted pool is refilled with a fresh permutation
    of that class only, so every sample of a class is used before any repeats. `refill="all"`:
    an exhausted pool starts again in the same order. That is the authors' loader: it puts
    every used sample of every class back behind that class's unused ones, so each class is
    taken cyclically in one order (`authors_dirichlet_partition` is theirs exactly). Pools
    start as a permutation, so the dataset order does not matter. The client's samples are
    then shuffled.
    """
    labels = np.asarray(labels)
    spc = _dirichlet_spc(labels, n_clients, alpha, samples_per_client)
    if refill not in ("class", "all"):
        raise ConfigError(f"dirichlet refill must be 'class' or 'all', got {refill!r}")
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c).astype(np.int64) for c in classes]
    pools = [rng.permutation(m) for m in members]
    cursor = [0] * len(classes)
    shards = []
    for _ in range(n_clients):
        counts = _largest_remainder(_class_probs(alpha, len(classes), rng), spc)
        parts = []
        for c, need in enumerate(counts):
            while need > 0:
                if cursor[c] == len(pools[c]):
                    if refill == "class":
                        pools[c] = rng.permutation(members[c])
                    cursor[c] = 0
                take = min(need, len(pools[c]) - cursor[c])
                parts.append(pools[c][cursor[c]:cursor[c] + take])
                cursor[c] += take
                need -= take
        shards.append(rng.permutation(np.concatenate(parts)).astype(np.int64))
    return shards


# The authors' loader dict builds four loaders (basic, bias, leaf, dirichlet), each seeding its
# numpy RandomState with random.randint(0, 10**8) in that order: the Dirichlet one draws 4th.
_AUTHORS_LOADER_DRAWS = 4
_AUTHORS_SEED_MAX = 100_000_000


def authors_dirichlet_partition(labels: np.ndarray, n_clients: int, alpha: float,
                                samples_per_client: int | None,
                                data_seed: int) -> list[np.ndarray]:
    """The authors' DirichletLoader partition exactly, for their `data_seed` (PAPER.md §6.1).

    Python's random seeded with data_seed gives, on its 4th randint(0, 10**8), the seed of a
    legacy numpy RandomState. Per client in order: p ~ Dir(alpha * 1_C) from it, counts
    round(p * samples_per_client) (so a shard can be a few samples off). Each class's pool
    is the dataset's samples of that class in file order, taken from the front; when a pool
    holds no more than a client needs, every class's used samples are appended to its pool
    (unused ones stay in front). The same shards for every run seed, as the paper's Monte
    Carlo runs all used the demo's data seed. A shard's order is the extraction order
    (the authors shuffle it; local training draws its own batch order).
    """
    import random  # the authors' generator; its own instance, seeded here

    labels = np.asarray(labels)
    spc = _dirichlet_spc(labels, n_clients, alpha, samples_per_client)
    py = random.Random(int(data_seed))
    seed = [py.randint(0, _AUTHORS_SEED_MAX) for _ in range(_AUTHORS_LOADER_DRAWS)][-1]
    legacy = np.random.RandomState(seed)
    classes = np.unique(labels)
    pools: list[list[int]] = [np.flatnonzero(labels == c).tolist() for c in classes]
    used: list[list[int]] = [[] for _ in classes]
    shards = []
    for k in range(n_clients):
        p = legacy.dirichlet([float(alpha)] * len(classes))
        if not np.all(np.isfinite(p)):
            raise ConfigError(f"partition.data_seed {data_seed}: client {k}'s Dirichlet draw is "
                              f"not finite (alpha {alpha} too small for the authors' loader)")
        counts = np.round(p * spc).astype(np.int64).tolist()
        parts: list[int] = []
        for c, need in enumerate(counts):
            while len(pools[c]) <= need:  # the authors' `len > n` test, then refill every class
                if not any(used):
                    raise ConfigError(f"partition.data_seed: class {classes[c]} has fewer than "
                                      f"{need + 1} samples")
                for j in range(len(classes)):
                    pools[j].extend(used[j])
                    used[j] = []
            taken, pools[c] = pools[c][:need], pools[c][need:]
            used[c].extend(taken)
            parts.extend(taken)
        shards.append(np.asarray(parts, np.int64))
    return shards


def _dirichlet_spc(labels: np.ndarray, n_clients: int, alpha: float,
                   samples_per_client: int | None) -> int:
    """Check a Dirichlet partition's arguments; its samples per client (None: an even split)."""
    _check(len(labels), n_clients, samples_per_client)
    if not alpha > 0:
        raise ConfigError(f"dirichlet partition needs alpha > 0, got {alpha!r}")
    if samples_per_client is not None:
        return samples_per_client
    return max(1, len(labels) // n_clients)


def _check(n_items: int, n_clients: int, samples_per_client: int | None) -> None:
    """Reject partitions that cannot be made."""
    if n_items < 1:
        raise ConfigError("cannot partition an empty training set")
    if n_clients < 1:
        raise ConfigError(f"need at least one client, got {n_clients}")
    if samples_per_client is not None and samples_per_client < 1:
        raise ConfigError(f"samples_per_client must be >= 1, got {samples_per_client}")
