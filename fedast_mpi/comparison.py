"""`fedast-mpi compare`: algorithms × seeds on identical clients, data and delays; the paper's
metric.

Every run of one seed shares the run seed, so client tiers, data shards,
initial models and every (client, task) delay stream are the same for every
algorithm (they are derived from the seed and never from the algorithm).
Per-algorithm hyper-parameters come from the config's `compare` section.
The metric (PAPER.md §5.6) is the offline analysis's (`analysis.metrics`): time at which
each task first reaches its target, time to completion (the last task), and the gain of
FedAST over each baseline, (T_baseline − T_fedast) / T_baseline, as mean ± std over seeds.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Sequence

from fedast_mpi import registry
from fedast_mpi.config import Config, apply_override, config_from_dict, to_dict
from fedast_mpi.errors import ConfigError


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

    The registry's overrides for the algorithm apply first (static allocation for those
    without Realloc), then its `compare:` section, then the command line's `--set` items
    (`overrides`): the command line has the last word.
    """
    unknown = [a for a in algorithms if a not in registry.names()]
    if unknown:
        raise ConfigError(f"--algorithms: unknown {', '.join(unknown)} "
                          f"(known: {', '.join(registry.names())})")
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
            for item in [*expand(registry.get(algorithm).compare_overrides(), len(cfg.tasks)),
                         *expand(cfg.compare.get(algorithm, {}), len(cfg.tasks)), *overrides]:
                apply_override(data, item)
            data["run"]["seed"] = cfg.run.seed + k
            data["run"]["name"] = run_name(algorithm, data["run"]["seed"])
            runs.append((algorithm, data["run"]["seed"], config_from_dict(data)))
    return runs


def summarize(times: dict[str, dict[int, Any]],
              reference: str = "fedast") -> tuple[str, list[list[str]]]:
    """Markdown table and CSV rows: per algorithm, each task's time to target, completion, gain.

    `times` holds `analysis.metrics.RunTimes` by algorithm, then seed.
    """
    from analysis import metrics
    algorithms = list(times)
    ref = reference if reference in times else algorithms[0]
    tasks = list(next(iter(times[algorithms[0]].values())).tasks)
    header = ["algorithm", *[f"{t} (time to target)" for t in tasks], "completion",
              f"gain of {ref}"]
    rows = []
    for algorithm, by_seed in times.items():
        cells = [algorithm]
        for task in tasks:
            cells.append(metrics.stat_cell(by_seed, task))
        cells.append(metrics.stat_cell(by_seed, note=True))
        cells.append("—" if algorithm == ref else metrics.gain_cell(times[ref], by_seed))
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines), [header] + rows


def run_compare(cfg: Config, algorithms: Sequence[str], seeds: int, out_dir: Path, comm,
                only: int | None = None, overrides: Sequence[str] = ()) -> int:
    """Run every (algorithm, seed) with all ranks, one after another; rank 0 prints the table.

    `only` runs just that entry of the plan (a job-array task) and prints no table.
    A run that diverges (a non-finite update, run-file status `diverged`) is a result: the
    comparison goes on and its table names it. Returns 0 when every run completed or diverged,
    else the failed run's exit code (the comparison stops at that run).
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
        run_dir = out_dir / run_name(algorithm, seed)
        code = run_job(run_cfg, run_dir, comm)
        if code and not comm.bcast(comm.rank == 0 and diverged(run_dir), root=0):
            return code
        if code and comm.rank == 0:
            print(f"== {algorithm}, seed {seed}: diverged; the comparison goes on ==",
                  flush=True)
    if comm.rank == 0 and only is None:
        write_summary(cfg, algorithms, seeds, out_dir, overrides)
    return 0


def diverged(run_dir: Path) -> bool:
    """Did the run in `run_dir` stop on a non-finite update? (rank 0; reads its run file)"""
    from analysis import metrics
    from analysis.runs import load_run
    from fedast_mpi.schema import RUN_FILE
    try:
        return metrics.is_diverged(load_run(run_dir / RUN_FILE))
    except Exception:  # noqa: BLE001 - no readable run file: a failure, not a divergence
        return False


def write_summary(cfg: Config, algorithms: Sequence[str], seeds: int, out_dir: Path,
                  overrides: Sequence[str] = ()) -> None:
    """Read the comparison's run files; print and write compare.md and compare.csv."""
    import csv

    from analysis import metrics
    from analysis.runs import load_run
    from fedast_mpi.schema import RUN_FILE
    times: dict = {}
    for algorithm, seed, _ in plan(cfg, algorithms, seeds, overrides):
        path = out_dir / run_name(algorithm, seed) / RUN_FILE
        if not path.exists():
            raise ConfigError(f"{path}: missing; run the comparison (or its array task) first")
        times.setdefault(algorithm, {})[seed] = metrics.run_times(load_run(path))
    table, rows = summarize(times)
    text = (f"# Comparison: {', '.join(algorithms)}; {seeds} seed(s) from {cfg.run.seed}\n\n"
            f"Simulated time, mean ± sample std over the seeds that reached the target "
            f"(a diverged run is named with its time and left out of means and gains); "
            f"gain = (T_baseline − T_fedast) / T_baseline on the time to completion "
            f"(`fedast-mpi report` gives the full analysis).\n\n{table}\n")
    (out_dir / "compare.md").write_text(text)
    with open(out_dir / "compare.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    print(text, flush=True)
