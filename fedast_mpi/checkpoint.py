"""HDF5 checkpoints: written atomically by rank 0, verified on reading, newest valid one resumed.

A checkpoint (`RUN_DIR/checkpoints/ckpt-NNNNNN.h5`, schema `fedast-mpi/checkpoint/1`)
holds the resolved config, the server's whole state between two batches (models of
every version an outstanding request needs, buffers, versions, allocation and
Realloc windows, outstanding requests, client queues, RNG states, clocks,
counters) and the run file's position. Workers hold nothing: on resume the
server sends every outstanding request again. It is written to a temporary
name, flushed, fsynced and renamed, then only the newest `keep` are kept; a
reader never sees half a file, and every array carries a CRC32.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import h5py

from fedast_mpi import __version__
from fedast_mpi.errors import CheckpointError, Interrupted
from fedast_mpi.h5open import open_h5
from fedast_mpi.h5tree import read_tree, write_tree
from fedast_mpi.schema import CHECKPOINT_SCHEMA

CHECKPOINT_DIR = "checkpoints"
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: checkpointed on a signal; resume (or requeue) to continue
HARMLESS = ("run.max_time", "run.log_every", "run.checkpoint.every_seconds",
            "run.checkpoint.keep", "run.out_dir", "run.name", "run.evaluation")
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
        after = os.environ.get("FEDAST_INTERRUPT_AFTER")
        self.after = int(after) if after else None
        self.batches = 0

    def poll(self) -> str | None:
        """The signal received so far (counting one batch for the test hook)."""
        self.batches += 1
        if self.after is not None and self.batches >= self.after and not self.received:
            self.received = f"FEDAST_INTERRUPT_AFTER={self.after}"
        return self.received

    def install(self) -> "Signals":
        for name in self.NAMES:
            signal.signal(getattr(signal, name), self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name


class Checkpointer:
    """Rank 0's checkpoint writer, called between batches by the server."""

    def __init__(self, run_dir, config_yaml: str, runlog, every_seconds: float, keep: int,
                 signals: Signals | None = None):
        self.folder = Path(run_dir) / CHECKPOINT_DIR
        self.config_yaml = config_yaml
        self.runlog = runlog
        self.every = every_seconds
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
        if stop or time.monotonic() - self.last >= self.every:
            server.settle()
            self.save(server)
            if stop:
                raise Interrupted(f"interrupted by {stop}")

    def save(self, server) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"ckpt-{self.index:06d}.h5"
        tmp = path.with_name(path.name + ".tmp")
        position = self.runlog.position()
        state = server.state_dict()
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = CHECKPOINT_SCHEMA
            f.attrs["config"] = self.config_yaml
            f.attrs["package_version"] = __version__
            f.attrs["index"] = self.index
            f.attrs["time"] = float(server.clock.now)
            f.attrs["wall"] = float(server.clock.wall())
            f.attrs["algorithm"] = server.cfg.algorithm.name
            write_tree(f.create_group("state"), state)
            write_tree(f.create_group("runlog"), position)
            f.attrs["complete"] = True  # last: a file without it was cut short
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.index += 1
        self.last = time.monotonic()
        self.saved.append(path)
        for old in checkpoint_paths(self.folder.parent)[self.keep:]:
            old.unlink(missing_ok=True)
        return path


def read_checkpoint(path) -> dict:
    """Open and verify one checkpoint: {config, state, runlog, index, time};
    CheckpointError if not usable."""
    path = Path(path)
    try:
        f = open_h5(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be opened as HDF5 (truncated or damaged?): "
                              f"{str(exc).splitlines()[0]}") from None
    with f:
        schema = f.attrs.get("schema", "")
        schema = schema.decode() if isinstance(schema, bytes) else str(schema)
        if schema != CHECKPOINT_SCHEMA:
            raise CheckpointError(f"{path}: schema {schema or 'missing'!r}, expected "
                                  f"{CHECKPOINT_SCHEMA!r}")
        if not f.attrs.get("complete", False):
            raise CheckpointError(f"{path}: incomplete (the writer was stopped mid-write)")
        try:
            return {"config": str(f.attrs["config"]), "state": read_tree(f["state"]),
                    "runlog": read_tree(f["runlog"]), "index": int(f.attrs["index"]),
                    "time": float(f.attrs["time"])}
        except CheckpointError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def latest_checkpoint(run_dir) -> tuple[Path, dict]:
    """The newest checkpoint that opens and verifies; older ones are tried with a warning."""
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise CheckpointError(f"{run_dir}: no checkpoint in {Path(run_dir) / CHECKPOINT_DIR}")
    problems = []
    for path in paths:
        try:
            return path, read_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            print(f"fedast-mpi: warning: skipping {exc}", file=sys.stderr, flush=True)
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
