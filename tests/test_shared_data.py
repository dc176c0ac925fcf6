"""Tasks reading the same source share one set of tensors (by identity); shards stay per task;
Shakespeare is stored as uint8 and trains to the same bits as int64 indices."""

import types

import numpy as np
import pytest
import torch

from fedast_mpi.config import load_config
from fedast_mpi.data import load_source, load_task_data, source_key
from fedast_mpi.data.sample_files import write_idx_set, write_shakespeare
from fedast_mpi.models import build_model
from fedast_mpi.params import FlatModel
from fedast_mpi.runner import TaskRunner
from fedast_mpi.training import evaluate, local_train

SYN = {"alpha": 1.0, "beta": 1.0, "dim": 6, "classes": 3, "test_per_client": 2}
PARTS = ("train_x", "train_y", "test_x", "test_y")


def task(dataset="digits", args=None, kind="iid", alpha=None, spc=None, data_dir=None,
         name="t0"):
    """A duck-typed task config as the config module provides it."""
    if args is None:
        args = {"test_fraction": 0.2} if dataset == "digits" else {}
    return types.SimpleNamespace(name=name, dataset=dataset, dataset_args=args,
                                 data_dir=None if data_dir is None else str(data_dir),
                                 partition=types.SimpleNamespace(kind=kind, alpha=alpha,
                                                                 samples_per_client=spc))


def two_tasks(data_dir, dataset: str, model: str, part0: str, part1: str) -> list[str]:
    """--set items making the default config's first two tasks read `dataset` from data_dir."""
    return [f"tasks.{i}.{key}={value}" for i, part in enumerate((part0, part1))
            for key, value in (("dataset", dataset), ("data_dir", data_dir), ("model", model),
                               ("model_args", "{}"), ("partition", part))]


def test_source_key_is_what_decides_the_arrays(tmp_path):
    base = source_key(task(kind="iid", spc=5, name="a"), 10, 0)
    # name, partition and run seed do not change a read dataset
    assert source_key(task(kind="dirichlet", alpha=0.1, spc=7, name="b"), 20, 3) == base
    assert source_key(task(args={"test_fraction": 0.2000}), 10, 0) == base
    assert source_key(task(args={"test_fraction": 0.3}), 10, 0) != base
    # a generated dataset: the clients, its samples per client and the seed do
    syn = source_key(task("synthetic", SYN, "natural", spc=4), 10, 0)
    assert syn == source_key(task("synthetic", dict(SYN, alpha=1), "iid", spc=4, name="x"), 10, 0)
    for other in (source_key(task("synthetic", SYN, "natural", spc=5), 10, 0),
                  source_key(task("synthetic", SYN, "natural", spc=4), 11, 0),
                  source_key(task("synthetic", SYN, "natural", spc=4), 10, 2**62 + 1),
                  source_key(task("synthetic", dict(SYN, beta=0.5), "natural", spc=4), 10, 0)):
        assert other != syn
    # seeds that a float would merge stay apart
    assert source_key(task("synthetic", SYN, spc=4), 10, 2**62) \
        != source_key(task("synthetic", SYN, spc=4), 10, 2**62 + 1)
    # files: the folder decides (resolved, so two spellings of one folder agree)
    write_idx_set(tmp_path / "a", n_train=20, n_test=5)
    write_idx_set(tmp_path / "b", n_train=20, n_test=5)
    fa = source_key(task("fmnist", data_dir=tmp_path / "a"), 4, 0)
    assert fa == source_key(task("fmnist", data_dir=tmp_path / "b" / ".." / "a"), 4, 0)
    assert fa != source_key(task("fmnist", data_dir=tmp_path / "b"), 4, 0)
    assert fa != source_key(task("mnist", data_dir=tmp_path / "a"), 4, 0)


@pytest.mark.parametrize("kind,spc", [("iid", 5), ("dirichlet", 6), ("natural", None)])
def test_same_key_same_arrays(kind, spc):
    a = load_source(task("synthetic", SYN, kind, alpha=0.5, spc=spc, name="a"), 6, 1)
    b = load_source(task("synthetic", SYN, kind, alpha=0.5, spc=spc, name="b"), 6, 1)
    assert a.key == b.key
    for part in PARTS:
        assert np.array_equal(getattr(a, part), getattr(b, part))


