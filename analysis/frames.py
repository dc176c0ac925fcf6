"""A run's tables as pandas DataFrames (`Run.frames()`, `Run.frame(name)`), for notebooks.

pandas is optional (`pip install 'fedast-mpi[pandas]'`) and imported only here, on first use;
the numpy arrays of `analysis.runs.Run` need nothing more. The frames hold the run file's
columns as stored (SPEC §8), plus task names next to task indices:

- `events`, `aggregations`, `allocation`: one row per table row; `task_name` after `task`.
- `evals`: every task's `/tasks/<name>/eval` rows, long: `task` (the name), then the columns.
- `tasks`: one row per task, indexed by name: the group's attributes (`target_accuracy`,
  `reached_time`, ...), `has_final_model`, `n_evals` and `time_to_target` (recomputed from
  eval as `analysis.metrics.time_to_target` does: inf when not reached).
- `clients`: one row per client: `tier`, `multiplier`, `n_samples:<task>` per task (columns
  absent when the file has no `/clients`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from .runs import Run

NAMES = ("events", "aggregations", "allocation", "evals", "tasks", "clients")
"""The frames of a run, in the order `run_frames` gives them."""

INSTALL = "pip install 'fedast-mpi[pandas]'"


def pandas() -> Any:
    """The pandas module, or ImportError naming the extra that installs it."""
    try:
        return importlib.import_module("pandas")  # imported here only: optional, untyped
    except ImportError as exc:
        raise ImportError(f"DataFrames of a run need pandas, which is not installed: "
                          f"`{INSTALL}` (or `pip install pandas`); the numpy arrays "
                          f"(run.events, run.evals, ...) need nothing more") from exc


def _task_names(run: Run) -> dict[int, str]:
    return {t.index: t.name for t in run.tasks}


def _with_names(run: Run, table: np.ndarray) -> Any:
    df = pandas().DataFrame(table)
    names = _task_names(run)
    df.insert(df.columns.get_loc("task") + 1, "task_name",
              [names.get(int(i), str(int(i))) for i in table["task"]])
    return df


def events(run: Run) -> Any:
    return _with_names(run, run.events)


def aggregations(run: Run) -> Any:
    return _with_names(run, run.aggregations)


def allocation(run: Run) -> Any:
    return _with_names(run, run.allocation)


def evals(run: Run) -> Any:
    from fedast_mpi import schema
    pd = pandas()
    rows = [t.eval for t in run.tasks]
    df = pd.DataFrame(np.concatenate(rows) if rows else np.zeros(0, schema.EVAL_DTYPE))
    df.insert(0, "task", [t.name for t in run.tasks for _ in range(len(t.eval))])
    return df


def tasks(run: Run) -> Any:
    pd = pandas()
    from .metrics import time_to_target
    rows = []
    for t in run.tasks:
        row = dict(t.attrs)
        row.update(has_final_model=t.has_final_model, n_evals=len(t.eval),
                   time_to_target=time_to_target(t.eval, t.target))
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index([t.name for t in run.tasks], name="task"))


def clients(run: Run) -> Any:
    pd = pandas()
    from fedast_mpi import schema
    columns: dict[str, np.ndarray] = {}
    for key in (schema.CLIENT_TIER, schema.CLIENT_MULTIPLIER):
        if key in run.clients:
            columns[key] = np.asarray(run.clients[key])
    n_samples = run.clients.get(schema.CLIENT_N_SAMPLES)
    if n_samples is not None:
        n_samples = np.asarray(n_samples).reshape(len(n_samples), -1)
        names = run.task_names
        for j in range(n_samples.shape[1]):
            label = names[j] if j < len(names) else str(j)
            columns[f"{schema.CLIENT_N_SAMPLES}:{label}"] = n_samples[:, j]
    count = len(next(iter(columns.values()))) if columns else 0
    return pd.DataFrame(columns, index=pd.RangeIndex(count, name="client"))


BUILDERS: dict[str, Callable[[Run], Any]] = {
    "events": events, "aggregations": aggregations, "allocation": allocation,
    "evals": evals, "tasks": tasks, "clients": clients}


def run_frame(run: Run, name: str) -> Any:
    """The frame `name` (one of `NAMES`) of `run`."""
    if name not in BUILDERS:
        raise KeyError(f"{name!r}: no such frame (frames: {', '.join(NAMES)})")
    return BUILDERS[name](run)


def run_frames(run: Run) -> dict[str, Any]:
    """Every frame of `run`, {name: DataFrame}, in `NAMES` order."""
    pandas()  # one clear ImportError before any work
    return {name: BUILDERS[name](run) for name in NAMES}
