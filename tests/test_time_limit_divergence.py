"""Issue 14: runs to a time limit (`target_accuracy: null`), the final models' evaluation,
divergence as a result (`Diverged`, compare goes on), and the small CLI items (report --help,
`--set tasks.*.KEY`, validate's data_dir check, known data locations, inspect's timing line)."""

from __future__ import annotations

import math
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from analysis import metrics
from analysis.metrics import RunTimes
from conftest import launch
from fedast_mpi import cli, datadirs
from fedast_mpi.clock import Busy, Clock
from fedast_mpi.comparison import summarize
from fedast_mpi.config import apply_override, config_from_dict, load_config
from fedast_mpi.errors import ConfigError, DataError, Diverged, FedastError
from fedast_mpi.recorder import MemorySink, Recorder
from fedast_mpi.records import Request, Update
from fedast_mpi.schema import STATUSES
from fedast_mpi.tasks import Tasks

ROOT = Path(__file__).parent.parent
CONFIG = str(ROOT / "configs" / "compare-embedded.yaml")


def _data() -> dict:
    return yaml.safe_load(Path(CONFIG).read_text())


# -- A: no target, the run ends at max_time ---------------------------------------------------
def test_null_target_is_accepted_and_out_of_range_refused():
    data = _data()
    data["tasks"][0]["target_accuracy"] = None
    cfg = config_from_dict(data)
    assert cfg.tasks[0].target_accuracy is None
    for bad in (1.01, 0.0, -0.5):
        data["tasks"][0]["target_accuracy"] = bad
        with pytest.raises(ConfigError, match="tasks.0.target_accuracy"):
            config_from_dict(data)


def test_no_target_and_no_max_time_would_never_end():
    data = _data()
    for t in data["tasks"]:
        t["target_accuracy"] = None
    config_from_dict(data)  # max_time 4000: ends there
    data["run"]["max_time"] = None
    with pytest.raises(ConfigError, match=r"^run.max_time: .*never end"):
        config_from_dict(data)
    data["tasks"][1]["target_accuracy"] = 0.5  # one target: the run ends when it is reached
    config_from_dict(data)


def _tasks(target, evaluate=lambda i, m: (1.0, 0.0)):
    cfg = types.SimpleNamespace(name="t", requests=2, buffer_size=1, target_accuracy=target,
                                global_lr=1.0, eval_every=1)
    sink = MemorySink()
    sink.add_task(0, "t", dataset="d", model="m", n_params=3, target_accuracy=math.nan)
    clock = Clock(False, 1.0)
    busy = Busy(types.SimpleNamespace(wall=0.0, cpu=0.0))
    return Tasks([cfg], [np.zeros(3, np.float32)], Recorder(sink, clock), evaluate,
                 lambda u: None, busy)


def test_a_task_without_target_never_reaches():
    tasks = _tasks(None)
    assert tasks.evaluate(tasks[0]) is False
    tasks = _tasks(0.5)
    assert tasks.evaluate(tasks[0]) is True


# -- B: divergence is a result ------------------------------------------------------------
def test_non_finite_update_raises_diverged_with_the_old_message():
    tasks = _tasks(0.5)
    req = Request(id=7, task=0, client=3, base_version=0, dispatch_time=0.0, finish_time=1.0,
                  seed=0)
    upd = Update(request=7, task=0, worker=1, train_loss=0.0, n_samples=1,
                 delta=np.array([np.inf, 0, 0], np.float32))
    with pytest.raises(Diverged, match=r"task t: non-finite update \(request 7, client 3, "
                                       r"worker 1\); lower local_lr\?"):
        tasks.accept(req, upd)
    assert issubclass(Diverged, FedastError) and Diverged.exit_code == 1
    assert "diverged" in STATUSES


def _times(tasks, end_time=1000.0, status="completed", reason="all tasks reached"):
    run = types.SimpleNamespace(end_time=end_time, status=status,
                                attrs={"stop_reason": reason})
    return RunTimes(run, tasks, max(tasks.values()), metrics.is_diverged(run))


def test_summary_names_a_diverged_run_and_leaves_it_out():
    nan_run = {"a": math.inf, "b": math.inf}
    results = {
        "fedast": {0: _times({"a": 10.0, "b": 60.0}), 1: _times({"a": 12.0, "b": 40.0})},
        "nobuf": {0: _times({"a": 20.0, "b": 100.0}),
                  1: _times(nan_run, 123.45, "failed", "task a: non-finite update (request 1, "
                                                       "client 2, worker 1); lower local_lr?")},
        "gone": {0: _times(nan_run, 7.0, "diverged", "x"), 1: _times(nan_run, 9.0, "diverged")},
    }
    table, rows = summarize(results)
    by = {r[0]: r for r in rows[1:]}
    assert by["nobuf"][1] == "20.0"  # over seed 0 only
    assert by["nobuf"][3] == "100.0 (seed 1 diverged at t=123.5)"
    assert by["nobuf"][4].startswith("40.0 %") and "seed 1 left out: diverged" in by["nobuf"][4]
    assert by["gone"][3] == "diverged at t=7.0; diverged at t=9.0"
    assert "diverged" in table


