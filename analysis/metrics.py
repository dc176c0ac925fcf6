"""The paper's metric (PAPER.md §5.6) computed from run files: the one place it is defined
(`fedast-mpi compare` and `fedast-mpi report` both print it from here).

The time to target of a task is the simulated time of its first evaluation with accuracy >=
target (recomputed from `/tasks/<name>/eval` and cross-checked against the task's `reached_time`
attribute), the time to completion is the largest of them (inf if a task never reached its
target), and the gain of a reference algorithm over a baseline is (T_baseline − T_reference) /
T_baseline on the time to completion of the same seed, reported as mean and sample standard
deviation (ddof=1) over seeds. A run that never reaches its target is left out of the mean and
counted ("n not reached"); where only the baseline missed, the gain has a lower bound. A run
that diverged (a non-finite update) is a result too: the tables name it ("diverged at t=…") and
compute means and gains over the seeds that did not diverge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from . import sequence
from .runs import AnalysisError, Run

RTOL = 1e-9  # relative tolerance of the reached_time cross-check


def time_to_target(eval_rows: np.ndarray, target: float) -> float:
    """Simulated time of the first eval row with accuracy >= target; inf when there is none."""
    if len(eval_rows) == 0 or not math.isfinite(target):
        return math.inf
    hit = np.flatnonzero(np.asarray(eval_rows["accuracy"]) >= target)
    return float(eval_rows["time"][hit[0]]) if len(hit) else math.inf


def task_times(run: Run) -> dict[str, float]:
    """Time to target of every task of a run (recomputed from eval), inf when not reached."""
    return {t.name: time_to_target(t.eval, t.target) for t in run.tasks}


def completion(times: Iterable[float]) -> float:
    """Time to completion: the last task's time to target (inf if any is not reached)."""
    values = list(times)
    return max(values) if values else math.nan


def check_reached(run: Run) -> list[str]:
    """Disagreements between the `reached_time` attribute and the time recomputed from eval.

    A live file may legitimately have the attribute set before the eval row that triggered it
    is flushed; those are reported too (the caller says the run is still running).
    """
    problems = []
    for t in run.tasks:
        recomputed = time_to_target(t.eval, t.target)
        attr = t.reached_time
        attr_inf = math.isnan(attr)
        if attr_inf and math.isinf(recomputed):
            continue
        if attr_inf != math.isinf(recomputed) or not math.isclose(attr, recomputed,
                                                                   rel_tol=RTOL, abs_tol=1e-12):
            problems.append(f"{run.path}: task {t.name}: reached_time attribute "
                            f"{'NaN' if attr_inf else f'{attr:.6g}'} but the eval table gives "
                            f"{recomputed:.6g}")
    return problems


def gain(t_baseline: float, t_reference: float) -> float:
    """(T_baseline − T_reference) / T_baseline; NaN when either time is not finite."""
    if not (math.isfinite(t_baseline) and math.isfinite(t_reference)) or t_baseline == 0:
        return math.nan
    return (t_baseline - t_reference) / t_baseline


def gain_lower_bound(baseline_end: float, t_reference: float) -> float:
    """A lower bound of the gain when the baseline stopped at `baseline_end` without reaching
    its target: its time to completion is > baseline_end."""
    if not (math.isfinite(baseline_end) and math.isfinite(t_reference)) or baseline_end <= 0:
        return math.nan
    return (baseline_end - t_reference) / baseline_end


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (ddof=1; NaN with one value) of the finite values, and how many of
    the values were not finite (task or run that did not reach its target)."""

    mean: float
    std: float
    n: int
    n_missing: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        vals = np.asarray(list(values), dtype=float)
        finite = vals[np.isfinite(vals)]
        n_missing = int(len(vals) - len(finite))
        if len(finite) == 0:
            return cls(math.nan, math.nan, 0, n_missing)
        std = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
        return cls(float(np.mean(finite)), std, int(len(finite)), n_missing)

    def format(self, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
        if self.n == 0:
            return "not reached" if self.n_missing else "—"
        text = f"{self.mean * scale:.{digits}f}"
        if math.isfinite(self.std):
            text += f" ± {self.std * scale:.{digits}f}"
        text += unit
        if self.n_missing:
            text += f" ({self.n_missing} not reached)"
        return text


def group_runs(runs: Iterable[Run]) -> dict[str, dict[int, Run]]:
    """Runs by algorithm then seed (algorithms in first-seen order, seeds sorted).

    One-task runs of distinct tasks with the same (algorithm, seed) are the parts of a
    single-task algorithm's sequential training and become one run (`sequence.sequential`);
    any other two runs with the same (algorithm, seed) are an error: the metric pairs runs by
    seed.
    """
    found: dict[str, dict[int, list[Run]]] = {}
    for run in runs:
        found.setdefault(run.algorithm, {}).setdefault(run.seed, []).append(run)
    groups: dict[str, dict[int, Run]] = {}
    for algorithm, by_seed in found.items():
        for seed, same in sorted(by_seed.items()):
            if len(same) > 1 and not sequence.is_sequence(same):
                raise AnalysisError(f"two runs of {algorithm} with seed {seed}: "
                                    f"{same[0].path} and {same[1].path}; "
                                    f"report them separately")
            groups.setdefault(algorithm, {})[seed] = (
                sequence.sequential(same) if len(same) > 1 else same[0])
    return groups


DIVERGED_MARK = "non-finite update"
"""What the stop reason of a run that diverged says (`fedast_mpi.errors.Diverged`)."""


def is_diverged(run: Run) -> bool:
    """The run stopped on a non-finite update: status `diverged` (or, from launchers that
    mark it `failed`, a stop reason naming the non-finite update)."""
    return run.status == "diverged" or (
        run.status == "failed" and DIVERGED_MARK in str(run.attrs.get("stop_reason", "")))


@dataclass
class RunTimes:
    """Times of one run: per task time to target, completion; `diverged` when it stopped on a
    non-finite update (at `run.end_time`)."""

    run: Run
    tasks: dict[str, float]
    completion: float
    diverged: bool = False


def run_times(run: Run) -> RunTimes:
    times = task_times(run)
    return RunTimes(run, times, completion(times.values()), is_diverged(run))


def group_times(groups: dict[str, dict[int, Run]]) -> dict[str, dict[int, RunTimes]]:
    """`run_times` of every run of `group_runs`' groups, in the same shape."""
    return {a: {s: run_times(r) for s, r in by_seed.items()} for a, by_seed in groups.items()}


