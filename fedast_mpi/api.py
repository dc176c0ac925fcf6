"""Driving runs from Python: `run` and `compare`, the CLI's `run` and `compare`
as functions for a script or a notebook.

A script calls them on every rank (`mpiexec -n K python script.py`); without mpiexec the
process is a world of one rank and the run is in-process (evaluations included). Each call
returns the run directory on every rank, or raises the same exception on every rank:

- before MPI (the config, the overrides, the output directory): the `ConfigError` the CLI
  would report, raised alike on every rank since every rank checks the same things;
- a run that failed (`RunFailed`, a `FedastError` with the CLI's `exit_code`): every rank
  raises it with the one error line rank 0 printed, after the job ended in order (the run
  file marked `failed`, the workers stopped and drained), so no rank is left waiting and
  the ranks can go on (catch it, run again);
- a run stopped by SIGTERM / SIGUSR1 / SIGINT after its checkpoint (the CLI's exit 75):
  `RunInterrupted`, a subclass of `fedast_mpi.errors.Interrupted` and not of `FedastError`
  (it is the planned end of an interrupted run, not a failure); `fedast-mpi resume RUN_DIR`
  continues it. A batch script keeps the requeue convention with
  ``except RunInterrupted as e: raise SystemExit(e.exit_code)``.

The signal handlers a run installs (to checkpoint and stop at a safe point) are put back
when it returns, so Ctrl-C interrupts a notebook's kernel again afterwards. As with the
CLI, a failure that cannot be ended in order (a worker frozen or gone, a watchdog stall)
ends the whole job, this process included: it cannot be caught.

Importing this module imports neither torch nor mpi4py; a call does.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, Union

from fedast_mpi.errors import ConfigError, FedastError, Interrupted

if TYPE_CHECKING:
    from fedast_mpi.config import Config

ConfigSource = Union[None, str, "os.PathLike[str]", Mapping[str, Any], "Config"]
"""What `run` accepts as a job: None (the embedded default job), the path of a YAML file,
the YAML structure as a mapping, or a loaded `fedast_mpi.config.Config`."""

Overrides = Union[str, Sequence[str], Mapping[str, Any]]
"""`--set` items: "KEY=VALUE" strings (VALUE parsed as YAML), or {dotted key: value}."""

EXIT_INTERRUPTED = 75
"""The CLI's exit code of a run stopped by a signal after its checkpoint
(`fedast_mpi.checkpoint.EXIT_INTERRUPTED`)."""

SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
"""The signals a run handles (`fedast_mpi.checkpoint.Signals`): their handlers are restored
when it returns."""


class RunFailed(FedastError):
    """A run (or comparison) that ended with an error, raised on every rank.

    The message is the error line rank 0 printed (without the ``fedast-mpi: error:``
    prefix); `exit_code` is the CLI's exit code for it (2: a config, data or world-size
    problem found while the ranks set up; 1: a failure during the run) and `run_dir` the
    run (or comparison) directory. A failure during the run leaves the run file there,
    marked `failed`; one during set-up leaves none.
    """

    def __init__(self, message: str, exit_code: int, run_dir: Path):
        super().__init__(message)
        self.exit_code = exit_code
        self.run_dir = run_dir


class RunInterrupted(Interrupted):
    """A run stopped by a signal after writing its checkpoint (exit code 75), raised on
    every rank; `fedast-mpi resume RUN_DIR` continues it. Not a `FedastError`."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


# --------------------------------------------------------------------------- the job


def override_items(overrides: Overrides) -> list[str]:
    """`overrides` as the CLI's `--set` items.

    A mapping's values are written as YAML (`apply_override` parses them back), so a value
    keeps its type: ``{"run.name": "7"}`` stays a string, ``{"run.max_time": None}`` is
    null. A single string is one item.
    """
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [f"{key}={_yaml_value(str(key), value)}" for key, value in overrides.items()]
    items = list(overrides)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"overrides: expected KEY=VALUE strings or a mapping, "
                            f"got an item {item!r}")
    return items


