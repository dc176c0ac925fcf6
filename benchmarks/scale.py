"""Scale benchmark (SPEC §11 "Memory"): a long virtual-clock run, memory watched from outside.

    python -m benchmarks.scale [--config configs/scale.yaml] [--np 3] [--quick] [--json OUT]
                               [--set KEY=VALUE ...] [--interval 0.5] [--keep DIR] [--src DIR]

Runs `mpiexec -n NP fedast-mpi run CONFIG --out TMP/run` (OMP_NUM_THREADS=1) and, every
`--interval` seconds, reads from /proc the resident set size (VmRSS) and CPU time of every rank
process: the descendants of mpiexec whose command line runs fedast-mpi, each identified by its
launcher's rank variable (PMI_RANK for MPICH's Hydra, OMPI_COMM_WORLD_RANK, PMIX_RANK).

Sample times are put on the run's own axis: rank 0's `wall0` (the start of the training loop,
`wall` = 0 in the run file) is the moment its final "run completed" line arrived minus the run
file's `wall_seconds`, so `fraction` = (sample time − wall0) / wall_seconds is 0 when training
starts and 1 when it ends (negative: start-up, data loading). Flatness per rank = median RSS
of the samples in the last 10 % of the run / median in [10 %, 20 %) (after warm-up); 1.00 is flat.
`flatness_second_half` divides by the median in [50 %, 60 %) instead: rank 0 creates each
(client, task) delay stream (~1 KB) on its first request, so with many clients its RSS still
rises a little early in a short run, a bounded warm-up rather than growth.

The JSON record (`benchmarks.emit`) holds wall_seconds, updates, updates_per_second,
server_cpu_seconds, rss_mb {rank: [[fraction, MB], ...]}, peak_rss_mb, rss_start/early/late_mb,
flatness, growth_mb, cpu_seconds per rank, the command and the resolved config.
`--quick` shortens the run (run.max_time=2200, about 102,000 updates, ~20 s on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import emit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
DEFAULT_CONFIG = ROOT / "configs" / "scale.yaml"
QUICK_MAX_TIME = 2200
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
MARKERS = (b"fedast-mpi", b"fedast_mpi")
EARLY, MID, LATE = (0.10, 0.20), (0.50, 0.60), (0.90, 1.0001)  # windows of the run (fractions)
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tool(name: str) -> str:
    """A console script of this venv (next to the interpreter), else from PATH."""
    p = BIN / name
    return str(p) if p.exists() else (shutil.which(name) or name)


# -- /proc ----------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    """ppid -> [pid] over every process."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: fields after the last ')' are fixed
        fields = stat[stat.rfind(b")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rank_of(pid: int) -> int | None:
    """The MPI rank of a fedast-mpi rank process, None for anything else (proxies, shells)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read()
        if not any(m in cmd for m in MARKERS) or b"mpiexec" in cmd.split(b"\0")[0]:
            return None
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
    except OSError:
        return None
    for var in RANK_VARS:
        value = env.get(var.encode())
        if value is not None:
            try:
                return int(value)
            except ValueError:
                pass
    return None


def rss_mb(pid: int) -> float | None:
    """VmRSS in MB (2^20 bytes), None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Sampler(threading.Thread):
    """Every `interval` s: (time.time(), rank, RSS MB, CPU s) of every rank process of `root`."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.ranks: dict[int, int] = {}  # pid -> rank
        self.samples: list[tuple[float, int, float, float | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        rescan = 0.0
        while not self.stop.is_set():
            now = time.time()
            if now >= rescan:  # ranks appear a little after mpiexec; rescan until all are seen
                for pid in descendants(self.root):
                    if pid not in self.ranks:
                        r = rank_of(pid)
                        if r is not None:
                            self.ranks[pid] = r
                rescan = now + (5.0 if self.ranks else 0.1)
            for pid, r in list(self.ranks.items()):
                mb, cpu = rss_mb(pid), cpu_seconds(pid)
                if mb is not None:
                    self.samples.append((time.time(), r, mb, cpu))
            self.stop.wait(self.interval if self.ranks else 0.05)


# -- the run --------------------------------------------------------------------------------
def launch(config: str, np_: int, sets: list[str], out: Path, interval: float,
           src: str | None = None) -> dict:
    """Run the job; `src`: a source tree to run instead of the installed package (A/B runs)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if src:
        prog = [sys.executable, "-m", "fedast_mpi"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    else:
        prog = [tool("fedast-mpi")]
    cmd = [tool("mpiexec"), "-n", str(np_), *prog, "run", config, "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=src or str(ROOT))
    stdout, stderr = proc.stdout, proc.stderr
    if stdout is None or stderr is None:  # both are pipes (above)
        raise RuntimeError("mpiexec started without its output pipes")
    sampler = Sampler(proc.pid, interval)
    sampler.start()
    lines: list[tuple[float, str]] = []
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.extend(stderr), daemon=True)
    reader.start()
    for raw in stdout:  # progress lines, then the final table
        lines.append((time.time(), raw.decode("utf-8", "replace").rstrip()))
    code = proc.wait()
    t1 = time.time()
    sampler.stop.set()
    sampler.join()
    reader.join(timeout=5)
    return {"cmd": cmd, "code": code, "t0": t0, "t1": t1, "lines": lines,
            "stderr": b"".join(err).decode("utf-8", "replace"), "samples": sampler.samples,
            "ranks": sorted(set(sampler.ranks.values()))}


def _plain(value):
    """An HDF5 attribute as JSON-friendly Python (scalars, lists, str)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def read_run(path: Path) -> dict:
    import h5py
    with h5py.File(path, "r") as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        n_events = int(f["events"].shape[0])
        n_aggs = int(f["aggregations"].shape[0])
    return {"attrs": attrs, "events": n_events, "aggregations": n_aggs}


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def analyse(res: dict, run: dict) -> dict:
    a = run["attrs"]
    wall = float(a["wall_seconds"])
    done = [t for t, line in res["lines"] if line.startswith("run ")]
    # wall0: the final line comes right after finish() stored wall_seconds (tens of ms)
    wall0 = (done[0] - wall) if done else res["t0"]
    series: dict[str, list[list[float]]] = {}
    cpu: dict[str, float] = {}
    for t, r, mb, c in res["samples"]:
        series.setdefault(str(r), []).append([round((t - wall0) / wall, 4), round(mb, 2)])
        if c is not None:
            cpu[str(r)] = c
    out: dict[str, dict[str, float | None]] = {
        "peak_rss_mb": {}, "rss_start_mb": {}, "rss_early_mb": {}, "rss_mid_mb": {},
        "rss_late_mb": {}, "flatness": {}, "growth_mb": {}, "flatness_second_half": {}}
    for r, pts in series.items():
        out["peak_rss_mb"][r] = max(mb for _, mb in pts)
        start = [mb for f, mb in pts if 0.0 <= f < 0.05]
        early = [mb for f, mb in pts if EARLY[0] <= f < EARLY[1]]
        mid = [mb for f, mb in pts if MID[0] <= f < MID[1]]
        late = [mb for f, mb in pts if LATE[0] <= f < LATE[1]]
        e, m, lt = _median(early), _median(mid), _median(late)
        out["rss_start_mb"][r] = _median(start)
        out["rss_early_mb"][r] = e
        out["rss_mid_mb"][r] = m
        out["rss_late_mb"][r] = lt
        out["flatness"][r] = round(lt / e, 4) if e and lt else None
        out["flatness_second_half"][r] = round(lt / m, 4) if m and lt else None
        out["growth_mb"][r] = round(lt - e, 2) if e and lt else None
    updates = int(a["updates_processed"])
    return {"wall_seconds": wall, "updates": updates,
            "updates_per_second": updates / wall if wall > 0 else None,
            "server_cpu_seconds": a.get("server_cpu_seconds"),
            "server_wait_seconds": a.get("server_wait_seconds"),
            "server_wait_cpu_seconds": a.get("server_wait_cpu_seconds"),
            "compute_seconds": a.get("compute_seconds"),
            "final_time": a.get("final_time"), "stop_reason": a.get("stop_reason"),
            "status": a.get("status"), "world_size": a.get("world_size"),
            "events": run["events"], "aggregations": run["aggregations"],
            "process_seconds": res["t1"] - res["t0"], "wall0_offset_s": wall0 - res["t0"],
            "rss_mb": series, **out, "cpu_seconds": cpu,
            "samples_per_rank": {r: len(p) for r, p in series.items()}}


def summary(rec: dict) -> str:
    lines = [f"scale: {rec['updates']} updates in {rec['wall_seconds']:.1f} s wall "
             f"({rec['updates_per_second']:.0f} upd/s), server CPU "
             f"{rec['server_cpu_seconds']:.1f} s, whole mpiexec {rec['process_seconds']:.1f} s, "
             f"-n {rec['np']}",
             f"{'rank':>4} {'start MB':>9} {'10-20% MB':>10} {'90-100% MB':>11} {'peak MB':>8} "
             f"{'flatness':>9} {'growth MB':>10} {'2nd half':>9} {'CPU s':>7}"]

    def fmt(x, spec):
        return format(x, spec) if x is not None else "-"
    for r in sorted(rec["rss_mb"], key=int):
        lines.append(f"{r:>4} {fmt(rec['rss_start_mb'][r], '9.1f')} "
                     f"{fmt(rec['rss_early_mb'][r], '10.1f')} "
                     f"{fmt(rec['rss_late_mb'][r], '11.1f')} "
                     f"{rec['peak_rss_mb'][r]:8.1f} {fmt(rec['flatness'][r], '9.3f')} "
                     f"{fmt(rec['growth_mb'][r], '10.2f')} "
                     f"{fmt(rec['flatness_second_half'][r], '9.3f')} "
                     f"{fmt(rec['cpu_seconds'].get(r), '7.1f')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale",
                                description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--np", type=int, default=3, help="ranks (server + workers); default 3")
    p.add_argument("--quick", action="store_true", help=f"run.max_time={QUICK_MAX_TIME}")
    p.add_argument("--json", help="write the record here (default: stdout after the summary)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    p.add_argument("--keep", help="run directory to keep (default: a temp dir, removed)")
    p.add_argument("--src", help="run `python -m fedast_mpi` from this source tree (A/B runs)")
    args = p.parse_args(argv)
    config = str(Path(args.config).resolve())
    src = str(Path(args.src).resolve()) if args.src else None
    sets = ([f"run.max_time={QUICK_MAX_TIME}"] if args.quick else []) + list(args.sets)
    tmp = None
    if args.keep:
        out = Path(args.keep)
    else:
        tmp = tempfile.mkdtemp(prefix="fedast-scale-")
        out = Path(tmp) / "run"
    try:
        res = launch(config, args.np, sets, out, args.interval, src)
        if res["code"] != 0:
            sys.stderr.write(res["stderr"][-4000:])
            print(f"scale: run failed with exit code {res['code']}: {' '.join(res['cmd'])}",
                  file=sys.stderr)
            return 1
        run = read_run(out / "run.h5")
        rec = {"benchmark": "scale", "np": args.np, "quick": args.quick,
               **analyse(res, run), "command": " ".join(res["cmd"]),
               "env": {"OMP_NUM_THREADS": "1"}, "src": src, "interval_s": args.interval,
               "config": run["attrs"].get("config"), "sets": sets,
               "machine": {"cpus": os.cpu_count(), "loadavg_after": os.getloadavg()},
               "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(summary(rec), file=sys.stderr if not args.json else sys.stdout, flush=True)
    emit(rec, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
