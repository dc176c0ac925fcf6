"""HDF5 checkpoints: written atomically by rank 0, verified on reading, newest valid one resumed.

A checkpoint (`RUN_DIR/checkpoints/ckpt-NNNNNN.h5`, schema `fedast-mpi/checkpoint/1`)
holds the resolved config, the server's whole state between two batches (models of
every version an outstanding request needs, buffers, versions, allocation and
Realloc windows, outstanding requests, client queues, RNG states, clocks,
counters) and the run file's position. Workers hold nothing: on resume the
server sends every outstanding request again. It is written to a temporary
name, flushed, fsynced and renamed, then only the newest `keep` are kept; a
reader never sees half a file. Everything in it is checked on reading: every array
carries a CRC32, every group (and the root: config, index, time, run id) a CRC32 of its
attributes and members (`fedast_mpi.h5tree`). A checkpoint also names its run
(`run_id`, the run file's): a resume refuses one from another run.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import h5py
import yaml

from fedast_mpi import __version__
from fedast_mpi.errors import CheckpointError, FedastError, Interrupted
from fedast_mpi.h5open import open_h5
from fedast_mpi.h5tree import ATTRS_CRC, read_tree, seal, verify, write_error_text, write_tree
from fedast_mpi.runlog import position_problem, run_file_facts
from fedast_mpi.schema import CHECKPOINT_SCHEMA, RUN_FILE

CHECKPOINT_DIR = "checkpoints"
FIRST_CHECKPOINT_SECONDS = 30.0
"""Seconds after its start (or resume) a run writes its first checkpoint, when
`run.checkpoint.every_seconds` is longer: a job killed early can be resumed too. The
following ones come every `every_seconds`."""
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: checkpointed on a signal; resume (or requeue) to continue
HARMLESS = ("run.max_time", "run.log_every", "run.checkpoint.every_seconds",
            "run.checkpoint.keep", "run.out_dir", "run.name", "run.evaluation",
            "run.stall_timeout")
"""Config keys a resume may change with --force: they alter no result already computed.

Not `run.device`: the device decides the numerics (CPU and GPU kernels differ in their bits)
and, under `run.batch_requests: 0` (auto), the training group sizes, so a resume on another
device would not continue the same run."""


def checkpoint_paths(run_dir) -> list[Path]:
    """The run's checkpoints, newest first (by number)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(folder.glob("ckpt-*.h5"), key=lambda p: p.name, reverse=True)


