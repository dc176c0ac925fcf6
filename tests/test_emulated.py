"""Emulated workers (benchmarks): the real server and protocol, calibrated sleeps, no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from conftest import MPIEXEC, cpu_pinned, launch
from fedast_mpi import emulated
from fedast_mpi.config import load_config
from fedast_mpi.runner import TaskRunner

HELPER = str(Path(__file__).parent / "helpers" / "torch_free_rank.py")
TRAIN, CHUNK = 0.004, 0.002


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """Made-up timings for the default job's three models (their real sizes)."""
    path = tmp_path_factory.mktemp("emulated") / "calibration.json"
    runner = TaskRunner(load_config(None))
    emulated.save(path, [emulated.TaskTiming(n_params=n, train_seconds=TRAIN,
                                             eval_chunk_seconds=CHUNK, local_steps=10)
                         for n in runner.n_params])
    return path


@pytest.mark.launch
@pytest.mark.parametrize("evaluation", ["workers", "server"])
def test_emulated_workers_run_without_torch(tmp_path, calibration, evaluation):
    args = cpu_pinned(["run", "--out", str(tmp_path / "run"), "--set", "run.max_time=60",
                       "--set", "run.log_every=0", "--set", f"run.evaluation={evaluation}"])
    cmd = [MPIEXEC, "-n", "1", sys.executable, "-m", "fedast_mpi", *args,
           ":", "-n", "2", sys.executable, HELPER, *args]
    env = {**os.environ, emulated.ENV: str(calibration), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imported torch" not in proc.stderr
    with h5py.File(tmp_path / "run" / "run.h5", "r") as f:
        attrs = dict(f.attrs)
        accuracy = [f[f"tasks/{t}/eval"]["accuracy"] for t in f["tasks"]]
    assert attrs["status"] == "completed" and attrs["stop_reason"] == "max_time"
    updates = int(attrs["updates_processed"])
    assert updates > 100
    # rank 0's measured seconds: its waits and busy categories inside the loop, the loop
    # inside the run (which also has the set-up, the final checkpoint and the drain)
    busy = sum(v for k, v in attrs.items() if k.startswith("server_busy_"))
    assert 0 < attrs["loop_seconds"] < attrs["wall_seconds"]
    assert busy + attrs["server_wait_seconds"] == pytest.approx(attrs["loop_seconds"])
    # waits for the final evaluations come after the loop: not in its waits
    assert 0 <= attrs["server_wait_seconds"] < attrs["loop_seconds"]
    assert attrs["server_busy_other_seconds"] >= 0
    # every request sent was slept for its calibrated time on a worker
    assert attrs["compute_seconds"] >= 0.9 * TRAIN * updates
    if evaluation == "workers":  # emulated chunks count no correct prediction
        assert all((acc[1:] == 0.0).all() for acc in accuracy)


def test_evaluation_on_workers_needs_a_worker(tmp_path):
    res = launch(0, "run", "--out", str(tmp_path / "run"), "--set", "run.evaluation=workers")
    assert res.rc == 2 and len(res.error_lines()) == 1
    assert "run.evaluation" in res.error_lines()[0]
    assert not (tmp_path / "run" / "run.h5").exists()
