"""One-screen text summary of a run file, finished or still being written."""

import math
import os
import socket
import time

import numpy as np

from . import schema
from .h5open import open_h5, with_retry
from .rundir import pid_alive
from .runlog import RunFileError, _as_str, open_run

_PARTIAL_READ = (OSError, KeyError)  # what a summary read overlapping the writer's flush raises
STALE_AFTER = 60.0
"""Seconds without a heartbeat after which a `running` file whose writer cannot be checked
(another host) is called stale; at least 10 flush intervals."""


def _attr(obj, key, default="?"):
    """An attribute as plain Python (str for strings), or `default` when absent."""
    if key not in obj.attrs:
        return default
    value = obj.attrs[key]
    if isinstance(value, (bytes, str)):
        return _as_str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _num(x, fmt="{:.4g}"):
    """A number for the table; '-' for NaN or missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def _rows(f, path):
    """Row count of a dataset, 0 when absent."""
    return f[path].shape[0] if path in f else 0


def summarize(path: str) -> str:
    """Summarize RUN_DIR/run.h5 (or a run file): run attributes, row counts, one line per task."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, schema.RUN_FILE)
    if _is_checkpoint(path):
        return summarize_checkpoint(path)
    try:  # a read that overlaps the writer's flush can fail: retried
        return with_retry(lambda: _summarize(path), retry_on=_PARTIAL_READ)
    except _PARTIAL_READ as e:
        raise RunFileError(f"{path}: cannot read ({e}); "
                           f"if it is being written, retry") from None


def _summarize(path):
    """The summary text of one read of the run file."""
    with open_run(path) as f:
        lines = [f"{path}  ({_attr(f, 'schema')})"]
        lines.append(f"algorithm {_attr(f, 'algorithm')}   clock {_attr(f, 'clock')}   "
                     f"seed {_attr(f, 'seed')}   world_size {_attr(f, 'world_size')}   "
                     f"package_version {_attr(f, 'package_version')}")
        stop = _attr(f, "stop_reason", "")
        lines.append(f"status {_attr(f, 'status')}" + (f"   stop_reason {stop}" if stop else ""))
        if _attr(f, "status") == "running":
            lines.append(liveness(f, os.path.dirname(os.path.abspath(path))))
        timing = _timing(f)
        if timing:
            lines.append(timing)

        if schema.EVENTS in f and f[schema.EVENTS].shape[0]:
            ev = f[schema.EVENTS]
            ev_task = ev["task"]
            ev_stale = ev["staleness"]
            ev_acc = ev["accepted"]
        else:
            ev_task = ev_stale = ev_acc = np.zeros(0)
        if schema.AGGREGATIONS in f and f[schema.AGGREGATIONS].shape[0]:
            agg_task = f[schema.AGGREGATIONS]["task"]
        else:
            agg_task = np.zeros(0)
        n_clients = f[schema.CLIENTS][schema.CLIENT_TIER].shape[0] if (
            schema.CLIENTS in f and schema.CLIENT_TIER in f[schema.CLIENTS]) else 0
        lines.append(f"events {len(ev_task)} (accepted {int(np.count_nonzero(ev_acc))})   "
                     f"aggregations {len(agg_task)}   allocation rows "
                     f"{_rows(f, schema.ALLOCATION)}   clients {n_clients}")

        header = ("task", "dataset", "model", "n_params", "target", "reached",
                  "eval t", "eval ver", "accuracy", "aggs", "events", "stale mean", "stale max")
        table = [header]
        tasks = f[schema.TASKS] if schema.TASKS in f else {}
        order = sorted(tasks, key=lambda n: (_attr(tasks[n], "index", 0), n))
        for name in order:
            g = tasks[name]
            index = _attr(g, "index", -1)
            last = (None, None, None)
            if schema.EVAL in g and g[schema.EVAL].shape[0]:
                row = g[schema.EVAL][-1]
                last = (float(row["time"]), int(row["version"]), float(row["accuracy"]))
            mine = ev_task == index
            stale = ev_stale[mine]
            table.append((
                name, str(_attr(g, "dataset")), str(_attr(g, "model")),
                str(_attr(g, "n_params")), _num(_attr(g, "target_accuracy", None)),
                _num(_attr(g, "reached_time", None)),
                _num(last[0]), _num(last[1], "{}"), _num(last[2], "{:.4f}"),
                str(int(np.count_nonzero(agg_task == index))), str(len(stale)),
                _num(float(stale.mean()) if len(stale) else None, "{:.2f}"),
                _num(int(stale.max()) if len(stale) else None, "{}"),
            ))
        final = _attr(f, "final_accuracy", None)  # the final models', in task index order
        versions = _attr(f, "final_version", None)
        if final is not None and versions is not None and len(final) == len(order):
            lines.append("final model accuracy: " + "; ".join(
                f"{name} {float(a):.4f} (version {int(v)})"
                for name, a, v in zip(order, final, versions)))
    if len(table) == 1:
        lines.append("no tasks")
    else:
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def _timing(f) -> str:
    """Wall time, updates per second, start-up and the workers' training time of an ended run
    ('' while it runs: those attributes are written at the end)."""
    wall = _attr(f, "wall_seconds", None)
    if not isinstance(wall, (int, float)):
        return ""
    updates = _attr(f, "updates_processed", None)
    rate = (f"{updates / wall:.0f} updates/s" if isinstance(updates, (int, float)) and wall > 0
            else "updates/s -")
    startup = _attr(f, "startup_seconds", None)
    compute = _attr(f, "compute_seconds", None)
    return (f"wall {wall:.1f} s   {rate}   start-up "
            + (f"{startup:.1f} s" if isinstance(startup, (int, float)) else "- (not recorded)")
            + "   compute (wall seconds of the workers' training) "
            + (f"{compute:.1f} s" if isinstance(compute, (int, float)) else "-"))


