"""Rank 0's CPU per processed update on the paper's Fashion-MNIST workload, REAL workers and data.

    python -m benchmarks.rank0_cpu [--reps 3] [--max-time 60] [--ranks 3] [--json OUT]

Runs configs/paper/homogeneous-fmnist-m2.yaml (2 × LeNet-5, 1000 clients, R = 150, b = 5,
evaluation every 4 aggregations on the 10,000 test images) on Debian's real Fashion-MNIST
(`apt-get install dataset-fashion-mnist`; the benchmark exits 2 without it) with
`run.max_time` and `mpiexec -n RANKS`, once with evaluation on rank 0 (`run.evaluation=server`,
the baseline: what rank 0 did before issue 11) and once on the workers, per repetition.
Prints the medians of `server_cpu_seconds / updates_processed` (target ≤ 1.5 ms with evaluation
on the workers), the same split into waiting (`server_wait_cpu_seconds`, mostly the receive
copies and the wake-ups counted in `server_wait_wakeups`) and rank 0's busy categories, and the
ratio workers / server. Measured on whatever else the machine runs: quote medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py

FMNIST = "/usr/share/datasets/fashion-mnist"
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "paper" / "homogeneous-fmnist-m2.yaml"


def one_run(mode: str, ranks: int, max_time: float, out: Path) -> dict:
    """One run; the per-update figures (ms) read back from its run file."""
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "fedast_mpi", "run",
           str(CONFIG), "--out", str(out), "--set", f"run.max_time={max_time}",
           "--set", "run.device=cpu", "--set", f"run.evaluation={mode}",
           "--set", f"tasks.0.data_dir={FMNIST}", "--set", f"tasks.1.data_dir={FMNIST}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    with h5py.File(out / "run.h5", "r") as f:
        a = dict(f.attrs)
    n = float(a["updates_processed"])
    fig = {"cpu": a["server_cpu_seconds"], "wait": a["server_wait_cpu_seconds"],
           "wakeups": a["server_wait_wakeups"]}
    fig.update({k[len("server_busy_"):-len("_seconds")]: v for k, v in a.items()
                if k.startswith("server_busy_")})
    out_ms = {k: 1e3 * float(v) / n for k, v in fig.items()}
    out_ms["wakeups"] = float(fig["wakeups"]) / n  # per update, not ms
    out_ms["updates"] = n
    return out_ms


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-time", type=float, default=60.0)
    ap.add_argument("--ranks", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not os.path.isdir(FMNIST):
        print(f"rank0_cpu: {FMNIST} missing (apt-get install dataset-fashion-mnist)",
              file=sys.stderr)
        return 2
    runs: dict[str, list[dict]] = {"server": [], "workers": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for mode in runs:
                runs[mode].append(one_run(mode, args.ranks, args.max_time,
                                          Path(tmp) / f"{mode}{rep}"))
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for mode, rs in runs.items()}
    print(f"rank 0 CPU per update, Fashion-MNIST paper workload, REAL workers, -n {args.ranks}, "
          f"max_time {args.max_time:g}, medians of {args.reps}:")
    for mode, m in med.items():
        busy = ", ".join(f"{k} {m[k]:.3f}" for k in
                         ("evaluate", "aggregate", "send", "flush", "checkpoint", "other")
                         if k in m)
        print(f"  evaluation on {mode:7s}: {m['cpu']:.2f} ms (waiting {m['wait']:.2f} ms, "
              f"{m['wakeups']:.1f} wake-ups; busy: {busy}) over {m['updates']:.0f} updates")
    ratio = med["workers"]["cpu"] / med["server"]["cpu"]
    print(f"  workers / server: {ratio:.3f}×; target ≤ 1.5 ms with evaluation on the workers")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": med}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
