"""The `fedast-mpi` command: run, resume, compare, validate, inspect, report, data.

The only place that touches COMM_WORLD (the MPI sub-commands pass a Dup on).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fedast_mpi.errors import ConfigError, FedastError
from fedast_mpi.launch import error_line


def env_rank() -> int:
    """This process's rank as the launcher tells it (before MPI is initialised)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors become one line and exit 2 (a ConfigError), not argparse's usage text;
    `--help` still prints the help and exits 0."""

    def error(self, message):
        raise ConfigError(f"{' '.join(message.split())} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fedast-mpi", description="FedAST over MPI: several FL tasks over one "
                "pool of clients. Run under mpiexec: rank 0 is the server, the others workers.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="train (no CONFIG: the embedded default job)")
    run.add_argument("config", nargs="?", help="YAML config (default: the embedded job)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. tasks.0.buffer_size=5 (repeatable)")
    run.add_argument("--out", help="run directory (default: run.out_dir/run.name)")
    res = sub.add_parser("resume", help="continue a run from its newest valid checkpoint")
    res.add_argument("run_dir")
    res.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="change a harmless key (e.g. run.max_time); needs --force")
    res.add_argument("--force", action="store_true",
                     help="accept harmless config changes (max_time, logging, checkpoints)")
    val = sub.add_parser("validate", help="check a config without MPI")
    val.add_argument("config", nargs="?")
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ins = sub.add_parser("inspect", help="one-screen summary of a run directory or file")
    ins.add_argument("path")
    rep = sub.add_parser("report", help="offline analysis of run files: tables and figures",
                         add_help=False)
    rep.add_argument("args", nargs=argparse.REMAINDER)
    dat = sub.add_parser("data", help="standard dataset files (on a machine with internet)")
    dsub = dat.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    dl = dsub.add_parser("download", help="fetch and verify a dataset's standard files")
    dl.add_argument("name", help="mnist, fmnist, cifar10, cifar100 (shakespeare: LEAF's own tools)")
    dl.add_argument("--to", required=True, help="directory (use it as the task's data_dir)")
    dl.add_argument("--mirror", help="base URL replacing the official one")
    cmp_ = sub.add_parser(
        "compare", help="algorithms x seeds on identical clients, data, delays",
        epilog="Exit code: 0 when every run completed or diverged (a non-finite update: the "
               "run is a result, its table cell says 'diverged at t=...' and means and gains "
               "use the other seeds); otherwise the failed run's code (1, 2 or 3), and the "
               "comparison stops at that run.")
    cmp_.add_argument("config", nargs="?", help="YAML config (default: the embedded job)")
    cmp_.add_argument("--algorithms", required=True, help="comma separated, e.g. fedast,sync")
    cmp_.add_argument("--seeds", type=int, default=1, help="seeds run.seed, run.seed+1, ...")
    cmp_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cmp_.add_argument("--out", required=True, help="directory for the runs and compare.md/.csv")
    cmp_.add_argument("--only", type=int, metavar="INDEX",
                      help="run only entry INDEX of the plan (algorithm-major: a job-array task)")
    cmp_.add_argument("--summarize", action="store_true",
                      help="no runs: read the directory's run files and print the table")
    cmp_.add_argument("--plan", action="store_true",
                      help="no runs: print the plan as 'INDEX RUN_DIR' lines (the --only "
                           "indices; a single-task algorithm on M tasks has M runs per seed)")
    rpr = sub.add_parser(
        "reproduce", help="a table of the paper over seeds, measured beside the paper's numbers",
        epilog="Tables: fig5-fmnist, fig5-mnist, fig5-cifar10, fig5-shakespeare (rows m2, m4, "
               "m6), fig7, fig18, fig20 (the heterogeneous experiment). Runs already finished "
               "in OUT are kept: the same command continues a reproduction. On SLURM: "
               "slurm/submit-reproduce.sh. Exit codes as for compare.")
    rpr.add_argument("table", help="a paper table, e.g. fig5-fmnist")
    rpr.add_argument("--out", help="directory: OUT/<row>/ runs, reproduce.md (required)")
    rpr.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3, as the paper)")
    rpr.add_argument("--rows", help="comma-separated row keys (default: all), e.g. m2,m4")
    rpr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key of every row's config, e.g. tasks.*.data_dir=DIR")
    rpr.add_argument("--configs", help="directory of the paper configs (default: configs/paper "
                     "of this checkout)")
    rpr.add_argument("--summarize", action="store_true",
                     help="no runs: write the table from OUT's finished runs (per row, the "
                          "seeds every algorithm finished)")
    rpr.add_argument("--list", action="store_true",
                     help="print the rows as 'KEY CONFIG ALGORITHMS' and exit")
    return p


def cmd_validate(args) -> int:
    from fedast_mpi.config import load_config
    cfg = load_config(args.config, args.overrides)
    notes = _check_data_dirs(cfg)
    from fedast_mpi.models import describe_network  # torch; counts on the meta device, no data
    networks = [line for t in cfg.tasks for line in describe_network(t)]
    names = ", ".join(f"{t.name} (R={t.requests}, b={t.buffer_size})" for t in cfg.tasks)
    print(f"config OK: {cfg.algorithm.name}, {cfg.run.clock} clock, {cfg.clients.count} clients, "
          f"{len(cfg.tasks)} tasks: {names}")
    print("\n".join(networks + notes))
    return 0


def _check_data_dirs(cfg) -> list[str]:
    """Every file dataset's data_dir exists and holds its files (names only, nothing loaded);
    returns a line for each data_dir found in a known location (`fedast_mpi.datadirs`)."""
    from fedast_mpi import catalog, datadirs
    notes = []
    for i, t in enumerate(cfg.tasks):
        spec = catalog.DATASETS.get(t.dataset)
        if spec is None or spec.embedded:
            continue
        try:
            where = datadirs.check_files(t)
        except FedastError as exc:
            raise type(exc)(f"tasks.{i}.data_dir: {exc}") from None
        if datadirs.found.get(t.dataset) == where:
            notes.append(f"task {t.name}: data_dir not set; using the {t.dataset} files "
                         f"found in {where}")
    return notes


def cmd_inspect(args) -> int:
    from fedast_mpi.summary import summarize
    print(summarize(args.path))
    return 0


def cmd_run(args) -> int:
    from fedast_mpi.config import load_config
    from fedast_mpi.outdir import check_new_run_dir, out_option
    out = out_option(args.out)
    cfg = load_config(args.config, args.overrides)  # same on every rank: no MPI needed to fail
    out_dir = out if out is not None else Path(cfg.run.out_dir) / cfg.run.name
    check_new_run_dir(out_dir)  # every rank, before MPI, creating nothing
    from mpi4py import MPI

    from fedast_mpi.launch import run_job
    comm = MPI.COMM_WORLD.Dup()
    try:
        return run_job(cfg, out_dir, comm)
    finally:
        comm.Free()


def cmd_report(args) -> int:
    return _report(args.args)


def _report(argv: list[str]) -> int:
    """`fedast-mpi report ARGS`: analysis.report's own parser (its --help exits 0)."""
    from analysis.report import main as report_main
    return report_main(argv)


