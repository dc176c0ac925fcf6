"""`fedast-mpi compare`: the plan, the metric, and FedAST against Sync-ST on the embedded config."""

from __future__ import annotations

import csv
import math
import types
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis.metrics import RunTimes
from conftest import launch
from fedast_mpi.comparison import expand, plan, summarize
from fedast_mpi.config import load_config
from fedast_mpi.errors import ConfigError

CONFIG = str(Path(__file__).parent.parent / "configs" / "compare-embedded.yaml")


def test_expand_wildcards_every_task():
    assert expand({"tasks.*.global_lr": 3.0, "run.max_time": 5}, 2) == [
        "tasks.0.global_lr=3.0", "tasks.1.global_lr=3.0", "run.max_time=5"]


def test_plan_same_seeds_per_algorithm_and_overrides():
    cfg = load_config(CONFIG, ["algorithm.allocation=dynamic"])
    runs = plan(cfg, ["fedast", "sync"], 2)
    assert [(e.algorithm, e.seed) for e in runs] == [("fedast", 0), ("fedast", 1), ("sync", 0),
                                                     ("sync", 1)]
    assert [e.name for e in runs] == ["fedast-seed0", "fedast-seed1", "sync-seed0", "sync-seed1"]
    by = {(e.algorithm, e.seed): e.config for e in runs}
    assert by[("fedast", 0)].algorithm.allocation == "dynamic"
    assert by[("sync", 0)].algorithm.allocation == "static"  # Realloc is FedAST's
    assert all(t.global_lr == 3.0 for t in by[("sync", 1)].tasks)
    assert all(t.global_lr == 1.0 for t in by[("fedast", 1)].tasks)
    assert by[("sync", 1)].run.seed == by[("fedast", 1)].run.seed == 1
    assert by[("fedast", 0)].clients == by[("sync", 0)].clients
    with pytest.raises(ConfigError, match="--algorithms"):
        plan(cfg, ["fedast", "nope"], 1)
    with pytest.raises(ConfigError, match="--seeds"):
        plan(cfg, ["fedast"], 0)


def _times(tasks, end_time=1000.0):
    run = types.SimpleNamespace(end_time=end_time)
    return RunTimes(run, tasks, max(tasks.values()))


def test_summary_gain_is_the_papers_formula():
    results = {"fedast": {0: _times({"a": 10.0, "b": 60.0}), 1: _times({"a": 12.0, "b": 40.0})},
               "sync": {0: _times({"a": 20.0, "b": 100.0}), 1: _times({"a": 30.0, "b": 80.0})}}
    table, rows = summarize(results)
    gains = [(100 - 60) / 100, (80 - 40) / 80]
    mean, std = 100 * np.mean(gains), 100 * np.std(gains, ddof=1)
    assert rows[2][-1] == f"{mean:.1f} ± {std:.1f} %"
    assert rows[2][3] == "90.0 ± 14.1"  # completion of sync
    assert "| fedast |" in table
    results["sync"][1] = _times({"a": 30.0, "b": math.inf}, end_time=200.0)
    _, rows = summarize(results)
    assert rows[2][3] == "100.0 (1 not reached)"
    # the seed that reached gives the gain; the other a lower bound from where sync stopped
    assert rows[2][-1] == "40.0 %; ≥ 80.0 % on 1 seed (baseline not reached)"


@pytest.mark.slow
@pytest.mark.launch
def test_fedast_completes_sooner_than_sync_st(tmp_path):
    out = tmp_path / "cmp"
    res = launch(3, "compare", CONFIG, "--algorithms", "fedast,sync", "--seeds", "2",
                 "--out", str(out), timeout=600)
    assert res.rc == 0, res.stderr[-2000:]
    assert (out / "compare.md").exists() and "gain of fedast" in res.stdout
    gains = []
    for seed in range(2):
        files = {a: h5py.File(out / f"{a}-seed{seed}" / "run.h5", "r") for a in ("fedast", "sync")}
        try:
            f, s = files["fedast"], files["sync"]
            # identical clients, shards, initial models for both algorithms
            for key in ("clients/tier", "clients/multiplier", "clients/n_samples"):
                assert np.array_equal(f[key][()], s[key][()]), key
            for name in f["tasks"]:
                assert f[f"tasks/{name}/eval"][0]["accuracy"] \
                    == s[f"tasks/{name}/eval"][0]["accuracy"]
            done = [max(g.attrs["reached_time"] for g in x["tasks"].values()) for x in (f, s)]
            assert all(np.isfinite(done)), done
            gains.append((done[1] - done[0]) / done[1])
        finally:
            for x in files.values():
                x.close()
    assert min(gains) > 0.3, gains  # a clear margin on every seed
    rows = list(csv.reader(open(out / "compare.csv")))
    mean = 100 * np.mean(gains)
    assert rows[2][-1].startswith(f"{mean:.1f} ±"), (rows[2], mean)


def test_plan_accepts_per_algorithm_weights():
    cfg = load_config(CONFIG)
    cfg = cfg.__class__(**{**{f: getattr(cfg, f) for f in ("run", "algorithm", "clients", "tasks")},
                           "compare": {"sync": {"tasks.0.requests": 30}}})
    runs = {e.algorithm: e.config for e in plan(cfg, ["fedast", "sync"], 1)}
    assert [t.requests for t in runs["sync"].tasks] == [30, 24, 24]
    assert runs["sync"].algorithm.total_requests == 78
    assert runs["fedast"].algorithm.total_requests == 72


@pytest.mark.launch
def test_array_tasks_then_summary(tmp_path):
    out = tmp_path / "sweep"
    common = ["--algorithms", "fedast,sync", "--seeds", "1", "--out", str(out),
              "--set", "run.max_time=400", "--set", "run.log_every=0"]
    for index in (1, 0):  # any order, one run each, as job-array tasks would
        res = launch(2, "compare", *common, "--only", str(index))
        assert res.rc == 0, res.stderr
        assert "gain of" not in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["fedast-seed0", "sync-seed0"]
    bad = launch(0, "compare", *common, "--only", "2")
    assert bad.rc == 2 and "--only" in bad.stderr
    summary = launch(0, "compare", *common, "--summarize")
    assert summary.rc == 0 and "gain of fedast" in summary.stdout
    assert (out / "compare.md").read_text().count("| sync |") == 1


def test_command_line_overrides_win_over_the_compare_section():
    cfg = load_config(CONFIG)
    cfg = cfg.__class__(**{**{f: getattr(cfg, f) for f in ("run", "algorithm", "clients", "tasks")},
                           "compare": {"sync": {"run.max_time": 99999}}})
    runs = {e.algorithm: e.config for e in plan(cfg, ["fedast", "sync"], 1, ["run.max_time=50"])}
    assert runs["sync"].run.max_time == 50 and runs["fedast"].run.max_time == 50
    runs = {e.algorithm: e.config for e in plan(cfg, ["sync"], 1)}
    assert runs["sync"].run.max_time == 99999


@pytest.mark.launch
def test_plan_option_lists_the_runs_and_writes_nothing(tmp_path):
    out = tmp_path / "cmp"
    res = launch(0, "compare", CONFIG, "--algorithms", "fedast,fedbuff", "--seeds", "2",
                 "--out", str(out), "--plan")
    assert res.rc == 0, res.stderr
    names = ["fedast-seed0", "fedast-seed1"] + [
        f"fedbuff-seed{k}-{t}" for k in (0, 1)
        for t in ("digits-iid", "digits-dirichlet", "synthetic-1-1")]
    assert res.stdout.splitlines() == [f"{i} {out / n}" for i, n in enumerate(names)]
    assert not out.exists()
