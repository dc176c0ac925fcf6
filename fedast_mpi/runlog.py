"""The run file `RUN_DIR/run.h5` (SPEC §8): a buffered writer for rank 0 and a checked read-only
opener.

Besides the SPEC's root attributes the writer keeps `run_id` (a uuid4 hex made when the file
is created; every checkpoint of the run names it), `heartbeat` (wall `time.time()` of the
last flush), `writer_host`, `writer_pid` and `flush_every`: `inspect` tells from them a live
run from one whose writer is gone.
"""

import contextlib
import math
import os
import socket
import time as _time
import uuid

import h5py
import numpy as np
from h5py import h5a, h5s, h5t

from . import schema
from .errors import CheckpointError, ConfigError, FedastError
from .h5open import open_h5, with_retry
from .h5tree import write_error_text

TABLE_CHUNK = 4096  # rows per chunk of the appended tables
MODEL_CHUNK = 1 << 18  # float32 elements per chunk of a final model (1 MiB)


class RunFileError(FedastError):
    """A run file that is missing, not HDF5, or not a fedast-mpi run file (exit 2)."""

    exit_code = 2


RESERVE_BYTES = 4 << 20
"""Free bytes below which the run file is not written (`RunLog._writing`): more than one flush
of every table allocates (a chunk of 4096 rows per table), with room for the status attributes."""

_UNCLOSABLE: list = []
"""Run files HDF5 failed to close (a write failed inside it), held for the life of the process:
HDF5 retries the close when the handle is freed, and crashes (SIGSEGV) in the garbage collector.
The launcher ends such a process without teardown (`launch.finalize_and_exit`)."""


def _free_bytes(path) -> int | None:
    """Bytes free to us on the file system of `path`; None where statvfs cannot tell."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class RunFileWriteError(FedastError):
    """A write to the run file failed (a full disk, an I/O error): exit 1."""

    broken = False
    """True when the write failed inside HDF5, whose state is then unusable."""


def _as_str(value):
    """An HDF5 string attribute as str (h5py may hand back bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class _Table:
    """Rows of one appended dataset waiting for the next flush, kept in arrival order."""

    __slots__ = ("path", "dtype", "rows", "arrays", "mtype")

    def __init__(self, path, dtype):
        self.path = path
        self.dtype = dtype
        self.rows = []  # tuples, appended on the hot path
        self.arrays = []  # converted blocks, in order, ahead of `rows`
        # The HDF5 memory type of a row, made once: h5py builds it anew on every write, and
        # that (with HDF5's look-up of the conversion path for a new type) was 3/4 of a flush.
        self.mtype = h5t.py_create(np.dtype(dtype))

    def add_array(self, rows):
        """Queue a block of rows, keeping order with the single rows queued before it."""
        arr = np.asarray(rows)
        if arr.dtype.names != self.dtype.names:
            raise ValueError(f"{self.path}: rows have fields {arr.dtype.names}, "
                             f"expected {self.dtype.names}")
        self._seal()
        self.arrays.append(arr.astype(self.dtype, copy=True).reshape(-1))

    def _seal(self):
        """Convert the queued single rows to one block."""
        if not self.rows:
            return
        try:
            block = np.array(self.rows, dtype=self.dtype)
        except (TypeError, ValueError):
            try:
                block = np.array([tuple(r) for r in self.rows], dtype=self.dtype)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{self.path}: a buffered row does not match "
                                 f"{self.dtype.names}: {e}") from None
        self.rows = []
        self.arrays.append(block)

    def pending(self):
        """Number of rows waiting."""
        return len(self.rows) + sum(len(a) for a in self.arrays)

    def take(self):
        """All waiting rows as one array (the queue is emptied), or None when there are none."""
        self._seal()
        if not self.arrays:
            return None
        block = self.arrays[0] if len(self.arrays) == 1 else np.concatenate(self.arrays)
        self.arrays = []
        return block


def _new_table(parent, name, dtype):
    """An empty, chunked, resizable 1-D dataset of `dtype` rows."""
    return parent.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                 chunks=(TABLE_CHUNK,))


