"""The io_cost benchmark: writing the run file per update and a checkpoint per save.

    python -m benchmarks.io_cost [--rows N] [--rows-per-flush K] [--rounds R]
        [--checkpoint LABEL=PATH ...] [--saves S] [--json OUT]

(a) /events rows. The server queues one /events row per update with `RunLog.event` and calls
    `RunLog.maybe_flush` once per batch; a flush appends the queued rows to the chunked
    /events dataset and flushes HDF5. Product: N rows (the tuples the server builds)
    through a fresh `RunLog` (event + maybe_flush per row, a `flush` every K rows, i.e. the
    server at K updates per flush_every second, and a last flush). Baseline: the same tuples
    appended with bare h5py: item-assigned into a K-row structured numpy block, written to
    one chunked resizable EVENT_DTYPE dataset (same chunk rows) and `File.flush()` every K
    rows. Figure: µs per row, product / baseline.
(b) Checkpoints. Product: `checkpoint.Checkpointer.save` (the state tree through
    h5tree.write_tree with a CRC32 per array, the run file's position, flush, fsync, rename,
    directory fsync, older ones removed) of a real server state: the state tree of a
    checkpoint that a run wrote (`--checkpoint LABEL=PATH`, a checkpoint file or a run dir;
    without one, a short run of the embedded default job is made first). Baseline: the
    same arrays (same bytes) written with `np.save` one after another into one file,
    flush, fsync, rename, directory fsync. Figure: seconds per checkpoint, product / baseline.

Rounds are interleaved (product, baseline, product, ...); rank-free (no mpiexec needed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from benchmarks import emit


# -- (a) /events rows -----------------------------------------------------------------------
def event_rows(n: int, seed: int = 0) -> list[tuple]:
    """n rows as the server builds them (python ints and floats, EVENT_DTYPE field order)."""
    rng = np.random.default_rng(seed)
    rows = []
    t = 0.0
    for i in range(n):
        t += float(rng.exponential(0.1))
        task = i % 3
        base = i // 15
        rows.append((i, task, int(rng.integers(0, 100)), 1, base, base + 1, 1, t - 3.0, t, t,
                     t * 0.01, float(rng.random()), float(rng.random()), 1))
    return rows


def runlog_rows(path: Path, rows: list[tuple], k: int) -> float:
    from fedast_mpi import __version__
    from fedast_mpi.runlog import RunLog
    log = RunLog(path, config_yaml="benchmark: io_cost", algorithm="fedast", clock="virtual",
                 seed=0, world_size=2, package_version=__version__)
    log.add_task(0, "t0", dataset="digits", model="logreg", n_params=650, target_accuracy=0.9)
    t0 = time.perf_counter()
    for i, row in enumerate(rows, 1):
        log.event(row)
        if i % k == 0:
            log.flush()
        else:
            log.maybe_flush()
    log.flush()
    seconds = time.perf_counter() - t0
    log.close("completed")
    return seconds


def h5py_rows(path: Path, rows: list[tuple], k: int) -> float:
    import h5py
    from fedast_mpi.runlog import TABLE_CHUNK
    from fedast_mpi.schema import EVENT_DTYPE
    f = h5py.File(path, "w")
    ds = f.create_dataset("events", shape=(0,), maxshape=(None,), dtype=EVENT_DTYPE,
                          chunks=(TABLE_CHUNK,))
    f.flush()
    t0 = time.perf_counter()
    block = np.empty(k, EVENT_DTYPE)
    j = 0
    for row in rows:
        block[j] = row
        j += 1
        if j == k:
            n = ds.shape[0]
            ds.resize((n + k,))
            ds[n:n + k] = block
            f.flush()
            j = 0
    if j:
        n = ds.shape[0]
        ds.resize((n + j,))
        ds[n:n + j] = block[:j]
    f.flush()
    seconds = time.perf_counter() - t0
    f.close()
    return seconds


# -- (b) checkpoints -------------------------------------------------------------------------
def find_checkpoint(path: str) -> Path:
    from fedast_mpi.checkpoint import checkpoint_paths
    p = Path(path)
    if p.is_dir():
        found = checkpoint_paths(p)
        if not found:
            raise SystemExit(f"io_cost: no checkpoint in {p}")
        return found[0]
    return p


def make_checkpoint(tmp: Path, max_time: float = 30.0) -> Path:
    """A short run of the embedded default job in one process; its final checkpoint."""
    out = tmp / "state-run"
    cmd = [sys.executable, "-m", "fedast_mpi", "run", "--out", str(out),
           "--set", f"run.max_time={max_time}", "--set", "run.log_every=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"io_cost: {' '.join(cmd)} failed:\n{proc.stderr}")
    return find_checkpoint(str(out))


def arrays_of(tree) -> list[np.ndarray]:
    """Every array of a state tree (depth first)."""
    if isinstance(tree, dict):
        return [a for v in tree.values() for a in arrays_of(v)]
    if isinstance(tree, (list, tuple)):
        return [a for v in tree for a in arrays_of(v)]
    if isinstance(tree, np.ndarray):
        return [tree]
    return []


class StateServer:
    """What Checkpointer.save needs of a server: state_dict(), clock (now, wall()),
    cfg.algorithm."""

    def __init__(self, ckpt: dict):
        self.state = ckpt["state"]
        self.clock = types.SimpleNamespace(now=float(ckpt["time"]), wall=lambda: 0.0)
        self.cfg = types.SimpleNamespace(algorithm=types.SimpleNamespace(name="fedast"))

    def state_dict(self) -> dict:
        return self.state


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def np_save_all(folder: Path, arrays: list[np.ndarray], index: int) -> float:
    t0 = time.perf_counter()
    path = folder / f"state-{index:06d}.npy"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        for a in arrays:
            np.save(fh, a, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)
    seconds = time.perf_counter() - t0
    old = folder / f"state-{index - 2:06d}.npy"  # keep 2, as Checkpointer's default
    old.unlink(missing_ok=True)
    return seconds


class CheckpointCase:
    def __init__(self, label: str, path: Path, tmp: Path):
        from fedast_mpi import __version__
        from fedast_mpi.checkpoint import Checkpointer, read_checkpoint
        from fedast_mpi.runlog import RunLog
        ckpt = read_checkpoint(path)
        self.label, self.source = label, path
        self.server = StateServer(ckpt)
        self.arrays = arrays_of(ckpt["state"])
        self.nbytes = int(sum(a.nbytes for a in self.arrays))
        run_dir = tmp / f"ckpt-{label}"
        run_dir.mkdir()
        self.log = RunLog(run_dir / "run.h5", config_yaml=ckpt["config"], algorithm="fedast",
                          clock="virtual", seed=0, world_size=2, package_version=__version__)
        self.writer = Checkpointer(run_dir, ckpt["config"], self.log, every_seconds=1e9, keep=2)
        self.base_dir = tmp / f"np-{label}"
        self.base_dir.mkdir()
        self.count = 0
        self.file_bytes: int | None = None

    def product(self) -> float:
        t0 = time.perf_counter()
        path = self.writer.save(self.server)
        seconds = time.perf_counter() - t0
        self.file_bytes = path.stat().st_size
        return seconds

    def baseline(self) -> float:
        self.count += 1
        return np_save_all(self.base_dir, self.arrays, self.count)

    def close(self) -> None:
        self.log.close("completed")


def med(xs):
    return statistics.median(xs) if xs else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000, help="/events rows per round")
    ap.add_argument("--rows-per-flush", type=int, default=100,
                    help="rows per RunLog flush (the server's update rate x flush_every)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH",
                    help="a checkpoint file (or run dir) whose state to write; repeatable")
    ap.add_argument("--saves", type=int, default=None,
                    help="checkpoints per round and side (default 1)")
    ap.add_argument("--tmp", help="scratch folder (default: a new temp dir, removed)")
    ap.add_argument("--json", help="write the result here (else stdout)")
    args = ap.parse_args(argv)
    if min(args.rows, args.rows_per_flush, args.rounds) < 1:
        ap.error("--rows, --rows-per-flush and --rounds must be >= 1")
    saves = args.saves or 1

    own_tmp = args.tmp is None
    tmp = Path(tempfile.mkdtemp(prefix="fedast-io-")) if own_tmp else Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        sources = []
        for spec in args.checkpoint:
            label, sep, path = spec.partition("=")
            if not sep:
                ap.error(f"--checkpoint wants LABEL=PATH, got {spec!r}")
            sources.append((label, find_checkpoint(path)))
        if not sources:
            sources.append(("default", make_checkpoint(tmp)))
        cases = [CheckpointCase(label, path, tmp) for label, path in sources]

        rows = event_rows(args.rows)
        ev: dict[str, list[float]] = {"runlog": [], "h5py": []}
        ck: dict[str, dict[str, list[float]]] = {c.label: {"product": [], "baseline": []}
                                                 for c in cases}
        for r in range(args.rounds):
            ev["runlog"].append(runlog_rows(tmp / f"runlog-{r}.h5", rows, args.rows_per_flush))
            ev["h5py"].append(h5py_rows(tmp / f"h5py-{r}.h5", rows, args.rows_per_flush))
            for c in cases:
                for _ in range(saves):
                    ck[c.label]["product"].append(c.product())
                    ck[c.label]["baseline"].append(c.baseline())
        for c in cases:
            c.close()

        us = {k: [1e6 * s / args.rows for s in v] for k, v in ev.items()}
        out = {
            "rows": args.rows, "rows_per_flush": args.rows_per_flush, "rounds": args.rounds,
            "events": {
                "us_per_row": us,
                "median_us_per_row": {k: med(v) for k, v in us.items()},
                "ratio": med(us["runlog"]) / med(us["h5py"]),
                "ratio_rounds": [a / b for a, b in zip(us["runlog"], us["h5py"])],
            },
            "checkpoints": {},
        }
        for c in cases:
            p, b = ck[c.label]["product"], ck[c.label]["baseline"]
            out["checkpoints"][c.label] = {
                "source": str(c.source),
                "arrays": len(c.arrays), "array_bytes": c.nbytes, "file_bytes": c.file_bytes,
                "seconds": {"product": p, "baseline": b},
                "median_seconds": {"product": med(p), "baseline": med(b)},
                "ratio": med(p) / med(b),
                "ratio_rounds": [x / y for x, y in zip(p, b)],
            }
        emit(out, args.json)
    finally:
        if own_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
