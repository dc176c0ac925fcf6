"""`fedast-mpi reproduce`: a paper table (`paper_tables`) run over seeds, measured beside the
paper's numbers.

Each row is a `compare` of FedAST and Sync-ST on the row's config in configs/paper, into
OUT/<row>/ (`<algorithm>-seed<k>/` and compare.md, as `fedast-mpi compare` writes them). Runs
already finished there (completed, or diverged) are kept, so a reproduction stopped half way is
continued by the same command (an interrupted run: `fedast-mpi resume` it first). Rank 0 then
writes OUT/reproduce.md and reproduce.csv: per row, FedAST's and Sync-ST's time to completion
(last task) and mean time to target over the tasks, mean ± std over the seeds, the gain, and
the paper's numbers beside them, with the wall time the runs took. On SLURM the rows go out as
job arrays (`slurm/submit-reproduce.sh`) and `--summarize` writes the table afterwards.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

from fedast_mpi.comparison import plan, run_compare, write_summary
from fedast_mpi.config import Config, load_config
from fedast_mpi.errors import ConfigError
from fedast_mpi.paper_tables import FEDAST, SYNC, TABLES, PaperRow, PaperTable
from fedast_mpi.schema import RUN_FILE

FINISHED = ("completed", "diverged")
"""Run-file statuses a reproduction keeps instead of running again."""


def default_config_dir() -> Path:
    """configs/paper of the checkout this package runs from."""
    return Path(__file__).resolve().parent.parent / "configs" / "paper"


def table(name: str) -> PaperTable:
    try:
        return TABLES[name]
    except KeyError:
        raise ConfigError(f"reproduce: no paper table {name!r}; known: "
                          f"{', '.join(TABLES)}") from None


def select_rows(tab: PaperTable, rows: str | None) -> list[PaperRow]:
    """The rows named in `rows` (comma-separated keys; None: all), in the table's order."""
    if rows is None:
        return list(tab.rows)
    keys = [k.strip() for k in rows.split(",") if k.strip()]
    known = [r.key for r in tab.rows]
    bad = [k for k in keys if k not in known]
    if bad or not keys:
        raise ConfigError(f"--rows: {', '.join(bad) or 'empty'}: {tab.name} has rows "
                          f"{', '.join(known)}")
    return [r for r in tab.rows if r.key in keys]


def row_configs(rows: Sequence[PaperRow], config_dir: Path,
                overrides: Sequence[str]) -> list[tuple[PaperRow, Config]]:
    """Every row's config, loaded and checked with the overrides (before anything runs)."""
    out = []
    for row in rows:
        path = config_dir / row.config
        if not path.is_file():
            raise ConfigError(f"{path}: the config of row {row.key} is missing (--configs DIR "
                              f"names the directory of the paper configs)")
        out.append((row, load_config(str(path), overrides)))
    return out


def status_of(run_dir: Path) -> str | None:
    """The run file's status, None where there is no run file."""
    from fedast_mpi.h5open import open_h5
    path = run_dir / RUN_FILE
    if not path.exists():
        return None
    try:
        with open_h5(path, "r") as f:
            return str(f.attrs.get("status", "?"))
    except OSError:
        return "unreadable"


def pending(cfg: Config, algorithms: Sequence[str], seeds: int, row_dir: Path,
            overrides: Sequence[str]) -> list[int]:
    """Plan entries of a row still to run; ConfigError for a run left unfinished."""
    todo = []
    for index, entry in enumerate(plan(cfg, algorithms, seeds, overrides)):
        run_dir = row_dir / entry.name
        status = status_of(run_dir)
        if status is None:
            todo.append(index)
        elif status not in FINISHED:
            raise ConfigError(f"{run_dir}: a run that is {status}, not finished: "
                              f"`fedast-mpi resume {run_dir}` it (or remove it), then run "
                              f"the reproduction again")
    return todo