def cmd_data(args) -> int:
    from fedast_mpi.data.download import download
    for path in download(args.name, Path(args.to), args.mirror):
        print(path)
    return 0


def cmd_resume(args) -> int:
    """Continue a run from its newest valid checkpoint, checked read-only on rank 0 first
    (`fedast_mpi.rundir.resume_point`): run.h5 is changed only once everything holds. A
    completed run is left as it is unless --set changes run.max_time (a continuation)."""
    from mpi4py import MPI

    from fedast_mpi.checkpoint import check_resume_config
    from fedast_mpi.config import apply_override, config_from_dict, load_yaml, to_dict
    from fedast_mpi.launch import collective_phase, run_job
    from fedast_mpi.rundir import resume_point
    run_dir = Path(args.run_dir)
    comm = MPI.COMM_WORLD.Dup()
    try:
        # rank 0 picks and verifies the checkpoint; every rank gets its config and the status
        picked, code = collective_phase(
            comm, lambda: resume_point(run_dir) if comm.rank == 0 else None)
        if code:
            return code
        path, ckpt, facts = picked if comm.rank == 0 else (None, {}, {})
        text, status, reason = comm.bcast((ckpt["config"], facts["status"], facts["stop_reason"])
                                          if comm.rank == 0 else None, root=0)
        old = config_from_dict(load_yaml(text, "the checkpoint's config"))
        data = to_dict(old)
        for item in args.overrides:
            apply_override(data, item)
        cfg = config_from_dict(data)
        check_resume_config(old, cfg, args.force)  # the same on every rank
        if status == "completed" and cfg.run.max_time == old.run.max_time:
            if comm.rank == 0:
                print(f"{run_dir}: the run already completed ({reason or 'no stop reason'}); "
                      f"nothing to resume", flush=True)
            return 0
        if comm.rank == 0:
            print(f"resuming {run_dir} from {path.name} (simulated time {ckpt['time']:.1f})",
                  flush=True)
        return run_job(cfg, run_dir, comm, resume=ckpt)
    finally:
        comm.Free()


