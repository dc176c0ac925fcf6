"""Strong scaling with EMULATED workers (SPEC §11): the real server, transport and protocol
(`mpiexec -n W+1`), workers that sleep for times calibrated here (`fedast_mpi.emulated`).

    python -m benchmarks.scaling [--workloads fmnist,cifar] [--workers 1,2,4,8,16,32,64]
                                 [--modes server,workers] [--updates-per-worker 60]
                                 [--reps 1] [--calibration FILE] [--json OUT] [--keep DIR]

1. Calibration: one process, one torch thread, trains requests and evaluates test chunks of the
   workload's model for real and takes the medians (seconds per request, per chunk).
2. For each W and each mode (server: rank 0 evaluates the 10,000 test images itself;
   workers: chunks of 1024 go to the workers and rank 0 speculates past the results,
   `fedast_mpi.speculation`, sending requests ahead of their confirmation; workers-held: the
   same, requests held back until confirmed (FEDAST_SPECULATE=held, the previous design);
   workers-wait: rank 0 waits for every result), one virtual-clock run whose `max_time` makes
   W × (at least `--updates-per-worker`, and the updates one worker trains in
   `--min-seconds`) updates, so that every run lasts about the same wall time if the server
   keeps up, and long enough that starting and ending weigh alike at every W: a
   Fashion-MNIST run of 60 updates at W = 1 spends a third of its loop starting and ending
   (6.8 updates/s against 9.4 over 500 updates, on the same calibration), and a run's fixed
   second after its loop (final evaluations and checkpoint, the drain) is an eighth of an
   8-second run at W = 64. Server mode:
   × min(W, cap), cap = 4 × the W at which rank 0's evaluations alone saturate it (from the
   calibration; at most 16): past it every run measures the same ceiling, in a bounded time
   (CIFAR-10, ~10 s per evaluation: 7-8).
   Emulated workers are niced: they sleep, and yield the cores to rank 0.
   `--reps N` repeats every (W, mode) run N times, the modes alternating inside each W and
   the Ws inside each repetition, so that a slow spell of this noisy machine hits them alike;
   the summary takes medians. `--calibration FILE` (a previous run's, kept by --keep, or one
   written by `fedast_mpi.emulated.save`) skips step 1: invocations on other days then emulate
   the same work, and only the server's speed differs.
3. From the run file: updates/s over the training loop (`updates_processed / loop_seconds`:
   from the policy's start to the last update taken), the same over the whole run
   (`wall_seconds`: also the server's set-up, the final evaluations and checkpoint, the drain,
   about a second at W = 64 whatever the run's length, which truncated benchmark runs of
   8 s magnify and the paper's full runs do not), the steady rate over the middle half of
   the run's /events rows,
   efficiency = updates/s ÷ (W × updates/s at W = 1, same evaluation mode), rank 0's busy
   fraction over the loop (1 − server_wait_seconds / loop_seconds), serial seconds per update by
   category (`server_busy_*_seconds`), and the ceiling they imply: a server busy s seconds per
   update cannot take more than 1/s updates/s, i.e. efficiency ≤ 1 / (s · W · updates/s at 1).

The accuracies of these runs mean nothing (the deltas are not trained): only timing is measured.
Workloads: `fmnist`, configs/paper/homogeneous-fmnist-m2.yaml (2 × LeNet-5, R = 150, b = 5,
evaluation every 4 aggregations on 10,000 test images; the real files from Debian's
dataset-fashion-mnist when installed, else generated ones of the same shape); `cifar`,
configs/paper/homogeneous-cifar10-m2.yaml (2 × the CIFAR-10 CNN) on generated files in the real
format (10,000 test images). The JSON record goes to --json or stdout (`benchmarks.emit`).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import emit

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
WORKLOADS = {"fmnist": ("configs/paper/homogeneous-fmnist-m2.yaml", "fmnist"),
             "cifar": ("configs/paper/homogeneous-cifar10-m2.yaml", "cifar10")}
N_TRAIN, N_TEST = 6000, 10000  # generated files: shards reuse the train set; full test set
TIMEOUT = 900
SERVER_CAP = 16
CATEGORIES = ("evaluate", "aggregate", "send", "flush", "checkpoint", "other")


def data_dir(dataset: str, tmp: Path) -> tuple[str, str]:
    """(data_dir, what it holds) for a workload's dataset."""
    if dataset == "fmnist" and FMNIST_DIR.is_dir():
        return str(FMNIST_DIR), f"real Fashion-MNIST ({FMNIST_DIR})"
    from fedast_mpi.data.sample_files import write_dataset
    root = tmp / dataset
    return (str(write_dataset(dataset, root, n_train=N_TRAIN, n_test=N_TEST)),
            f"generated {dataset} files ({N_TRAIN} train, {N_TEST} test images)")


