"""Plugins by import path (`fedast_mpi.plugins`) and the paper's models by name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import launch

from fedast_mpi.catalog import MODELS, PAPER_MODELS
from fedast_mpi.config import config_from_dict
from fedast_mpi.data import load_source, load_task_data, partition
from fedast_mpi.data.sample_files import write_dataset
from fedast_mpi.errors import ConfigError, DataError
from fedast_mpi.models import build_model, count_params, describe_network, n_params

PLUGINS = Path(__file__).parent / "plugins"
ENV = {"PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
       "FEDAST_MPI_PLUGINS": "fedast_test_algos"}
IGNORED = ("worker", "wall")


@pytest.fixture(autouse=True)
def _plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


def job(**task) -> dict:
    base = {"name": "t", "dataset": "fedast_test_plugins:blobs", "dataset_args": {"dim": 5},
            "partition": {"kind": "natural"}, "model": "fedast_test_plugins:tiny_net",
            "model_args": {"hidden": 4}, "target_accuracy": 0.99}
    return {"run": {"name": "plug", "seed": 3, "max_time": 40, "log_every": 0},
            "clients": {"count": 6}, "algorithm": {"name": "fedast", "total_requests": 4},
            "tasks": [{**base, **task}]}


def test_plugin_config_passes_args_through():
    cfg = config_from_dict(job(model_args={"hidden": 4, "anything": [1, "a"]}))
    t = cfg.tasks[0]
    assert dict(t.dataset_args) == {"dim": 5}  # no catalog defaults added
    assert dict(t.model_args) == {"hidden": 4, "anything": [1, "a"]}


@pytest.mark.parametrize("key, path, why", [
    ("dataset", "fedast_test_plugins:nosuch", "has no attribute 'nosuch'"),
    ("dataset", "no_such_module_xyz:load", "cannot import module 'no_such_module_xyz'"),
    ("model", "fedast_test_plugins:NOT_CALLABLE", "is not callable"),
    ("model", ":f", "an import path is 'module:attr'"),
])
def test_bad_import_path_is_one_config_error(key, path, why):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(job(**{key: path}))
    text = str(exc.value)
    assert text.startswith(f"tasks.0.{key}: ") and path in text and "task 't'" in text
    assert why in text and "\n" not in text


def test_plugin_natural_partition_and_model():
    cfg = config_from_dict(job())
    task = cfg.tasks[0]
    src = load_source(task, 6, 3)
    assert src.input_shape == (5,) and src.n_classes == 3 and src.train_x.shape == (72, 5)
    again = load_source(task, 6, 3)
    assert np.array_equal(src.train_x, again.train_x)  # deterministic in (args, clients, seed)
    shards = partition(task, src, 6, 3)
    assert [s.tolist() for s in shards] == [list(range(12 * k, 12 * k + 12)) for k in range(6)]
    m1 = build_model(task.model, task.model_args, src.input_shape, src.n_classes, seed=1)
    m2 = build_model(task.model, task.model_args, src.input_shape, src.n_classes, seed=1)
    assert n_params(m1) == 5 * 4 + 4 + 4 * 3 + 3
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert m1(torch.from_numpy(src.test_x[:2])).shape == (2, 3)


def test_plugin_mapping_without_clients_refuses_natural():
    cfg = config_from_dict(job(dataset="fedast_test_plugins:as_dict"))
    with pytest.raises(ConfigError, match="natural partition"):
        load_task_data(cfg.tasks[0], 6, 3)
    iid = config_from_dict(job(dataset="fedast_test_plugins:as_dict",
                               partition={"kind": "iid", "samples_per_client": 5}))
    data = load_task_data(iid.tasks[0], 6, 3)
    assert len(data.shards) == 6 and all(len(s) == 5 for s in data.shards)


def test_plugin_wrong_keyword_fails_when_called():
    cfg = config_from_dict(job(dataset_args={"nosuch": 1}))  # unchecked: passes validation
    with pytest.raises(TypeError):
        load_source(cfg.tasks[0], 6, 3)
    with pytest.raises(ConfigError, match="samples_per_client"):
        config_from_dict(job(partition={"kind": "natural", "samples_per_client": 3}))
    wrong = config_from_dict(job(dataset="fedast_test_plugins:not_data", dataset_args={}))
    with pytest.raises(DataError, match="returned a list, not a PluginData"):
        load_source(wrong.tasks[0], 6, 3)


# ------------------------------------------------------------------ paper models by name

PAPER_COUNTS = {  # PAPER.md §6.2
    "paper_mlp": ((1, 28, 28), 10, 199_210),
    "lenet5": ((1, 28, 28), 10, 44_426),
    "cifar_cnn": ((3, 32, 32), 10, 797_962),
    "lstm": ((80,), 80, 52_720),
    "resnet18_gn": ((3, 32, 32), 100, 11_220_132),
}


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_models_by_name_alone(name):
    shape, classes, count = PAPER_COUNTS[name]
    assert name in MODELS and name in PAPER_MODELS.values()
    assert count_params(name, {}, shape, classes) == count


def test_paper_mlp_is_built_with_its_count():
    assert n_params(build_model("paper_mlp", {}, (1, 28, 28), 10, seed=0)) == 199_210
    assert count_params("mlp", {}, (1, 28, 28), 10) == 50_890


def _file_task(dataset, model, data_dir, **extra):
    return {"name": f"{dataset}-{model}", "dataset": dataset, "data_dir": str(data_dir),
            "model": model, "target_accuracy": 0.5, **extra}


def test_describe_network_and_mlp_note(tmp_path):
    for name in ("mnist", "fmnist", "cifar100"):
        write_dataset(name, tmp_path / name, n_train=4, n_test=2)
    tasks = [_file_task("mnist", "mlp", tmp_path / "mnist"),
             _file_task("mnist", "paper_mlp", tmp_path / "mnist"),
             _file_task("fmnist", "mlp", tmp_path / "fmnist",
                        model_args={"hidden": [200, 200]}),
             _file_task("cifar100", "resnet18_gn", tmp_path / "cifar100")]
    cfg = config_from_dict({"algorithm": {"total_requests": 8}, "tasks": tasks})
    lines = [describe_network(t) for t in cfg.tasks]
    assert "50,890 parameters" in lines[0][0]
    assert "not the paper's MLP" in lines[0][1] and "paper_mlp" in lines[0][1]
    assert lines[1] == ["  task mnist-paper_mlp: model paper_mlp, 199,210 parameters, "
                        "input (1, 28, 28), 10 classes (the paper's network for this dataset)"]
    assert len(lines[2]) == 1 and "199,210 parameters" in lines[2][0]
    assert "11,220,132 parameters" in lines[3][0]


def test_describe_network_plugin_and_shape_error():
    cfg = config_from_dict(job())
    assert "known once its data is loaded" in describe_network(cfg.tasks[0])[0]
    digits = config_from_dict(job(dataset="digits", dataset_args={}, partition={"kind": "iid"}))
    assert f"{64 * 4 + 4 + 4 * 10 + 10} parameters" in describe_network(digits.tasks[0])[0]
    bad = config_from_dict(job(dataset="digits", dataset_args={}, partition={"kind": "iid"},
                               model="lenet5", model_args={}))
    with pytest.raises(ConfigError, match="task 't': model 'lenet5' needs"):
        describe_network(bad.tasks[0])


# ------------------------------------------------------------------ launched

def _write(tmp_path, cfg) -> Path:
    path = tmp_path / "plug.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.launch
def test_validate_prints_networks_and_bad_path(tmp_path):
    cfg = job()
    cfg["tasks"].append({"name": "d", "dataset": "digits", "model": "mlp",
                         "target_accuracy": 0.5})
    ok = launch(0, "validate", str(_write(tmp_path, cfg)), env=ENV)
    assert ok.rc == 0, ok.stderr
    assert "task t: model fedast_test_plugins:tiny_net" in ok.stdout
    assert "task d: model mlp, 4,810 parameters" in ok.stdout
    bad = launch(0, "validate", str(_write(tmp_path, cfg)), "--set",
                 "tasks.d.model=no_such_pkg.nets:Wide", env=ENV)
    assert bad.rc == 2 and len(bad.error_lines()) == 1, bad.stderr
    assert "no_such_pkg.nets:Wide" in bad.stderr and "task 'd'" in bad.stderr


@pytest.mark.launch
def test_registered_algorithm_from_env(tmp_path):
    cfg = job()
    cfg["algorithm"]["name"] = "test-fedast-b1"
    path = _write(tmp_path, cfg)
    ok = launch(0, "validate", str(path), env=ENV)
    assert ok.rc == 0 and "config OK: test-fedast-b1" in ok.stdout, ok.stderr
    without = launch(0, "validate", str(path), env={**ENV, "FEDAST_MPI_PLUGINS": ""})
    assert without.rc == 2 and "unknown algorithm 'test-fedast-b1'" in without.stderr
    broken = launch(0, "validate", str(path), env={**ENV, "FEDAST_MPI_PLUGINS": "nosuch_mod"})
    assert broken.rc == 2 and "FEDAST_MPI_PLUGINS" in broken.stderr
    assert len(broken.error_lines()) == 1


@pytest.mark.launch
def test_plugins_run_identically_on_1_and_3_ranks(tmp_path):
    import h5py
    cfg = job()
    cfg["algorithm"]["name"] = "test-fedast-b1"
    cfg["tasks"].append({"name": "iid", "dataset": "fedast_test_plugins:as_dict",
                         "partition": {"kind": "iid", "samples_per_client": 10},
                         "model": "logreg", "target_accuracy": 0.99})
    path = _write(tmp_path, cfg)
    runs = {}
    for n in (1, 3):
        out = tmp_path / f"n{n}"
        res = launch(n, "run", str(path), "--out", str(out), env=ENV)
        assert res.rc == 0, f"-n {n}:\n{res.stdout}\n{res.stderr}"
        with h5py.File(out / "run.h5", "r") as f:
            ev = f["events"][()]
            runs[n] = {k: ev[k] for k in ev.dtype.names if k not in IGNORED}
            assert f.attrs["world_size"] == n
    assert len(runs[1]["request"]) == len(runs[3]["request"]) > 0
    for k in runs[1]:
        assert np.array_equal(runs[1][k], runs[3][k], equal_nan=True), f"/events {k} differs"
