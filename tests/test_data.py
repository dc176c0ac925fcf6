"""Tests of the datasets, the partitions and the determinism of load_task_data."""

import types

import numpy as np
import pytest

from fedast_mpi.data import load_task_data
from fedast_mpi.data.partition import (authors_dirichlet_partition, dirichlet_partition,
                                        iid_partition)
from fedast_mpi.errors import ConfigError

SYN = {"alpha": 1.0, "beta": 1.0, "dim": 60, "classes": 10, "test_per_client": 20}


def task(dataset="digits", args=None, kind="iid", alpha=None, spc=None, name="t0"):
    """A duck-typed task config as the config module will provide."""
    if args is None:
        args = {"test_fraction": 0.2} if dataset == "digits" else dict(SYN)
    return types.SimpleNamespace(name=name, dataset=dataset, dataset_args=args, data_dir=None,
                                 partition=types.SimpleNamespace(kind=kind, alpha=alpha,
                                                                 samples_per_client=spc))


def same(a, b):
    """Bitwise equality of two TaskData."""
    return (a.train_x.equal(b.train_x) and a.train_y.equal(b.train_y) and a.test_x.equal(b.test_x)
            and a.test_y.equal(b.test_y) and len(a.shards) == len(b.shards)
            and all(np.array_equal(s, t) for s, t in zip(a.shards, b.shards)))


def test_digits_shapes_and_split():
    d = load_task_data(task(), 10, 0)
    assert d.train_x.shape == (1438, 1, 8, 8) and d.test_x.shape == (359, 1, 8, 8)
    assert d.input_shape == (1, 8, 8) and d.n_classes == 10
    assert str(d.train_x.dtype) == "torch.float32" and str(d.train_y.dtype) == "torch.int64"
    assert 0.0 <= d.train_x.min() and d.train_x.max() <= 1.0 and d.train_x.max() == 1.0
    assert set(d.train_y.tolist()) == set(range(10)) and set(d.test_y.tolist()) == set(range(10))
    # the split does not depend on the run seed; train and test are disjoint
    e = load_task_data(task(), 10, 99)
    assert d.train_x.equal(e.train_x) and d.test_y.equal(e.test_y)
    tr = {r.tobytes() for r in d.train_x.numpy()}
    assert not any(r.tobytes() in tr for r in d.test_x.numpy()[:50])
    f = load_task_data(task(args={"test_fraction": 0.5}), 10, 0)
    assert len(f.test_y) == 898 or len(f.test_y) == 899


def test_unsupported_partition_and_dataset():
    with pytest.raises(ConfigError):
        load_task_data(task(kind="natural"), 10, 0)
    with pytest.raises(ConfigError):
        load_task_data(task(dataset="mnist", args={}), 10, 0)


@pytest.mark.parametrize("kind,alpha", [("iid", None), ("dirichlet", 0.3)])
def test_digits_partition_sizes_and_determinism(kind, alpha):
    d = load_task_data(task(kind=kind, alpha=alpha, spc=37), 25, 7)
    assert len(d.shards) == 25 and all(len(s) == 37 and s.dtype == np.int64 for s in d.shards)
    assert all(s.min() >= 0 and s.max() < len(d.train_y) for s in d.shards)
    assert same(d, load_task_data(task(kind=kind, alpha=alpha, spc=37), 25, 7))
    assert not same(d, load_task_data(task(kind=kind, alpha=alpha, spc=37), 25, 8))


def test_identical_tasks_with_other_names_share_shards():
    a = load_task_data(task(kind="dirichlet", alpha=0.1, spc=30, name="first"), 20, 3)
    b = load_task_data(task(kind="dirichlet", alpha=0.1, spc=30, name="second"), 20, 3)
    assert same(a, b)
    c = load_task_data(task(kind="dirichlet", alpha=0.2, spc=30, name="first"), 20, 3)
    assert not same(a, c)
    # refill: the default is the partition drawn before the key existed; 'all' is another
    explicit = task(kind="dirichlet", alpha=0.1, spc=30, name="first")
    explicit.partition.refill = "class"
    assert same(a, load_task_data(explicit, 20, 3))
    explicit.partition.refill = "all"
    assert not same(a, load_task_data(explicit, 20, 3))
    # 1 and 1.0 are the same config value
    s1 = load_task_data(task("synthetic", dict(SYN, alpha=1), kind="iid", name="x"), 5, 0)
    s2 = load_task_data(task("synthetic", dict(SYN, alpha=1.0), kind="iid", name="y"), 5, 0)
    assert same(s1, s2)


