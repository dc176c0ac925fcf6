"""`fedast-mpi report RUN_DIR... --out DIR` (also `python -m analysis.report`): the offline report.

Writes to DIR: report.md (tables), report.csv (one row per run and task) and the figures
accuracy_<task>.png, allocation.png, staleness_<algorithm>.png, utilisation.png (see
analysis/README.md). Exit 0 on success; 2 with one line `fedast-mpi: error: ...` on stderr for a
missing, unreadable or foreign input file or bad usage; 1 for anything else.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Sequence

from . import figures, metrics
from .runs import AnalysisError, Run, load_runs

PROG = "fedast-mpi report"
DEFAULT_REFERENCE = "fedast"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise AnalysisError(message)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The report's arguments (for wiring it as a sub-command of another parser)."""
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories, run.h5 files, or comparison directories holding "
                        "<algorithm>-seed<k>/run.h5")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--baseline", action="append", default=[], metavar="ALGORITHM",
                   help="baseline algorithm(s) for the gain (repeatable or comma-separated; "
                        "default: every algorithm other than the reference)")
    p.add_argument("--reference", default=None, metavar="ALGORITHM",
                   help=f"algorithm whose gain is reported (default: {DEFAULT_REFERENCE}, "
                        f"else the first algorithm found)")
    p.add_argument("--pdf", action="store_true", help="also write every figure as PDF")
    return p


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    return add_arguments(_Parser(prog=prog, description="Offline analysis of fedast-mpi run "
                                 "files: time to target, gain, figures (no MPI, no torch)."))


def _choose(groups: dict, reference: str | None, baselines: list[str]):
    algorithms = list(groups)
    if reference is None:
        reference = DEFAULT_REFERENCE if DEFAULT_REFERENCE in groups else algorithms[0]
    elif reference not in groups:
        raise AnalysisError(f"--reference {reference}: no run of it among the inputs "
                            f"(found: {', '.join(algorithms)})")
    names = [b.strip() for item in baselines for b in item.split(",") if b.strip()]
    if names:
        missing = [b for b in names if b not in groups]
        if missing:
            raise AnalysisError(f"--baseline {', '.join(missing)}: no run of it among the inputs "
                                f"(found: {', '.join(algorithms)})")
        chosen = [b for b in dict.fromkeys(names) if b != reference]
    else:
        chosen = [a for a in algorithms if a != reference]
    return reference, chosen


def _fmt_time(value: float) -> str:
    return "not reached" if math.isinf(value) else ("—" if math.isnan(value) else f"{value:.1f}")


def build_report(runs: list[Run], reference: str | None = None,
                 baselines: Sequence[str] = ()) -> dict:
    """Everything the report writes, as data: groups, times, chosen algorithms, warnings."""
    if not runs:
        raise AnalysisError("no run files given")
    groups = metrics.group_runs(runs)
    times = metrics.group_times(groups)
    reference, chosen = _choose(groups, reference, list(baselines))
    tasks: list[str] = []
    for run in runs:
        tasks += [t for t in run.task_names if t not in tasks]
    warnings = []
    for run in runs:
        if run.status != "completed":
            warnings.append(f"{run.path}: status {run.status}"
                            + (f" ({run.attrs.get('stop_reason')})"
                               if run.attrs.get("stop_reason") else "")
                            + ("; read up to the writer's last flush" if run.status == "running"
                               else ""))
        warnings += metrics.check_reached(run)
    return {"groups": groups, "times": times, "reference": reference, "baselines": chosen,
            "tasks": tasks, "warnings": warnings}