def test_runner_tasks_share_device_tensors_by_source():
    cfg = load_config(None)  # digits-logreg and digits-cnn read digits; synthetic is its own
    r = TaskRunner(cfg)
    digits = [i for i, t in enumerate(cfg.tasks) if t.dataset == "digits"]
    other = [i for i, t in enumerate(cfg.tasks) if t.dataset != "digits"]
    assert len(digits) == 2 and other
    a, b = (r.data[i] for i in digits)
    for part in PARTS:
        assert getattr(a, part) is getattr(b, part)
        assert getattr(a, part).data_ptr() == getattr(b, part).data_ptr()
        assert getattr(r.data[other[0]], part) is not getattr(a, part)
    # the partitions differ (alpha 1.0 and 0.3) and stay per task
    assert not all(np.array_equal(s, t) for s, t in zip(a.shards, b.shards))
    for i, t in enumerate(cfg.tasks):  # the same shards as a task loaded alone
        alone = load_task_data(t, cfg.clients.count, cfg.run.seed)
        assert all(np.array_equal(s, u) for s, u in zip(r.data[i].shards, alone.shards))
        for part in PARTS:
            assert getattr(r.data[i], part).equal(getattr(alone, part))


def test_identical_partitions_share_their_shards():
    same = load_config(None, ["tasks.1.partition={kind: dirichlet, alpha: 1, "
                              "samples_per_client: 60}"])  # as tasks.0's (alpha 1.0)
    r = TaskRunner(same)
    assert r.data[0].shards is r.data[1].shards and r.data[0].train_x is r.data[1].train_x
    assert np.array_equal(r.n_samples()[:, 0], r.n_samples()[:, 1])
    other = TaskRunner(load_config(None))
    assert other.data[0].shards is not other.data[1].shards
    assert all(np.array_equal(s, t) for s, t in zip(r.data[0].shards, other.data[0].shards))


def test_file_tasks_share_tensors_and_keep_their_shards(tmp_path):
    write_idx_set(tmp_path / "FashionMNIST" / "raw", n_train=60, n_test=20)
    config = load_config(None, two_tasks(
        tmp_path, "fmnist", "logreg", "{kind: dirichlet, alpha: 0.1, samples_per_client: 8}",
        "{kind: dirichlet, alpha: 5.0, samples_per_client: 8}"))
    r = TaskRunner(config)
    for part in PARTS:
        assert getattr(r.data[0], part) is getattr(r.data[1], part)
    assert not all(np.array_equal(s, t) for s, t in zip(r.data[0].shards, r.data[1].shards))


def test_shakespeare_is_uint8_and_trains_to_the_same_bits(tmp_path):
    """uint8 storage against the int64 indices it replaces: same deltas, losses, evaluation."""
    write_shakespeare(tmp_path)
    d = load_task_data(task("shakespeare", data_dir=tmp_path, kind="natural"), 5, 0)
    assert d.train_x.dtype == d.test_x.dtype == torch.uint8
    assert d.train_y.dtype == d.test_y.dtype == torch.int64
    fm = FlatModel(build_model("lstm", {}, d.input_shape, d.n_classes, seed=3))
    base = fm.numpy()
    for client in range(3):
        got = [local_train(fm, base, x, d.train_y, d.shards[client], steps=4, batch_size=2,
                           lr=0.5, weight_decay=1e-3, seed=client)
               for x in (d.train_x, d.train_x.long())]
        assert np.array_equal(got[0][0], got[1][0]) and got[0][1:] == got[1][1:]
        assert got[0][0].any()
    assert evaluate(fm, base, d.test_x, d.test_y) == evaluate(fm, base, d.test_x.long(), d.test_y)


def test_shakespeare_tasks_share_their_uint8_tensors(tmp_path):
    write_shakespeare(tmp_path)
    config = load_config(None, two_tasks(
        tmp_path, "shakespeare", "lstm", "{kind: natural, samples_per_client: null}",
        "{kind: iid, samples_per_client: 3}"))
    r = TaskRunner(config)
    assert r.data[0].train_x is r.data[1].train_x and r.data[0].train_x.dtype == torch.uint8
    model = r.initial_model(0)
    delta, loss, n = r.train(0, 1, model, seed=5)
    assert np.isfinite(loss) and n == len(r.data[0].shards[1]) and delta.any()
