"""What a TaskRunner holds by role (`runner.holdings`): rank 0 no training data, test sets only
when it evaluates itself; the server's view of the models and samples identical in every role."""

import numpy as np
import pytest

from fedast_mpi.config import load_config
from fedast_mpi.data import idx
from fedast_mpi.data.sample_files import write_idx_set
from fedast_mpi.runner import TaskRunner, holdings


@pytest.fixture(scope="module")
def cfg():
    return load_config(None)


@pytest.fixture(scope="module")
def full(cfg):
    return TaskRunner(cfg)


def test_holdings_by_rank_and_evaluation():
    assert holdings(0, 1, False) == {"train": True, "test": True}  # -n 1: all in-process
    assert holdings(0, 3, True) == {"train": False, "test": False}  # workers evaluate
    assert holdings(0, 3, False) == {"train": False, "test": True}  # run.evaluation: server
    assert holdings(2, 3, True) == {"train": True, "test": True}
    assert holdings(1, 2, False) == {"train": True, "test": False}


def held_bytes(runner) -> int:
    """Bytes of the data tensors a runner holds (shared storages counted once)."""
    storages = {}
    for d in runner.data:
        for t in (d.train_x, d.train_y, d.test_x, d.test_y):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values()) + sum(s.nbytes for d in runner.data for s in d.shards)


@pytest.mark.parametrize("train,test", [(False, False), (False, True), (True, False)])
def test_server_view_is_the_same_in_every_role(cfg, full, train, test):
    r = TaskRunner(cfg, train=train, test=test)
    n = len(cfg.tasks)
    assert np.array_equal(r.n_samples(), full.n_samples())
    assert r.n_samples().shape == (cfg.clients.count, n) and r.n_samples().dtype == np.int32
    assert r.n_params == full.n_params
    for i in range(n):
        assert np.array_equal(r.initial_model(i), full.initial_model(i))
        assert np.array_equal(r.weight_mask(i), full.weight_mask(i))
        assert r.n_test(i) == full.n_test(i) == len(full.data[i].test_y)
    assert r.batchable == full.batchable
    assert held_bytes(r) < held_bytes(full)


def test_server_holds_no_data_and_says_so(cfg):
    r = TaskRunner(cfg, train=False, test=False)
    assert held_bytes(r) == 0
    for d in r.data:  # empty, with the sample shape and dtype of the real thing
        assert d.train_x.shape[0] == d.test_x.shape[0] == 0 and d.shards == ()
        assert tuple(d.train_x.shape[1:]) == d.input_shape
    model = r.initial_model(0)
    with pytest.raises(RuntimeError, match="no training data"):
        r.train(0, 0, model, seed=1)
    with pytest.raises(RuntimeError, match="no training data"):
        r.train_group(0, [(0, model, 1), (1, model, 2)])
    with pytest.raises(RuntimeError, match="no test sets"):
        r.evaluate(0, model)
    with pytest.raises(RuntimeError, match="no test sets"):
        r.evaluate_chunk(0, model, 0)


def test_each_role_computes_what_the_full_runner_does(cfg, full):
    """Bitwise: evaluation on an evaluating server, training and chunks on workers."""
    server = TaskRunner(cfg, train=False, test=True)
    worker = TaskRunner(cfg, train=True, test=False)
    for i in range(len(cfg.tasks)):
        model = full.initial_model(i)
        assert server.evaluate(i, model) == full.evaluate(i, model)
        d1, loss1, n1 = worker.train(i, 3, model, seed=11)
        d2, loss2, n2 = full.train(i, 3, model, seed=11)
        assert np.array_equal(d1, d2) and loss1 == loss2 and n1 == n2
        with pytest.raises(RuntimeError, match="no test sets"):
            worker.evaluate_chunk(i, model, 0)


def test_for_rank_in_a_world(cfg):
    assert TaskRunner.for_rank(cfg, "cpu", 0, 3, True).trains is False
    r = TaskRunner.for_rank(cfg, "cpu", 0, 3, False)
    assert (r.trains, r.tests) == (False, True)
    r = TaskRunner.for_rank(cfg, "cpu", 0, 1, False)
    assert (r.trains, r.tests) == (True, True)


def test_rank_0_keeps_no_parsed_training_images(tmp_path):
    """The readers' parse of the files is dropped once placed: on rank 0 nothing keeps the
    training images alive (on a GPU rank, nothing keeps their host copy)."""
    write_idx_set(tmp_path / "FashionMNIST" / "raw", n_train=60, n_test=20)
    cfg = load_config(None, ["tasks.0.dataset=fmnist", f"tasks.0.data_dir={tmp_path}",
                             "tasks.0.partition={kind: iid, samples_per_client: 5}"])
    r = TaskRunner(cfg, train=False, test=False)
    assert idx._load_cached.cache_info().currsize == 0
    assert held_bytes(r) == 0 and r.n_test(0) == 20
    assert (r.n_samples()[:, 0] == 5).all()
