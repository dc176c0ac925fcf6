"""Offline analysis (SPEC §10): `analysis.report` on real run files from in-process runs."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis import load_run
from analysis.report import main
from inprocess import digits_task, make_config, run_and_read

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = {"fedast": {"allocation": "dynamic"}, "sync": {}}
SEEDS = (3, 4)
TASKS = ("digits", "digits-slow")


def _tasks():
    return [digits_task("digits", target_accuracy=0.8, eval_every=1, requests=4, buffer_size=2,
                        local_lr=0.1, global_lr=1.0),
            digits_task("digits-slow", target_accuracy=0.6, eval_every=1, requests=4,
                        buffer_size=2, local_lr=0.03, global_lr=1.0)]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """A comparison directory `<algorithm>-seed<k>/run.h5`: fedast (dynamic) and sync, 2 seeds."""
    root = tmp_path_factory.mktemp("comparison")
    for algorithm, extra in ALGORITHMS.items():
        for seed in SEEDS:
            cfg = make_config(_tasks(), clients=20, available=8, max_time=300.0, seed=seed,
                              name=algorithm, **extra)
            run_and_read(cfg, root / f"{algorithm}-seed{seed}")
    return root


@pytest.fixture(scope="module")
def report(comparison, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main([str(comparison), "--out", str(out), "--baseline", "sync"]) == 0
    return out


def _expected_times(run_file: Path) -> dict[str, float]:
    """Independently: first eval time with accuracy >= target, per task (inf if none)."""
    times = {}
    with h5py.File(run_file, "r", locking=False) as f:
        for name, g in f["/tasks"].items():
            ev = g["eval"][()]
            hit = np.flatnonzero(ev["accuracy"] >= g.attrs["target_accuracy"])
            times[name] = float(ev["time"][hit[0]]) if len(hit) else math.inf
            reached = float(g.attrs["reached_time"])
            assert reached == pytest.approx(times[name]) or (math.isnan(reached)
                                                             and math.isinf(times[name]))
    return times


def _md_table(text: str) -> dict[str, list[str]]:
    """The first Markdown table as {first cell: cells}."""
    rows = {}
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) != len(header):
            break
        rows[cells[0]] = cells
    return header, rows


def _pm(mean, std, unit=""):
    return f"{mean:.1f} ± {std:.1f}{unit}"


def test_table_matches_independent_computation(comparison, report):
    expected = {a: {s: _expected_times(comparison / f"{a}-seed{s}" / "run.h5") for s in SEEDS}
                for a in ALGORITHMS}
    for a in ALGORITHMS:  # the chosen config reaches every target
        assert all(math.isfinite(t) for s in SEEDS for t in expected[a][s].values())
    header, rows = _md_table((report / "report.md").read_text())
    assert header[-1] == "gain of fedast"
    for a in ALGORITHMS:
        cells = rows[a]
        for i, task in enumerate(TASKS):
            vals = [expected[a][s][task] for s in SEEDS]
            assert header[2 + i] == f"{task}: time to target"
            assert cells[2 + i] == _pm(np.mean(vals), np.std(vals, ddof=1))
        comp = [max(expected[a][s].values()) for s in SEEDS]
        assert cells[2 + len(TASKS)] == _pm(np.mean(comp), np.std(comp, ddof=1))
    gains = [(max(expected["sync"][s].values()) - max(expected["fedast"][s].values()))
             / max(expected["sync"][s].values()) for s in SEEDS]
    assert rows["sync"][-1] == _pm(100 * np.mean(gains), 100 * np.std(gains, ddof=1), " %")
    assert rows["fedast"][-1] == "(reference)"
    # the CSV: one row per run and task, full precision
    with open(report / "report.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == len(ALGORITHMS) * len(SEEDS) * len(TASKS)
    for row in got:
        times = expected[row["algorithm"]][int(row["seed"])]
        assert float(row["time_to_target"]) == times[row["task"]]
        assert float(row["completion"]) == max(times.values())


def test_figures_are_real_pngs(report):
    import matplotlib.image as mpimg
    names = [f"accuracy_{t}.png" for t in TASKS] + ["allocation.png", "utilisation.png"] + \
        [f"staleness_{a}.png" for a in ALGORITHMS]
    for name in names:
        path = report / name
        assert path.is_file(), name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert path.stat().st_size > 5000, name
        img = mpimg.imread(path)
        assert img.ndim == 3 and float(img[..., :3].var()) > 1e-4, f"{name} is one colour"
        assert f"({name})" in (report / "report.md").read_text()


def test_python_dash_m_entry_point(comparison, tmp_path):
    run_dir = comparison / "fedast-seed3"
    for module in ("analysis.report", "analysis"):
        out = tmp_path / module
        proc = subprocess.run([sys.executable, "-m", module, str(run_dir), "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert (out / "report.md").is_file() and (out / "report.csv").is_file()


def _live_run(path: Path):
    from fedast_mpi.runlog import RunLog
    log = RunLog(path, config_yaml="run: {}\n", algorithm="fedast", clock="virtual", seed=7,
                 world_size=1, package_version="test")
    log.add_task(0, "digits", dataset="digits", model="logreg", n_params=650,
                 target_accuracy=0.5)
    log.allocation((0.0, 0, 4, 2, math.nan))
    for i, (t, acc) in enumerate([(0.0, 0.1), (2.0, 0.4), (3.5, 0.55), (5.0, 0.6)]):
        log.eval(0, (t, 0.01 * i, i, 2 * i, acc, 2.0 - acc))
        log.event((i, 0, i, 0, max(0, i - 1), i, min(i, 1), t - 1, t, t, 0.01 * i, 1.0, 0.1, 1))
    log.task_reached(0, 3.5)
    log.flush()
    return log


def test_live_run_file_is_read(tmp_path):
    path = tmp_path / "live" / "run.h5"
    log = _live_run(path)
    try:
        run = load_run(path.parent)
        assert run.status == "running" and run.algorithm == "fedast" and run.seed == 7
        assert len(run.task("digits").eval) == 4 and not run.task("digits").has_final_model
        # another process, while the writer keeps the file open
        out = tmp_path / "out"
        proc = subprocess.run([sys.executable, "-m", "analysis.report", str(path),
                               "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        with open(out / "report.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [(r["task"], float(r["time_to_target"]), r["status"]) for r in rows] == \
            [("digits", 3.5, "running")]
        assert "status running" in (out / "report.md").read_text()
    finally:
        log.close("completed")


def _error(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_text_file_is_an_error(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a run file\n")
    rc, err = _error([str(text), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("fedast-mpi: error: ")
    assert "not an HDF5 file" in err[0]


def test_checkpoint_schema_is_an_error(tmp_path, capsys):
    from fedast_mpi.schema import CHECKPOINT_SCHEMA
    ckpt = tmp_path / "ckpt-000001.h5"
    with h5py.File(ckpt, "w") as f:
        f.attrs["schema"] = CHECKPOINT_SCHEMA
    rc, err = _error([str(ckpt), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("fedast-mpi: error: ")
    assert "checkpoint" in err[0]


@pytest.mark.parametrize("case", ["missing", "foreign", "old", "empty_dir", "no_args",
                                  "bad_reference"])
def test_other_errors_exit_2_with_one_line(case, tmp_path, capsys, comparison):
    out = str(tmp_path / "o")
    if case == "missing":
        argv = [str(tmp_path / "nope"), "--out", out]
    elif case in ("foreign", "old"):
        path = tmp_path / "x.h5"
        with h5py.File(path, "w") as f:
            if case == "old":
                f.attrs["schema"] = "fedast-mpi/run/0"
            f["data"] = np.arange(3)
        argv = [str(path), "--out", out]
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        argv = [str(tmp_path / "empty"), "--out", out]
    elif case == "no_args":
        argv = ["--out", out]
    else:
        argv = [str(comparison), "--out", out, "--reference", "fedbuff"]
    rc, err = _error(argv, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("fedast-mpi: error: "), err


def test_baseline_not_reached_gives_a_lower_bound(comparison, tmp_path):
    """A sync run cut short (max_time below its time to target): the gain is a bound."""
    cfg = make_config(_tasks(), clients=20, available=8, max_time=40.0, seed=3, name="sync")
    short = tmp_path / "short" / "sync-seed3"
    run_and_read(cfg, short)
    out = tmp_path / "o"
    assert main([str(comparison / "fedast-seed3"), str(short), "--out", str(out)]) == 0
    _, rows = _md_table((out / "report.md").read_text())
    assert rows["sync"][-2] == "not reached"
    assert rows["sync"][-1].startswith("≥ ") and "baseline not reached" in rows["sync"][-1]


def test_utilisation_counts_worker_ranks_only(tmp_path):
    """Rows the server logged itself (worker 0, cancelled) in a 3-rank run are not work."""
    from analysis.figures import utilisation
    from fedast_mpi.schema import EVENT_DTYPE
    log = _live_run(tmp_path / "u" / "run.h5")
    log.close("completed")
    run = load_run(log.path)  # any valid run; its events are replaced below
    ev = np.zeros(30, dtype=EVENT_DTYPE)
    ev["wall"] = np.linspace(0.0, 1.0, 30)
    ev["worker"] = np.r_[np.ones(10), 2 * np.ones(10), np.zeros(10)]
    ev["accepted"] = np.r_[np.ones(20), np.zeros(10)]
    run.events, run.attrs["world_size"] = ev, 3
    centres, rate, active, n_workers = utilisation(run, bins=5)
    assert n_workers == 2
    # 20 worker updates over the wall span of worker updates, 2 workers
    span = ev["wall"][19] - ev["wall"][0]
    assert rate.sum() * (span / 5) * 2 == pytest.approx(20)
    assert 0 <= active.min() and active.max() <= 1
