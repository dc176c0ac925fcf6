"""`analysis` runs where neither torch nor mpi4py is installed (SPEC §10): a bare venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inprocess import digits_task, make_config, run_and_read

ROOT = Path(__file__).resolve().parents[1]


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


@pytest.mark.slow
def test_report_in_a_venv_without_torch_and_mpi(tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config([digits_task(target_accuracy=0.8, eval_every=1, local_lr=0.1,
                                   global_lr=1.0)], clients=20, max_time=100.0)
    run_and_read(cfg, run_dir)

    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                          text=True, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"python -m venv failed: {made.stderr.strip()[-300:]}")
    py = _bin(venv, "python")
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--prefer-binary",
                          "numpy", "h5py", "matplotlib"],
                         capture_output=True, text=True, timeout=240)
    if pip.returncode != 0:
        reason = f"pip install numpy h5py matplotlib failed: {pip.stderr.strip()[-300:]}"
        print(reason)
        pytest.skip(reason)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(ROOT)  # the checkout, not an installed package
    for module in ("torch", "mpi4py"):
        probe = subprocess.run([str(py), "-c", f"import {module}"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0, f"{module} is importable in the bare venv"

    out = tmp_path / "report"
    proc = subprocess.run([str(py), "-m", "analysis.report", str(run_dir), "--out", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "report.md").is_file() and (out / "report.csv").is_file()
    assert (out / "accuracy_digits.png").stat().st_size > 5000
