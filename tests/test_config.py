"""Config loading, checks, --set overrides and resolution (fedast_mpi.config)."""

import copy
import dataclasses
import math
import typing
from pathlib import Path

import pytest
import yaml

from fedast_mpi import catalog, registry
from fedast_mpi.config import (
    Config,
    Limits,
    TaskConfig,
    apply_override,
    config_from_dict,
    load_config,
    load_yaml,
    to_dict,
    to_yaml,
)
from fedast_mpi.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def task(name="digits", **extra):
    entry = {
        "name": name,
        "dataset": "digits",
        "model": "logreg",
        "requests": 20,
        "buffer_size": 5,
        "target_accuracy": 0.9,
    }
    entry.update(extra)
    return entry


def raw(**sections):
    data = {
        "run": {"name": "t"},
        "tasks": [task("digits"), task("syn", dataset="synthetic", model="mlp",
                                       partition={"kind": "natural"})],
    }
    data.update(sections)
    return data


def error_of(data):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---------------------------------------------------------------- defaults


def test_default_loads_and_resolves():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.task_names == ("digits-logreg", "digits-cnn", "synthetic")
    assert cfg.algorithm.name == "fedast" and cfg.algorithm.allocation == "static"
    assert cfg.algorithm.total_requests == 60
    assert [t.requests for t in cfg.tasks] == [20, 20, 20]
    assert [t.buffer_size for t in cfg.tasks] == [5, 5, 5]
    assert cfg.run.max_time == 3000.0 and cfg.run.time_scale == 0.05
    assert cfg.clients.available is None
    syn = cfg.tasks[cfg.task_index("synthetic")]
    # dataset and model args are merged over the catalog defaults
    assert set(syn.dataset_args) == set(catalog.DATASETS["synthetic"].args)
    assert syn.dataset_args["alpha"] == 0.5 and syn.dataset_args["dim"] == 60
    assert tuple(syn.model_args["hidden"]) == (32,)
    cnn = cfg.tasks[1]
    assert tuple(cnn.model_args["channels"]) == (16, 32)
    assert cnn.delay.shift == 2.0 and cnn.partition.alpha == 0.3


def test_defaults_of_sections():
    cfg = config_from_dict({"tasks": [task()]})
    assert cfg.run.name == "fedast" and cfg.run.out_dir == "runs" and cfg.run.seed == 0
    assert cfg.run.clock == "virtual" and cfg.run.device == "auto"
    assert cfg.run.max_time == math.inf
    assert cfg.run.checkpoint.every_seconds == 600.0 and cfg.run.checkpoint.keep == 2
    assert cfg.algorithm.r_to_b == 32.0 and cfg.algorithm.first_k == 30
    assert cfg.algorithm.realloc.variant == "paper" and cfg.algorithm.realloc.window == 8
    assert cfg.clients.count == 100
    tiers = cfg.clients.tiers
    assert (tiers.slow.fraction, tiers.slow.multiplier) == (0.25, 1.3)
    assert (tiers.normal.fraction, tiers.normal.multiplier) == (0.5, 1.0)
    assert (tiers.fast.fraction, tiers.fast.multiplier) == (0.25, 0.7)
    t = cfg.tasks[0]
    assert t.partition.kind == "iid" and t.local_steps == 10 and t.batch_size == 32
    assert t.weight_decay == 0.0 and t.eval_every == 1 and t.data_dir is None


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_repo_configs_load(path):
    cfg = load_config(path)
    assert cfg.tasks


def test_embedded_small():
    cfg = load_config(REPO / "configs" / "embedded-small.yaml")
    assert len(cfg.tasks) == 2 and cfg.clients.count == 50
    assert {t.model for t in cfg.tasks} == {"logreg", "mlp"}
    assert math.isfinite(cfg.run.max_time)


def test_no_default_copy_in_configs():
    assert not (REPO / "configs" / "default.yaml").exists()
    assert (REPO / "configs" / "README.md").is_file()


def test_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.seed = 3  # type: ignore[misc]


# ---------------------------------------------------------------- errors


def _set(data, dotted, value):
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def _del(data, dotted):
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[last]
    return data


