"""The collective device decision under mpiexec: ranks that disagree fail the job with one line.

CUDA is simulated on chosen ranks with FEDAST_TEST_FAKE_CUDA (`RANK:N` sees N devices,
`RANK:error` fails its probe), so these run on a CPU-only machine. Every failing job must end
quickly (no rank left waiting in a collective), with exactly one error line naming the ranks
and hosts, and leave no run file.
"""

from __future__ import annotations

import socket

import h5py
import pytest
from conftest import launch

from fedast_mpi.devices import FAKE_ENV

pytestmark = pytest.mark.launch

HOST = socket.gethostname()
QUICK = 90.0
"""Seconds a failing start may take on a loaded 2-core machine (a hang runs into `timeout`)."""


def fails(n: int, fake: str, *sets: str, tmp_path) -> tuple[int, str]:
    """Launch `run` with the fake; return (exit code, the one error line)."""
    args = ["run", "--out", str(tmp_path / "run"), "--set", "run.log_every=0"]
    for s in sets:
        args += ["--set", s]
    res = launch(n, *args, env={FAKE_ENV: fake, "CUDA_VISIBLE_DEVICES": ""}, timeout=180)
    assert res.elapsed < QUICK, f"took {res.elapsed:.0f} s:\n{res.stderr}"
    assert res.rc != 0, res.stdout + res.stderr
    assert len(res.error_lines()) == 1, res.stderr
    assert res.stderr.strip() == res.error_lines()[0], res.stderr
    assert not (tmp_path / "run" / "run.h5").exists()
    return res.rc, res.error_lines()[0]


def test_auto_with_cuda_on_one_worker_only(tmp_path):
    rc, line = fails(3, "1:2", "run.device=auto", tmp_path=tmp_path)
    assert rc == 2
    assert f"'auto' found CUDA on rank 1 on {HOST} but not on rank 2 on {HOST}" in line


def test_cuda_requested_and_one_worker_without(tmp_path):
    rc, line = fails(3, "1:1", "run.device=cuda", tmp_path=tmp_path)
    assert rc == 2
    assert f"'cuda' requested but rank 2 on {HOST} sees no CUDA device" in line


def test_a_rank_whose_cuda_raises(tmp_path):
    rc, line = fails(3, "2:error", "run.device=auto", tmp_path=tmp_path)
    assert rc == 1
    assert f"CUDA set-up failed on rank 2 on {HOST}: RuntimeError" in line


def test_server_evaluating_counts_as_a_gpu_rank(tmp_path):
    """run.evaluation: server puts rank 0 among the CUDA ranks, so it must agree too."""
    rc, line = fails(3, "0:1", "run.device=auto", "run.evaluation=server", tmp_path=tmp_path)
    assert rc == 2
    assert f"found CUDA on rank 0 on {HOST} but not on ranks 1, 2 on {HOST}" in line


def test_agreeing_fake_workers_fail_later_without_a_hang(tmp_path):
    """Every worker 'has' CUDA: the decision passes, then the CPU build of torch fails on the
    workers while they load their data; still one line and no hang."""
    rc, line = fails(3, "1:1,2:1", "run.device=auto", tmp_path=tmp_path)
    assert rc == 1 and "rank " in line


def test_rank0_gpu_is_ignored_when_it_only_aggregates(tmp_path):
    """Rank 0 with evaluation on the workers takes no GPU: its CUDA (fake) is never asked, the
    job runs on the CPU workers, and the run file records the devices."""
    out = tmp_path / "run"
    res = launch(2, "run", "--out", str(out), "--set", "run.log_every=0",
                 "--set", "run.device=auto", "--set", "run.max_time=5",
                 env={FAKE_ENV: "0:1", "CUDA_VISIBLE_DEVICES": ""}, timeout=240)
    assert res.rc == 0, res.stderr
    with h5py.File(out / "run.h5", "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    assert attrs["device_type"] == "cpu" and attrs["device_name"] == "cpu"
    assert attrs["device_placement"] == f"rank 0 {HOST} cpu; rank 1 {HOST} cpu"
    assert attrs["deterministic"] == 1 and attrs["torch_version"]
    assert attrs["cuda_version"] == "" and attrs["cudnn_version"] == ""
    assert list(attrs["group_sizes"]) == [1] * len(attrs["group_sizes"])
