"""Figures of a set of runs (matplotlib, Agg backend; PNG at 120 dpi, optionally PDF too)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .runs import Run  # noqa: E402

DPI = 120
UTILISATION_BINS = 40  # wall-time bins per run


def safe_name(name: str) -> str:
    """A task or algorithm name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unnamed"


def _colours(algorithms):
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    return {a: cycle[i % len(cycle)] for i, a in enumerate(algorithms)}


def _save(fig, out: Path, stem: str, pdf: bool) -> list[Path]:
    paths = [out / f"{stem}.png"]
    fig.savefig(paths[0], dpi=DPI)
    if pdf:
        paths.append(out / f"{stem}.pdf")
        fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _step_mean(curves: list[tuple[np.ndarray, np.ndarray]]):
    """Mean over seeds of step curves (value held until the next eval), on the union of their
    times up to the earliest last time (so every seed contributes to every point)."""
    curves = [(t, y) for t, y in curves if len(t)]
    if len(curves) < 2:
        return None
    end = min(float(t[-1]) for t, _ in curves)
    grid = np.unique(np.concatenate([t[t <= end] for t, _ in curves]))
    values = []
    for t, y in curves:
        idx = np.searchsorted(t, grid, side="right") - 1
        values.append(np.where(idx >= 0, y[np.clip(idx, 0, None)], np.nan))
    return grid, np.nanmean(np.vstack(values), axis=0)


def accuracy_figures(groups: dict[str, dict[int, Run]], out: Path, pdf: bool = False):
    """accuracy_<task>.png: accuracy vs simulated time; one colour per algorithm, each seed a
    thin line, the mean over seeds (step-held, up to the shortest seed) thick, the target dashed."""
    colours = _colours(groups)
    tasks: dict[str, set[float]] = {}
    for by_seed in groups.values():
        for run in by_seed.values():
            for task_run in run.tasks:
                tasks.setdefault(task_run.name, set()).add(task_run.target)
    written = []
    for task, targets in tasks.items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for algorithm, by_seed in groups.items():
            curves = []
            for seed, run in by_seed.items():
                if task not in run.task_names:
                    continue
                ev = run.task(task).eval
                t, y = np.asarray(ev["time"], float), np.asarray(ev["accuracy"], float)
                curves.append((t, y))
                single = len(by_seed) == 1
                ax.plot(t, y, color=colours[algorithm], lw=1.8 if single else 0.7,
                        alpha=1.0 if single else 0.45, drawstyle="steps-post",
                        label=f"{algorithm} (seed {seed})" if single else None)
            mean = _step_mean(curves)
            if mean is not None:
                ax.plot(*mean, color=colours[algorithm], lw=2.0, drawstyle="steps-post",
                        label=f"{algorithm} (mean of {len(curves)} seeds)")
        for target in sorted(x for x in targets if math.isfinite(x)):
            ax.axhline(target, color="black", ls="--", lw=1.0, label=f"target {target:g}")
        ax.set_xlabel("simulated time")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{task}: accuracy vs simulated time (thin: one seed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        written += _save(fig, out, f"accuracy_{safe_name(task)}", pdf)
    return written


def changes_allocation(run: Run) -> bool:
    """True when /allocation has rows after the initial one per task (dynamic allocation, or a
    completed task's budget handed over to the others)."""
    alloc = run.allocation
    if len(alloc) == 0:
        return False
    return len(alloc) > len(np.unique(alloc["task"])) or bool(np.any(alloc["time"] > 0))


def allocation_figure(groups: dict[str, dict[int, Run]], out: Path, pdf: bool = False):
    """allocation.png: R_m (requests) and b_m (buffer size) over simulated time, step plots, one
    line per task, for the lowest seed of each algorithm whose allocation changes (all
    algorithms when none does)."""
    chosen = [(a, next(iter(s.values()))) for a, s in groups.items()
              if any(changes_allocation(r) for r in s.values())]
    note = ""
    if not chosen:
        chosen = [(a, next(iter(s.values()))) for a, s in groups.items()]
        note = " (no algorithm changed its allocation)"
    # the lowest seed whose allocation changes
    chosen = [(a, next((r for r in groups[a].values() if changes_allocation(r)), run))
              for a, run in chosen]
    fig, axes = plt.subplots(len(chosen), 2, figsize=(10, 2.8 * len(chosen) + 0.6),
                             squeeze=False, sharex="row")
    for row, (algorithm, run) in enumerate(chosen):
        alloc = run.allocation
        end = max(run.end_time, float(np.max(alloc["time"])) if len(alloc) else 0.0)
        names = {t.index: t.name for t in run.tasks}
        for col, (field, what) in enumerate((("requests", "R_m (requests)"),
                                             ("buffer_size", "b_m (buffer size)"))):
            ax = axes[row][col]
            for task in np.unique(alloc["task"]):
                rows = alloc[alloc["task"] == task]
                rows = rows[np.argsort(rows["time"], kind="stable")]
                t = np.append(rows["time"], end)
                y = np.append(rows[field], rows[field][-1])
                ax.step(t, y, where="post", lw=1.5, label=names.get(int(task), f"task {task}"))
            ax.set_title(f"{algorithm} (seed {run.seed}): {what}", fontsize=10)
            ax.set_xlabel("simulated time")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("allocation over time" + note)
    fig.tight_layout()
    return _save(fig, out, "allocation", pdf)


def staleness_figures(groups: dict[str, dict[int, Run]], out: Path, pdf: bool = False):
    """staleness_<algorithm>.png: histogram of the staleness of accepted updates (/events with
    accepted = 1), one panel per task, pooled over the algorithm's seeds."""
    written = []
    for algorithm, by_seed in groups.items():
        runs = list(by_seed.values())
        tasks = []
        for run in runs:
            for t in run.tasks:
                if t.name not in tasks:
                    tasks.append(t.name)
        tasks = tasks or ["(no task)"]
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks) + 0.6, 3.6),
                                 squeeze=False)
        for ax, task in zip(axes[0], tasks):
            values = []
            for run in runs:
                index = {t.name: t.index for t in run.tasks}.get(task)
                if index is None:
                    continue
                ev = run.events
                keep = (ev["task"] == index) & (ev["accepted"] == 1)
                values.append(np.asarray(ev["staleness"][keep], dtype=np.int64))
            s = np.concatenate(values) if values else np.zeros(0, np.int64)
            if len(s):
                top = int(s.max())
                ax.hist(s, bins=np.arange(-0.5, top + 1.5, 1.0), color="C0", edgecolor="black",
                        lw=0.5)
                ax.set_title(f"{task}: n={len(s)}, mean {s.mean():.2f}, max {top}", fontsize=10)
            else:
                ax.text(0.5, 0.5, "no accepted updates", ha="center", va="center",
                        transform=ax.transAxes)
                ax.set_title(task, fontsize=10)
            ax.set_xlabel("staleness (versions)")
            ax.set_ylabel("accepted updates")
            ax.grid(alpha=0.3, axis="y")
        fig.suptitle(f"{algorithm}: staleness of accepted updates "
                     f"({len(runs)} seed{'s' if len(runs) != 1 else ''} pooled)")
        fig.tight_layout()
        written += _save(fig, out, f"staleness_{safe_name(algorithm)}", pdf)
    return written


