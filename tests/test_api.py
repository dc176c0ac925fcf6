"""The Python API: `fedast_mpi.run` / `compare` in-process (one rank, no mpiexec)
and from a script under mpiexec; `analysis.load_run`'s tables and pandas frames."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import MPIEXEC, launch
from inprocess import digits_task, make_config

import fedast_mpi
from analysis import load_run
from fedast_mpi.config import to_dict
from fedast_mpi.errors import ConfigError, FedastError, Interrupted

ROOT = Path(__file__).resolve().parents[1]
IGNORED = ("worker", "wall")  # where a request ran and wall time differ between launches


def tiny(**task):
    """A one-task digits job: virtual clock, CPU, a few updates (well under a second)."""
    return make_config([digits_task(eval_every=1, **task)], clients=20, max_time=10.0)


def events(run_dir: Path) -> dict[str, np.ndarray]:
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        ev = f["events"][()]
    return {name: ev[name] for name in ev.dtype.names if name not in IGNORED}


def assert_same_events(a: Path, b: Path) -> None:
    ea, eb = events(a), events(b)
    assert len(ea["request"]) == len(eb["request"]) > 0
    for name in ea:
        assert np.array_equal(ea[name], eb[name], equal_nan=True), f"/events {name} differs"


def handlers():
    return [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)]


# --------------------------------------------------------------------------- import


def test_import_stays_cheap():
    """`import fedast_mpi` and reaching the API import neither torch nor mpi4py."""
    code = textwrap.dedent("""
        import sys
        import fedast_mpi
        assert "yaml" not in sys.modules, "import fedast_mpi imported yaml"
        fedast_mpi.run, fedast_mpi.compare, fedast_mpi.RunFailed
        heavy = [m for m in ("torch", "mpi4py", "h5py") if m in sys.modules]
        assert not heavy, heavy
        assert "run" in dir(fedast_mpi)
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- in-process runs


def test_run_a_config_with_overrides_returns_the_run_dir(tmp_path):
    before = handlers()
    out = tmp_path / "a"
    got = fedast_mpi.run(tiny(), ["run.seed=5", "run.max_time=8"], out=out)
    assert got == out.absolute() and got.is_absolute()
    with h5py.File(out / "run.h5", "r", locking=False) as f:
        assert f.attrs["status"] == "completed"
        assert int(f.attrs["seed"]) == 5
        assert int(f.attrs["world_size"]) == 1
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["run"]["max_time"] == 8.0
    assert handlers() == before  # Ctrl-C works in a notebook again afterwards


def test_config_object_mapping_and_path_run_alike(tmp_path):
    """The same job as a Config with list overrides, a mapping with mapping overrides and
    a YAML file with the default directory (run.out_dir / run.name) gives the same run."""
    cfg = tiny()
    a = fedast_mpi.run(cfg, ["run.seed=7", "tasks.digits.local_lr=0.1"], out=tmp_path / "a")
    b = fedast_mpi.run(to_dict(cfg), {"run.seed": 7, "tasks.0.local_lr": 0.1},
                       out=str(tmp_path / "b"))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    c = fedast_mpi.run(str(path), {"run.seed": np.int64(7), "tasks.0.local_lr": 0.1,
                                   "run.out_dir": tmp_path, "run.name": "c"})
    assert c == (tmp_path / "c").absolute()
    assert_same_events(a, b)
    assert_same_events(a, c)
    for d in (a, b, c):
        assert yaml.safe_load((d / "config.yaml").read_text())["tasks"][0]["local_lr"] == 0.1


def test_overrides_of_a_config_recompute_total_requests(tmp_path):
    cfg = fedast_mpi.build_config(tiny(), {"tasks.0.requests": 6, "tasks.0.buffer_size": 2})
    assert cfg.algorithm.total_requests == 6 and cfg.tasks[0].requests == 6
    assert fedast_mpi.build_config(tiny()) == tiny()  # no overrides: the object as given
    assert fedast_mpi.build_config(None).run.name == "default"  # the embedded job