def run_reproduce(tab: PaperTable, rows: list[tuple[PaperRow, Config]], seeds: int, out: Path,
                  comm, overrides: Sequence[str] = ()) -> int:
    """Every row's comparison with all ranks (finished runs kept), then rank 0 writes the table.
    Returns 0, or the exit code of the run that failed (the reproduction stops there)."""
    for row, cfg in rows:
        row_dir = out / row.key
        todo: Any = None
        if comm.rank == 0:
            try:
                todo = pending(cfg, tab.algorithms, seeds, row_dir, overrides)
            except ConfigError as e:
                todo = e
        todo = comm.bcast(todo, root=0)
        if isinstance(todo, ConfigError):
            raise todo
        if comm.rank == 0:
            print(f"=== {tab.name} {row.key}: {row.label}; {len(todo)} of "
                  f"{len(tab.algorithms) * seeds} runs to do ===", flush=True)
        for index in todo:
            code = run_compare(cfg, tab.algorithms, seeds, row_dir, comm, index, overrides)
            if code:
                return code
        if comm.rank == 0:
            write_summary(cfg, tab.algorithms, seeds, row_dir, overrides)
    if comm.rank == 0:
        write_table(tab, rows, seeds, out, overrides)
    return 0


def _mean_over_tasks(rt) -> float:
    """Mean time to target over a run's tasks (inf when a task missed it)."""
    values = list(rt.tasks.values())
    return sum(values) / len(values) if values else math.nan


def _wall(by_seed: dict) -> str:
    """Median wall seconds (run start to end, start-up included) of a row's runs."""
    walls = []
    for rt in by_seed.values():
        w, s = rt.run.attrs.get("wall_seconds"), rt.run.attrs.get("startup_seconds", 0.0)
        if w is not None:
            walls.append(float(w) + float(s or 0.0))
    if not walls:
        return "—"
    walls.sort()
    mid = len(walls) // 2
    median = walls[mid] if len(walls) % 2 else (walls[mid - 1] + walls[mid]) / 2
    return f"{median:.0f} s"


def measure(tab: PaperTable, rows: list[tuple[PaperRow, Config]], seeds: int, out: Path,
            overrides: Sequence[str], partial: bool = False
            ) -> dict[str, dict[str, dict[int, Any]]]:
    """row key -> algorithm -> seed -> `analysis.metrics.RunTimes` of the finished runs.

    `partial` (`--summarize`): a row uses those of its first `seeds` seeds that every algorithm
    finished (a reproduction still running, or rows given different numbers of seeds); a row
    with none is an error. Otherwise every run must be there."""
    from analysis import metrics
    from analysis.runs import load_run
    result: dict[str, dict[str, dict[int, Any]]] = {}
    for row, cfg in rows:
        entries = plan(cfg, tab.algorithms, seeds, overrides)
        paths = {(e.algorithm, e.seed): out / row.key / e.name / RUN_FILE for e in entries}
        done = {e.seed for e in entries
                if all(status_of(paths[(a, e.seed)].parent) in FINISHED for a in tab.algorithms)}
        by_alg: dict[str, dict[int, Any]] = {a: {} for a in tab.algorithms}
        for (algorithm, seed), path in paths.items():
            if seed in done:
                by_alg[algorithm][seed] = metrics.run_times(load_run(path))
            elif not partial or not done:
                raise ConfigError(f"{path}: missing or unfinished; run the reproduction (or its "
                                  f"SLURM arrays) first")
        result[row.key] = by_alg
    return result


HEADER = ["row", "tasks", "seeds", "FedAST completion", "paper FedAST",
          "Sync-ST completion", "paper Sync-ST", "gain", "paper gain",
          "FedAST mean over tasks", "Sync-ST mean over tasks", "gain on the mean",
          "wall per run (FedAST / Sync-ST)"]