def worker_ranks(run: Run) -> np.ndarray:
    """The ranks that compute requests: 1..world_size-1, or 0 when the world size is 1 (the
    server runs them in-process); the distinct /events worker ids without a world size."""
    try:
        world = int(run.attrs["world_size"])
    except (KeyError, TypeError, ValueError):
        return np.unique(run.events["worker"])
    return np.arange(1, world) if world > 1 else np.zeros(1, dtype=np.int64)


def utilisation(run: Run, bins: int = UTILISATION_BINS):
    """Worker utilisation of one run over wall time, from /events.

    Compute spans are not logged, so this measures what the server saw: the wall time at which
    it processed each update (accepted or not) and the worker rank that sent it. Only the
    worker ranks count (see `worker_ranks`): rows of requests never trained (worker -1: sync
    jobs beyond first-k) are left out. The bins span the first to the last such update
    (start-up is not counted).
    Returns (bin centres [s], updates per second per worker, fraction of the workers that
    delivered at least one update in the bin, number of workers), or None without updates.
    """
    workers = worker_ranks(run)
    ev = run.events[np.isin(run.events["worker"], workers)]
    if len(ev) == 0:
        return None
    wall = np.asarray(ev["wall"], float)
    lo, hi = float(wall.min()), float(wall.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-3, bins + 1)  # from the first update
    width = edges[1] - edges[0]
    counts = np.zeros((len(workers), bins))
    for i, w in enumerate(workers):
        counts[i], _ = np.histogram(wall[ev["worker"] == w], bins=edges)
    rate = counts.sum(axis=0) / width / len(workers)
    active = (counts > 0).mean(axis=0)
    return (edges[:-1] + edges[1:]) / 2, rate, active, len(workers)


def utilisation_figure(groups: dict[str, dict[int, Run]], out: Path, pdf: bool = False):
    """utilisation.png: top, updates processed per second per worker in each wall-time bin;
    bottom, the fraction of workers that delivered at least one update in the bin."""
    colours = _colours(groups)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for algorithm, by_seed in groups.items():
        first = True
        for run in by_seed.values():
            u = utilisation(run)
            if u is None:
                continue
            centres, rate, active, n_workers = u
            label = f"{algorithm} ({n_workers} worker{'s' if n_workers != 1 else ''})" \
                if first else None
            top.plot(centres, rate, color=colours[algorithm], lw=1.0, alpha=0.8, label=label,
                     drawstyle="steps-mid")
            bottom.plot(centres, active, color=colours[algorithm], lw=1.0, alpha=0.8,
                        drawstyle="steps-mid")
            first = False
    top.set_ylabel("updates / s / worker")
    top.set_title(f"worker utilisation from /events ({UTILISATION_BINS} wall-time bins per run; "
                  f"one line per seed)", fontsize=10)
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    bottom.set_ylabel("fraction of workers\nwith ≥ 1 update")
    bottom.set_xlabel("wall time since start [s] (when the server processed the update)")
    bottom.set_ylim(-0.05, 1.05)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out, "utilisation", pdf)