@pytest.mark.parametrize("source, overrides, match", [
    ("cfg", ["tasks.0.buffer_size=50"], "tasks.0.buffer_size: 50 exceeds"),
    ("cfg", ["run.nosuch=1"], "run.nosuch"),
    ("cfg", "run.seed", "expected KEY=VALUE"),
    ("dict", {"run.seed": -1}, "run.seed"),
    ("dict", {"tasks.nosuch.local_lr": 0.1}, "no task named 'nosuch'"),
    ("missing.yaml", (), "not found"),
    ("bad.yaml", (), "YAML syntax error"),
])
def test_bad_config_raises_config_error_before_mpi(tmp_path, source, overrides, match):
    (tmp_path / "bad.yaml").write_text("run: {seed: 1\n")
    config = {"cfg": tiny(), "dict": to_dict(tiny())}.get(source, tmp_path / source)
    with pytest.raises(ConfigError, match=match) as info:
        fedast_mpi.run(config, overrides, out=tmp_path / "out")
    assert info.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_usage_errors(tmp_path):
    out = fedast_mpi.run(tiny(), out=tmp_path / "done")
    with pytest.raises(ConfigError, match="already exists"):
        fedast_mpi.run(tiny(), out=out)
    with pytest.raises(ConfigError, match="must not be empty"):
        fedast_mpi.run(tiny(), out="")
    with pytest.raises(TypeError, match="config_or_path"):
        fedast_mpi.run(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="overrides"):
        fedast_mpi.run(tiny(), [("run.seed", 1)])  # type: ignore[list-item]


def test_a_failed_set_up_raises_run_failed_with_the_error_line(tmp_path, capfd):
    before = handlers()
    with pytest.raises(fedast_mpi.RunFailed) as info:
        fedast_mpi.run(tiny(), {"run.evaluation": "workers"}, out=tmp_path / "w")
    exc = info.value
    assert isinstance(exc, FedastError) and exc.exit_code == 2
    assert str(exc).startswith("run.evaluation: 'workers' needs worker ranks")
    assert exc.run_dir == (tmp_path / "w").absolute()
    assert not (tmp_path / "w" / "run.h5").exists()  # set-up failures leave no run file
    assert f"fedast-mpi: error: {exc}" in capfd.readouterr().err  # printed as by the CLI
    assert handlers() == before


def test_a_signal_raises_run_interrupted_after_the_checkpoint(tmp_path, monkeypatch):
    before = handlers()
    monkeypatch.setenv("FEDAST_INTERRUPT_AFTER", "3")  # acts as a signal after 3 batches
    with pytest.raises(fedast_mpi.RunInterrupted) as info:
        fedast_mpi.run(tiny(), {"run.max_time": 1000}, out=tmp_path / "i")
    exc = info.value
    assert isinstance(exc, Interrupted) and not isinstance(exc, FedastError)
    assert exc.exit_code == 75 and exc.run_dir == (tmp_path / "i").absolute()
    assert "interrupted by FEDAST_INTERRUPT_AFTER=3" in str(exc)
    assert f"fedast-mpi resume {exc.run_dir}" in str(exc)
    with h5py.File(tmp_path / "i" / "run.h5", "r", locking=False) as f:
        assert f.attrs["status"] == "interrupted"
    assert list((tmp_path / "i").glob("checkpoint*"))
    assert handlers() == before


def test_compare_in_process(tmp_path):
    out = fedast_mpi.compare(tiny(), "fedast, fedbuff", seeds=1,
                                        overrides={"run.max_time": 6}, out=tmp_path / "cmp")
    assert out == (tmp_path / "cmp").absolute()
    assert (out / "compare.md").is_file() and (out / "compare.csv").is_file()
    for name in ("fedast-seed3", "fedbuff-seed3"):
        assert load_run(out / name).status == "completed"
    with pytest.raises(ConfigError, match="unknown nosuch"):
        fedast_mpi.compare(tiny(), ["nosuch"], out=tmp_path / "x")
    with pytest.raises(ConfigError, match="only: 2 is outside"):
        fedast_mpi.compare(tiny(), ["fedast", "sync"], out=tmp_path / "x", only=2)
    with pytest.raises(ConfigError, match="must be >= 1"):
        fedast_mpi.compare(tiny(), ["fedast"], seeds=0, out=tmp_path / "x")
    with pytest.raises(ConfigError, match="out: the comparison's directory is required"):
        fedast_mpi.compare(tiny(), ["fedast"], out=None)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    cfg = make_config([digits_task("a", eval_every=1), digits_task("b", eval_every=2)],
                      clients=20, max_time=12.0)
    return fedast_mpi.run(cfg, out=out)


def test_load_run_matches_h5py(run_dir):
    run = load_run(run_dir)
    assert load_run(run_dir / "run.h5").attrs["run_id"] == run.attrs["run_id"]
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        for name in ("events", "aggregations", "allocation"):
            stored = f[name][()]
            assert len(stored) > 0
            assert getattr(run, name).tobytes() == stored.tobytes(), name
        assert run.attrs["status"] == "completed" and run.attrs["world_size"] == 1
        assert list(run.evals) == ["a", "b"] == list(run.task_attrs)
        for name, table in run.evals.items():
            assert table.tobytes() == f["tasks"][name]["eval"][()].tobytes()
            assert run.task_attrs[name].keys() == f["tasks"][name].attrs.keys()
            assert run.task_attrs[name]["dataset"] == "digits"
        for key, values in run.clients.items():
            assert np.array_equal(values, f["clients"][key][()]), key
    assert run.clients["n_samples"].shape == (20, 2)