def completed(by_seed: dict[int, RunTimes]) -> dict[int, RunTimes]:
    """The seeds whose run did not diverge (means and gains are computed over these)."""
    return {s: rt for s, rt in by_seed.items() if not rt.diverged}


def diverged_note(by_seed: dict[int, RunTimes]) -> str:
    """'seed 1 diverged at t=123.4; ...' for the diverged runs, '' when none diverged."""
    return "; ".join(f"seed {s} diverged at t={rt.run.end_time:.1f}"
                     for s, rt in by_seed.items() if rt.diverged)


def stat_cell(by_seed: dict[int, RunTimes], task: str | None = None,
              note: bool = False) -> str:
    """A table cell: mean ± std of `task`'s time to target (or of the completion) over the
    seeds that did not diverge; 'diverged at t=…' when every seed diverged; with `note`, the
    diverged seeds named after the figure."""
    kept = completed(by_seed)
    if not kept and by_seed:
        return "; ".join(f"diverged at t={rt.run.end_time:.1f}" for rt in by_seed.values())
    text = Stat.of([rt.completion if task is None else rt.tasks.get(task, math.inf)
                    for rt in kept.values()]).format()
    extra = diverged_note(by_seed) if note else ""
    return f"{text} ({extra})" if extra else text


def gain_cell(reference: dict[int, RunTimes], baseline: dict[int, RunTimes],
              task: str | None = None) -> str:
    """`format_gain` of the seeds where neither run diverged; the left-out seeds counted."""
    ref, base = completed(reference), completed(baseline)
    left = sorted((set(reference) & set(baseline)) - (set(ref) & set(base)))
    text = format_gain(*paired_gains(ref, base, task))
    if left:
        text += (f" (seed{'s' if len(left) != 1 else ''} {', '.join(map(str, left))} "
                 f"left out: diverged)")
    return text


def paired_gains(reference: dict[int, RunTimes], baseline: dict[int, RunTimes],
                 task: str | None = None) -> tuple[list[float], list[float]]:
    """Per common seed, the gain of `reference` over `baseline` on completion (or on `task`'s
    time to target), and, for seeds where only the baseline missed its target, lower bounds."""
    gains, bounds = [], []
    for seed in sorted(set(reference) & set(baseline)):
        ref, base = reference[seed], baseline[seed]
        t_ref = ref.completion if task is None else ref.tasks.get(task, math.nan)
        t_base = base.completion if task is None else base.tasks.get(task, math.nan)
        if math.isfinite(t_base):
            gains.append(gain(t_base, t_ref))
        elif math.isinf(t_base) and math.isfinite(t_ref):
            bounds.append(gain_lower_bound(base.run.end_time, t_ref))
        else:
            gains.append(math.nan)
    return gains, bounds


def format_gain(gains: list[float], bounds: list[float]) -> str:
    """A table cell for `paired_gains`' output: mean ± std in %, and the lower bound over the
    seeds where only the baseline missed its target."""
    stat = Stat.of(gains)
    parts = []
    if stat.n:
        parts.append(stat.format(scale=100.0, unit=" %"))
    elif stat.n_missing:
        parts.append("reference not reached" if not bounds else "")
    if bounds:
        parts.append(f"≥ {100.0 * min(bounds):.1f} % on {len(bounds)} seed"
                     f"{'s' if len(bounds) != 1 else ''} (baseline not reached)")
    text = "; ".join(p for p in parts if p)
    return text or "—"