BAD = [
    # unknown keys at each level
    ("sede", 1, "sede: unknown key"),
    ("run.sede", 1, "run.sede: unknown key (known: name, out_dir, seed"),
    ("run.checkpoint.every", 1, "run.checkpoint.every: unknown key"),
    ("algorithm.foo", 1, "algorithm.foo: unknown key"),
    ("algorithm.realloc.foo", 1, "algorithm.realloc.foo: unknown key"),
    ("clients.foo", 1, "clients.foo: unknown key"),
    ("clients.tiers.medium", {"fraction": 0.1, "multiplier": 1},
     "clients.tiers.medium: unknown key"),
    ("clients.tiers.slow.speed", 1, "clients.tiers.slow.speed: unknown key"),
    ("tasks.1.lr", 0.1, "tasks.1.lr: unknown key"),
    ("tasks.0.partition.beta", 1, "tasks.0.partition.beta: unknown key"),
    ("tasks.0.delay.scale", 1, "tasks.0.delay.scale: unknown key"),
    # wrong types
    ("tasks.0.local_lr", "abc", "tasks.0.local_lr: expected a number, got 'abc'"),
    ("tasks.0.local_steps", True, "tasks.0.local_steps: expected an integer, got True"),
    ("tasks.0.local_steps", 2.5, "tasks.0.local_steps: expected an integer"),
    ("tasks.0.local_lr", False, "tasks.0.local_lr: expected a number"),
    ("run.seed", "1", "run.seed: expected an integer"),
    ("run.name", 5, "run.name: expected a string"),
    ("run", [1], "run: expected a mapping"),
    ("tasks", {"a": 1}, "tasks: expected a list"),
    ("tasks.0", "digits", "tasks.0: expected a mapping"),
    ("run.clock", "wall", "run.clock: expected one of virtual, real"),
    ("run.device", "gpu", "run.device: expected one of auto, cpu, cuda"),
    ("algorithm.realloc.variant", "x", "algorithm.realloc.variant: expected one of paper, code"),
    ("run.max_time", "nan", "run.max_time: expected a finite number"),
    # ranges
    ("run.time_scale", 0, "run.time_scale: must be > 0"),
    ("run.max_time", -1, "run.max_time: must be > 0"),
    ("run.log_every", -1, "run.log_every: must be >= 0"),
    ("run.batch_requests", -2, "run.batch_requests: must be >= 0"),
    ("run.checkpoint.every_seconds", 0, "run.checkpoint.every_seconds: must be > 0"),
    ("run.checkpoint.keep", 0, "run.checkpoint.keep: must be >= 1"),
    ("algorithm.name", "fedprox", "algorithm.name: unknown algorithm 'fedprox' (known: fedast, "),
    ("algorithm.allocation", "greedy", "algorithm.allocation: unknown allocation 'greedy'"),
    ("algorithm.bayes_alpha", 1.5, "algorithm.bayes_alpha: must be in [0, 1]"),
    ("algorithm.ucb_gamma", 0, "algorithm.ucb_gamma: must be in (0, 1]"),
    ("algorithm.staleness_exponent", -1, "algorithm.staleness_exponent"),
    ("algorithm.allocation", "greedy", "algorithm.allocation: unknown allocation"),
    ("algorithm.r_to_b", 0, "algorithm.r_to_b: must be > 0"),
    ("algorithm.first_k", 0, "algorithm.first_k: must be >= 1"),
    ("algorithm.realloc.window", 1, "algorithm.realloc.window: must be >= 2"),
    ("algorithm.realloc.period_factor", -0.5, "algorithm.realloc.period_factor: must be > 0"),
    ("algorithm.total_requests", 0, "algorithm.total_requests: must be >= 1"),
    ("clients.count", 0, "clients.count: must be >= 1"),
    ("clients.available", 101, "clients.available: 101 exceeds clients.count (100)"),
    ("clients.available", 0, "clients.available: must be >= 1"),
    ("clients.tiers.slow.fraction", 0.5, "clients.tiers: fractions must sum to 1"),
    ("clients.tiers.fast.fraction", -0.25, "clients.tiers.fast.fraction: must be in [0, 1]"),
    ("clients.tiers.fast.multiplier", 0, "clients.tiers.fast.multiplier: must be > 0"),
    ("tasks.0.local_lr", -0.1, "tasks.0.local_lr: must be > 0"),
    ("tasks.0.global_lr", 0, "tasks.0.global_lr: must be > 0"),
    ("tasks.0.weight_decay", -1e-4, "tasks.0.weight_decay: must be >= 0"),
    ("tasks.0.local_steps", 0, "tasks.0.local_steps: must be >= 1"),
    ("tasks.0.batch_size", 0, "tasks.0.batch_size: must be >= 1"),
    ("tasks.0.eval_every", 0, "tasks.0.eval_every: must be >= 1"),
    ("tasks.0.requests", 0, "tasks.0.requests: must be >= 1"),
    ("tasks.1.buffer_size", 50, "tasks.1.buffer_size: 50 exceeds tasks.1.requests (20)"),
    ("tasks.0.target_accuracy", 1.5, "tasks.0.target_accuracy: must be in (0, 1]"),
    ("tasks.0.target_accuracy", 0, "tasks.0.target_accuracy: must be in (0, 1]"),
    ("tasks.0.delay.shift", -1, "tasks.0.delay.shift: must be >= 0"),
    ("tasks.0.delay.exp_mean", -2, "tasks.0.delay.exp_mean: must be >= 0"),
    ("tasks.0.delay.local_multi", 0, "tasks.0.delay.local_multi: must be > 0"),
    ("tasks.0.delay", {"shift": 0, "exp_mean": 0},
     "tasks.0.delay.exp_mean: shift + exp_mean must be > 0"),
    ("tasks.0.partition.alpha", 0, "tasks.0.partition.alpha: must be > 0"),
    ("tasks.0.partition.samples_per_client", 0,
     "tasks.0.partition.samples_per_client: must be >= 1"),
    ("tasks.0.partition.refill", "some",
     "tasks.0.partition.refill: expected one of class, all; got 'some'"),
    ("tasks.0.partition.data_seed", 10,
     "tasks.0.partition.data_seed: needs kind 'dirichlet' with refill 'all'"),
    ("tasks.0.partition", {"kind": "dirichlet", "refill": "all", "data_seed": -1},
     "tasks.0.partition.data_seed: must be"),
    # catalog
    ("tasks.0.dataset", "mnist-x",
     "tasks.0.dataset: unknown dataset 'mnist-x' (known: digits, synthetic, mnist"),
    ("tasks.0.dataset", "mnist", "tasks.0.data_dir: dataset 'mnist' reads its standard files"),
    ("tasks.0.model", "resnet", "tasks.0.model: unknown model 'resnet'"),
    ("tasks.0.dataset_args", {"foo": 1},
     "tasks.0.dataset_args.foo: unknown key (known: test_fraction)"),
    ("tasks.0.dataset_args", {"test_fraction": "x"},
     "tasks.0.dataset_args.test_fraction: expected a number"),
    ("tasks.1.dataset_args", {"dim": 1.5}, "tasks.1.dataset_args.dim: expected an integer"),
    ("tasks.0.model_args", {"hidden": [3]}, "tasks.0.model_args.hidden: unknown key (known: none)"),
    ("tasks.1.model_args", {"hidden": 32}, "tasks.1.model_args.hidden: expected a list"),
    ("tasks.1.model_args", {"hidden": ["a"]}, "tasks.1.model_args.hidden.0: expected an integer"),
    ("tasks.0.partition.kind", "natural",
     "tasks.0.partition.kind: 'natural' is not a partition of dataset 'digits'"),
    # names
    ("tasks.1.name", "digits", "tasks.1.name: duplicate task name 'digits' (also tasks.0.name)"),
    ("tasks.0.name", "12", "tasks.0.name: '12' must not be all digits"),
    ("tasks.0.name", "", "tasks.0.name: must not be empty"),
    ("tasks.0.name", "a.b", "tasks.0.name: 'a.b' must not contain"),
    ("tasks", [], "tasks: must list at least one task"),
]