def markdown(rep: dict, figure_files: Sequence[Path] = ()) -> str:
    times, tasks = rep["times"], rep["tasks"]
    ref, baselines = rep["reference"], rep["baselines"]
    lines = ["# fedast-mpi report", "",
             "Simulated time. Time to target: first evaluation with accuracy ≥ the task's "
             "target; completion: the last task's time to target. Mean ± sample std (ddof=1) "
             "over seeds. Gain of the reference on the time to completion, per seed: "
             "(T_baseline − T_reference) / T_baseline (PAPER.md §5.6). A run that diverged "
             "(non-finite update) is named with its time and left out of means and gains.", ""]
    # main table
    header = ["algorithm", "seeds", *[f"{t}: time to target" for t in tasks], "completion",
              f"gain of {ref}"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for algorithm, by_seed in times.items():
        cells = [algorithm, ", ".join(str(s) for s in by_seed)]
        for task in tasks:
            cells.append(metrics.stat_cell(by_seed, task))
        cells.append(metrics.stat_cell(by_seed, note=True))
        if algorithm == ref:
            cells.append("(reference)")
        elif algorithm in baselines:
            cells.append(metrics.gain_cell(times[ref], by_seed))
        else:
            cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    # per-task gains
    if baselines:
        lines += ["", f"## Gain of {ref} per task", "",
                  "Same formula on each task's time to target, paired by seed.", ""]
        header = ["baseline", *tasks, "completion"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for b in baselines:
            cells = [b]
            for task in tasks:
                cells.append(metrics.gain_cell(times[ref], times[b], task))
            cells.append(metrics.gain_cell(times[ref], times[b]))
            lines.append("| " + " | ".join(cells) + " |")
    # runs
    lines += ["", "## Runs", "",
              "| algorithm | seed | clock | status | stop reason | end time | "
              + " | ".join(tasks) + " | completion | file |",
              "|" + "---|" * (8 + len(tasks))]
    for algorithm, by_seed in times.items():
        for seed, rt in by_seed.items():
            run = rt.run
            cells = [algorithm, str(seed), run.clock, run.status,
                     str(run.attrs.get("stop_reason", "")), f"{run.end_time:.1f}",
                     *[_fmt_time(rt.tasks[t]) if t in rt.tasks else "—" for t in tasks],
                     (f"diverged at t={run.end_time:.1f}" if rt.diverged
                      else _fmt_time(rt.completion)), f"`{run.path}`"]
            lines.append("| " + " | ".join(cells) + " |")
    if rep["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in rep["warnings"]]
    pngs = [p for p in figure_files if p.suffix == ".png"]
    if pngs:
        lines += ["", "## Figures", "",
                  "Utilisation: compute spans are not logged, so `utilisation.png` shows what "
                  "the server saw in /events: per wall-time bin, the updates it processed per "
                  "second per worker, and the fraction of workers that delivered at least one "
                  "update in the bin.", ""]
        lines += [f"![{p.stem}]({p.name})" for p in pngs]
    return "\n".join(lines) + "\n"


CSV_HEADER = ["algorithm", "seed", "task", "time_to_target", "completion", "target", "status",
              "run"]


def csv_rows(rep: dict) -> list[list]:
    """One row per run and task; times as floats, inf when not reached."""
    rows = []
    for algorithm, by_seed in rep["times"].items():
        for seed, rt in by_seed.items():
            for task in rt.run.tasks:
                rows.append([algorithm, seed, task.name, repr(rt.tasks[task.name]),
                             repr(rt.completion), repr(task.target), rt.run.status,
                             str(rt.run.path)])
    return rows


def write_report(runs: list[Run], out, reference: str | None = None,
                 baselines: Sequence[str] = (), pdf: bool = False) -> list[Path]:
    """Write report.md, report.csv and the figures to `out`; returns the paths written."""
    rep = build_report(runs, reference, baselines)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalysisError(f"--out {out}: cannot create the directory: {e.strerror or e}") \
            from None
    groups = rep["groups"]
    written = []
    written += figures.accuracy_figures(groups, out, pdf)
    written += figures.allocation_figure(groups, out, pdf)
    written += figures.staleness_figures(groups, out, pdf)
    written += figures.utilisation_figure(groups, out, pdf)
    (out / "report.md").write_text(markdown(rep, written), encoding="utf-8")
    with open(out / "report.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_HEADER)
        w.writerows(csv_rows(rep))
    for warning in rep["warnings"]:
        print(f"fedast-mpi: warning: {warning}", file=sys.stderr)
    return [out / "report.md", out / "report.csv", *written]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `fedast-mpi report ...` / `python -m analysis.report ...`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        runs = load_runs(args.runs)
        written = write_report(runs, args.out, args.reference, args.baseline, args.pdf)
    except AnalysisError as exc:
        print(f"fedast-mpi: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fedast-mpi: error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # anything else: still one line, exit 1
        print(f"fedast-mpi: error: report failed: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        return 1
    print(f"report: {len(runs)} run(s); wrote {written[0]}, {written[1].name} and "
          f"{len(written) - 2} figure file(s) in {Path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
