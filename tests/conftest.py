"""Shared helpers: launching fedast-mpi under mpiexec, and default-job runs shared by tests.

CPU tests keep their meaning on a GPU machine: every run they start is pinned to
`run.device=cpu` (`cpu_pinned`, used by `launch` and by the tests that build their own
command lines), a test process that a CPU test made initialise CUDA fails that test, and
tests marked `cuda` run last and skip where torch sees no CUDA device.
"""

from __future__ import annotations

import contextlib
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


CPU_PIN = ("--set", "run.device=cpu")
"""Appended to every command that trains: `run.device: auto` (the embedded default job, the
paper configs) would train on a GPU where there is one, in groups of 16 (batching follows the
device), against expectations measured on CPUs."""
TRAINING_COMMANDS = ("run", "resume", "compare", "validate", "reproduce")


def cpu_pinned(args) -> list[str]:
    """fedast-mpi ARGS, with `--set run.device=cpu` appended when ARGS is a command that trains
    (or checks a training config) and does not set run.device itself."""
    args = [str(a) for a in args]
    if args and args[0] in TRAINING_COMMANDS and not any(
            a.startswith("run.device=") for a in args):
        args += CPU_PIN
    return args


def pytest_collection_modifyitems(config, items):
    """`cuda` tests: skipped (with the reason) where torch sees no CUDA device, and run after
    every other test, so that `_cpu_tests_leave_cuda_alone` checks the CPU tests in a process
    that has not initialised CUDA yet."""
    cuda = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda:
        return
    import torch
    if not torch.cuda.is_available():
        reason = (f"needs a CUDA device: torch {torch.__version__} (CUDA build: "
                  f"{torch.version.cuda or 'no'}) sees none (torch.cuda.is_available() is False)")
        for item in cuda:
            item.add_marker(pytest.mark.skip(reason=reason))
    items[:] = [item for item in items if not item.get_closest_marker("cuda")] + cuda


@pytest.fixture(autouse=True)
def _cpu_tests_leave_cuda_alone(request):
    """A test not marked `cuda` must not initialise CUDA in the test process (an in-process run
    with `run.device: auto` on a GPU machine would)."""
    torch = sys.modules.get("torch")
    before = torch is not None and torch.cuda.is_initialized()
    yield
    torch = sys.modules.get("torch")
    if (not before and not request.node.get_closest_marker("cuda") and torch is not None
            and torch.cuda.is_initialized()):
        pytest.fail("this CPU test initialised CUDA: pin run.device=cpu (conftest.cpu_pinned) "
                    "or mark it `cuda`", pytrace=False)


@dataclass
class Launch:
    rc: int
    stdout: str
    stderr: str
    elapsed: float

    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("fedast-mpi: error:")]


def launch(n: int, *args: str, env: dict | None = None, timeout: float = 240) -> Launch:
    """`mpiexec -n N python -m fedast_mpi ARGS` as a subprocess (n=0: without mpiexec); a
    command that trains runs on the CPU unless ARGS set run.device (`cpu_pinned`)."""
    cmd = [sys.executable, "-m", "fedast_mpi", *cpu_pinned(args)]
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


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` (e.g. "1m") mounted at `path` for the block, unmounted after; the test
    is skipped, with the reason, where it cannot be mounted (not root, no mount permission)."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a {size} tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)

