"""`fedast-mpi compare`: algorithms × seeds on identical clients, data and delays; the paper's metric.

Every run of one seed shares the run seed, so client tiers, data shards,
initial models and every (client, task) delay stream are the same for every
algorithm (they are derived from the seed and never from the algorithm).
Per-algorithm hyper-parameters come from the config's `compare` section.
The metric (PAPER.md §5.6): time at which each task first reaches its target,
time to completion (the last task), and the gain of FedAST over each baseline,
(T_baseline − T_fedast) / T_baseline, as mean ± std over seeds.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fedast_mpi.config import ALGORITHMS, Config, apply_override, config_from_dict, to_dict
from fedast_mpi.errors import ConfigError

ASYNC_DYNAMIC = ("fedast", "fedast-nobuffer")


def expand(overrides: Mapping[str, Any], n_tasks: int) -> list[str]:
    """`{key: value}` as `KEY=VALUE` items, `tasks.*.x` expanded to every task."""
    items = []
    for key, value in overrides.items():
        keys = ([key.replace("tasks.*.", f"tasks.{i}.", 1) for i in range(n_tasks)]
                if key.startswith("tasks.*.") else [key])
        items += [f"{k}={_yaml_scalar(value)}" for k in keys]
    return items


def _yaml_scalar(value: Any) -> str:
    import yaml
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def run_name(algorithm: str, seed: int) -> str:
    return f"{algorithm}-seed{seed}"


def plan(cfg: Config, algorithms: Sequence[str], seeds: int,
         overrides: Sequence[str] = ()) -> list[tuple[str, int, Config]]:
    """(algorithm, seed, config) of every run, in the order they run.

    Each algorithm's `compare:` section applies on top of the config, and the command
    line's `--set` items (`overrides`) on top of that: the command line has the last word.
    """
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        raise ConfigError(f"--algorithms: unknown {', '.join(unknown)} "
                          f"(known: {', '.join(ALGORITHMS)})")
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {seeds}")
    base = to_dict(cfg)
    base.pop("compare", None)
    runs = []
    for algorithm in algorithms:
        for k in range(seeds):
            data = copy.deepcopy(base)
            data["algorithm"]["name"] = algorithm
            data["algorithm"]["total_requests"] = None  # recomputed: overrides may change R_m
            if algorithm not in ASYNC_DYNAMIC:
                data["algorithm"]["allocation"] = "static"
            if algorithm == "fedast-nobuffer":
                for task in data["tasks"]:
                    task["buffer_size"] = 1
            for item in [*expand(cfg.compare.get(algorithm, {}), len(cfg.tasks)), *overrides]:
                apply_override(data, item)
            data["run"]["seed"] = cfg.run.seed + k
            data["run"]["name"] = run_name(algorithm, data["run"]["seed"])
            runs.append((algorithm, data["run"]["seed"], config_from_dict(data)))
    return runs


def read_times(run_file: Path) -> tuple[dict[str, float], float]:
    """Time to target of every task (inf if never reached) and time to completion."""
    import h5py
    with h5py.File(run_file, "r", locking=False) as f:
        times = {name: float(g.attrs["reached_time"]) for name, g in f["tasks"].items()}
    times = {k: (math.inf if math.isnan(v) else v) for k, v in times.items()}
    return times, max(times.values())


def _fmt(values: Sequence[float], pct: bool = False) -> str:
    vals = np.asarray(values, float)
    if not np.all(np.isfinite(vals)):
        return "not reached" if not np.any(np.isfinite(vals)) else f"{np.sum(~np.isfinite(vals))} not reached"
    scale, unit = (100.0, " %") if pct else (1.0, "")
    mean, std = vals.mean() * scale, vals.std(ddof=1) * scale if len(vals) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}{unit}"


def summarize(results: dict[str, dict[int, tuple[dict[str, float], float]]],
              reference: str = "fedast") -> tuple[str, list[list[str]]]:
    """Markdown table and CSV rows: per algorithm, each task's time to target, completion, gain."""
    algorithms = list(results)
    ref = reference if reference in results else algorithms[0]
    tasks = list(next(iter(next(iter(results.values())).values()))[0])
    header = ["algorithm", *[f"{t} (time to target)" for t in tasks], "completion",
              f"gain of {ref}"]
    rows = []
    for algorithm in algorithms:
        runs = results[algorithm]
        seeds = sorted(runs)
        cells = [algorithm]
        for task in tasks:
            cells.append(_fmt([runs[s][0][task] for s in seeds]))
        cells.append(_fmt([runs[s][1] for s in seeds]))
        if algorithm == ref:
            cells.append("—")
        else:
            gains = [(runs[s][1] - results[ref][s][1]) / runs[s][1]
                     for s in seeds if s in results[ref]]
            cells.append(_fmt(gains, pct=True) if gains else "—")
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    csv = [header] + rows
    return "\n".join(lines), csv


def run_compare(cfg: Config, algorithms: Sequence[str], seeds: int, out_dir: Path, comm,
                only: int | None = None, overrides: Sequence[str] = ()) -> int:
    """Run every (algorithm, seed) with all ranks, one after another; rank 0 prints the table.

    `only` runs just that entry of the plan (a job-array task) and prints no table.
    """
    from fedast_mpi.launch import run_job
    runs = plan(cfg, algorithms, seeds, overrides)
    if only is not None and not 0 <= only < len(runs):
        raise ConfigError(f"--only: {only} is outside the plan's 0..{len(runs) - 1}")
    for index, (algorithm, seed, run_cfg) in enumerate(runs):
        if only is not None and index != only:
            continue
        if comm.rank == 0:
            print(f"== {algorithm}, seed {seed} ==", flush=True)
        code = run_job(run_cfg, out_dir / run_name(algorithm, seed), comm)
        if code:
            return code
    if comm.rank == 0 and only is None:
        write_summary(cfg, algorithms, seeds, out_dir, overrides)
    return 0


def write_summary(cfg: Config, algorithms: Sequence[str], seeds: int, out_dir: Path,
                  overrides: Sequence[str] = ()) -> None:
    """Read the comparison's run files; print and write compare.md and compare.csv."""
    import csv
    from fedast_mpi.schema import RUN_FILE
    results: dict = {}
    for algorithm, seed, _ in plan(cfg, algorithms, seeds, overrides):
        path = out_dir / run_name(algorithm, seed) / RUN_FILE
        if not path.exists():
            raise ConfigError(f"{path}: missing; run the comparison (or its array task) first")
        results.setdefault(algorithm, {})[seed] = read_times(path)
    table, rows = summarize(results)
    text = (f"# Comparison: {', '.join(algorithms)}; {seeds} seed(s) from {cfg.run.seed}\n\n"
            f"Simulated time, mean ± std over seeds; gain = (T_baseline − T_fedast) / "
            f"T_baseline on the time to completion.\n\n{table}\n")
    (out_dir / "compare.md").write_text(text)
    with open(out_dir / "compare.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    print(text, flush=True)