@pytest.mark.parametrize("key,value,expected", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_value_names_key(key, value, expected):
    message = error_of(_set(raw(), key, value))
    assert message.startswith(expected), message


MISSING = ["tasks", "tasks.0.name", "tasks.0.dataset", "tasks.0.model", "tasks.1.target_accuracy"]


@pytest.mark.parametrize("key", MISSING)
def test_missing_required(key):
    message = error_of(_del(raw(), key))
    assert message == f"{key}: required key missing"


def test_top_level_not_mapping():
    with pytest.raises(ConfigError):
        config_from_dict([1, 2])  # type: ignore[arg-type]


def test_exit_code():
    assert ConfigError.exit_code == 2
    with pytest.raises(ConfigError) as info:
        config_from_dict(_set(raw(), "run.seed", True))
    assert info.value.exit_code == 2


def test_accepted_coercions():
    data = raw()
    _set(data, "tasks.0.local_lr", "1e-3")  # PyYAML reads 1e-3 as a string
    _set(data, "tasks.0.global_lr", 2)  # int for float
    _set(data, "tasks.0.dataset_args", {"test_fraction": 0})  # int where default is float
    _set(data, "run.max_time", None)
    cfg = config_from_dict(data)
    t = cfg.tasks[0]
    assert t.local_lr == 0.001 and isinstance(t.global_lr, float) and t.global_lr == 2.0
    assert t.dataset_args["test_fraction"] == 0.0 \
        and isinstance(t.dataset_args["test_fraction"], float)
    assert cfg.run.max_time == math.inf


def test_partial_tier_keeps_tier_default():
    data = raw(clients={"tiers": {"slow": {"fraction": 0.5}, "normal": {"fraction": 0.25}}})
    tiers = config_from_dict(data).clients.tiers
    assert tiers.slow.multiplier == 1.3 and tiers.slow.fraction == 0.5
    assert tiers.fast.fraction == 0.25


# ---------------------------------------------------------------- resolution


def test_requests_split_with_remainder():
    tasks = [task(f"t{i}", requests=None, buffer_size=1) for i in range(3)]
    cfg = config_from_dict({"algorithm": {"total_requests": 20}, "tasks": tasks})
    assert [t.requests for t in cfg.tasks] == [7, 7, 6]
    assert cfg.algorithm.total_requests == 20


def test_requests_split_after_explicit_ones():
    tasks = [task("a", requests=10), task("b", requests=None, buffer_size=1),
             task("c", requests=None, buffer_size=1)]
    cfg = config_from_dict({"algorithm": {"total_requests": 25}, "tasks": tasks})
    assert [t.requests for t in cfg.tasks] == [10, 8, 7]
    assert cfg.algorithm.total_requests == 25


def test_requests_missing_without_total():
    message = error_of({"tasks": [task("a"), task("b", requests=None)]})
    assert message.startswith("tasks.1.requests: required when algorithm.total_requests is null")


def test_total_requests_mismatch():
    message = error_of({"algorithm": {"total_requests": 30}, "tasks": [task("a"), task("b")]})
    assert message.startswith("algorithm.total_requests: 30 differs")


def test_total_requests_too_small():
    tasks = [task("a", requests=10), task("b", requests=None, buffer_size=1)]
    message = error_of({"algorithm": {"total_requests": 10}, "tasks": tasks})
    assert message.startswith("algorithm.total_requests:")


def test_total_requests_becomes_sum():
    cfg = config_from_dict({"tasks": [task("a", requests=20),
                                      task("b", requests=12, buffer_size=2)]})
    assert cfg.algorithm.total_requests == 32


def test_buffer_from_r_to_b():
    tasks = [task("a", requests=64, buffer_size=None), task("b", requests=10, buffer_size=None),
             task("c", requests=100, buffer_size=None)]
    cfg = config_from_dict({"algorithm": {"r_to_b": 8}, "tasks": tasks})
    assert [t.buffer_size for t in cfg.tasks] == [8, 1, 12]  # round(12.5) == 12
    cfg = config_from_dict({"tasks": [task("a", requests=64, buffer_size=None)]})
    assert cfg.tasks[0].buffer_size == 2


def test_derived_buffer_never_exceeds_requests():
    cfg = config_from_dict({"algorithm": {"r_to_b": 0.5},
                            "tasks": [task("a", requests=4, buffer_size=None)]})
    assert cfg.tasks[0].buffer_size == 4


def test_nobuffer_resolves_to_one():
    cfg = config_from_dict({"algorithm": {"name": "fedast-nobuffer"},
                            "tasks": [task("a", buffer_size=5), task("b", buffer_size=None)]})
    assert [t.buffer_size for t in cfg.tasks] == [1, 1]
    assert "fedast-nobuffer" in registry.names()


def test_resolution_is_idempotent():
    tasks = [task(f"t{i}", requests=None, buffer_size=None) for i in range(3)]
    cfg = config_from_dict({"algorithm": {"total_requests": 100}, "tasks": tasks})
    assert config_from_dict(to_dict(cfg)) == cfg


# ---------------------------------------------------------------- round trip


def test_round_trip_default():
    cfg = load_config(None)
    text = to_yaml(cfg)
    assert config_from_dict(yaml.safe_load(text)) == cfg


def test_round_trip_inf_max_time_is_null():
    cfg = config_from_dict({"tasks": [task()]})
    data = yaml.safe_load(to_yaml(cfg))
    assert data["run"]["max_time"] is None
    assert config_from_dict(data) == cfg


def test_to_dict_is_plain():
    data = to_dict(load_config(None))
    assert isinstance(data["tasks"], list)
    assert type(data["tasks"][2]["model_args"]) is dict
    assert data["tasks"][2]["model_args"]["hidden"] == [32]
    yaml.safe_dump(data)  # only plain types


def test_task_index_and_names():
    cfg = load_config(None)
    assert cfg.task_names == ("digits-logreg", "digits-cnn", "synthetic")
    assert cfg.task_index("digits-cnn") == 1
    with pytest.raises(ConfigError):
        cfg.task_index("nope")


def test_task_config_direct_construction():
    t = TaskConfig(name="x", dataset="synthetic", model="mlp", partition={"kind": "natural"},
                   target_accuracy=0.5)
    assert t.partition.kind == "natural" and t.dataset_args["alpha"] == 1.0
    with pytest.raises(ConfigError, match="^local_lr: must be > 0"):
        TaskConfig(name="x", dataset="digits", model="logreg", target_accuracy=0.5, local_lr=0)


# ---------------------------------------------------------------- overrides


def test_override_by_index_name_and_nested():
    cfg = load_config(None, [
        "tasks.0.buffer_size=4",
        "tasks.digits-cnn.local_lr=1e-3",
        "run.checkpoint.keep=3",
        "tasks.synthetic.dataset_args.alpha=2",
        "tasks.synthetic.model_args.hidden=[8, 8]",
        "run.max_time=null",
        "clients.tiers.slow.multiplier=2",
    ])
    assert cfg.tasks[0].buffer_size == 4
    assert cfg.tasks[1].local_lr == 0.001
    assert cfg.run.checkpoint.keep == 3
    assert cfg.tasks[2].dataset_args["alpha"] == 2.0
    assert tuple(cfg.tasks[2].model_args["hidden"]) == (8, 8)
    assert cfg.run.max_time == math.inf
    assert cfg.clients.tiers.slow.multiplier == 2.0


def test_override_recomputes_derived_values():
    cfg = load_config(None, ["algorithm.name=fedast-nobuffer"])
    assert all(t.buffer_size == 1 for t in cfg.tasks)
    cfg = load_config(None, ["tasks.0.requests=40"])
    assert cfg.algorithm.total_requests == 80


def test_apply_override_edits_in_place():
    data = raw()
    before = copy.deepcopy(data)
    apply_override(data, "run.seed=4")
    assert data["run"]["seed"] == 4 and before["run"].get("seed") is None


@pytest.mark.parametrize("item,expected", [
    ("run.seed", "run.seed: expected KEY=VALUE"),
    ("tasks.nope.local_lr=1", "tasks.nope: no task named 'nope'"),
    ("tasks.7.local_lr=1", "tasks.7: no task with index 7"),
    ("run..seed=1", "run..seed: bad key"),
    ("run.name.x=1", "run.name.x: run.name is not a mapping"),
    ("run.seed=[1", "run.seed: cannot parse value"),
])
def test_bad_override(item, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [item])
    assert str(info.value).startswith(expected), str(info.value)


def test_override_unknown_key_reported_at_construction():
    with pytest.raises(ConfigError, match=r"^run\.sede: unknown key"):
        load_config(None, ["run.sede=1"])
    with pytest.raises(ConfigError, match=r"^tasks\.1\.buffer_size: 50 exceeds tasks\.1\.requests"):
        load_config(None, ["tasks.digits-cnn.buffer_size=50"])


# ---------------------------------------------------------------- files


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="^config file '.*x.yaml' not found$"):
        load_config(tmp_path / "x.yaml")