def test_frames_need_pandas_and_say_how_to_get_it(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    run = load_run(run_dir)
    with pytest.raises(ImportError, match=r"pip install 'fedast-mpi\[pandas\]'"):
        run.frames()
    with pytest.raises(ImportError, match="pandas"):
        run.frame("evals")


def test_frames(run_dir):
    pytest.importorskip("pandas", reason="pandas is not installed (optional: the `pandas` "
                                         "extra); Run.frames() is checked where it is")
    run = load_run(run_dir)
    frames = run.frames()
    assert list(frames) == ["events", "aggregations", "allocation", "evals", "tasks", "clients"]
    for name in ("events", "aggregations", "allocation"):
        table, df = getattr(run, name), frames[name]
        assert len(df) == len(table)
        for field in table.dtype.names:
            assert np.array_equal(df[field].to_numpy(), table[field], equal_nan=True), field
        assert list(df["task_name"]) == [run.tasks[i].name for i in table["task"]]
    evals = frames["evals"]
    assert len(evals) == sum(len(t) for t in run.evals.values())
    for name, table in run.evals.items():
        rows = evals[evals["task"] == name]
        assert np.array_equal(rows["accuracy"].to_numpy(), table["accuracy"])
    tasks = frames["tasks"]
    assert list(tasks.index) == ["a", "b"]
    assert list(tasks["n_evals"]) == [len(t) for t in run.evals.values()]
    assert np.isinf(tasks["time_to_target"]).all()  # target 1.0: never reached
    clients = frames["clients"]
    assert list(clients.columns) == ["tier", "multiplier", "n_samples:a", "n_samples:b"]
    assert np.array_equal(clients["n_samples:b"].to_numpy(), run.clients["n_samples"][:, 1])
    with pytest.raises(KeyError, match="no such frame"):
        run.frame("nosuch")


# --------------------------------------------------------------------------- under mpiexec

SCRIPT = """
import os, sys
from mpi4py import MPI
import fedast_mpi

out, max_time = sys.argv[1], float(sys.argv[2])
rank = MPI.COMM_WORLD.rank
over = {"run.max_time": max_time, "run.log_every": 0, "run.device": "cpu"}
os.environ["FEDAST_INJECT_FAULT"] = "2:2"  # worker 2 raises after 2 requests
try:
    fedast_mpi.run(None, over, out=out + "-fault")
    caught = None
except fedast_mpi.RunFailed as exc:  # on every rank, none left waiting
    caught = f"{exc.exit_code}: {exc}"
for r, line in enumerate(MPI.COMM_WORLD.gather(caught) or []):
    print(f"caught on rank {r}: {line}", flush=True)
del os.environ["FEDAST_INJECT_FAULT"]
path = fedast_mpi.run(None, [f"{k}={v}" for k, v in over.items()], out=out)
MPI.COMM_WORLD.Barrier()
if rank == 0:
    print(f"RUN_DIR={path}", flush=True)
"""


@pytest.mark.launch
def test_a_script_under_mpiexec_runs_like_the_cli(tmp_path):
    """`mpiexec -n 3 python SCRIPT`: a failing run raises on every rank and the ranks go on;
    then the embedded job runs like `mpiexec -n 3 fedast-mpi run` (same events)."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    max_time = "30"
    proc = subprocess.run([MPIEXEC, "-n", "3", sys.executable, str(script),
                           str(tmp_path / "api"), max_time],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    caught = [ln for ln in proc.stdout.splitlines() if ln.startswith("caught on rank")]
    assert [ln[:len("caught on rank 0: 1: ")] for ln in caught] == [
        f"caught on rank {r}: 1: " for r in range(3)]
    assert all("injected fault" in ln for ln in caught), caught
    with h5py.File(tmp_path / "api-fault" / "run.h5", "r", locking=False) as f:
        assert f.attrs["status"] == "failed"
    assert f"RUN_DIR={tmp_path / 'api'}" in proc.stdout.splitlines()

    cli = launch(3, "run", "--out", str(tmp_path / "cli"), "--set", f"run.max_time={max_time}",
                 "--set", "run.log_every=0")
    assert cli.rc == 0, cli.stderr
    assert_same_events(tmp_path / "api", tmp_path / "cli")
