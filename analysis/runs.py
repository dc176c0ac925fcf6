"""Reading run files (SPEC §8) into plain numpy arrays, also while they are being written.

Files are opened by the run log's own `fedast_mpi.runlog.open_run` (h5py only, no torch, no
MPI): HDF5 file locking off (the writer takes no lock either) and the `schema` root attribute
checked against `RUN_SCHEMA`; a read that overlaps the writer's flush is retried a few times
(`fedast_mpi.h5open.with_retry`). A live file (status `running`) shows the rows up to the
writer's last flush and may lack `final_model`; nothing here needs it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from fedast_mpi import schema
from fedast_mpi.h5open import ATTEMPTS, DELAY, RETRY_ON, with_retry


class AnalysisError(Exception):
    """A missing, unreadable or foreign input, or bad usage: one error line and exit 2."""

    exit_code = 2


def _as_str(value) -> str:
    """An HDF5 string attribute as str (h5py may hand back bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _as_str(value[()])
    return str(value)


def _scalar(value):
    """A numpy scalar attribute as a Python int/float, strings decoded, others unchanged."""
    if isinstance(value, (bytes, str)):
        return _as_str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class TaskRun:
    """One `/tasks/<name>` group: attributes and the eval table (EVAL_DTYPE rows)."""

    name: str
    index: int
    dataset: str
    model: str
    n_params: int
    target: float
    reached_time: float  # the attribute; NaN if not reached (yet)
    eval: np.ndarray
    has_final_model: bool
    attrs: dict = field(default_factory=dict)  # every attribute of the group, decoded


@dataclass
class Run:
    """A run file read into memory. Tables are numpy structured arrays of the schema's dtypes."""

    path: Path
    attrs: dict
    tasks: list[TaskRun]  # in task index order
    events: np.ndarray
    aggregations: np.ndarray
    allocation: np.ndarray
    clients: dict = field(default_factory=dict)  # tier, multiplier, n_samples (may be empty)

    @property
    def algorithm(self) -> str:
        return str(self.attrs.get("algorithm", "?"))

    @property
    def seed(self) -> int:
        return int(self.attrs.get("seed", -1))

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "?"))

    @property
    def clock(self) -> str:
        return str(self.attrs.get("clock", "?"))

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskRun:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def end_time(self) -> float:
        """Last simulated time the file knows of (the `final_time` attribute, else the tables)."""
        if "final_time" in self.attrs:
            try:
                value = float(self.attrs["final_time"])
                if math.isfinite(value):
                    return value
            except (TypeError, ValueError):
                pass
        times = [0.0]
        for table in (self.events, self.aggregations, self.allocation):
            if len(table):
                times.append(float(np.max(table["time"])))
        for t in self.tasks:
            if len(t.eval):
                times.append(float(np.max(t.eval["time"])))
        return max(times)

    def label(self) -> str:
        return f"{self.algorithm} seed {self.seed}"

    @property
    def evals(self) -> dict[str, np.ndarray]:
        """{task name: its eval table (EVAL_DTYPE rows)}, in task index order."""
        return {t.name: t.eval for t in self.tasks}

    @property
    def task_attrs(self) -> dict[str, dict]:
        """{task name: every attribute of its `/tasks/<name>` group}, in task index order."""
        return {t.name: dict(t.attrs) for t in self.tasks}

    def frames(self) -> dict:
        """The run's tables as pandas DataFrames (`analysis.frames.run_frames`): events,
        aggregations, allocation, evals (every task's, long), tasks, clients. Needs pandas
        (`pip install 'fedast-mpi[pandas]'`); ImportError saying so otherwise."""
        from .frames import run_frames
        return run_frames(self)

    def frame(self, name: str):
        """One of `frames()` (only that one built)."""
        from .frames import run_frame
        return run_frame(self, name)


def run_file_path(path) -> Path:
    """`path` itself, or `path/run.h5` when it is a directory."""
    p = Path(os.fspath(path))
    return p / schema.RUN_FILE if p.is_dir() else p