def _plain(value: Any) -> Any:
    """A value as YAML's safe dumper takes it (tuples, paths and numpy scalars converted)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)  # a numpy scalar
    if callable(item) and type(value).__module__ == "numpy":
        return item()
    return value


def _yaml_value(key: str, value: Any) -> str:
    import yaml
    try:
        text = yaml.safe_dump(_plain(value), default_flow_style=True, width=2**31 - 1)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot use the value {value!r} ({exc})") from None
    return text.strip().removesuffix("...").strip()


def build_config(config_or_path: ConfigSource = None, overrides: Overrides = ()) -> Config:
    """The checked, resolved `Config` that `run` would run, without running it.

    A `Config` is already resolved: overrides apply to its resolved values, with
    `algorithm.total_requests` recomputed (as `fedast-mpi compare` does), so that changing a
    task's `requests` works; other derived values (buffer sizes from `algorithm.r_to_b`) are
    not derived again: give the YAML or the mapping to have them derived.
    """
    from fedast_mpi.config import Config, apply_override, config_from_dict, load_config, to_dict
    items = override_items(overrides)
    if config_or_path is None or isinstance(config_or_path, (str, os.PathLike)):
        return load_config(config_or_path, items)
    if isinstance(config_or_path, Config):
        if not items:
            return config_or_path
        data = to_dict(config_or_path)
        data["algorithm"]["total_requests"] = None
    elif isinstance(config_or_path, Mapping):
        data = copy.deepcopy(dict(config_or_path))
    else:
        raise TypeError(f"config_or_path: expected None, a path, a mapping or a "
                        f"fedast_mpi.config.Config, got {type(config_or_path).__name__}")
    for item in items:
        apply_override(data, item)
    return config_from_dict(data)


def _out_path(out: str | os.PathLike[str] | None, what: str) -> Path | None:
    from fedast_mpi.outdir import out_option
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"{what}: expected a path, got {type(out).__name__}")
    return out_option(os.fspath(out), what)


# --------------------------------------------------------------------------- running


def run(config_or_path: ConfigSource = None, overrides: Overrides = (),
        out: str | os.PathLike[str] | None = None) -> Path:
    """Run a job with every rank of MPI_COMM_WORLD, as `fedast-mpi run` does; returns the
    run directory (absolute) on every rank.

    config_or_path: None (the embedded default job), a YAML file, the YAML structure as a
    mapping, or a `fedast_mpi.config.Config`. overrides: "KEY=VALUE" strings like `--set`,
    or {dotted key: value}. out: the run directory (default: run.out_dir/run.name); it must
    not hold a run file yet.

    Call it on every rank. Raises `ConfigError` (bad config, override or directory: before
    MPI starts), `RunFailed` (the run failed; the same on every rank, none left waiting) or
    `RunInterrupted` (stopped by a signal after its checkpoint). See the module docstring.
    """
    from fedast_mpi.outdir import check_new_run_dir
    from fedast_mpi.schema import RUN_FILE
    cfg = build_config(config_or_path, overrides)  # the same on every rank: no MPI to fail
    out_dir = _out_path(out, "out")
    if out_dir is None:
        out_dir = Path(cfg.run.out_dir) / cfg.run.name
    check_new_run_dir(out_dir)  # every rank, before MPI, creating nothing
    _check_main_thread("run")

    def job(comm) -> int:
        from fedast_mpi.launch import run_job
        return run_job(cfg, out_dir, comm)

    _run_collectively(job, out_dir, out_dir / RUN_FILE)
    return out_dir.absolute()


def compare(config_or_path: ConfigSource, algorithms: str | Sequence[str],
            seeds: int = 1, overrides: Overrides = (), *,
            out: str | os.PathLike[str], only: int | None = None) -> Path:
    """Algorithms x seeds on identical clients, data and delays, as `fedast-mpi compare`
    does; returns the comparison directory `out` (absolute) on every rank.

    Runs `<algorithm>-seed<k>` one after another in `out` (a single-task algorithm on M tasks:
    `<algorithm>-seed<k>-<task>`, each task alone, chained by the analysis), then rank 0 writes
    and prints compare.md / compare.csv (`analysis.load_runs(out)` reads the runs).
    algorithms: names, or one comma-separated string. seeds: run.seed, run.seed+1, ...
    overrides: as for `run`, applied last (after the config's `compare:` section). only: run
    just that entry of the plan (algorithm-major, `fedast-mpi compare --plan`), as `--only`
    (no table).

    Errors as for `run`: a failure stops the comparison at the failing run; a run that
    diverges is recorded as `diverged` and the comparison goes on.
    """
    from fedast_mpi.comparison import plan, run_compare
    from fedast_mpi.outdir import check_new_run_dir, check_writable_dir
    items = override_items(overrides)
    cfg = build_config(config_or_path, items)
    names = [a.strip() for a in algorithms.split(",")] if isinstance(algorithms, str) \
        else [str(a).strip() for a in algorithms]
    names = [a for a in names if a]
    if not names:
        raise ConfigError("algorithms: name at least one algorithm")
    if isinstance(seeds, bool) or not isinstance(seeds, int):
        raise TypeError(f"seeds: expected an int, got {type(seeds).__name__}")
    out_dir = _out_path(out, "out")
    if out_dir is None:
        raise ConfigError("out: the comparison's directory is required")
    runs = plan(cfg, names, seeds, items)  # every config checked before MPI
    if only is not None and not 0 <= only < len(runs):
        raise ConfigError(f"only: {only} is outside the plan's 0..{len(runs) - 1}")
    check_writable_dir(out_dir)  # every rank, before MPI, creating nothing
    for index, entry in enumerate(runs):
        if only is None or only == index:
            check_new_run_dir(out_dir / entry.name)
    _check_main_thread("compare")

    def job(comm) -> int:
        return run_compare(cfg, names, seeds, out_dir, comm, only, items)

    _run_collectively(job, out_dir, None)
    return out_dir.absolute()


def _check_main_thread(what: str) -> None:
    """A run installs signal handlers, which Python allows in the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        raise ConfigError(f"fedast_mpi.{what}: call it from the main thread (a run handles "
                          f"SIGTERM, SIGUSR1 and SIGINT to checkpoint and stop)")


def _run_collectively(job: Callable[[Any], int], run_dir: Path, run_file: Path | None) -> None:
    """job(comm) on every rank with a duplicate of MPI_COMM_WORLD; its exit code, agreed on
    by every rank, raised as `RunFailed` or `RunInterrupted` (nothing when 0)."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD.Dup()
    try:
        with _handlers_restored(), _error_lines(enabled=comm.rank == 0) as seen:
            code = job(comm)
        message = seen.first
        if code == EXIT_INTERRUPTED and comm.rank == 0 and run_file is not None:
            message = _stop_reason(run_file)
        # every rank returned from the job in order (the others end the job): agree on it
        outcomes = comm.allgather((code, message))
        size = comm.size
    finally:
        comm.Free()
    failures = [(c, m) for c, m in outcomes if c]
    if not failures:
        return
    code = failures[0][0]
    message = next((m for c, m in failures if c == code and m), None)
    where = run_dir.absolute()
    if code == EXIT_INTERRUPTED:
        resume = where if run_file is not None else where / "<algorithm>-seed<k>"
        raise RunInterrupted(f"{where}: {message or 'interrupted by a signal'}; its checkpoint "
                             f"was written: `mpiexec -n {size} fedast-mpi resume {resume}` "
                             f"continues it", where)
    raise RunFailed(message or f"{where}: the run failed with exit code {code} (the error "
                    f"line is on rank 0's standard error)", code, where)


def _stop_reason(run_file: Path) -> str | None:
    """The `stop_reason` attribute of a closed run file (None when it cannot be read)."""
    try:
        from fedast_mpi.runlog import open_run
        with open_run(run_file) as f:
            value = f.attrs.get("stop_reason", "")
    except Exception:  # noqa: BLE001 - only the message is at stake
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text or None


@contextlib.contextmanager
def _handlers_restored() -> Iterator[None]:
    """The handlers of `SIGNALS` as they were before, whatever the run installed."""
    saved = [(number, signal.getsignal(number))
             for number in (getattr(signal, name, None) for name in SIGNALS)
             if number is not None]
    try:
        yield
    finally:
        for number, handler in saved:
            if handler is not None:  # None: a handler not installed from Python, left alone
                signal.signal(number, handler)


class _ErrorTee:
    """Stands for sys.stderr while a job runs: writes everything through, and keeps the
    first ``fedast-mpi: error:`` line (the job's one error line) without its prefix."""

    PREFIX = "fedast-mpi: error: "
    MAX_PENDING = 1 << 16  # a line that long is no error line: stop collecting it

    def __init__(self, stream: Any):
        self._stream = stream
        self._pending = ""
        self.first: str | None = None

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        if self.first is None and isinstance(text, str):
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                if line.startswith(self.PREFIX):
                    self.first = line[len(self.PREFIX):].rstrip("\r")
                    break
            if len(self._pending) > self.MAX_PENDING:
                self._pending = ""
        return written

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding...
        return getattr(self._stream, name)


@contextlib.contextmanager
def _error_lines(enabled: bool) -> Iterator[_ErrorTee]:
    """sys.stderr through an `_ErrorTee` (when `enabled`: rank 0, which prints the line)."""
    stream = sys.stderr
    tee = _ErrorTee(stream)
    if not enabled or stream is None:
        yield tee
        return
    sys.stderr = tee
    try:
        yield tee
    finally:
        if sys.stderr is tee:
            sys.stderr = stream
