"""Single-task algorithms in a multi-task comparison: the plan trains each task alone, with the
random streams it has in the multi-task config, and the analysis chains the runs in config order
(`analysis.sequence`)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from analysis import load_run, metrics
from analysis.report import main as report_main
from analysis.runs import AnalysisError
from analysis.sequence import is_sequence, sequential
from fedast_mpi.clients import ClientPool, DelayModel
from fedast_mpi.comparison import plan, write_summary
from fedast_mpi.errors import ConfigError
from inprocess import digits_task, make_config, run_and_read

TASKS = [digits_task("easy", target_accuracy=0.7, eval_every=1, requests=4, buffer_size=2,
                     local_lr=0.1, global_lr=1.0),
         digits_task("hard", target_accuracy=0.6, eval_every=1, requests=6, buffer_size=3,
                     local_lr=0.03, global_lr=1.0, delay={"shift": 2.0, "exp_mean": 1.0,
                                                          "local_multi": 1.0})]


def _cfg(**over):
    return make_config(TASKS, clients=20, available=8, max_time=400.0, seed=3, **over)


def test_a_single_task_algorithm_trains_each_task_alone():
    runs = plan(_cfg(), ["fedast", "fedbuff", "fedasync"], 2)
    assert [e.name for e in runs] == [
        "fedast-seed3", "fedast-seed4",
        "fedbuff-seed3-easy", "fedbuff-seed3-hard", "fedbuff-seed4-easy", "fedbuff-seed4-hard",
        "fedasync-seed3-easy", "fedasync-seed3-hard", "fedasync-seed4-easy",
        "fedasync-seed4-hard"]
    parts = [e.config for e in runs if e.algorithm == "fedbuff" and e.seed == 3]
    assert [len(c.tasks) for c in parts] == [1, 1]
    easy, hard = parts[0].tasks[0], parts[1].tasks[0]
    # the whole budget (4 + 6), b scaled keeping R/b (2/4, 3/6 -> 5/10), its other settings
    # and its random streams from the multi-task config
    assert (easy.name, easy.requests, easy.buffer_size, easy.stream_index) == ("easy", 10, 5, 0)
    assert (hard.name, hard.requests, hard.buffer_size, hard.stream_index) == ("hard", 10, 5, 1)
    assert hard.local_lr == 0.03 and hard.delay.shift == 2.0
    assert parts[1].run.name == "fedbuff-seed3-hard" and parts[1].algorithm.total_requests == 10
    # single-task algorithms run static: the static hand-over rule, whatever Realloc's variant
    code = plan(_cfg(realloc={"variant": "code"}, r_to_b=4.0), ["fedbuff"], 1)
    assert [e.config.tasks[0].buffer_size for e in code] == [5, 5]
    # a one-task config runs as before: one run per seed
    one = plan(make_config(TASKS[:1], clients=20, seed=3), ["fedbuff"], 1)
    assert [e.name for e in one] == ["fedbuff-seed3"]
    assert one[0].config.tasks[0].stream_index is None


def test_stream_index_must_not_be_negative():
    with pytest.raises(ConfigError, match="stream_index"):
        make_config([digits_task(stream_index=-1)])


def test_a_task_alone_draws_the_delays_it_has_among_others():
    """Task 1 of a two-task pool and the same task alone with stream key 1: equal delays."""
    tier, mult = np.zeros(12, np.int8), np.ones(12, np.float32)
    delays = [DelayModel(1.0, 2.0, 1.0), DelayModel(2.0, 1.0, 1.0)]
    both = ClientPool(tier, mult, delays, seed=5, available=None)
    alone = ClientPool(tier, mult, delays[1:], seed=5, available=None, stream_keys=[1])
    other = ClientPool(tier, mult, delays[1:], seed=5, available=None)
    got = [both.schedule(c, 1, 0.0)[1] for c in range(12)]
    assert [alone.schedule(c, 0, 0.0)[1] for c in range(12)] == got
    assert [other.schedule(c, 0, 0.0)[1] for c in range(12)] != got


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """fedast and fedbuff, seed 3, every planned run trained in-process into one directory."""
    root = tmp_path_factory.mktemp("seq")
    cfg = _cfg()
    for entry in plan(cfg, ["fedast", "fedbuff"], 1):
        run_and_read(entry.config, root / entry.name)
    return cfg, root


def test_the_parts_chain_in_config_order(comparison):
    _, root = comparison
    easy = load_run(root / "fedbuff-seed3-easy")
    hard = load_run(root / "fedbuff-seed3-hard")
    multi = load_run(root / "fedast-seed3")
    # the same initial models as the multi-task run (version 0's evaluation)
    assert easy.tasks[0].eval[0]["accuracy"] == multi.task("easy").eval[0]["accuracy"]
    assert hard.tasks[0].eval[0]["accuracy"] == multi.task("hard").eval[0]["accuracy"]
    assert hard.tasks[0].attrs["stream_index"] == 1 and multi.task("hard").attrs[
        "stream_index"] == 1
    assert is_sequence([hard, easy]) and not is_sequence([easy, easy])
    run = sequential([hard, easy])  # any order in, config order out
    assert run.task_names == ["easy", "hard"] and run.status == "completed"
    t_easy = metrics.time_to_target(easy.tasks[0].eval, 0.7)
    t_hard = metrics.time_to_target(hard.tasks[0].eval, 0.6)
    assert math.isfinite(t_easy) and math.isfinite(t_hard)
    times = metrics.run_times(run)
    assert times.tasks == {"easy": t_easy, "hard": easy.end_time + t_hard}
    assert times.completion == easy.end_time + t_hard
    assert run.end_time == easy.end_time + hard.end_time
    assert metrics.check_reached(run) == []
    assert set(run.events["task"]) == {0, 1} and len(set(run.events["request"])) == len(
        run.events)
    hard_rows = run.events[run.events["task"] == 1]
    assert np.array_equal(hard_rows["time"], hard.events["time"] + easy.end_time)
    assert np.all(np.diff(run.aggregations["time"]) >= 0)


def test_a_part_that_diverged_ends_the_chain(comparison):
    _, root = comparison
    easy = load_run(root / "fedbuff-seed3-easy")
    hard = load_run(root / "fedbuff-seed3-hard")
    easy.attrs.update(status="diverged", stop_reason="non-finite update of task 0")
    run = sequential([easy, hard])
    assert run.status == "diverged" and run.task_names == ["easy"]
    assert run.attrs["stop_reason"] == "task easy: non-finite update of task 0"
    assert metrics.run_times(run).diverged and run.end_time == easy.end_time


def test_group_runs_chains_parts_and_still_refuses_real_duplicates(comparison):
    _, root = comparison
    easy = load_run(root / "fedbuff-seed3-easy")
    hard = load_run(root / "fedbuff-seed3-hard")
    groups = metrics.group_runs([load_run(root / "fedast-seed3"), easy, hard])
    assert list(groups) == ["fedast", "fedbuff"]
    assert groups["fedbuff"][3].task_names == ["easy", "hard"]
    with pytest.raises(AnalysisError, match="two runs of fedbuff with seed 3"):
        metrics.group_runs([easy, load_run(root / "fedbuff-seed3-easy")])


def test_compare_and_report_tables_show_the_sequence(comparison, tmp_path, capsys):
    cfg, root = comparison
    write_summary(cfg, ["fedast", "fedbuff"], 1, root)
    md = (root / "compare.md").read_text()
    assert "fedbuff (single-task) train the tasks one after another" in md
    rows = {r[0]: r for r in csv.reader(open(root / "compare.csv"))}
    chained = metrics.run_times(sequential([load_run(root / "fedbuff-seed3-easy"),
                                            load_run(root / "fedbuff-seed3-hard")]))
    assert rows["fedbuff"][3] == f"{chained.completion:.1f}"
    assert rows["fedbuff"][4] not in ("—", "")  # a gain of fedast over it
    out = tmp_path / "report"
    assert report_main([str(root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| fedbuff | 3 |" in text and f"{chained.completion:.1f}" in text