def test_synthetic_shapes_and_determinism():
    d = load_task_data(task("synthetic", kind="natural"), 12, 4)
    assert d.train_x.shape == (12 * 50, 60) and d.test_x.shape == (12 * 20, 60)
    assert d.input_shape == (60,) and d.n_classes == 10
    assert [s.tolist() for s in d.shards] == [list(range(50 * k, 50 * k + 50)) for k in range(12)]
    assert same(d, load_task_data(task("synthetic", kind="natural"), 12, 4))
    assert not same(d, load_task_data(task("synthetic", kind="natural"), 12, 5))
    e = load_task_data(task("synthetic", dict(SYN, dim=5, classes=3, test_per_client=2),
                            "dirichlet", 0.5, 8), 4, 0)
    assert e.train_x.shape == (32, 5) and e.test_x.shape == (8, 5) and e.n_classes == 3
    assert all(len(s) == 8 for s in e.shards)
    assert e.train_y.max() < 3


def test_synthetic_heterogeneity():
    def stats(a):
        d = load_task_data(task("synthetic", dict(SYN, alpha=a, beta=a), "natural"), 100, 0)
        x = d.train_x.numpy().reshape(100, 50, 60)
        y = d.train_y.numpy().reshape(100, 50)
        return x.mean(axis=1).std(axis=0).mean(), np.mean([len(np.unique(r)) for r in y])
    spread0, distinct0 = stats(0.0)
    spread2, distinct2 = stats(2.0)
    assert spread2 > 1.5 * spread0  # client feature means differ more
    assert distinct2 < distinct0 - 0.3  # labels more concentrated per client


def test_iid_partition_sizes_and_cover():
    rng = np.random.default_rng(0)
    p = iid_partition(103, 10, None, rng)
    assert sorted(len(s) for s in p) == [10] * 7 + [11] * 3
    assert sorted(np.concatenate(p).tolist()) == list(range(103))
    p = iid_partition(3, 7, None, rng)
    assert [len(s) for s in p] == [1] * 7
    assert set(np.concatenate(p).tolist()) == {0, 1, 2}
    p = iid_partition(100, 30, 7, rng)
    assert [len(s) for s in p] == [7] * 30
    allp = np.concatenate(p)
    assert sorted(allp[:100].tolist()) == list(range(100))  # the stream is a permutation first
    assert set(allp.tolist()) == set(range(100))
    assert iid_partition(50, 4, 5, np.random.default_rng(1))[2].tolist() == \
        iid_partition(50, 4, 5, np.random.default_rng(1))[2].tolist()