def find_run_files(paths: Iterable) -> list[Path]:
    """Run files named by `paths`: a run.h5 (or any file), a run directory holding run.h5, or a
    comparison directory holding `<algorithm>-seed<k>/run.h5` (one level down)."""
    found: list[Path] = []
    for item in paths:
        p = Path(os.fspath(item))
        if not p.exists():
            raise AnalysisError(f"{p}: no such file or directory")
        if p.is_file():
            found.append(p)
        elif (p / schema.RUN_FILE).is_file():
            found.append(p / schema.RUN_FILE)
        else:
            below = sorted(q for q in p.glob(f"*/{schema.RUN_FILE}") if q.is_file())
            if not below:
                raise AnalysisError(f"{p}: no {schema.RUN_FILE} in it nor in its sub-directories "
                                    f"(expected a run directory or a comparison directory)")
            found.extend(below)
    unique, seen = [], set()
    for p in found:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _table(f: h5py.File, path: str, dtype: np.dtype) -> np.ndarray:
    """A 1-D table as an array of `dtype` (empty when the dataset is absent)."""
    if dtype.names is None:  # the schema's row dtypes are all structured
        raise TypeError(f"_table needs a structured dtype, got {dtype}")
    if path not in f:
        return np.zeros(0, dtype=dtype)
    data = f[path][()]
    if data.dtype.names is None or not set(dtype.names) <= set(data.dtype.names):
        raise AnalysisError(f"{f.filename}: {path} has fields {data.dtype.names}, "
                            f"expected {dtype.names}")
    out = np.zeros(len(data), dtype=dtype)
    for name in dtype.names:
        out[name] = data[name]
    return out


def _read(f: h5py.File, path: Path) -> Run:
    attrs = {k: _scalar(v) for k, v in f.attrs.items()}
    tasks: list[TaskRun] = []
    if schema.TASKS in f:
        for name, g in f[schema.TASKS].items():
            ga = g.attrs
            tasks.append(TaskRun(
                name=name,
                index=int(ga.get("index", len(tasks))),
                dataset=_as_str(ga.get("dataset", "")),
                model=_as_str(ga.get("model", "")),
                n_params=int(ga.get("n_params", 0)),
                target=float(ga.get("target_accuracy", math.nan)),
                reached_time=float(ga.get("reached_time", math.nan)),
                eval=_table(g, schema.EVAL, schema.EVAL_DTYPE),
                has_final_model=schema.FINAL_MODEL in g,
                attrs={k: _scalar(v) for k, v in ga.items()},
            ))
    tasks.sort(key=lambda t: t.index)
    clients = {}
    if schema.CLIENTS in f:
        for key in (schema.CLIENT_TIER, schema.CLIENT_MULTIPLIER, schema.CLIENT_N_SAMPLES):
            if key in f[schema.CLIENTS]:
                clients[key] = f[schema.CLIENTS][key][()]
    return Run(path=path, attrs=attrs, tasks=tasks,
               events=_table(f, schema.EVENTS, schema.EVENT_DTYPE),
               aggregations=_table(f, schema.AGGREGATIONS, schema.AGGREGATION_DTYPE),
               allocation=_table(f, schema.ALLOCATION, schema.ALLOCATION_DTYPE),
               clients=clients)


def load_run(path, attempts: int = ATTEMPTS, delay: float = DELAY) -> Run:
    """Read a run file (or RUN_DIR/run.h5), checking its schema; retried while being written.

    Opening and the checks (missing, not HDF5, foreign or checkpoint schema) are the run
    log's own `open_run` (h5py only); a read that overlaps the writer's flush is retried.
    """
    from fedast_mpi.runlog import RunFileError, open_run
    p = run_file_path(path)

    def read() -> Run:
        with open_run(p) as f:
            return _read(f, p)

    try:
        return with_retry(read, attempts, delay)
    except RunFileError as e:
        raise AnalysisError(str(e)) from None
    except RETRY_ON as e:  # every attempt overlapped a flush (or the file is damaged)
        raise AnalysisError(f"{p}: cannot read the run file ({e}); "
                            f"if it is being written, retry") from None


def load_runs(paths: Iterable) -> list[Run]:
    """Every run named by `paths` (see `find_run_files`), read."""
    return [load_run(p) for p in find_run_files(paths)]
