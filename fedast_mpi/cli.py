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
    def error(self, message):
        raise ConfigError(message)


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
    cmp_ = sub.add_parser("compare", help="algorithms x seeds on identical clients, data, delays")
    cmp_.add_argument("config", nargs="?", help="YAML config (default: the embedded job)")
    cmp_.add_argument("--algorithms", required=True, help="comma separated, e.g. fedast,sync")
    cmp_.add_argument("--seeds", type=int, default=1, help="seeds run.seed, run.seed+1, ...")
    cmp_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cmp_.add_argument("--out", required=True, help="directory for the runs and compare.md/.csv")
    cmp_.add_argument("--only", type=int, metavar="INDEX",
                      help="run only entry INDEX of the plan (algorithm-major: a job-array task)")
    cmp_.add_argument("--summarize", action="store_true",
                      help="no runs: read the directory's run files and print the table")
    return p


def cmd_validate(args) -> int:
    from fedast_mpi.config import load_config
    cfg = load_config(args.config, args.overrides)
    names = ", ".join(f"{t.name} (R={t.requests}, b={t.buffer_size})" for t in cfg.tasks)
    print(f"config OK: {cfg.algorithm.name}, {cfg.run.clock} clock, {cfg.clients.count} clients, "
          f"{len(cfg.tasks)} tasks: {names}")
    return 0


def cmd_inspect(args) -> int:
    from fedast_mpi.summary import summarize
    print(summarize(args.path))
    return 0


def cmd_run(args) -> int:
    from fedast_mpi.config import load_config
    cfg = load_config(args.config, args.overrides)  # same on every rank: no MPI needed to fail
    out_dir = Path(args.out) if args.out else Path(cfg.run.out_dir) / cfg.run.name
    from mpi4py import MPI

    from fedast_mpi.launch import run_job
    comm = MPI.COMM_WORLD.Dup()
    try:
        return run_job(cfg, out_dir, comm)
    finally:
        comm.Free()


def cmd_report(args) -> int:
    from analysis.report import main as report_main
    return report_main(args.args)


def cmd_data(args) -> int:
    from fedast_mpi.data.download import download
    for path in download(args.name, Path(args.to), args.mirror):
        print(path)
    return 0


def cmd_resume(args) -> int:
    import yaml
    from mpi4py import MPI

    from fedast_mpi.checkpoint import check_resume_config, latest_checkpoint
    from fedast_mpi.config import apply_override, config_from_dict, to_dict
    from fedast_mpi.launch import collective_phase, run_job
    run_dir = Path(args.run_dir)
    comm = MPI.COMM_WORLD.Dup()
    try:
        # rank 0 picks and verifies the checkpoint; every rank gets its config
        picked, code = collective_phase(
            comm, lambda: latest_checkpoint(run_dir) if comm.rank == 0 else None)
        if code:
            return code
        ckpt = picked[1] if comm.rank == 0 else {}
        if comm.rank == 0:
            print(f"resuming {run_dir} from {picked[0].name} (simulated time {ckpt['time']:.1f})",
                  flush=True)
        text = comm.bcast(ckpt["config"] if comm.rank == 0 else None, root=0)
        old = config_from_dict(yaml.safe_load(text))
        data = to_dict(old)
        for item in args.overrides:
            apply_override(data, item)
        cfg = config_from_dict(data)
        check_resume_config(old, cfg, args.force)  # the same on every rank
        return run_job(cfg, run_dir, comm, resume=ckpt)
    finally:
        comm.Free()


def cmd_compare(args) -> int:
    from fedast_mpi.compare import plan, run_compare
    from fedast_mpi.config import load_config
    cfg = load_config(args.config, args.overrides)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    plan(cfg, algorithms, args.seeds, args.overrides)  # every run's config checked before MPI
    if args.summarize:
        from fedast_mpi.compare import write_summary
        write_summary(cfg, algorithms, args.seeds, Path(args.out), args.overrides)
        return 0
    from mpi4py import MPI
    comm = MPI.COMM_WORLD.Dup()
    try:
        return run_compare(cfg, algorithms, args.seeds, Path(args.out), comm, args.only,
                           args.overrides)
    finally:
        comm.Free()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        commands = {"run": cmd_run, "resume": cmd_resume, "validate": cmd_validate,
                    "inspect": cmd_inspect, "compare": cmd_compare, "report": cmd_report,
                    "data": cmd_data}
        return commands[args.command](args)
    except FedastError as exc:
        if env_rank() == 0:
            print(error_line(str(exc)), file=sys.stderr, flush=True)
        return exc.exit_code