def test_dirichlet_sizes_and_skew():
    labels = np.random.default_rng(0).integers(0, 10, size=2000)

    def distinct(alpha):
        shards = dirichlet_partition(labels, 200, alpha, 40, np.random.default_rng(1))
        assert [len(s) for s in shards] == [40] * 200
        return np.mean([len(np.unique(labels[s])) for s in shards])
    low, high = distinct(0.05), distinct(100.0)
    assert low < 3.5 and high > 9.0
    p = dirichlet_partition(labels, 7, 1.0, None, np.random.default_rng(2))
    assert [len(s) for s in p] == [2000 // 7] * 7
    # more demand than supply of a class: pools are refilled, shard sizes stay exact
    few = np.array([0] * 3 + [1] * 50)
    p = dirichlet_partition(few, 10, 0.05, 20, np.random.default_rng(3))
    assert all(len(s) == 20 for s in p)
    assert sum((few[s] == 0).sum() for s in p) > 3
    with pytest.raises(ConfigError):
        dirichlet_partition(few, 10, 0.0, 20, np.random.default_rng(3))


def test_dirichlet_refill_all_puts_every_class_back():
    """Both refills use every sample of a class before any repeats; 'class' repeats a class in
    a fresh order, 'all' (the authors') in the same order; the default draws what it drew
    before the option existed (same stream, same shards)."""
    labels = np.repeat(np.arange(4), [10, 400, 400, 400])  # class 0 runs out first
    rng = np.random.default_rng

    def uses(refill):
        shards = dirichlet_partition(labels, 60, 0.1, 20, rng(4), refill)
        assert [len(s) for s in shards] == [20] * 60
        counts = np.bincount(np.concatenate(shards), minlength=len(labels))
        for c in range(4):  # balanced: no sample of a class is used twice before all once
            assert np.ptp(counts[labels == c]) <= 1
        return shards
    cls, al = uses("class"), uses("all")
    assert [s.tolist() for s in cls] != [s.tolist() for s in al]
    assert [s.tolist() for s in dirichlet_partition(labels, 60, 0.1, 20, rng(4))] == \
        [s.tolist() for s in dirichlet_partition(labels, 60, 0.1, 20, rng(4), "class")]
    with pytest.raises(ConfigError, match="refill"):
        dirichlet_partition(labels, 6, 0.1, 20, rng(4), "some")


def _authors_reference(labels, n_clients, alpha, spc, data_seed):
    """PAPER.md §6.1's DirichletLoader, written as described there (recursive extract)."""
    import random
    r = random.Random(data_seed)
    state = np.random.RandomState([r.randint(0, 100000000) for _ in range(4)][3])
    pools = {c: [i for i in range(len(labels)) if labels[i] == c] for c in np.unique(labels)}
    used = {c: [] for c in pools}

    def extract(c, n):
        if len(pools[c]) > n:
            out = pools[c][:n]
            used[c].extend(out)
            del pools[c][:n]
            return out
        for k in pools:
            pools[k].extend(used[k])
            used[k] = []
        return extract(c, n)
    shards = []
    for _ in range(n_clients):
        counts = np.round(state.dirichlet([alpha] * len(pools)) * spc).astype(int)
        shards.append([i for c, n in zip(pools, counts) for i in extract(c, n)])
    return shards


def test_authors_dirichlet_partition_is_their_loader():
    """data_seed reproduces the authors' shards: their seed derivation, round() counts, file
    order pools and refill of every class; independent of the run seed; pinned by a digest."""
    import hashlib
    import random
    py = random.Random(10)
    assert [py.randint(0, 100000000) for _ in range(4)][3] == 64768331  # stable since 3.2
    labels = np.random.default_rng(0).integers(0, 5, size=700)
    got = authors_dirichlet_partition(labels, 80, 0.3, 30, 10)
    assert [s.tolist() for s in got] == _authors_reference(labels, 80, 0.3, 30, 10)
    sizes = [len(s) for s in got]
    assert min(sizes) < 30 < max(sizes) and abs(np.mean(sizes) - 30) < 1  # round(), not exact
    assert got[0].tolist() == sorted(got[0].tolist(), key=lambda i: (labels[i], i))  # file order
    counts = np.bincount(np.concatenate(got), minlength=len(labels))
    for c in range(5):  # every class is taken cyclically, so evenly
        assert np.ptp(counts[labels == c]) <= 1
    assert authors_dirichlet_partition(labels, 80, 0.3, 30, 11)[0].tolist() != got[0].tolist()
    digest = hashlib.sha256(np.concatenate(got).tobytes()).hexdigest()[:16]
    assert digest == "4a45a2f016d8a54c"
    with pytest.raises(ConfigError, match="fewer than"):
        authors_dirichlet_partition(np.array([0] * 3 + [1] * 50), 5, 1.0, 20, 10)
    # through load_task_data: the same shards for every run seed
    t = task(kind="dirichlet", alpha=0.1, spc=30)
    t.partition.refill, t.partition.data_seed = "all", 10
    a, b = load_task_data(t, 20, 3), load_task_data(t, 20, 4)
    assert same(a, b)
    assert [s.tolist() for s in a.shards] == \
        [s.tolist() for s in authors_dirichlet_partition(a.train_y.numpy(), 20, 0.1, 30, 10)]