def cmd_compare(args) -> int:
    from fedast_mpi.comparison import plan, run_compare
    from fedast_mpi.config import load_config
    from fedast_mpi.outdir import check_new_run_dir, check_writable_dir, out_option
    out = out_option(args.out)
    assert out is not None  # --out is required
    cfg = load_config(args.config, args.overrides)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    runs = plan(cfg, algorithms, args.seeds, args.overrides)  # every config checked before MPI
    if args.plan:
        for index, entry in enumerate(runs):
            print(index, out / entry.name)
        return 0
    check_writable_dir(out)  # every rank, before MPI, creating nothing
    if args.summarize:
        from fedast_mpi.comparison import write_summary
        write_summary(cfg, algorithms, args.seeds, out, args.overrides)
        return 0
    for index, entry in enumerate(runs):
        if args.only is None or args.only == index:
            check_new_run_dir(out / entry.name)
    from mpi4py import MPI
    comm = MPI.COMM_WORLD.Dup()
    try:
        return run_compare(cfg, algorithms, args.seeds, out, comm, args.only,
                           args.overrides)
    finally:
        comm.Free()


def cmd_reproduce(args) -> int:
    from fedast_mpi import reproduce as rp
    from fedast_mpi.outdir import check_writable_dir, out_option
    tab = rp.table(args.table)
    rows = rp.select_rows(tab, args.rows)
    config_dir = Path(args.configs) if args.configs else rp.default_config_dir()
    if args.list:
        print(rp.list_rows(rows, tab.algorithms, config_dir))
        return 0
    if args.seeds < 1:
        raise ConfigError(f"--seeds: {args.seeds}; at least 1")
    out = out_option(args.out)
    if out is None:
        raise ConfigError("reproduce: --out DIR is required (see fedast-mpi reproduce --help)")
    configs = rp.row_configs(rows, config_dir, args.overrides)  # every row checked before MPI
    check_writable_dir(out)
    if args.summarize:
        rp.write_table(tab, configs, args.seeds, out, args.overrides, partial=True)
        return 0
    from mpi4py import MPI
    comm = MPI.COMM_WORLD.Dup()
    try:
        return rp.run_reproduce(tab, configs, args.seeds, out, comm, args.overrides)
    finally:
        comm.Free()


DONE_WHEN_READER_LEAVES = ("validate", "inspect", "report")
"""Sub-commands whose printed output is their whole product: when the reader closes stdout
early (`fedast-mpi inspect DIR | head -3`) they have done what it wanted, and exit 0."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = None
    try:
        if argv[:1] == ["report"]:  # the report parses its own arguments, --help/-h included
            command = "report"
            code = _report(argv[1:])
            sys.stdout.flush()
            return code
        args = build_parser().parse_args(argv)
        command = args.command
        commands = {"run": cmd_run, "resume": cmd_resume, "validate": cmd_validate,
                    "inspect": cmd_inspect, "compare": cmd_compare, "report": cmd_report,
                    "data": cmd_data, "reproduce": cmd_reproduce}
        code = commands[command](args)
        sys.stdout.flush()  # a closed stdout shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _stdout_closed(command)
    except FedastError as exc:
        if env_rank() == 0:
            print(error_line(str(exc)), file=sys.stderr, flush=True)
        return exc.exit_code
    finally:
        if command in ("run", "resume", "compare", "reproduce"):
            from fedast_mpi.checkpoint import Signals
            Signals.ignore()  # the process is ending: a late signal must not kill it (exit 75)


def _stdout_closed(command: str | None) -> int:
    """The reader of stdout went away: no traceback, and no second one at exit.

    stdout is pointed at /dev/null (what Python's documentation advises for SIGPIPE), so
    the interpreter's final flush succeeds. The commands of `DONE_WHEN_READER_LEAVES` exit 0,
    as `head` wants and a `set -o pipefail` script expects; any other (run, resume, compare,
    data) had not finished: one line and exit 1, aborting the MPI job so no rank waits.
    """
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):  # no real file behind sys.stdout
        pass
    if command in DONE_WHEN_READER_LEAVES:
        return 0
    if env_rank() == 0:
        print(error_line(f"{command}: standard output was closed (broken pipe)"),
              file=sys.stderr, flush=True)
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized() \
            and mpi.COMM_WORLD.Get_size() > 1:
        mpi.COMM_WORLD.Abort(1)
    return 1