def overrides(data: str, n_tasks: int) -> list[str]:
    sets = ["run.device=cpu", "run.log_every=0", "run.checkpoint.every_seconds=100000"]
    return sets + [f"tasks.{i}.data_dir={data}" for i in range(n_tasks)]


def calibrate(config: str, sets: list[str], out: Path, reps: int = 5,
              given: Path | None = None) -> dict:
    """Median seconds per request and per test chunk of each task, on one torch thread; with
    `given`, that calibration instead (copied to `out`), for the task shapes of the config."""
    import numpy as np
    import torch

    from fedast_mpi import emulated
    from fedast_mpi.config import load_config
    from fedast_mpi.evaluation import n_chunks
    from fedast_mpi.runner import TaskRunner
    torch.set_num_threads(1)
    cfg = load_config(config, sets)
    runner = TaskRunner(cfg, "cpu")
    timings = []
    if given is not None:
        timings = emulated.load(given)
        if len(timings) != len(cfg.tasks):
            raise SystemExit(f"{given}: a calibration of {len(timings)} tasks for a config "
                             f"of {len(cfg.tasks)}")
    for i, task in enumerate(cfg.tasks if given is None else ()):
        model = runner.initial_model(i)
        train, chunk = [], []
        for k in range(reps + 2):  # the first two warm up
            t0 = time.perf_counter()
            runner.train(i, k % cfg.clients.count, model, seed=k)
            train.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            runner.evaluate_chunk(i, model, k % n_chunks(runner.n_test(i)))
            chunk.append(time.perf_counter() - t0)
        timings.append(emulated.TaskTiming(
            n_params=int(np.asarray(model).size), train_seconds=statistics.median(train[2:]),
            eval_chunk_seconds=statistics.median(chunk[2:]), local_steps=task.local_steps))
    emulated.save(out, timings, config=config)
    return {"tasks": [t.__dict__ for t in timings],
            "eval_chunks": [n_chunks(runner.n_test(i)) for i in range(len(cfg.tasks))],
            "test_samples": [runner.n_test(i) for i in range(len(cfg.tasks))]}


def server_cap(config: str, sets: list[str], cal: dict) -> int:
    """Workers past which server-mode runs keep their update count: 4 × W_sat, where W_sat =
    (seconds of training per update) / (rank 0's evaluation seconds per update), i.e. the W at
    which rank 0, evaluating every task's eval_every-th aggregation on its own, is busy all the
    time; capped at SERVER_CAP."""
    from fedast_mpi.config import load_config
    cfg = load_config(config, sets)
    train = statistics.mean(t["train_seconds"] for t in cal["tasks"])
    per_update = statistics.mean(
        t["eval_chunk_seconds"] * n / (task.eval_every * (task.buffer_size or 1))
        for t, n, task in zip(cal["tasks"], cal["eval_chunks"], cfg.tasks))
    return max(1, min(SERVER_CAP, math.ceil(4 * train / per_update)))


def updates_per_time(config: str, sets: list[str]) -> tuple[float, float]:
    """Expected updates per simulated time unit (Σ R / mean request duration), and the time
    before the first ones finish (the shortest duration)."""
    from fedast_mpi.config import load_config
    cfg = load_config(config, sets)
    tiers = [getattr(cfg.clients.tiers, n) for n in ("slow", "normal", "fast")]
    mult = sum(t.fraction * t.multiplier for t in tiers)
    fastest = min(t.multiplier for t in tiers)
    rate = sum(t.requests / (t.delay.local_multi * (t.delay.shift + t.delay.exp_mean) * mult)
               for t in cfg.tasks)
    return rate, min(t.delay.local_multi * t.delay.shift * fastest for t in cfg.tasks)


MODES = {"server": ("server", "1"), "workers": ("workers", "1"),
         "workers-held": ("workers", "held"), "workers-wait": ("workers", "0")}
"""Benchmark modes: run.evaluation, and FEDAST_SPECULATE (0: rank 0 waits for each result;
held: it speculates but holds requests back until confirmed)."""