def test_compare_goes_on_after_a_diverging_run(tmp_path):
    data = _data()
    data["run"]["max_time"] = 30
    data["compare"] = {"fedast-nobuffer": {"tasks.*.global_lr": 1e12}}  # diverges at once
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "cmp"
    res = launch(2, "compare", config, "--algorithms", "fedast-nobuffer,fedast", "--seeds",
                 "1", "--out", out)
    assert res.rc == 0, res.stderr
    assert "diverged; the comparison goes on" in res.stdout
    with h5py.File(out / "fedast-nobuffer-seed0" / "run.h5", "r") as f:
        assert f.attrs["status"] in ("diverged", "failed")  # failed until launch marks it
        assert "non-finite update" in f.attrs["stop_reason"]
    with h5py.File(out / "fedast-seed0" / "run.h5", "r") as f:  # the run after it went on
        assert f.attrs["status"] == "completed"
    text = (out / "compare.md").read_text()
    assert "diverged at t=" in text
    report = launch(0, "report", out, "--out", tmp_path / "report")
    assert report.rc == 0, report.stderr
    assert "diverged at t=" in (tmp_path / "report" / "report.md").read_text()


# -- C: small things ---------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_report_help_exits_0(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", flag])
    assert exc.value.code == 0
    assert "usage: fedast-mpi report" in capsys.readouterr().out


def test_set_tasks_star_applies_to_every_task():
    data = _data()
    apply_override(data, "tasks.*.local_lr=0.01")
    assert [t["local_lr"] for t in data["tasks"]] == [0.01] * 3
    cfg = load_config(CONFIG, ["tasks.*.target_accuracy=null"])
    assert all(t.target_accuracy is None for t in cfg.tasks)


def _fmnist_config(tmp_path, **task) -> Path:
    cfg = {"run": {"max_time": 10},
           "tasks": [{"name": "fm", "dataset": "fmnist", "model": "lenet5", "requests": 2,
                      "partition": {"kind": "iid", "samples_per_client": 5},
                      "target_accuracy": 0.5, **task}]}
    path = tmp_path / "fm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _idx_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in datadirs.IDX_FILES:
        (path / f"{name}.gz").write_bytes(b"")
    return path


def test_idx_file_names_match_the_reader():
    from fedast_mpi.data import idx
    assert datadirs.IDX_FILES == idx.FILES and datadirs.IDX_SUBFOLDER == idx.SUBFOLDER


def test_validate_checks_data_dir(tmp_path, capsys):
    missing = str(tmp_path / "no")
    assert cli.main(["validate", str(_fmnist_config(tmp_path, data_dir=missing))]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    empty = str(tmp_path / "empty")
    assert cli.main(["validate", str(_fmnist_config(tmp_path, data_dir=empty))]) == 2
    assert "no fmnist IDX files" in capsys.readouterr().err
    good = _idx_dir(tmp_path / "good")
    assert cli.main(["validate", str(_fmnist_config(tmp_path, data_dir=str(good)))]) == 0


def test_known_locations(tmp_path, monkeypatch):
    first, second = tmp_path / "first", _idx_dir(tmp_path / "second")
    dirs = {"fmnist": (str(first), str(second))}
    assert datadirs.find_known("fmnist", dirs) == str(second)
    assert datadirs.find_known("fmnist", {"fmnist": (str(first),)}) is None
    assert datadirs.find_known("cifar10", dirs) is None
    monkeypatch.setattr(datadirs, "KNOWN_DIRS", dirs)
    cfg = load_config(str(_fmnist_config(tmp_path)))
    assert cfg.tasks[0].data_dir == str(second)
    monkeypatch.setattr(datadirs, "KNOWN_DIRS", {"fmnist": (str(first),)})
    with pytest.raises(ConfigError, match="tasks.0.data_dir"):
        load_config(str(_fmnist_config(tmp_path)))
    assert DataError.exit_code == 2


def test_run_to_max_time_reports_the_final_models(tmp_path):
    out = tmp_path / "run"
    res = launch(2, "run", CONFIG, "--set", "run.max_time=5", "--set",
                 "tasks.*.target_accuracy=null", "--out", out)
    assert res.rc == 0, res.stderr
    assert "run completed: max_time" in res.stdout
    with h5py.File(out / "run.h5", "r") as f:
        final = f.attrs["final_accuracy"]
        assert f.attrs["final_time"] == 5.0
        for i, name in enumerate(["digits-iid", "digits-dirichlet", "synthetic-1-1"]):
            g = f["tasks"][name]
            assert math.isnan(g.attrs["target_accuracy"]) and math.isnan(g.attrs["reached_time"])
            assert f.attrs["final_version"][i] >= g["eval"]["version"][-1]
            assert 0.0 <= final[i] <= 1.0
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("digits-iid ")]
    assert lines and lines[-1].split()[-1] == f"{final[0]:.3f}"
    inspect = launch(0, "inspect", out)
    assert "updates/s" in inspect.stdout and "final model accuracy: digits-iid" in inspect.stdout