def table_rows(tab: PaperTable, rows: list[tuple[PaperRow, Config]],
               measured: dict[str, dict[str, dict[int, Any]]]) -> list[list[str]]:
    """The cells of reproduce.md/.csv, one list per row (HEADER's columns)."""
    from analysis import metrics
    out = []
    for row, cfg in rows:
        fed, sync = measured[row.key][FEDAST], measured[row.key][SYNC]
        mean_fed = {s: _as_completion(rt, _mean_over_tasks(rt)) for s, rt in fed.items()}
        mean_sync = {s: _as_completion(rt, _mean_over_tasks(rt)) for s, rt in sync.items()}
        out.append([
            row.label, str(len(cfg.tasks)), str(len(fed)),
            metrics.stat_cell(fed, note=True), f"{row.time[FEDAST]:.1f}",
            metrics.stat_cell(sync, note=True), f"{row.time[SYNC]:.1f}",
            metrics.gain_cell(fed, sync), f"{row.gain:.2f} %",
            metrics.stat_cell(mean_fed), metrics.stat_cell(mean_sync),
            metrics.gain_cell(mean_fed, mean_sync),
            f"{_wall(fed)} / {_wall(sync)}",
        ])
    return out


def _as_completion(rt, value: float):
    """A copy of RunTimes `rt` whose completion is `value` (for the mean-over-tasks column)."""
    import dataclasses
    return dataclasses.replace(rt, completion=value)


def task_table(tab: PaperTable, row: PaperRow, by_alg: dict[str, dict[int, Any]]) -> str:
    """Per task: each algorithm's mean ± std time to target, beside the paper's where it has
    per-task numbers (the heterogeneous rows)."""
    from analysis import metrics
    tasks = list(next(iter(by_alg[FEDAST].values())).tasks)
    header = ["task"] + [f"{a} (measured)" for a in tab.algorithms]
    if row.task_times:
        header += [f"{a} (paper)" for a in tab.algorithms]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in tasks:
        cells = [task] + [metrics.stat_cell(by_alg[a], task) for a in tab.algorithms]
        if row.task_times:
            cells += [f"{row.task_times[a][task]:.1f}" if task in row.task_times.get(a, {})
                      else "—" for a in tab.algorithms]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(tab: PaperTable, rows: list[tuple[PaperRow, Config]], seeds: int, out: Path,
                overrides: Sequence[str] = (), partial: bool = False) -> str:
    """Write and print OUT/reproduce.md and reproduce.csv from the rows' run files (`partial`:
    see `measure`)."""
    measured = measure(tab, rows, seeds, out, overrides, partial)
    cells = table_rows(tab, rows, measured)
    first = rows[0][1].run.seed
    lines = [f"# Reproduction: {tab.title}", "",
             f"Paper: {tab.source}. Measured: up to {seeds} seed(s) from run.seed {first} "
             f"(the `seeds` column; mean ± sample std over them; simulated time units), "
             f"overrides: {' '.join(overrides) or 'none'}.",
             "Completion is the time the last task reaches its target; the mean over tasks is "
             "the mean of the tasks' times to target (the paper's homogeneous figure is one of "
             "the two: PAPER.md §5.6). Gain = (T_Sync-ST − T_FedAST) / T_Sync-ST, per seed.",
             "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    for row, _ in rows:
        lines += ["", f"## {row.label} (OUT/{row.key})", "",
                  task_table(tab, row, measured[row.key])]
    text = "\n".join(lines) + "\n"
    (out / "reproduce.md").write_text(text)
    with open(out / "reproduce.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([HEADER] + cells)
    print(text, flush=True)
    return text


def list_rows(rows: Sequence[PaperRow], algorithms: Sequence[str], config_dir: Path) -> str:
    """`--list`: one line per row, `KEY CONFIG ALGORITHMS` (for slurm/submit-reproduce.sh)."""
    return "\n".join(f"{r.key} {config_dir / r.config} {','.join(algorithms)}" for r in rows)
