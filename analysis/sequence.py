"""Single-task runs chained into one sequential run: how a single-task algorithm trains M tasks.

`fedast-mpi compare` runs a single-task reference (`fedbuff`, `fedasync`) on an M-task config
as M one-task runs of one seed (`<algorithm>-seed<k>-<task>`), each task alone with its random
streams of the multi-task config. Trained one after another on the same clients, task k starts
when task k-1's run ended (its target reached, else its `run.max_time`), so its times are
shifted by the end times of the runs before it. `sequential` builds that schedule as one `Run`
whose tables every metric, table and figure reads as any multi-task run.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from .runs import Run, TaskRun

TIME_FIELDS = ("time", "dispatch_time", "finish_time")
FINISHED = ("completed",)
"""A part whose status is not one of these ends the chain: the tasks after it never started."""


def is_sequence(runs: Sequence[Run]) -> bool:
    """Are `runs` (same algorithm and seed) the parts of one sequential run? Two or more
    one-task runs of distinct tasks."""
    names = [r.tasks[0].name for r in runs if len(r.tasks) == 1]
    return len(runs) > 1 and len(names) == len(runs) and len(set(names)) == len(names)


def stream_index(run: Run) -> int:
    """The task's position in the multi-task config (`stream_index` attribute; older files:
    its index)."""
    task = run.tasks[0]
    return int(task.attrs.get("stream_index", task.index))


def sequential(parts: Sequence[Run]) -> Run:
    """One Run: the one-task `parts` in config order (`stream_index`), each starting at the end
    time of the one before; request ids, simulated and wall times shifted, task k at index k.

    The status is the first unfinished part's (its stop reason names its task) and the chain
    stops there; else `completed`. `final_time` is the chain's end.
    """
    ordered = sorted(parts, key=stream_index)
    t0 = w0 = 0.0
    r0 = 0
    tasks: list[TaskRun] = []
    tables: dict[str, list[np.ndarray]] = {"events": [], "aggregations": [], "allocation": []}
    status, reason = "completed", ""
    for k, part in enumerate(ordered):
        task = part.tasks[0]
        reached = task.reached_time + t0
        tasks.append(dataclasses.replace(
            task, index=k, reached_time=reached, eval=_shift(task.eval, t0, w0),
            attrs={**task.attrs, "index": k, "reached_time": reached}))
        for key in tables:
            rows = _shift(getattr(part, key), t0, w0)
            if "task" in _fields(rows):
                rows["task"] = k
            if "request" in _fields(rows):
                rows["request"] += r0
            tables[key].append(rows)
        t0 += part.end_time
        if part.status not in FINISHED:
            status = part.status
            reason = f"task {task.name}: {part.attrs.get('stop_reason', '')}".rstrip(": ")
            break
        w0 += _wall_end(part)
        if len(part.events):
            r0 += int(np.max(part.events["request"])) + 1
    first = ordered[0]
    attrs = {**first.attrs, "status": status, "stop_reason": reason, "final_time": t0,
             "sequential_parts": ", ".join(str(p.path) for p in ordered)}
    label = first.path.parent.parent / f"{first.algorithm}-seed{first.seed}-*"
    return Run(path=label, attrs=attrs, tasks=tasks,
               events=np.concatenate(tables["events"]),
               aggregations=np.concatenate(tables["aggregations"]),
               allocation=np.concatenate(tables["allocation"]), clients=first.clients)


def _shift(rows: np.ndarray, t0: float, w0: float) -> np.ndarray:
    out = rows.copy()
    for name in TIME_FIELDS:
        if name in _fields(out):
            out[name] += t0
    if "wall" in _fields(out):
        out["wall"] += w0
    return out


def _wall_end(run: Run) -> float:
    """The last wall time (seconds since the run's start) in the run's tables."""
    walls = [0.0]
    for table in (run.events, run.aggregations, *(t.eval for t in run.tasks)):
        if len(table) and "wall" in _fields(table):
            walls.append(float(np.max(table["wall"])))
    return max(walls)


def _fields(rows: np.ndarray) -> tuple[str, ...]:
    return rows.dtype.names or ()