class Signals:
    """Records SIGTERM / SIGUSR1 / SIGINT instead of dying: the server stops at a safe point.

    Test hook: FEDAST_INTERRUPT_AFTER=N acts as a signal after N batches, so tests can
    interrupt a run at exact points.
    """

    NAMES = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self) -> None:
        self.received: str | None = None
        self.at = 0.0  # monotonic time the signal was received
        self.count = 0  # signals received (a second one changes nothing)
        after = os.environ.get("FEDAST_INTERRUPT_AFTER")
        self.after = int(after) if after else None
        self.batches = 0

    def poll(self) -> str | None:
        """The signal received so far (counting one batch for the test hook)."""
        self.batches += 1
        if self.after is not None and self.batches >= self.after and not self.received:
            self.received = f"FEDAST_INTERRUPT_AFTER={self.after}"
            self.at = time.monotonic()
        return self.received

    def install(self) -> "Signals":
        for name in self.NAMES:
            signal.signal(getattr(signal, name), self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        """The first signal names the stop; later ones (Ctrl-C twice, a second scancel) are
        counted only: the stop is already under way."""
        self.count += 1
        if self.received is None:
            self.received = signal.Signals(signum).name
            self.at = time.monotonic()

    def first(self) -> tuple[str, float] | None:
        """(name, monotonic time) of the signal received, or None (for the watchdog)."""
        return None if self.received is None else (self.received, self.at)

    @classmethod
    def ignore(cls) -> None:
        """From now on these signals do nothing: the process is ending. Python restores the
        default handlers while it finalises, and MPI's finalisation can wait for the other
        ranks meanwhile: a second SIGTERM or Ctrl-C then killed a rank that had already
        checkpointed, and the job's exit code said 15 or 255 instead of 75."""
        for name in cls.NAMES:
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class CheckpointWriteError(FedastError):
    """A checkpoint that could not be written (a full disk, an I/O error): exit 1; the
    checkpoints written before it stay."""


class ForeignCheckpoint(CheckpointError):
    """A checkpoint of another run (its run_id is not the run file's): the resume is refused
    (exit 3) rather than silently continued from an older checkpoint."""


class Checkpointer:
    """Rank 0's checkpoint writer, called between batches by the server.

    The first checkpoint comes `min(every_seconds, FIRST_CHECKPOINT_SECONDS)` after the
    start, the next ones every `every_seconds`. Each names the run (`runlog.run_id`).
    """

    def __init__(self, run_dir, config_yaml: str, runlog, every_seconds: float, keep: int,
                 signals: Signals | None = None):
        self.folder = Path(run_dir) / CHECKPOINT_DIR
        self.config_yaml = config_yaml
        self.runlog = runlog
        self.run_id = str(getattr(runlog, "run_id", "") or "")
        self.every = every_seconds
        self.first = min(every_seconds, FIRST_CHECKPOINT_SECONDS)
        self.keep = keep
        self.signals = signals
        existing = checkpoint_paths(run_dir)
        for stale in self.folder.glob("*.tmp") if self.folder.is_dir() else ():
            stale.unlink(missing_ok=True)  # a write cut short by a kill: never renamed, never read
        self.index = int(existing[0].stem.split("-")[1]) + 1 if existing else 0
        self.last = time.monotonic()
        self.saved: list[Path] = []

    def tick(self, server) -> None:
        """Checkpoint when due; on a signal checkpoint and raise Interrupted.

        A checkpoint holds confirmed state only: the server settles its speculation first
        (which may roll it back: the checkpoint is then taken at a later tick).
        """
        stop = self.signals.poll() if self.signals is not None else None
        due = self.every if self.saved else self.first
        if stop or time.monotonic() - self.last >= due:
            server.settle()
            self.save(server)
            if stop:
                raise Interrupted(f"interrupted by {stop}")

    def save(self, server) -> Path:
        """Write the next checkpoint (temporary name, fsync, rename); keep the newest `keep`.

        A failed write (a full disk) removes the temporary file and raises
        CheckpointWriteError naming the file and the OS error; older checkpoints stay.
        """
        path = self.folder / f"ckpt-{self.index:06d}.h5"
        tmp = path.with_name(path.name + ".tmp")
        position = self.runlog.position()
        state = server.state_dict()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write(tmp, server, state, position)
            os.replace(tmp, path)
            _fsync_dir(self.folder)
        except BaseException as exc:
            _remove_quietly(tmp)
            if isinstance(exc, (OSError, RuntimeError)):  # h5py reports ENOSPC as either
                raise CheckpointWriteError(f"cannot write checkpoint {path}: "
                                           f"{write_error_text(exc)}") from None
            raise
        self.index += 1
        self.last = time.monotonic()
        self.saved.append(path)
        for old in checkpoint_paths(self.folder.parent)[self.keep:]:
            old.unlink(missing_ok=True)
        return path

    def _write(self, tmp: Path, server, state: dict, position: dict) -> None:
        """The checkpoint file at `tmp`, complete, sealed and fsynced.

        Built in memory (HDF5's core driver) and written with plain file calls: a full disk
        is then an OSError of ours, never a write that fails inside HDF5, which left HDF5's
        state broken (errors from every later h5py call, then a segfault of rank 0).
        """
        with h5py.File(tmp.name, "w", driver="core", backing_store=False) as f:
            f.attrs["schema"] = CHECKPOINT_SCHEMA
            f.attrs["config"] = self.config_yaml
            f.attrs["package_version"] = __version__
            f.attrs["index"] = self.index
            f.attrs["time"] = float(server.clock.now)
            f.attrs["wall"] = float(server.clock.wall())
            f.attrs["algorithm"] = server.cfg.algorithm.name
            f.attrs["run_id"] = self.run_id
            write_tree(f.create_group("state"), state)
            write_tree(f.create_group("runlog"), position)
            f.attrs["complete"] = True  # a file without it was cut short
            seal(f)  # last: the check of every root attribute and member
            f.flush()
            image = f.id.get_file_image()
        with open(tmp, "wb") as fh:
            fh.write(image)
            fh.flush()
            os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_quietly(path: Path) -> None:
    """Remove a file if it is there; a failure to do so must not hide the error at hand."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _warn(message: str) -> None:
    print(f"fedast-mpi: warning: {message}", file=sys.stderr, flush=True)


def _text(value, what: str) -> str:
    """A string attribute as str; CheckpointError if it is not text."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise CheckpointError(f"{what} is not text ({type(value).__name__})")
    return value


def _read(path: Path, f: h5py.File) -> dict:
    """The content of an open checkpoint, every check verified (see read_checkpoint)."""
    attrs = dict(f.attrs.items())
    schema = attrs.get("schema", "")
    schema = schema.decode() if isinstance(schema, bytes) else str(schema)
    if schema != CHECKPOINT_SCHEMA:
        raise CheckpointError(f"{path}: schema {schema or 'missing'!r}, expected "
                              f"{CHECKPOINT_SCHEMA!r}")
    if not attrs.get("complete", False):
        raise CheckpointError(f"{path}: incomplete (the writer was stopped mid-write)")
    checked = verify(f, attrs, required=False)
    if not checked and "state" in f and ATTRS_CRC in f["state"].attrs:
        raise CheckpointError(f"{path}: its root attribute check is missing (damaged)")
    config = _text(attrs["config"], f"{path}: config")
    if not isinstance(yaml.safe_load(config), dict):
        raise CheckpointError(f"{path}: config is not a YAML mapping")
    state, runlog = read_tree(f["state"], checked), read_tree(f["runlog"], checked)
    if not isinstance(state, dict) or not isinstance(runlog, dict):
        raise CheckpointError(f"{path}: state or runlog is not a mapping")
    return {"config": config, "state": state, "runlog": runlog, "index": int(attrs["index"]),
            "time": float(attrs["time"]), "checked": checked,
            "run_id": _text(attrs.get("run_id", ""), f"{path}: run_id")}


def read_checkpoint(path) -> dict:
    """Open and verify one checkpoint: {config, state, runlog, index, time, run_id, checked};
    CheckpointError if anything in it is damaged, missing or of the wrong type.

    `checked` is False for a checkpoint written before attributes had checks (only its
    arrays are verified); `run_id` is '' when it names no run (such older checkpoints).
    """
    path = Path(path)
    try:
        f = open_h5(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be opened as HDF5 (truncated or damaged?): "
                              f"{str(exc).splitlines()[0]}") from None
    try:
        with f:
            return _read(path, f)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file can fail anywhere: h5py, JSON, YAML
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {text})") from None


