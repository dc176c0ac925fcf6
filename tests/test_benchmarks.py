"""The benchmark scripts run and write sane records (correctness only: no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import MPIEXEC
from fedast_mpi.data import load_task_data
from fedast_mpi.data.sample_files import write_dataset, write_shakespeare

ROOT = Path(__file__).resolve().parent.parent


def task(dataset, data_dir, kind="iid", spc=None):
    return types.SimpleNamespace(name="t", dataset=dataset, dataset_args={}, data_dir=str(data_dir),
                                 partition=types.SimpleNamespace(kind=kind, alpha=0.5,
                                                                 samples_per_client=spc))


# -- sample files --------------------------------------------------------------------------

def test_sample_files_load_with_the_readers(tmp_path):
    write_dataset("mnist", tmp_path, n_train=600, n_test=100)
    write_dataset("fmnist", tmp_path, n_train=50, n_test=10, seed=1)
    write_dataset("cifar10", tmp_path, n_train=603, n_test=100)  # not a multiple of 5 batches
    write_dataset("cifar100", tmp_path, n_train=40, n_test=8)
    write_shakespeare(tmp_path / "shakespeare")
    shapes = {}
    for name, kind in (("mnist", "iid"), ("fmnist", "iid"), ("cifar10", "dirichlet"),
                       ("cifar100", "iid"), ("shakespeare", "natural")):
        d = load_task_data(task(name, tmp_path, kind, None if kind == "natural" else 20), 4, 0)
        shapes[name] = (tuple(d.train_x.shape), tuple(d.test_x.shape), d.n_classes)
        assert len(d.shards) == 4
    assert shapes == {"mnist": ((600, 1, 28, 28), (100, 1, 28, 28), 10),
                      "fmnist": ((50, 1, 28, 28), (10, 1, 28, 28), 10),
                      "cifar10": ((603, 3, 32, 32), (100, 3, 32, 32), 10),
                      "cifar100": ((40, 3, 32, 32), (8, 3, 32, 32), 100),
                      "shakespeare": ((20, 80), (7, 80), 80)}
    with pytest.raises(ValueError, match="no sample-file writer"):
        write_dataset("digits", tmp_path, n_train=1, n_test=1)


def test_benchmark_workloads_are_valid_configs(tmp_path):
    from benchmarks.workloads import workloads
    from fedast_mpi.config import load_config
    for quick in (True, False):
        for w in workloads(quick, str(tmp_path)).values():
            path = None
            if w.yaml is not None:
                path = tmp_path / f"{w.name}.yaml"
                path.write_text(w.yaml)
                yaml.safe_load(w.yaml)
            cfg = load_config(path, list(w.sets))
            assert cfg.run.clock == "virtual" and w.target in (1.10, 1.25)
            for ds in w.datasets:
                assert ds in {t.dataset for t in cfg.tasks}


def test_scaling_server_cap_and_efficiency():
    """The server mode keeps the update count of 4 × the W at which rank 0's evaluations
    saturate it (CIFAR-10's 9 s evaluations: 8; Fashion-MNIST's: the cap of 16), and the
    summary divides by W × the W = 1 rate of the same mode."""
    from benchmarks import scaling
    sets = scaling.overrides("data", 2)

    def cal(train, chunk):
        return {"tasks": [{"train_seconds": train, "eval_chunk_seconds": chunk}] * 2,
                "eval_chunks": [10, 10]}
    cifar = str(ROOT / scaling.WORKLOADS["cifar"][0])
    fmnist = str(ROOT / scaling.WORKLOADS["fmnist"][0])
    # eval every 4 aggregations of b = 5: 0.9 s × 10 chunks / 20 updates = 0.45 s per update
    assert scaling.server_cap(cifar, sets, cal(0.8, 0.9)) == 8  # ceil(4 × 0.8 / 0.45)
    assert scaling.server_cap(fmnist, sets, cal(0.065, 0.028)) == scaling.SERVER_CAP
    assert scaling.server_cap(cifar, sets, cal(0.01, 10.0)) == 1
    runs = [{"workers": w, "mode": "server", "ok": ok, "updates": 10 * w,
             "updates_per_second": ups, "steady_updates_per_second": 2 * ups,
             "run_updates_per_second": ups / 2, "fixed_seconds": w / 10,
             "busy_fraction": 0.5, "serial_seconds_per_update": s}
            for w, ups, s, ok in ((1, 2.0, 0.1, True), (4, 6.0, 0.25, True),
                                  (4, 1.0, 0.25, True), (4, 7.0, 0.25, True),
                                  (4, 99.0, 0.25, False))]  # a failed run counts for nothing
    rows = scaling.summarize(runs)["server"]
    assert [r["reps"] for r in rows] == [1, 3]
    assert [r["updates_per_second"] for r in rows] == [2.0, 6.0]  # the median of 6, 1, 7
    assert [r["efficiency"] for r in rows] == [1.0, 0.75]
    assert [r["steady_efficiency"] for r in rows] == [1.0, 0.75]
    assert [r["run_efficiency"] for r in rows] == [1.0, 0.75]
    assert [r["fixed_seconds"] for r in rows] == [0.1, 0.4]
    assert rows[1]["ceiling_efficiency"] == 0.5  # 1 / (0.25 s × 4 × 2 upd/s)


@pytest.mark.launch
def test_scaling_script_repeats_runs_and_takes_a_given_calibration(tmp_path):
    """Two repetitions of W = 1 and 2 emulated workers on a given calibration (no calibrating):
    every run in the record, medians and steady rates in the summary."""
    from fedast_mpi import emulated
    calib = tmp_path / "cal.json"
    emulated.save(calib, [emulated.TaskTiming(44426, 0.004, 0.002, 27)] * 2)
    out = tmp_path / "s.json"
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--workloads", "fmnist", "--workers", "1,2",
           "--modes", "workers", "--reps", "2", "--updates-per-worker", "30",
           "--min-seconds", "0.16", "--calibration", str(calib), "--keep", str(tmp_path / "runs"),
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(out.read_text())["workloads"]["fmnist"]
    assert rec["calibration"]["tasks"][0]["train_seconds"] == 0.004
    assert sorted((r["rep"], r["workers"]) for r in rec["runs"]) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(r["ok"] and r["steady_updates_per_second"] > 0 for r in rec["runs"])
    rows = rec["summary"]["workers"]
    assert [(r["workers"], r["reps"]) for r in rows] == [(1, 2), (2, 2)]
    assert rows[0]["efficiency"] == 1.0 and rows[1]["steady_efficiency"] > 0
    for r in rec["runs"]:  # the loop is part of the whole run, which has set-up and drain
        assert 0 < r["loop_seconds"] < r["wall_seconds"]
        assert r["updates_per_second"] > r["run_updates_per_second"]
    assert "EMULATED" in proc.stderr and "medians" in proc.stderr
    cmd[cmd.index("fmnist")] = "fmnist,cifar"
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "--calibration is one workload's" in bad.stderr


# -- scripts -------------------------------------------------------------------------------

@pytest.mark.launch
def test_transport_script_under_mpiexec(tmp_path):
    out = tmp_path / "t.json"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "benchmarks.transport", "--params", "1000",
           "--messages", "7", "--rounds", "2", "--posted", "2", "--window", "3", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(out.read_text())
    assert rec["message_bytes"] == 32 + 4000 and rec["messages"] == 7
    for phase in ("raw", "ingest", "work"):
        assert len(rec["seconds"][phase]) == 2 and all(s > 0 for s in rec["seconds"][phase])
        assert rec["median_bytes_per_second"][phase] > 0
    assert rec["ingest_ratio"] > 0 and rec["work_ratio"] > 0
    # warm-up (2 + 5 messages), then 2 rounds of 7: server_step at 5 and on the rest at the end
    assert rec["aggregations"] == 3 * 2


def test_transport_script_needs_two_ranks():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.transport", "--params", "10"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "exactly 2 ranks" in proc.stderr


def test_io_cost_script(tmp_path):
    from benchmarks import io_cost
    from fedast_mpi import __version__
    from fedast_mpi.checkpoint import Checkpointer
    from fedast_mpi.runlog import RunLog
    run_dir = tmp_path / "run"
    log = RunLog(run_dir / "run.h5", config_yaml="x: 1", algorithm="fedast", clock="virtual",
                 seed=0, world_size=2, package_version=__version__)
    state = {"now": 3.0, "tasks": [{"versions": {"0": np.ones(100, np.float32),
                                                 "1": np.zeros(100, np.float32)},
                                    "buffer": np.ones((2, 100), np.float32), "version": 1}],
             "rng": "state", "n": 7}
    server = types.SimpleNamespace(state_dict=lambda: state,
                                   clock=types.SimpleNamespace(now=3.0, wall=lambda: 1.0),
                                   cfg=types.SimpleNamespace(
                                       algorithm=types.SimpleNamespace(name="fedast")))
    Checkpointer(run_dir, "x: 1", log, 1e9, 2).save(server)
    log.close("completed")
    out = tmp_path / "io.json"
    assert io_cost.main(["--rows", "230", "--rows-per-flush", "50", "--rounds", "2",
                         "--checkpoint", f"tiny={run_dir}", "--saves", "2",
                         "--tmp", str(tmp_path / "scratch"), "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    ev = rec["events"]
    assert len(ev["us_per_row"]["runlog"]) == 2 and ev["ratio"] > 0
    ck = rec["checkpoints"]["tiny"]
    assert ck["arrays"] == 3 and ck["array_bytes"] == 4 * 400
    assert len(ck["seconds"]["product"]) == 4 and ck["ratio"] > 0
    # the product's keep=2 and the baseline's own rotation leave two files each
    assert len(list((tmp_path / "scratch" / "ckpt-tiny" / "checkpoints").glob("*.h5"))) == 2
    assert len(list((tmp_path / "scratch" / "np-tiny").glob("*.npy"))) == 2
    # the rows written through RunLog and bare h5py are the same
    import h5py
    with h5py.File(tmp_path / "scratch" / "runlog-0.h5", "r") as a, \
            h5py.File(tmp_path / "scratch" / "h5py-0.h5", "r") as b:
        assert len(a["events"]) == 230 and np.array_equal(a["events"][()], b["events"][()])


def test_batched_script(tmp_path):
    pytest.importorskip("fedast_mpi.batched")
    from benchmarks import batched
    out = tmp_path / "b.json"
    assert batched.main(["--models", "logreg,mlp:1", "--groups", "1,2", "--requests", "2",
                         "--steps", "2", "--rounds", "1", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["device"] == "cpu" and set(rec["models"]) == {"logreg", "mlp"}
    m = rec["models"]["mlp"]
    assert m["steps"] == 1 and set(m["ratio"]) == {"1", "2"} and m["median_single"] > 0
    assert max(m["max_abs_delta_difference"].values()) < 1e-4
    with pytest.raises(SystemExit):
        batched.main(["--requests", "3", "--groups", "2"])


# -- the driver's figures and table (synthetic samples) ------------------------------------

def test_driver_figures_and_table():
    from benchmarks import __main__ as drv
    tr = {"ok": True, "median_bytes_per_second": {"raw": 4e9, "ingest": 3e9, "work": 1e9},
          "ingest_ratio": 0.75, "work_ratio": 0.25, "params": 10_000_000,
          "message_bytes": 40_000_032, "messages": 20, "rounds": 2}
    io = {"ok": True, "rows_per_flush": 100,
          "events": {"median_us_per_row": {"runlog": 10.0, "h5py": 5.0}},
          "checkpoints": {"default job": {"median_seconds": {"product": 0.02, "baseline": 0.01},
                                          "array_bytes": 10**6, "file_bytes": 2 * 10**6,
                                          "arrays": 9}}}
    model = {"steps": 27, "n_params": 650, "single_requests_per_second": [10.0, 9.0, 11.0],
             "batched_requests_per_second": {"1": [5.0] * 3, "4": [20.0] * 3,
                                             "16": [40.0, 36.0, 44.0]},
             "ratio_rounds": {"1": [0.5, 5 / 9, 5 / 11], "4": [2.0, 20 / 9, 20 / 11],
                              "16": [4.0, 4.0, 4.0]}}
    ba = {"ok": True, "device": "cpu", "rounds": 3, "models": {"logreg": model}}
    sc = {"ok": True, "wall_seconds": 30.0, "updates": 3000, "updates_per_second": 100.0,
          "rss_mb": {"0": [[0.05, 100], [0.15, 110], [0.95, 111]], "1": [[0.5, 90]]},
          "peak_rss_mb": {"0": 111, "1": 90}}
    S = {"transport": [tr, {"ok": False}], "io_cost": [io],
         "run:small:2": [{"ok": True, "wall_seconds": 2.0, "updates_processed": 400}],
         "batched": [ba], "scale": [sc]}
    figs = {"transport": drv.fig_transport(S), "io_cost": drv.fig_io_cost(S),
            "batched": drv.fig_batched(S), "scale": drv.fig_scale(S)}
    assert figs["transport"]["ingest_ratio"]["value"] == pytest.approx(0.75)
    assert figs["io_cost"]["events_share_of_update"] == pytest.approx(10.0 / 5000.0)
    g16 = figs["batched"]["models"]["logreg"]["groups"]["16"]
    assert g16["ratio"]["value"] == 4.0 and g16["requests_per_second"]["min"] == 36.0
    assert figs["scale"]["ranks"]["0"]["flatness"] == pytest.approx(111 / 110)
    assert figs["scale"]["ranks"]["1"]["flatness"] is None
    text = drv.table(figs, 1, {})
    assert text.count("\n| ") == 2 + 2 + 1 + 3  # rows after the header
    assert "0.75×" in text and "4.00×" in text and "1.009×" in text


def test_driver_rejects_unknown_names(capsys):
    from benchmarks import __main__ as drv
    with pytest.raises(SystemExit):
        drv.main(["nope"])
    assert "unknown benchmark" in capsys.readouterr().err


def test_readme_keeps_where_the_other_rows_were_measured(tmp_path):
    """Re-measuring one benchmark twice keeps the other rows' own header line, not the header
    of the partial run before (which had put the scaling command on the overhead rows)."""
    from benchmarks.__main__ import README_BEGIN, README_END, update_readme
    machine = {"date": "2026-12-02T10:00", "cpu_model": "CPU", "cores": 2, "hostname": "vm",
               "versions": {"torch": "t", "mpi4py": "m", "mpich": "5"}, "python": "3.11"}
    table = "| benchmark | x |\n|---|---|\n| {} | {} |\n\nnote"
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{README_BEGIN}\nMeasured 2026-11-24 full; command `all`.\n\n"
                      f"| benchmark | x |\n|---|---|\n| overhead, job | 1 |\n| scaling, a | 2 |\n"
                      f"{README_END}\nbottom\n")
    for value in (3, 4):
        update_readme(readme, table.format("scaling, a", value), machine, "scaling", ["scaling"])
        text = readme.read_text()
        assert "Other rows: overhead; Measured 2026-11-24 full; command `all`." in text
        assert f"| scaling, a | {value} |" in text and "| overhead, job | 1 |" in text
        assert text.count("Other rows: ") == 1 and text.endswith(f"{README_END}\nbottom\n")


def test_critical_path_model_on_schedules_with_known_answers(tmp_path):
    """Independent requests spread over the workers; a chain does not, whatever W; chunks go
    before training; the schedule comes from a run file's /events and eval tables."""
    import h5py
    import numpy as np

    from benchmarks import critical_path as cp
    from fedast_mpi.schema import EVAL_DTYPE, EVENT_DTYPE
    # 8 requests all dispatched at 0: 4 per worker of 2, 1 s each -> done at 4 s
    free = np.zeros(8), np.arange(1.0, 9.0)
    assert cp.model(*free, workers=2, train=1.0, serial=0.0, transit=0.0) == 2.0
    assert cp.model(*free, workers=8, train=1.0, serial=0.0, transit=0.0) == 8.0
    # each dispatched when the one before finishes: 3 round trips of 0.05 + 1 + 0.05, + 0.1 each
    chain = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    for w in (1, 4):
        assert abs(cp.model(*chain, workers=w, train=1.0, serial=0.1, transit=0.05)
                   - 3 / 3.6) < 1e-9
    # one evaluation at time 0 in 2 chunks of 0.5 s, taken before the request: done at 2 s
    one = np.array([0.0]), np.array([1.0])
    assert cp.model(*one, workers=1, train=1.0, serial=0.0, transit=0.0,
                    evals=np.array([0.0]), chunks=2, chunk=0.5) == 0.5
    run = tmp_path / "run.h5"
    ev = np.zeros(3, EVENT_DTYPE)
    ev["request"], ev["dispatch_time"], ev["finish_time"] = [2, 0, 1], [0, 0, 0], [3, 1, 2]
    with h5py.File(run, "w") as f:
        f["events"] = ev
        for name, times in (("a", [2.0, 0.0]), ("b", [1.0])):
            e = np.zeros(len(times), EVAL_DTYPE)
            e["time"] = times
            f[f"tasks/{name}/eval"] = e
    dispatch, finish, evals = cp.load_schedule(tmp_path)
    assert list(finish) == [1, 2, 3] and list(dispatch) == [0, 0, 0]
    assert list(evals) == [0.0, 1.0, 2.0]
    out = tmp_path / "cp.json"
    assert cp.main([str(run), "--workers", "1,3", "--train-ms", "1000", "--serial-ms", "0",
                    "--transit-ms", "0", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["updates_per_second"] for r in rows] == [1.0, 3.0]
    assert rows[1]["efficiency_vs_w1"] == 1.0
