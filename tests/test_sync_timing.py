"""analysis.sync_timing: the authors' Sync-ST timing rules, simulated, beside a run's rounds."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import load_run
from analysis.sync_timing import SyncSetting, main, measured, simulate
from inprocess import digits_task, make_config, run_and_read


def _setting(shares, first_k, exp_mean=0.0, available=None):
    m = len(shares)
    return SyncSetting(tuple(shares), sum(shares) if available is None else available, first_k,
                       (1.0,) * m, (exp_mean,) * m, (2.0,) * m)


def test_fixed_durations_by_hand():
    """No exponential part: durations are shift x local_multi x multiplier, so by hand."""
    rng = np.random.default_rng(0)
    # one task, clients 0.7 and 1.3 both picked: first-1 keeps the fast one, 1.4 a round
    one = simulate(_setting([2], 1), np.array([0.7, 1.3]), 5, rng)
    assert np.allclose(one, 1.4)
    assert np.allclose(simulate(_setting([2], None), np.array([0.7, 1.3]), 5, rng), 2.6)
    # 2 of 3 clients a round, first-1: a round with client 0 lasts 1.0; {1, 2} lasts 1.2 plus
    # client 1's backlog, 0.2 for each {0, 1} round just before (its discarded 1.2-long job
    # outlasted the 1.0 round), so only the queue makes rounds longer than 1.2
    d = np.round(simulate(_setting([2], 1, available=2), np.array([0.5, 0.6, 10.0]), 400,
                          np.random.default_rng(1)), 9)
    backlog = (d[d != 1.0] - 1.2) / 0.2
    assert d.min() == 1.0 and np.allclose(backlog, np.round(backlog)) and backlog.max() >= 2


def test_shares_leftover_and_exponential_mean():
    """The leftover client is drawn every round (shares 1 + 1 of 3 available): all three jobs
    are waited for, so a round lasts the max of 3 Exp(1), mean 1 + 1/2 + 1/3."""
    rng = np.random.default_rng(2)
    s = SyncSetting((1, 1), 3, None, (0.0, 0.0), (1.0, 1.0), (1.0, 1.0))
    d = simulate(s, np.ones(1000), 4000, rng)
    assert d.mean() == pytest.approx(1 + 1 / 2 + 1 / 3, rel=0.05)


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory):
    tasks = [digits_task("digits", target_accuracy=0.8, eval_every=1, requests=6, buffer_size=2,
                         local_lr=0.1, global_lr=1.0)]
    cfg = make_config(tasks, clients=40, available=12, max_time=150.0, seed=5, name="sync",
                      first_k=4)
    out = tmp_path_factory.mktemp("sync") / "sync-seed5"
    run_and_read(cfg, out)
    return out


def test_a_run_matches_the_simulated_rules(sync_run, capsys):
    """The product's rounds last what the independently written rules say, on average."""
    before, n_rounds = measured(load_run(sync_run))
    assert len(before) >= 10 and n_rounds >= len(before)
    assert main([str(sync_run), "--reps", "40"]) == 0
    line = capsys.readouterr().out.strip()
    meas = float(line.split("measured mean ")[1].split(",")[0])
    sim, sd = (float(x) for x in line.split("simulated ")[1].split(" (")[0].split(" ± "))
    assert meas == pytest.approx(before.mean(), abs=1e-3)
    assert abs(meas - sim) < 4 * sd + 0.02 * sim, line


def test_errors_name_the_problem(tmp_path, sync_run, capsys):
    assert main([str(tmp_path / "none")]) == 2
    assert "sync_timing: error:" in capsys.readouterr().err
    assert main([str(sync_run), "--reps", "0"]) == 2
    assert "--reps must be >= 1" in capsys.readouterr().err
    fed = tmp_path / "fedast"
    run_and_read(make_config([digits_task()], clients=10, max_time=5.0), fed)
    assert main([str(fed)]) == 2
    assert "not 'sync'" in capsys.readouterr().err
