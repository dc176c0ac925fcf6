"""Sync-ST's round durations: a run's measured ones beside the authors' timing rules, simulated.

`python -m analysis.sync_timing RUN_DIR... [--reps 20]` splits a synchronous run's time to target
into rounds x mean round duration, and simulates the rounds of the authors' `sync_run`
(PAPER.md §4.0-4.1, §5.1) for the run's own clients (their speed multipliers from `/clients`),
shares, first-k and delays: each round a fresh permutation of all clients cut into the task
shares, request duration local_multi x (shift + Exp(exp_mean)) x multiplier, started when the
client is free, the first k finish times kept per task, the round ends at the last kept one and
discarded jobs keep their client busy. Written from that description, apart from the product's
code, so a difference between the two columns is a timing difference, and agreement leaves the
number of rounds (learning) as what differs. Only rounds in which every task is unfinished are
compared. numpy and h5py, plus PyYAML for the run's config.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from .runs import AnalysisError, Run, load_run


@dataclass(frozen=True)
class SyncSetting:
    """What the round timing depends on, per task where it differs."""

    shares: tuple[int, ...]  # clients per task per round (the leftover is drawn each round)
    available: int
    first_k: int | None
    shift: tuple[float, ...]
    exp_mean: tuple[float, ...]
    local_multi: tuple[float, ...]


def setting_of(run: Run) -> SyncSetting:
    """The run's Sync-ST setting, from its config attribute (as the run ran it)."""
    import yaml

    cfg = yaml.safe_load(run.attrs["config"])
    if cfg["algorithm"]["name"] != "sync":
        raise AnalysisError(f"{run.path}: algorithm {cfg['algorithm']['name']!r}, not 'sync'")
    tasks = cfg["tasks"]
    available = cfg["clients"]["available"] or cfg["clients"]["count"]
    weights = np.array([t["requests"] for t in tasks], np.float64)
    shares = np.maximum(1, np.floor(available * weights / weights.sum())).astype(int)
    return SyncSetting(tuple(int(s) for s in shares), int(available),
                       cfg["algorithm"]["first_k"],
                       tuple(float(t["delay"]["shift"]) for t in tasks),
                       tuple(float(t["delay"]["exp_mean"]) for t in tasks),
                       tuple(float(t["delay"]["local_multi"]) for t in tasks))


def simulate(setting: SyncSetting, multipliers: np.ndarray, rounds: int,
             rng: np.random.Generator) -> np.ndarray:
    """Durations of `rounds` rounds under the authors' rules (see the module docstring)."""
    n = len(multipliers)
    m = len(setting.shares)
    free = np.zeros(n)  # when each client's last job (kept or not) finishes
    now = 0.0
    out = np.empty(rounds)
    for r in range(rounds):
        shares = list(setting.shares)
        for j in rng.choice(m, size=max(0, setting.available - sum(shares)), replace=True):
            shares[j] += 1
        order = rng.permutation(n)
        ends, start = [], 0
        for t, h in enumerate(shares):
            clients = order[start:start + h]
            start += h
            mult = multipliers[clients]
            dur = setting.local_multi[t] * (setting.shift[t] * mult
                                            + rng.exponential(1.0, h) * setting.exp_mean[t] * mult)
            finish = np.maximum(now, free[clients]) + dur
            free[clients] = finish
            k = h if setting.first_k is None else min(setting.first_k, h)
            ends.append(np.partition(finish, k - 1)[k - 1])
        out[r] = max(ends) - now
        now = max(ends)
    return out


def measured(run: Run) -> tuple[np.ndarray, int]:
    """(durations of the rounds before the first task reached its target, all rounds)."""
    times = np.unique(run.aggregations["time"])
    durations = np.diff(np.concatenate([[0.0], times]))
    reached = [t.reached_time for t in run.tasks if np.isfinite(t.reached_time)]
    first = min(reached) if reached else np.inf
    return durations[times <= first], len(times)


def report(run: Run, reps: int, seed: int) -> str:
    """One line per run: rounds, measured and simulated mean round durations."""
    setting = setting_of(run)
    before, n_rounds = measured(run)
    if len(before) == 0:
        raise AnalysisError(f"{run.path}: no rounds recorded yet")
    mult = np.asarray(run.clients["multiplier"], np.float64)
    rng = np.random.default_rng(seed)
    sims = np.array([simulate(setting, mult, len(before), rng).mean() for _ in range(reps)])
    reached = [t.reached_time for t in run.tasks]
    done = f"done at {max(reached):.1f}" if np.all(np.isfinite(reached)) else "not done"
    return (f"{run.path}: {n_rounds} rounds, {done}; the {len(before)} rounds with "
            f"every task unfinished: measured mean {before.mean():.3f}, simulated "
            f"{sims.mean():.3f} ± {sims.std(ddof=1) if reps > 1 else 0.0:.3f} "
            f"({reps} simulations of as many rounds, the run's client multipliers)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.sync_timing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories or run.h5 files of 'sync' runs")
    p.add_argument("--reps", type=int, default=20, help="simulations per run (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulations (default 0)")
    args = p.parse_args(argv)
    try:
        if args.reps < 1:
            raise AnalysisError(f"--reps must be >= 1, got {args.reps}")
        for path in args.runs:
            print(report(load_run(path), args.reps, args.seed))
    except AnalysisError as exc:
        print(f"sync_timing: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