def check_fits(path: Path, ckpt: dict, run_file: Path, facts: dict) -> None:
    """Raise unless checkpoint `ckpt` belongs to the run of `run_file` (ForeignCheckpoint)
    and that file holds every row the checkpoint counts (CheckpointError).

    `facts`: `fedast_mpi.runlog.run_file_facts(run_file)`. A run file without a run_id (an
    older run) takes only checkpoints without one.
    """
    if ckpt["run_id"] != facts["run_id"]:
        raise ForeignCheckpoint(
            f"{path} belongs to another run (run_id {ckpt['run_id'] or 'none'}) than "
            f"{run_file} (run_id {facts['run_id'] or 'none'}); move it out of {path.parent} "
            f"to resume from the checkpoints of this run")
    problem = position_problem(facts, ckpt["runlog"])
    if problem:
        raise CheckpointError(f"{path}: {run_file} does not reach it ({problem})")


def latest_checkpoint(run_dir) -> tuple[Path, dict]:
    """The newest checkpoint that verifies and fits RUN_DIR/run.h5; reads only.

    A damaged checkpoint, or one whose rows the run file does not hold, is skipped with a
    warning and the next older one tried. One from another run (`check_fits`) refuses the
    resume (ForeignCheckpoint): it was put there by mistake, and skipping it would hide that.
    Without run.h5 the checkpoints are only verified.
    """
    run_dir = Path(run_dir)
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise CheckpointError(f"{run_dir}: no checkpoint in {run_dir / CHECKPOINT_DIR}")
    run_file = run_dir / RUN_FILE
    facts = run_file_facts(run_file) if run_file.exists() else None
    problems = []
    for path in paths:
        try:
            ckpt = read_checkpoint(path)
            if facts is not None:
                check_fits(path, ckpt, run_file, facts)
        except ForeignCheckpoint:
            raise
        except CheckpointError as exc:
            problems.append(str(exc))
            _warn(f"skipping {exc}")
            continue
        if not ckpt["checked"]:
            _warn(f"{path}: no attribute check (written before checkpoints checked their "
                  f"attributes): its config, counters and RNG states are not verified")
        return path, ckpt
    raise CheckpointError(f"{run_dir}: no usable checkpoint ({'; '.join(problems)})")


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = sorted(set(old) | set(new), key=str)
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, name + ".")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
                isinstance(x, dict) for x in a + b):
            for i, (x, y) in enumerate(zip(a, b)):
                out += config_differences(x, y, f"{name}.{i}.")
        elif a != b:
            out.append(name)
    return out


def check_resume_config(old_cfg, new_cfg, force: bool) -> None:
    """Refuse a resume whose config changes results; harmless changes need --force."""
    from fedast_mpi.config import to_dict
    diff = config_differences(to_dict(old_cfg), to_dict(new_cfg))
    harmful = [k for k in diff if k not in HARMLESS]
    if harmful:
        raise CheckpointError(f"the config differs from the checkpoint's in {', '.join(harmful)}; "
                              f"a resume can only change {', '.join(HARMLESS)}")
    if diff and not force:
        raise CheckpointError(f"the config differs from the checkpoint's in {', '.join(diff)}; "
                              f"pass --force to accept these harmless changes")