def _append(ds, block, mtype=None):
    """Append rows at the end of a 1-D resizable dataset (`mtype`: the rows' HDF5 memory
    type, made once by the caller; h5py's own `ds[a:b] = block` makes a new one each time)."""
    n = ds.shape[0]
    ds.resize((n + len(block),))
    if mtype is None:
        ds[n:n + len(block)] = block
        return
    block = np.ascontiguousarray(block)
    file_space = ds.id.get_space()
    file_space.select_hyperslab((n,), (len(block),))
    ds.id.write(h5s.create_simple((len(block),)), file_space, block, mtype=mtype)


class RunLog:
    """The run file, written by rank 0 only, appended and flushed as the run goes.

    Rows handed to `event`, `eval`, `aggregation` and `allocation` are kept in memory (one list
    append, no HDF5 call) and written in bulk by `flush` (or `maybe_flush`, at most every
    `flush_every` seconds), which then flushes HDF5 so the file on disk is complete and
    consistent. All HDF5 writes happen inside such flushes (or in the rare calls that flush
    right away: `add_task`, `write_clients`, `task_reached`, `final_model`, `set_attrs`).

    Live reading: the writer opens the file with HDF5 file locking off and the default
    (1.8-compatible) format, so it takes no lock and sets no "open for writing" flag. A reader
    on the same file while the run goes on needs only to open it read-only, read, and close it:
    `h5py.File(path, "r", locking=False)` (or `open_run`, or `fedast_mpi.h5open.open_h5`),
    `h5dump`/`h5ls` as they are, or with `HDF5_USE_FILE_LOCKING=FALSE` in its environment
    (needed when the writer is an HDF5 that does lock, and on file systems where `flock`
    fails). A reader sees the rows up to the last flush; to see newer rows it must reopen the
    file (no SWMR: Debian's 1.10 tools cannot read the `libver="latest"` files SWMR needs). A
    read that overlaps a flush can fail or see a partial state: retry it
    (`fedast_mpi.h5open.with_retry`).
    """

    def __init__(self, path, *, config_yaml: str, algorithm: str, clock: str, seed: int,
                 world_size: int, package_version: str, flush_every: float = 1.0):
        self.path = os.fspath(path)
        self.flush_every = float(flush_every)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        if os.path.exists(self.path):
            raise ConfigError(f"{self.path} already exists; choose another output directory")
        try:
            self._f = open_h5(self.path, "w-")
        except FileExistsError:
            raise ConfigError(f"{self.path} already exists; "
                              f"choose another output directory") from None
        except OSError as e:
            if os.path.exists(self.path):
                raise ConfigError(f"{self.path} already exists; "
                                  f"choose another output directory") from None
            raise ConfigError(f"cannot create {self.path}: {e}") from None
        self.run_id = uuid.uuid4().hex
        self._setup({})
        f = self._f
        with self._writing():
            f.attrs["schema"] = schema.RUN_SCHEMA
            f.attrs["config"] = str(config_yaml)
            f.attrs["algorithm"] = str(algorithm)
            f.attrs["clock"] = str(clock)
            f.attrs["seed"] = np.int64(seed)
            f.attrs["world_size"] = np.int64(world_size)
            f.attrs["package_version"] = str(package_version)
            f.attrs["status"] = "running"
            f.attrs["stop_reason"] = ""
            f.attrs["run_id"] = self.run_id
            self._mark_writer()
            f.create_group(schema.TASKS)
            for table in (self._events, self._aggregations, self._allocation):
                _new_table(f, table.path, table.dtype)
            f.flush()

    def _setup(self, tasks: dict) -> None:
        """The in-memory side: no rows queued, one table per dataset (`tasks`: index -> name)."""
        self._closed = False
        self._failed = False  # a write failed: the error was raised once already
        self._datasets: dict = {}  # table path -> open h5py Dataset, for flush
        self._events = _Table(schema.EVENTS, schema.EVENT_DTYPE)
        self._aggregations = _Table(schema.AGGREGATIONS, schema.AGGREGATION_DTYPE)
        self._allocation = _Table(schema.ALLOCATION, schema.ALLOCATION_DTYPE)
        self._tasks: dict[int, str] = dict(tasks)  # task index -> group name
        self._evals: dict[int, _Table] = {  # task index -> _Table
            index: _Table(f"{schema.TASKS}/{name}/{schema.EVAL}", schema.EVAL_DTYPE)
            for index, name in self._tasks.items()}
        self._last_flush = _time.monotonic()

    def _keyed(self) -> dict:
        """Every table by its key in a position: events, aggregations, allocation, eval_<i>."""
        tables = {"events": self._events, "aggregations": self._aggregations,
                  "allocation": self._allocation}
        tables.update({f"eval_{i}": t for i, t in self._evals.items()})
        return tables

    def _mark_writer(self) -> None:
        """Who writes the file, how often it flushes, and a first heartbeat."""
        f = self._f
        f.attrs["writer_host"] = socket.gethostname()
        f.attrs["writer_pid"] = np.int64(os.getpid())
        f.attrs["flush_every"] = np.float64(self.flush_every)
        f.attrs["heartbeat"] = np.float64(_time.time())

    def _beat(self) -> None:
        """Rewrite `heartbeat` (wall time.time()) in place; h5py's `attrs[k] = v` would
        delete and recreate it, 5x slower."""
        aid = h5a.open(self._f.id, b"heartbeat")
        aid.write(np.asarray(_time.time(), dtype=np.float64))

    @contextlib.contextmanager
    def _writing(self, reserve: int | None = None):
        """HDF5 and OS write failures (a full disk) as one RunFileWriteError naming the file.

        A write is not even tried with less than `reserve` bytes free (RESERVE_BYTES; 0 for the
        few bytes of the status and the close, so that a full disk still leaves the run file
        saying why it stopped): HDF5 does not recover
        from a write that fails inside it (every later call fails, and rank 0 crashed at
        exit), so a disk that fills is reported before HDF5 meets it. (A quota that statvfs
        does not show still reaches HDF5; the launcher then ends rank 0 without teardown.)
        """
        reserve = RESERVE_BYTES if reserve is None else reserve
        free = _free_bytes(self.path) if reserve else None
        if free is not None and free < reserve:
            self._failed = True
            raise RunFileWriteError(f"cannot write run file {self.path}: [Errno 28] No space "
                                    f"left on device ({free >> 10} KiB free, fedast-mpi "
                                    f"stops below {RESERVE_BYTES >> 20} MiB)")
        try:
            yield
        except (OSError, RuntimeError) as e:
            self._failed = True
            err = RunFileWriteError(f"cannot write run file {self.path}: {write_error_text(e)}")
            err.broken = True
            raise err from None

    # -- structure ---------------------------------------------------------------------------

    def _group(self, task):
        """The /tasks/<name> group of a task index."""
        try:
            return self._f[schema.TASKS][self._tasks[int(task)]]
        except KeyError:
            raise ValueError(f"task {task} was not added with add_task") from None

    def add_task(self, index: int, name: str, *, dataset: str, model: str, n_params: int,
                 target_accuracy: float, stream_index: int | None = None) -> None:
        """Create /tasks/<name> with its attributes and an empty eval table. `stream_index`:
        the task position its random streams are keyed by (default `index`; config
        `tasks.*.stream_index`)."""
        index = int(index)
        if index in self._tasks:
            raise ValueError(f"task index {index} already added as {self._tasks[index]!r}")
        with self._writing():
            g = self._f[schema.TASKS].create_group(name)
            g.attrs["index"] = np.int64(index)
            g.attrs["dataset"] = str(dataset)
            g.attrs["model"] = str(model)
            g.attrs["n_params"] = np.int64(n_params)
            g.attrs["target_accuracy"] = np.float64(target_accuracy)
            g.attrs["reached_time"] = np.float64(math.nan)
            g.attrs["stream_index"] = np.int64(index if stream_index is None else stream_index)
            _new_table(g, schema.EVAL, schema.EVAL_DTYPE)
            self._tasks[index] = name
            self._evals[index] = _Table(f"{schema.TASKS}/{name}/{schema.EVAL}",
                                        schema.EVAL_DTYPE)
            self._f.flush()

    def write_clients(self, tier: np.ndarray, multiplier: np.ndarray,
                      n_samples: np.ndarray) -> None:
        """Write the /clients group: tier (i1), multiplier (f4), n_samples (clients × tasks, i4)."""
        tier = np.asarray(tier, dtype=schema.CLIENT_DTYPE["tier"]).reshape(-1)
        multiplier = np.asarray(multiplier, dtype=schema.CLIENT_DTYPE["multiplier"]).reshape(-1)
        n_samples = np.asarray(n_samples, dtype=schema.N_SAMPLES_DTYPE)
        if n_samples.ndim == 1:
            n_samples = n_samples.reshape(-1, 1)
        n = len(tier)
        if len(multiplier) != n or n_samples.ndim != 2 or n_samples.shape[0] != n:
            raise ValueError(f"/clients: tier {tier.shape}, multiplier {multiplier.shape} and "
                             f"n_samples {n_samples.shape} do not describe the same clients")
        with self._writing():
            if schema.CLIENTS in self._f:
                del self._f[schema.CLIENTS]
            g = self._f.create_group(schema.CLIENTS)
            rows = max(1, min(n, TABLE_CHUNK))
            g.create_dataset(schema.CLIENT_TIER, data=tier, maxshape=(None,), chunks=(rows,))
            g.create_dataset(schema.CLIENT_MULTIPLIER, data=multiplier, maxshape=(None,),
                             chunks=(rows,))
            g.create_dataset(schema.CLIENT_N_SAMPLES, data=n_samples, maxshape=(None, None),
                             chunks=(rows, max(1, n_samples.shape[1])))
            self._f.flush()

    # -- rows (buffered) ---------------------------------------------------------------------

    def event(self, row: tuple) -> None:
        """Queue one /events row (EVENT_DTYPE fields in order)."""
        self._events.rows.append(row)

    def events(self, rows: np.ndarray) -> None:
        """Queue many /events rows (an EVENT_DTYPE array)."""
        self._events.add_array(rows)

    def eval(self, task: int, row: tuple) -> None:
        """Queue one /tasks/<name>/eval row (EVAL_DTYPE fields in order) of task index `task`."""
        try:
            self._evals[task].rows.append(row)
        except KeyError:
            raise ValueError(f"task {task} was not added with add_task") from None

    def aggregation(self, row: tuple) -> None:
        """Queue one /aggregations row (AGGREGATION_DTYPE fields in order)."""
        self._aggregations.rows.append(row)

    def allocation(self, row: tuple) -> None:
        """Queue one /allocation row (ALLOCATION_DTYPE fields in order)."""
        self._allocation.rows.append(row)

    # -- immediate writes --------------------------------------------------------------------

    def task_reached(self, task: int, time: float) -> None:
        """Record when a task first reached its target accuracy (later calls are ignored)."""
        g = self._group(task)
        if math.isnan(float(g.attrs["reached_time"])):
            with self._writing():
                g.attrs["reached_time"] = np.float64(time)
                self._f.flush()

    def final_model(self, task: int, vec: np.ndarray) -> None:
        """Write a task's final model as a float32 vector (replacing an earlier one)."""
        g = self._group(task)
        vec = np.asarray(vec, dtype=schema.FINAL_MODEL_DTYPE).reshape(-1)
        with self._writing():
            if schema.FINAL_MODEL in g:
                del g[schema.FINAL_MODEL]
            g.create_dataset(schema.FINAL_MODEL, data=vec, maxshape=(None,),
                             chunks=(max(1, min(len(vec), MODEL_CHUNK)),))
            self._f.flush()

    def set_attrs(self, **attrs) -> None:
        """Set extra root attributes (measured figures and the like); `schema` is reserved."""
        if "schema" in attrs:
            raise ValueError("the schema attribute is fixed")
        with self._writing():
            for key, value in attrs.items():
                self._f.attrs[key] = "" if value is None else value
            self._f.flush()

    # -- flushing ----------------------------------------------------------------------------

    def maybe_flush(self, now: float | None = None) -> None:
        """Flush when `flush_every` seconds (time.monotonic) passed since the last flush."""
        if now is None:
            now = _time.monotonic()
        if now - self._last_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write all queued rows to their datasets and the heartbeat, then flush HDF5 to disk.

        A failed write (a full disk) raises RunFileWriteError; the rows it held are lost.
        """
        if self._closed:
            return
        f = self._f
        with self._writing():
            for table in (self._events, self._aggregations, self._allocation,
                          *self._evals.values()):
                block = table.take()
                if block is not None and len(block):
                    ds = self._datasets.get(table.path)
                    if ds is None:  # opened once: a look-up by path costs as much as a write
                        ds = self._datasets[table.path] = f[table.path]
                    _append(ds, block, table.mtype)
            self._beat()
            f.flush()
        self._last_flush = _time.monotonic()

    def position(self) -> dict:
        """Flush, then the file's position: rows per table and each task's reached_time.

        A checkpoint stores it; `reopen` cuts the file back to it, so a resumed run
        continues the file exactly where the checkpoint was taken.
        """
        self.flush()
        f = self._f
        pos: dict[str, int | float] = {key: int(f[t.path].shape[0])
                                       for key, t in self._keyed().items()}
        for index in self._evals:
            pos[f"reached_{index}"] = float(self._group(index).attrs["reached_time"])
        return pos

    @classmethod
    def reopen(cls, path, position: dict, world_size: int, flush_every: float = 1.0, *,
               run_id: str | None = None) -> "RunLog":
        """Open an existing run file for appending, cut back to `position` (rows after it
        dropped).

        Everything is checked first in a read-only open (`run_file_facts`): the schema, the
        tasks, that every table holds at least the checkpoint's rows, and, given `run_id`
        (the checkpoint's; '' for one that names no run), that it is this file's run
        (CheckpointError otherwise). A file that fails a check is left untouched.
        """
        path = os.fspath(path)
        facts = run_file_facts(path)
        if run_id is not None and run_id != facts["run_id"]:
            raise CheckpointError(f"the checkpoint belongs to another run (run_id "
                                  f"{run_id or 'none'}) than {path} (run_id "
                                  f"{facts['run_id'] or 'none'})")
        problem = position_problem(facts, position)
        if problem:
            raise RunFileError(f"{path}: {problem}; the run file does not match the checkpoint")
        self = cls.__new__(cls)
        self.path = path
        self.flush_every = float(flush_every)
        self.run_id = facts["run_id"]
        try:
            self._f = open_h5(self.path, "r+")
        except OSError as e:
            raise RunFileError(f"{self.path}: cannot reopen the run file to resume: {e}") from None
        self._setup(facts["tasks"])
        try:
            with self._writing():
                self._cut(position, world_size)
        except BaseException:
            self._closed = True
            with contextlib.suppress(Exception):  # the cut's own error is the one to report
                self._f.close()
            raise
        return self

    def _cut(self, position: dict, world_size: int) -> None:
        """Drop the rows, reached times and final models after `position`; mark it running."""
        f = self._f
        for key, table in self._keyed().items():
            f[table.path].resize((int(position[key]),))
        for index in self._tasks:
            g = self._group(index)
            g.attrs["reached_time"] = np.float64(position[f"reached_{index}"])
            if schema.FINAL_MODEL in g:
                del g[schema.FINAL_MODEL]
        f.attrs["status"] = "running"
        f.attrs["stop_reason"] = ""
        f.attrs["world_size"] = np.int64(world_size)
        self._mark_writer()
        f.flush()

    def pending(self) -> int:
        """Rows queued and not yet written."""
        tables = (self._events, self._aggregations, self._allocation, *self._evals.values())
        return sum(t.pending() for t in tables)

    @property
    def closed(self) -> bool:
        """True once `close` ran."""
        return self._closed

    def close(self, status: str, stop_reason: str = "") -> None:
        """Flush, set status and stop_reason, and close the file; later calls do nothing.

        Whatever fails (a full disk), the file is marked closed and its handle released (held,
        where HDF5 failed to close it: `_UNCLOSABLE`). The first failure is raised
        (RunFileWriteError for a write), unless a write to this file already failed and
        raised: close never raises a second error about a broken file.
        """
        if self._closed:
            return
        if status not in schema.STATUSES:
            raise ValueError(f"status {status!r} is not one of {schema.STATUSES}")
        reported = self._failed
        errors: list[Exception] = []
        for step in (self.flush, lambda: self._set_status(status, stop_reason)):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - the file must be closed whatever failed
                errors.append(e)
        self._closed = True
        try:
            with self._writing(reserve=0):
                self._f.close()
        except Exception as e:  # noqa: BLE001 - as above
            errors.append(e)
            _UNCLOSABLE.append(self._f)  # HDF5 would retry the close when the handle is freed
        if errors and not (reported and isinstance(errors[0], RunFileWriteError)):
            raise errors[0]

    def _set_status(self, status: str, stop_reason: str) -> None:
        """Write the root status and stop_reason."""
        with self._writing(reserve=0):
            self._f.attrs["status"] = status
            self._f.attrs["stop_reason"] = str(stop_reason)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        """Close as failed on an exception, else as completed (if still open); a failure to
        close never hides the exception that ended the block."""
        if exc_type is None:
            self.close("completed")
            return False
        status, reason = (("interrupted", "KeyboardInterrupt")
                          if issubclass(exc_type, KeyboardInterrupt)
                          else ("failed", f"{exc_type.__name__}: {exc}"))
        try:
            self.close(status, reason)
        except Exception:  # noqa: BLE001 - the block's own exception matters more
            pass
        return False


def position_problem(facts: dict, position: dict) -> str | None:
    """Why a run file (`run_file_facts`) cannot be cut back to a checkpoint's `position`:
    other tables, or fewer rows than the checkpoint counts; None when it can."""
    wanted = {k for k in position if not str(k).startswith("reached_")}
    if set(facts["rows"]) != wanted:
        return (f"its tables ({', '.join(sorted(facts['rows']))}) are not the checkpoint's "
                f"({', '.join(sorted(wanted))})")
    for key in sorted(wanted):
        try:
            n = int(position[key])
            if key.startswith("eval_"):
                float(position["reached_" + key[len("eval_"):]])
        except (KeyError, TypeError, ValueError):
            return f"the checkpoint's position of {key} is missing or not a number"
        if facts["rows"][key] < n:
            return (f"{facts['paths'][key]} has {facts['rows'][key]} rows, fewer than the "
                    f"checkpoint's {n}")
    return None


def run_file_facts(path) -> dict:
    """What a resume checks of a run file, read-only: run_id ('' for older files), status,
    stop_reason, world_size, config, tasks (index -> name), and per table key (events,
    aggregations, allocation, eval_<index>) its rows and path. RunFileError if unreadable."""
    path = os.fspath(path)
    with open_run(path) as f:
        try:
            tasks = {int(g.attrs["index"]): name for name, g in f[schema.TASKS].items()}
            paths = {"events": schema.EVENTS, "aggregations": schema.AGGREGATIONS,
                     "allocation": schema.ALLOCATION}
            paths.update({f"eval_{i}": f"{schema.TASKS}/{name}/{schema.EVAL}"
                          for i, name in tasks.items()})
            rows = {key: int(f[p].shape[0]) for key, p in paths.items()}
            a = f.attrs
            return {"run_id": _as_str(a.get("run_id", "")), "status": _as_str(a["status"]),
                    "stop_reason": _as_str(a.get("stop_reason", "")),
                    "world_size": int(a["world_size"]), "config": _as_str(a["config"]),
                    "tasks": tasks, "rows": rows, "paths": paths}
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise RunFileError(f"{path}: cannot read it to resume ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from None

def open_run(path) -> h5py.File:
    """Open a run file (or RUN_DIR) read-only without file locking, checking its schema."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, schema.RUN_FILE)
    if not os.path.exists(path):
        raise RunFileError(f"{path}: no such run file")
    if not os.path.isfile(path):
        raise RunFileError(f"{path}: not a regular file")
    try:
        is_h5 = h5py.is_hdf5(path)
    except OSError as e:
        raise RunFileError(f"{path}: cannot read: {e.strerror or e}") from None
    if not is_h5:
        raise RunFileError(f"{path}: not an HDF5 file")
    try:  # an open that overlaps the writer's flush can fail: retried
        f = with_retry(lambda: open_h5(path, "r"), retry_on=OSError)
    except OSError as e:
        raise RunFileError(f"{path}: cannot open as HDF5 ({e}); "
                           f"if it is being written, retry") from None
    try:
        if "schema" not in f.attrs:
            raise RunFileError(f"{path}: HDF5 file without a schema attribute; "
                               f"not a fedast-mpi run file")
        found = _as_str(f.attrs["schema"])
        if found != schema.RUN_SCHEMA:
            what = " (a checkpoint)" if found == schema.CHECKPOINT_SCHEMA else ""
            raise RunFileError(f"{path}: has schema {found!r}{what}, "
                               f"expected {schema.RUN_SCHEMA!r}")
    except BaseException:
        f.close()
        raise
    return f
