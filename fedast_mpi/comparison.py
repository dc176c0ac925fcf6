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
from typing import Any, Mapping, NamedTuple, Sequence

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


def run_name(algorithm: str, seed: int, task: str | None = None) -> str:
    """A run's directory name in the comparison; `task` for one part of a sequential run."""
    return f"{algorithm}-seed{seed}" + (f"-{task}" if task else "")


class PlannedRun(NamedTuple):
    """One entry of a comparison's plan."""

    algorithm: str
    seed: int
    config: Config
    task: str | None = None
    """The task a single-task algorithm trains alone in this run (one part of a sequence)."""

    @property
    def name(self) -> str:
        """Its directory under the comparison's out directory (`run_name`)."""
        return run_name(self.algorithm, self.seed, self.task)


def plan(cfg: Config, algorithms: Sequence[str], seeds: int,
         overrides: Sequence[str] = ()) -> list[PlannedRun]:
    """Every run of the comparison, in the order they run (algorithm-major, then seed).

    The registry's overrides for the algorithm apply first (static allocation for those
    without Realloc), then its `compare:` section, then the command line's `--set` items
    (`overrides`): the command line has the last word.

    A single-task reference (`fedbuff`, `fedasync`) on a config of M > 1 tasks trains the
    tasks one after another: M runs per seed, run `<algorithm>-seed<k>-<task>` training that
    task alone (`alone`: the whole request budget, its hyper-parameters and its random streams
    of the multi-task config, `tasks.*.stream_index`: the same initial model and delays). The
    analysis chains them (`analysis.sequence`): each task starts when the one before it ended.
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
            seed = data["run"]["seed"] = cfg.run.seed + k
            if registry.get(algorithm).single_task and len(data["tasks"]) > 1:
                runs += [PlannedRun(algorithm, seed, part, part.tasks[0].name)
                         for part in alone(data)]
                continue
            data["run"]["name"] = run_name(algorithm, seed)
            runs.append(PlannedRun(algorithm, seed, config_from_dict(data)))
    return runs


def alone(data: dict) -> list[Config]:
    """The config training each task of the raw config `data` alone, in task order.

    A task trained alone has the whole request budget, R = Σ R_m of the multi-task config
    (resolved there), and its buffer follows R as static FedAST's does when the budget of
    finished tasks passes to the last one (`StaticAllocation.buffer_after_handover`: R/b kept;
    single-task algorithms run static); its other settings and its random streams are those it
    has among the others.
    """
    from fedast_mpi.allocation import StaticAllocation
    multi = copy.deepcopy(data)
    multi["algorithm"]["name"] = "fedast"  # resolves the shares as a multi-task config would
    resolved = config_from_dict(multi)
    total = resolved.algorithm.total_requests
    assert total is not None  # resolved: the sum of the tasks' requests
    handover = StaticAllocation([t.requests or 0 for t in resolved.tasks],
                                [t.buffer_size or 0 for t in resolved.tasks])
    parts = []
    for index, task in enumerate(resolved.tasks):
        one = copy.deepcopy(data)
        one["tasks"] = [{**one["tasks"][index], "requests": total,
                         "buffer_size": handover.buffer_after_handover(index, total),
                         "stream_index": task.streams(index)}]
        one["run"]["name"] = run_name(data["algorithm"]["name"], data["run"]["seed"], task.name)
        parts.append(config_from_dict(one))
    return parts


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
    for index, entry in enumerate(runs):
        if only is not None and index != only:
            continue
        what = f"{entry.algorithm}, seed {entry.seed}" + (
            f", task {entry.task} alone" if entry.task else "")
        if comm.rank == 0:
            print(f"== {what} ==", flush=True)
        run_dir = out_dir / entry.name
        code = run_job(entry.config, run_dir, comm)
        if code and not comm.bcast(comm.rank == 0 and diverged(run_dir), root=0):
            return code
        if code and comm.rank == 0:
            print(f"== {what}: diverged; the comparison goes on ==", flush=True)
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


def sequential_note(cfg: Config, algorithms: Sequence[str]) -> str:
    """The sentence saying how single-task algorithms ran (empty when none did)."""
    seq = [a for a in algorithms if registry.get(a).single_task]
    if not seq or len(cfg.tasks) < 2:
        return ""
    return (f" {', '.join(seq)} (single-task) train the tasks one after another in config "
            f"order, each alone, and a task's time counts from the start of the first "
            f"(run directories `<algorithm>-seed<k>-<task>`).")


def write_summary(cfg: Config, algorithms: Sequence[str], seeds: int, out_dir: Path,
                  overrides: Sequence[str] = ()) -> None:
    """Read the comparison's run files; print and write compare.md and compare.csv."""
    import csv

    from analysis import metrics
    from analysis.runs import load_run
    from fedast_mpi.schema import RUN_FILE
    runs = []
    for entry in plan(cfg, algorithms, seeds, overrides):
        path = out_dir / entry.name / RUN_FILE
        if not path.exists():
            raise ConfigError(f"{path}: missing; run the comparison (or its array task) first")
        runs.append(load_run(path))
    table, rows = summarize(metrics.group_times(metrics.group_runs(runs)))
    text = (f"# Comparison: {', '.join(algorithms)}; {seeds} seed(s) from {cfg.run.seed}\n\n"
            f"Simulated time, mean ± sample std over the seeds that reached the target "
            f"(a diverged run is named with its time and left out of means and gains); "
            f"gain = (T_baseline − T_fedast) / T_baseline on the time to completion "
            f"(`fedast-mpi report` gives the full analysis).{sequential_note(cfg, algorithms)}"
            f"\n\n{table}\n")
    (out_dir / "compare.md").write_text(text)
    with open(out_dir / "compare.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    print(text, flush=True)