def test_yaml_syntax_error_has_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run:\n  name: a\n  seed: [1\ntasks: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "line " in message and "\n" not in message


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", ""])
def test_top_level_must_be_mapping(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


def test_written_yaml_loads(tmp_path):
    cfg = load_config(None, ["run.seed=9"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(str(path)) == cfg


def test_algorithm_cross_checks():
    data = raw()
    data["algorithm"] = {"name": "sync", "allocation": "dynamic"}
    assert error_of(data).startswith(
        "algorithm.allocation: dynamic allocation (Realloc) is a FedAST")
    data["algorithm"] = {"name": "fedbuff"}
    assert error_of(data).startswith("algorithm.name: 'fedbuff' is a single-task reference")
    data["algorithm"] = {"name": "fedast"}
    data["compare"] = {"nosuch": {}}
    assert error_of(data).startswith("compare.nosuch: unknown algorithm")
    data["compare"] = {"sync": ["tasks.*.global_lr=1"]}
    assert error_of(data).startswith("compare.sync: expected a mapping")
    data["compare"] = {"sync": {"tasks.*.global_lr": 1.0}}
    assert config_from_dict(data).compare["sync"] == {"tasks.*.global_lr": 1.0}


def test_fedasync_resolves_buffer_one():
    data = raw()
    data["tasks"] = data["tasks"][:1]
    data["tasks"][0]["buffer_size"] = 3
    data["algorithm"] = {"name": "fedasync"}
    assert config_from_dict(data).tasks[0].buffer_size == 1


# ---------------------------------------------------------------- limits


LIMITS = [
    ("run.seed", 2**70, "run.seed: must be in [0, 4294967295] (every random stream"),
    ("run.seed", 2**32, "run.seed: must be in [0, 4294967295]"),
    ("run.seed", -1, "run.seed: must be in [0, 4294967295]"),
    ("tasks.0.local_lr", 1e308, "tasks.0.local_lr: must be in (0, 1e+30] (a float32 number"),
    ("tasks.0.local_lr", "1e308", "tasks.0.local_lr: must be in (0, 1e+30]"),
    ("tasks.1.global_lr", 1e31, "tasks.1.global_lr: must be in (0, 1e+30]"),
    ("tasks.0.weight_decay", 1e31, "tasks.0.weight_decay: must be in [0, 1e+30]"),
    ("run.time_scale", 1e-320, "run.time_scale: must be in [1e-06, 1e+06]"),
    ("run.time_scale", 1e7, "run.time_scale: must be in [1e-06, 1e+06]"),
    ("run.max_time", 1e13, "run.max_time: must be in (0, 1e+12] (simulated time units; null"),
    ("run.log_every", 1e10, "run.log_every: must be in [0, 1e+09] (wall seconds"),
    ("run.stall_timeout", 1e10, "run.stall_timeout: must be in [0, 1e+09]"),
    ("run.checkpoint.every_seconds", 1e10, "run.checkpoint.every_seconds: must be in (0, 1e+09]"),
    ("algorithm.r_to_b", 1e-320, "algorithm.r_to_b: must be in [1e-06, 1e+06]"),
    ("algorithm.realloc.period_factor", 1e300,
     "algorithm.realloc.period_factor: must be in [1e-06, 1e+06]"),
    ("algorithm.staleness_exponent", 1e3, "algorithm.staleness_exponent: must be in [0, 100]"),
    ("clients.tiers.slow.multiplier", 1e300, "clients.tiers.slow.multiplier: must be in [1e-06"),
    ("clients.tiers.fast.multiplier", 1e-9, "clients.tiers.fast.multiplier: must be in [1e-06"),
    ("tasks.0.partition.alpha", 1e-300, "tasks.0.partition.alpha: must be in [1e-06, 1e+06]"),
    ("tasks.0.delay.shift", 1e300, "tasks.0.delay.shift: must be in [0, 1e+12]"),
    ("tasks.0.delay.exp_mean", 1e300, "tasks.0.delay.exp_mean: must be in [0, 1e+12]"),
    ("tasks.0.delay.local_multi", 1e300, "tasks.0.delay.local_multi: must be in [1e-06, 1e+06]"),
    ("tasks.0.dataset_args", {"test_fraction": 2.0},
     "tasks.0.dataset_args.test_fraction: must be in [0, 1] (a fraction)"),
    ("tasks.1.dataset_args", {"alpha": -1.0},
     "tasks.1.dataset_args.alpha: must be in [0, 1000] (a standard deviation)"),
    # non-finite: refused by every float key, naming it
    ("tasks.0.local_lr", "inf", "tasks.0.local_lr: expected a finite number"),
    ("tasks.0.local_lr", float("nan"), "tasks.0.local_lr: expected a finite number"),
    ("tasks.1.global_lr", "-inf", "tasks.1.global_lr: expected a finite number"),
    ("tasks.0.delay.shift", float("inf"), "tasks.0.delay.shift: expected a finite number"),
    ("run.time_scale", "nan", "run.time_scale: expected a finite number"),
    ("tasks.1.dataset_args", {"beta": float("inf")},
     "tasks.1.dataset_args.beta: expected a finite number"),
]


@pytest.mark.parametrize("key,value,expected", LIMITS, ids=[f"{k}={v!r}" for k, v, _ in LIMITS])
def test_values_beyond_limits_name_the_key(key, value, expected):
    message = error_of(_set(raw(), key, value))
    assert message.startswith(expected), message


def test_limits_themselves_are_accepted():
    data = raw()
    for key, value in [("run.seed", 2**32 - 1), ("tasks.0.local_lr", 1e30),
                       ("run.checkpoint.every_seconds", 1e9), ("run.max_time", None),
                       ("run.time_scale", 1e-6), ("algorithm.staleness_exponent", 100)]:
        _set(data, key, value)
    cfg = config_from_dict(data)
    assert cfg.run.seed == 2**32 - 1 and cfg.tasks[0].local_lr == 1e30
    assert cfg.run.max_time == math.inf


def _sections(cls, seen=None):
    seen = set() if seen is None else seen
    if cls in seen:
        return seen
    seen.add(cls)
    for hint in typing.get_type_hints(cls).values():
        for arg in (hint, *typing.get_args(hint)):
            if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                _sections(arg, seen)
    return seen


def test_every_number_key_has_documented_limits():
    """A float key (and the seed) without limits could pass validation and fail at run time."""
    missing = []
    for cls in _sections(Config):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if (float in (hints[f.name], *typing.get_args(hints[f.name])) or f.name == "seed") \
                    and not isinstance(f.metadata.get("limits"), Limits):
                missing.append(f"{cls.__name__}.{f.name}")
    assert missing == []


# ---------------------------------------------------------------- duplicate keys


def test_duplicate_key_in_config_file(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("run:\n  seed: 1\n  name: x\n  seed: 2\ntasks:\n  - {name: a}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"config file '{path}' line 4: duplicate key run.seed "
                               f"(first on line 2)")


@pytest.mark.parametrize("text,key,line", [
    ("tasks:\n  - name: a\n    dataset: digits\n    name: b\n", "tasks.0.name", 4),
    ("run: {name: a}\nrun: {name: b}\n", "run", 2),
    ("compare:\n  sync:\n    tasks.*.global_lr: 1\n    tasks.*.global_lr: 2\n",
     "compare.sync.tasks.*.global_lr", 4),
    ("tasks:\n  - {name: a, model: x, model: y}\n", "tasks.0.model", 2),
])
def test_duplicate_keys_anywhere_name_key_and_line(tmp_path, text, key, line):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"line {line}: duplicate key {key} \(first on "):
        load_config(path)


def test_duplicate_key_in_set_value():
    with pytest.raises(ConfigError, match=r"^tasks\.0\.delay\.shift: duplicate key in --set"):
        load_config(None, ["tasks.0.delay={shift: 1, shift: 2}"])


def test_merge_keys_may_still_be_overridden():
    data = load_yaml("base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 3\n", "t")
    assert data["run"] == {"x": 3, "y": 2}
    assert load_yaml("a: &a [1]\nb: *a\n", "t") == {"a": [1], "b": [1]}