def run_one(config: str, sets: list[str], calib: Path, workers: int, mode: str,
            max_time: float, out: Path) -> dict:
    evaluation, speculate = MODES[mode]
    cmd = [str(BIN / "mpiexec"), "-n", str(workers + 1), sys.executable, "-m", "fedast_mpi",
           "run", config, "--out", str(out)]
    for item in [*sets, f"run.evaluation={evaluation}", f"run.max_time={max_time:.6g}"]:
        cmd += ["--set", item]
    env = {**os.environ, "FEDAST_EMULATE": str(calib), "OMP_NUM_THREADS": "1",
           "FEDAST_SPECULATE": speculate,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    rec: dict = {"workers": workers, "mode": mode, "max_time": max_time,
                 "total_seconds": time.perf_counter() - t0,
                 "cmd": " ".join(["FEDAST_EMULATE=CALIBRATION", *cmd[:1], *cmd[1:]]),
                 "ok": proc.returncode == 0}
    if not rec["ok"]:
        rec["stderr"] = proc.stderr[-2000:]
        return rec
    import h5py
    import numpy as np
    with h5py.File(out / "run.h5", "r", locking=False) as f:
        a = {k: f.attrs[k] for k in f.attrs}
        walls = np.sort(f["events"]["wall"])
    updates, wall = int(a["updates_processed"]), float(a["wall_seconds"])
    loop = float(a.get("loop_seconds", wall))  # (run files before it: the whole run)
    wait = float(a["server_wait_seconds"])
    busy = {c: float(a.get(f"server_busy_{c}_seconds", 0.0)) for c in CATEGORIES}
    lo, hi = len(walls) // 4, (3 * len(walls)) // 4  # the middle half of the rows
    steady = (hi - lo) / (walls[hi] - walls[lo]) if hi > lo and walls[hi] > walls[lo] else math.nan
    rec.update(speculation={k: int(v) for k, v in a.items() if k.startswith("speculation_")})
    rec.update(steady_updates_per_second=float(steady))
    rec.update(updates=updates, wall_seconds=wall, loop_seconds=loop,
               updates_per_second=updates / loop, run_updates_per_second=updates / wall,
               fixed_seconds=wall - loop,
               server_wait_seconds=wait, server_cpu_seconds=float(a["server_cpu_seconds"]),
               busy_fraction=1.0 - wait / loop,
               serial_seconds_per_update=(loop - wait) / updates,
               busy_per_update={c: v / updates for c, v in busy.items()})
    return rec


MEDIANS = ("updates", "updates_per_second", "run_updates_per_second", "fixed_seconds",
           "steady_updates_per_second", "busy_fraction", "serial_seconds_per_update")


def summarize(runs: list[dict]) -> dict:
    """Per mode and W, the medians over the repetitions, efficiency and ceiling against the
    W = 1 medians of the same mode (whole loop and steady rate)."""
    out: dict = {}
    for mode in sorted({r["mode"] for r in runs}):
        by_w: dict[int, list[dict]] = {}
        for r in runs:
            if r["mode"] == mode and r.get("ok"):
                by_w.setdefault(r["workers"], []).append(r)
        med = {w: {k: statistics.median(r[k] for r in rs) for k in MEDIANS} | {
            "workers": w, "reps": len(rs)} for w, rs in sorted(by_w.items())}
        base = med.get(1)
        rows = []
        for w, row in med.items():
            if base is not None:
                one, steady_one = base["updates_per_second"], base["steady_updates_per_second"]
                row["efficiency"] = row["updates_per_second"] / (w * one)
                row["run_efficiency"] = row["run_updates_per_second"] / (
                    w * base["run_updates_per_second"])
                row["steady_efficiency"] = row["steady_updates_per_second"] / (w * steady_one)
                row["ceiling_efficiency"] = min(1.0, 1.0 / (row["serial_seconds_per_update"]
                                                            * w * one))
            rows.append(row)
        out[mode] = rows
    return out


def print_summary(name: str, summary: dict) -> None:
    print(f"{name} (EMULATED workers; medians over the repetitions):", file=sys.stderr)
    for mode, rows in summary.items():
        for r in rows:
            eff = (f"eff {r['efficiency']:.2f} (whole run {r['run_efficiency']:.2f}, steady "
                   f"{r['steady_efficiency']:.2f}, ceiling {r['ceiling_efficiency']:.2f})"
                   if "efficiency" in r else "")
            print(f"  {mode:<12} W={r['workers']:<3} {r['updates_per_second']:7.1f} upd/s "
                  f"(whole run {r['run_updates_per_second']:7.1f}, steady "
                  f"{r['steady_updates_per_second']:7.1f}, {r['fixed_seconds']:.2f} s outside "
                  f"the loop) x{r['reps']} {eff}", file=sys.stderr)
    sys.stderr.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="fmnist,cifar")
    ap.add_argument("--workers", default="1,2,4,8,16,32,64")
    ap.add_argument("--modes", default="server,workers-wait,workers",
                    help="server: rank 0 evaluates; workers: chunks on the workers, rank 0 "
                         "speculates past the results, sending requests ahead; workers-held: "
                         "requests held until confirmed; workers-wait: rank 0 waits")
    ap.add_argument("--updates-per-worker", type=float, default=60.0)
    ap.add_argument("--min-seconds", type=float, default=20.0,
                    help="every run makes at least W × the updates one worker trains in this "
                         "time (about the loop's length at every W if the server keeps up)")
    ap.add_argument("--reps", type=int, default=1, help="runs of every (W, mode); medians")
    ap.add_argument("--calibration", default=None,
                    help="a calibration file to emulate instead of calibrating (one workload)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", default=None, help="keep the run directories here")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.calibration and "," in args.workloads:
        ap.error("--calibration is one workload's: give one in --workloads")
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fedast-scaling-"))
    tmp.mkdir(parents=True, exist_ok=True)
    record: dict = {"emulated": True, "note": "EMULATED workers (calibrated sleeps, real server "
                    "and transport): timing only, accuracies meaningless", "workloads": {}}
    for name in [w for w in args.workloads.split(",") if w]:
        rel, dataset = WORKLOADS[name]
        config = str(ROOT / rel)
        data, what = data_dir(dataset, tmp)
        from fedast_mpi.config import load_config
        sets = overrides(data, len(load_config(config, [f"tasks.0.data_dir={data}",
                                                        f"tasks.1.data_dir={data}"]).tasks))
        calib = tmp / f"{name}-calibration.json"
        cal = calibrate(config, sets, calib,
                        given=Path(args.calibration) if args.calibration else None)
        rate, first = updates_per_time(config, sets)
        cap = server_cap(config, sets, cal)
        print(f"{name}: {what}; calibrated {cal['tasks'][0]['train_seconds'] * 1e3:.1f} ms per "
              f"request, {cal['tasks'][0]['eval_chunk_seconds'] * 1e3:.1f} ms per test chunk "
              f"({cal['eval_chunks'][0]} chunks); ~{rate:.1f} updates per time unit; server "
              f"mode keeps the update count of W = {cap} past it",
              file=sys.stderr, flush=True)
        least = args.min_seconds / statistics.mean(t["train_seconds"] for t in cal["tasks"])
        runs = []
        for rep in range(args.reps):
            for w in [int(x) for x in args.workers.split(",")]:
                for mode in args.modes.split(","):
                    # rank 0 evaluating caps the server mode: past `cap` workers its runs keep
                    # the update count of `cap`, so that they measure the same ceiling in a
                    # bounded time
                    n = min(w, cap) if mode == "server" else w
                    max_time = first + n * max(args.updates_per_worker, least) / rate
                    rec = run_one(config, sets, calib, w, mode, max_time,
                                  tmp / f"{name}-{mode}-{w}-{rep}")
                    rec["rep"] = rep
                    runs.append(rec)
                    brief = (f"{rec['updates_per_second']:.1f} upd/s (steady "
                             f"{rec['steady_updates_per_second']:.1f}), rank 0 busy "
                             f"{100 * rec['busy_fraction']:.0f} %, "
                             f"{1e3 * rec['serial_seconds_per_update']:.2f} ms/update"
                             if rec["ok"] else "FAILED " + rec.get("stderr", "")[-300:])
                    print(f"  {name} rep {rep} W={w:<3} eval on {mode:<7} {brief}",
                          file=sys.stderr, flush=True)
        summary = summarize(runs)
        print_summary(name, summary)
        record["workloads"][name] = {"data": what, "config": rel, "calibration": cal,
                                     "server_cap": cap,
                                     "updates_per_time_unit": rate, "runs": runs,
                                     "reps": args.reps, "summary": summary}
    emit(record, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
