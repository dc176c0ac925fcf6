"""Shared helpers: launching fedast-mpi under mpiexec, and default-job runs shared by tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec")

# Float bits depend on the CPU's vector instructions (torch's own kernels, oneDNN, MKL): the
# tests pin all three to AVX2 (before torch is imported, here and in every launched rank) so
# that results pinned by digest are the same on AVX2 and AVX-512 machines.
ISA_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
for _key, _value in ISA_PINS.items():
    os.environ.setdefault(_key, _value)


@dataclass
class Launch:
    rc: int
    stdout: str
    stderr: str
    elapsed: float

    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("fedast-mpi: error:")]


def launch(n: int, *args: str, env: dict | None = None, timeout: float = 240) -> Launch:
    """`mpiexec -n N python -m fedast_mpi ARGS` as a subprocess (n=0: without mpiexec)."""
    cmd = [sys.executable, "-m", "fedast_mpi", *args]
    if n:
        cmd = [MPIEXEC, "-n", str(n), *cmd]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    return Launch(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


@pytest.fixture(scope="session")
def default_runs(tmp_path_factory):
    """The embedded default job (virtual clock) with -n 1, 2, 3 and 4: run dir per world size."""
    root = tmp_path_factory.mktemp("default")
    runs = {}
    for n in (1, 2, 3, 4):
        out = root / f"n{n}"
        res = launch(n, "run", "--out", str(out), "--set", "run.log_every=0")
        assert res.rc == 0, f"-n {n} failed:\n{res.stdout}\n{res.stderr}"
        runs[n] = (out, res)
    return runs