def liveness(f, run_dir: str, now: float | None = None) -> str:
    """For a `running` run file: is its writer still there, and how to go on if not.

    Definitely stale: written on this host by a pid that no longer exists. Probably stale:
    no heartbeat for max(STALE_AFTER, 10 flush intervals) (its writer may be on another
    host, or frozen). Files written before heartbeats existed cannot tell.
    """
    beat = _attr(f, "heartbeat", None)
    if not isinstance(beat, (int, float)):
        return "liveness unknown: no heartbeat in the file (an older version wrote it)"
    age = max(0.0, (time.time() if now is None else now) - float(beat))
    host, pid = str(_attr(f, "writer_host", "?")), int(_attr(f, "writer_pid", 0) or 0)
    limit = max(STALE_AFTER, 10 * float(_attr(f, "flush_every", 1.0) or 1.0))
    here = host == socket.gethostname()
    if here and not pid_alive(pid):
        why = f"writer pid {pid} on host {host} is gone"
    elif age > limit:
        why = f"heartbeat older than {limit:.0f} s; writer pid {pid} on host {host}" + (
            " still exists: frozen?" if here else "")
    else:
        return f"live (last write {age:.0f} s ago; writer pid {pid} on host {host})"
    return f"STALE: no write for {age:.0f} s ({why}); {_how_to_go_on(f, run_dir)}"


def _how_to_go_on(f, run_dir: str) -> str:
    """The resume command when RUN_DIR has a checkpoint, else that it has none."""
    from fedast_mpi.checkpoint import CHECKPOINT_DIR, checkpoint_paths
    newest = checkpoint_paths(run_dir)[:1]
    if not newest:
        return (f"no checkpoint in {os.path.join(run_dir, CHECKPOINT_DIR)}: nothing to resume, "
                f"run it again")
    return (f"resume with: mpiexec -n {_attr(f, 'world_size')} fedast-mpi resume {run_dir} "
            f"(newest checkpoint {newest[0].name})")


def _is_checkpoint(path) -> bool:
    try:
        with open_h5(path) as f:
            return _attr(f, "schema", "") == schema.CHECKPOINT_SCHEMA
    except OSError:
        return False


def summarize_checkpoint(path: str) -> str:
    """A checkpoint: where the run stood, per task its version, targets and outstanding work."""
    from fedast_mpi.checkpoint import read_checkpoint
    ckpt = read_checkpoint(path)  # verifies everything (CheckpointError, exit 3, if damaged)
    state = ckpt["state"]
    reqs = state["requests"]
    checks = "verified" if ckpt["checked"] else "arrays verified; no attribute check (older)"
    lines = [f"{path}  ({schema.CHECKPOINT_SCHEMA}, #{ckpt['index']}, {checks})",
             f"run_id {ckpt['run_id'] or 'none'}",
             f"simulated time {ckpt['time']:.1f}   wall {state['wall']:.1f} s   "
             f"updates {state['n_processed']}   next request {state['next_id']}   "
             f"pending requests {len(reqs)} (cancelled {int(reqs['cancelled'].sum())}, "
             f"rejected {int(reqs['rejected'].sum())})",
             f"{'task':>4} {'version':>8} {'R':>5} {'b':>4} {'buffered':>8} {'outstanding':>11} "
             f"{'versions kept':>13} {'done':>5}"]
    live = reqs[~(reqs["cancelled"] | reqs["rejected"])]  # outstanding: trained and wanted
    for i, t in enumerate(state["tasks"]):
        lines.append(f"{i:>4} {t['version']:>8} {t['requests']:>5} {t['buffer_size']:>4} "
                     f"{len(t['buffer']):>8} {int((live['task'] == i).sum()):>11} "
                     f"{len(t['versions']):>13} {'yes' if t['finished'] else 'no':>5}")
    return "\n".join(lines)
