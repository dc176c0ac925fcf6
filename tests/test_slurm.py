"""The SLURM templates (slurm/) against a real local SLURM: one-node and multi-node jobs, checkpoint
+ requeue before the time limit, and the job-array sweep.

A session fixture starts the single-node test cluster (../shared/slurm-local.sh, root only) when
`sbatch` does not already answer, and stops it at the end if it started it. Without SLURM every
test that needs it is skipped with the reason. Jobs use the venv of the running interpreter
(FEDAST_VENV), run directories and job logs live in tmp_path, and every wait is bounded.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import CPU_PIN

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}
# a local test cluster may advertise more CPUs than cores (SLURM_LOCAL_CPUS): jobs use 3 tasks
NTASKS = 3
JOB_OPTS = [f"--ntasks={NTASKS}", "--cpus-per-task=1", "--gres=none", "--time=0:15:00"]
# seconds between a requeued job's first sighting as pending and moving its start (wait_job)
REQUEUE_GAP = 3.0


# ------------------------------------------------------------------------------- the cluster

def _sh(*cmd: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)


def _slurm_answers() -> str | None:
    """None if sbatch/scontrol work and a node is usable, else why not."""
    if not shutil.which("sbatch") or not shutil.which("scontrol"):
        return "sbatch/scontrol not on PATH"
    try:
        if _sh("scontrol", "ping", timeout=15).returncode != 0:
            return "scontrol ping: no controller"
        states = _sh("sinfo", "-h", "-o", "%T", timeout=15).stdout.split()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"SLURM does not answer: {exc}"
    if not any(s.rstrip("*~#").lower() in ("idle", "mixed", "allocated") for s in states):
        return f"no usable node (sinfo states: {states})"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """A working SLURM: the one already answering, or the local test cluster started here."""
    started = False
    why = _slurm_answers()
    if why is not None:
        script = SHARED / "slurm-local.sh"
        if not script.exists():
            pytest.skip(f"no SLURM ({why}) and no {script} to start one")
        if os.geteuid() != 0:
            pytest.skip(f"no SLURM ({why}); starting the local cluster needs root")
        env = {**os.environ, "SLURM_LOCAL_CPUS": os.environ.get("SLURM_LOCAL_CPUS", "8")}
        try:
            res = _sh("bash", str(script), timeout=900, env=env)
        except subprocess.TimeoutExpired:
            pytest.skip(f"no SLURM ({why}); {script} did not finish in 900 s")
        if res.returncode != 0:
            tail = (res.stdout + res.stderr).strip().splitlines()[-5:]
            pytest.skip(f"no SLURM ({why}); {script} failed (rc {res.returncode}): "
                        + " | ".join(tail))
        started = True
        why = _slurm_answers()
        if why is not None:
            pytest.skip(f"local SLURM started but unusable: {why}")
    cpus = _sh("sinfo", "-h", "-o", "%c").stdout.split()
    if not cpus or max(int(re.sub(r"\D", "", c) or 0) for c in cpus) < NTASKS:
        pytest.skip(f"the SLURM node has {cpus} CPUs; these tests need {NTASKS} "
                    "(start the local cluster with SLURM_LOCAL_CPUS=8)")
    yield
    if started:
        _sh("bash", str(SHARED / "slurm-local-stop.sh"), timeout=120)


def job_env(**extra: str) -> dict[str, str]:
    """The submitting environment: this interpreter's venv, no inherited SLURM/PMI job variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "PMI_", "FEDAST_"))}
    if (Path(sys.prefix) / "bin" / "activate").exists():
        env["FEDAST_VENV"] = sys.prefix
    else:  # not a venv: fedast-mpi and mpiexec next to the interpreter
        env["FEDAST_VENV"] = "none"
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def sbatch(*args: str, cwd: Path, env: dict[str, str]) -> str:
    res = _sh("sbatch", "--parsable", *args, cwd=cwd, env=env)
    assert res.returncode == 0, f"sbatch {' '.join(args)} failed: {res.stdout}{res.stderr}"
    return res.stdout.strip().split(";")[0]


def job_records(job_id: str) -> list[dict[str, str]]:
    """`scontrol show job -o` as dicts (an array job gives one record per task)."""
    res = _sh("scontrol", "show", "job", "-o", job_id)
    if res.returncode != 0:
        return []
    records = []
    for line in res.stdout.splitlines():
        rec = {}
        for item in line.split():
            key, sep, value = item.partition("=")
            if sep:
                rec[key] = value
        records.append(rec)
    return records


def wait_job(job_id: str, timeout: float, logs: list[Path], after_requeue: bool = False,
             ) -> list[dict[str, str]]:
    """Poll until every record of the job is finished; scancel and fail on timeout.

    after_requeue: once the job has been requeued, (1) let it start at once: SLURM holds a
    requeued job for the credential lifetime (cred_expire, 120 s by default); (2) lift its time
    limit to 15 min, so that the resumed run completes without a second interruption (which
    would work too, at a minute per round on a 2-core machine).
    The start is moved only REQUEUE_GAP seconds after the job was first seen pending again: slurmd
    revokes the first start's credential at the second the batch shell ends, and refuses a new
    credential made in that same second ("Job credential revoked": the job ends FAILED without
    starting, as in CI's stop 21), which SLURM's own hold exists to avoid.
    """
    deadline = time.monotonic() + timeout
    records: list[dict[str, str]] = []
    lifted = set()
    pending_since: dict[str, float] = {}
    while time.monotonic() < deadline:
        records = job_records(job_id)
        if records and all(r.get("JobState") in TERMINAL for r in records):
            return records
        if after_requeue:
            for r in records:
                if int(r.get("Restarts", "0")) < 1 or r.get("JobState") in TERMINAL:
                    continue
                if r["JobId"] not in lifted:
                    _sh("scontrol", "update", f"JobId={r['JobId']}", "TimeLimit=15")
                    lifted.add(r["JobId"])
                if r.get("JobState") == "PENDING" and r.get("Reason") == "BeginTime":
                    seen = pending_since.setdefault(r["JobId"], time.monotonic())
                    if time.monotonic() - seen >= REQUEUE_GAP:
                        _sh("scontrol", "update", f"JobId={r['JobId']}", "StartTime=now")
        time.sleep(1)
    _sh("scancel", job_id)
    pytest.fail(f"job {job_id} not finished after {timeout:.0f} s: "
                f"{[(r.get('JobId'), r.get('JobState'), r.get('Reason')) for r in records]}\n"
                + read_logs(logs))


def read_logs(paths: list[Path], tail: int | None = 6000) -> str:
    """The job logs (glob patterns), each cut to its last `tail` characters (None: whole)."""
    out = []
    for p in paths:
        for f in sorted(p.parent.glob(p.name)):
            text = f.read_text(errors="replace")
            out.append(f"--- {f}\n{text[-tail:] if tail else text}")
    return "\n".join(out) or "(no job logs)"


def run_attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        attrs["reached"] = {name: float(g.attrs["reached_time"]) for name, g in f["tasks"].items()}
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}


def events(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["events"][()]


# --------------------------------------------------------------------------------------- tests

def test_scripts_parse():
    """Every script is valid bash (no SLURM needed)."""
    for f in ["env.sh", "job.sh", "fedast-1node.sbatch", "fedast-multinode.sbatch",
              "sweep.sbatch", "submit-sweep.sh", "submit-reproduce.sh",
              "reproduce-summary.sbatch"]:
        res = _sh("bash", "-n", str(SLURM / f))
        assert res.returncode == 0, f"{f}: {res.stderr}"


@pytest.mark.timeout(420)
@pytest.mark.parametrize("template, shape", [
    ("fedast-1node.sbatch", []),
    ("fedast-multinode.sbatch", ["--nodes=1", f"--ntasks-per-node={NTASKS}"]),
])
def test_default_job_completes(slurm_cluster, tmp_path, template, shape):
    """The embedded default job under a template runs to completion: exit 0, every task reached.

    Submitted from tmp_path (so SUBMIT_DIR has no slurm/: the template finds its directory through
    `scontrol show job`), without FEDAST_RUN_DIR: the run lands in runs/<job name>-<job id>.
    """
    log = tmp_path / "job-%j.out"
    job = sbatch(*JOB_OPTS, *shape, "--job-name=fedast-t", f"--output={log}", str(SLURM / template),
                 "--set", "run.log_every=0", *CPU_PIN, cwd=tmp_path, env=job_env())
    logs = [tmp_path / f"job-{job}.out"]
    (rec,) = wait_job(job, 300, logs)
    text = read_logs(logs)
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", text
    run_file = tmp_path / "runs" / f"fedast-t-{job}" / "run.h5"
    assert run_file.exists(), text
    attrs = run_attrs(run_file)
    assert attrs["status"] == "completed", text
    assert attrs["world_size"] == NTASKS
    assert all(math.isfinite(t) for t in attrs["reached"].values()), attrs["reached"]
    assert "OMP_NUM_THREADS=1" in text and "fedast-mpi exited 0" in text, text


# A long run of the default job: no task can reach accuracy 1.0, so it stops at max_time.
# 3000 simulated units: about 40 s of wall time alone with -n 3 on a fast 2-core machine
# (80 units/s), twice that next to the reference run, so longer than the 25-45 s before the
# signal; about 4 min each on a slow one (13 units/s next to the reference run), inside
# wait_job's 600 s.
LONG = ["--set", "run.max_time=3000", "--set", "tasks.0.target_accuracy=1.0",
        "--set", "tasks.1.target_accuracy=1.0", "--set", "tasks.2.target_accuracy=1.0",
        "--set", "run.checkpoint.every_seconds=20", "--set", "run.log_every=10", *CPU_PIN]


@pytest.mark.timeout(900)
def test_checkpoint_requeue_resume(slurm_cluster, tmp_path):
    """A job that outlives its time limit checkpoints on the signal, is requeued and completes.

    --time=2:00 with --signal=B:USR1@75: SLURM signals the batch shell after 25-45 s, the shell
    forwards SIGUSR1 to mpiexec, the run checkpoints and exits 75, the shell requeues the job
    (same id, same run directory), and the next start resumes (the test then lifts the time
    limit, see wait_job). The final run file must equal an
    uninterrupted mpiexec run of the same config, /events bitwise, apart from `worker` and `wall`.
    """
    log = tmp_path / "job-%j.out"
    job = sbatch(*JOB_OPTS[:3], "--time=0:02:00", "--signal=B:USR1@75", "--job-name=fedast-rq",
                 f"--output={log}", str(SLURM / "fedast-1node.sbatch"), *LONG,
                 cwd=tmp_path, env=job_env())
    logs = [tmp_path / f"job-{job}.out"]
    # the uninterrupted reference, meanwhile
    plain_dir = tmp_path / "plain"
    plain = subprocess.Popen([str(BIN / "mpiexec"), "-n", str(NTASKS), str(BIN / "fedast-mpi"),
                              "run", "--out", str(plain_dir), *LONG],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**job_env(), "OMP_NUM_THREADS": "1"})
    try:
        records = wait_job(job, 600, logs, after_requeue=True)
        plain_out, _ = plain.communicate(timeout=300)
    finally:
        if plain.poll() is None:
            plain.kill()
    text, full = read_logs(logs), read_logs(logs, tail=None)
    (rec,) = records
    assert plain.returncode == 0, plain_out
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", text
    assert int(rec["Restarts"]) >= 1, text
    assert "SIGUSR1 received" in full and "scontrol requeue" in full, text
    assert "SLURM_RESTART_COUNT=1" in full, text
    assert f"launch: mpiexec -n {NTASKS} fedast-mpi resume" in full, text

    run_dir = tmp_path / "runs" / f"fedast-rq-{job}"
    assert list((run_dir / "checkpoints").glob("ckpt-*.h5")), text
    attrs, ref_attrs = run_attrs(run_dir / "run.h5"), run_attrs(plain_dir / "run.h5")
    assert attrs["status"] == "completed", text
    assert attrs["stop_reason"] == ref_attrs["stop_reason"]
    assert_same_events(run_dir / "run.h5", plain_dir / "run.h5")


def assert_same_events(path, ref_path):
    """/events of two run files equal, but for where a request ran and the wall time."""
    got, ref = events(path), events(ref_path)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    for name in ref.dtype.names:
        if name in ("worker", "wall"):
            continue
        assert np.array_equal(got[name], ref[name]), f"/events column {name} differs"


@pytest.mark.timeout(600)
def test_sweep_array(slurm_cluster, tmp_path):
    """submit-sweep.sh: a job array over fedast,fedbuff x 1 seed and the dependent summary job
    produce one comparison directory with every run and compare.md. fedbuff, a single-task
    algorithm, trains the three tasks alone (three array tasks, sized from `compare --plan`)."""
    out = tmp_path / "sweep"
    env = job_env(
        FEDAST_SBATCH_ARGS=" ".join([*JOB_OPTS, f"--output={tmp_path}/%x-%A_%a.out"]),
        FEDAST_SUMMARY_ARGS=f"--output={tmp_path}/%x-%j.out",
    )
    res = _sh(str(SLURM / "submit-sweep.sh"), str(REPO / "configs" / "compare-embedded.yaml"),
              "fedast,fedbuff", "1", str(out), "--set", "run.max_time=300", *CPU_PIN,
              cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "--array=0-3" in res.stdout, res.stdout
    array_id, summary_id = res.stdout.strip().splitlines()[-1].split()
    logs = [tmp_path / "fedast-sweep*.out"]
    tasks = wait_job(array_id, 480, logs)
    text = read_logs(logs)
    assert len(tasks) == 4 and all(t["JobState"] == "COMPLETED" for t in tasks), text
    (summary,) = wait_job(summary_id, 120, logs)
    text = read_logs(logs)
    assert summary["JobState"] == "COMPLETED", text
    names = ["fedast-seed0", *(f"fedbuff-seed0-{t}" for t in
                               ("digits-iid", "digits-dirichlet", "synthetic-1-1"))]
    for name in names:
        assert run_attrs(out / name / "run.h5")["status"] == "completed", text
    md = (out / "compare.md").read_text()
    assert "| fedast |" in md and "| fedbuff |" in md and "one after another" in md, md
    assert (out / "compare.csv").exists()


FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


@pytest.mark.timeout(900)
@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason=f"real Fashion-MNIST not installed in "
                    f"{FMNIST_DIR} (apt-get install dataset-fashion-mnist)")
def test_reproduce_as_job_arrays(slurm_cluster, tmp_path):
    """submit-reproduce.sh: the M = 2 row of Fig. 5 (one seed, max_time 3) as a sweep array on
    the real files, then the job that writes reproduce.md beside the paper's numbers."""
    out = tmp_path / "fig5"
    env = job_env(
        FEDAST_SBATCH_ARGS=" ".join([*JOB_OPTS, f"--output={tmp_path}/%x-%A_%a.out"]),
        FEDAST_SUMMARY_ARGS=f"--output={tmp_path}/%x-%j.out",
    )
    res = _sh(str(SLURM / "submit-reproduce.sh"), "fig5-fmnist", "1", str(out), "--rows", "m2",
              "--set", "run.max_time=3", "--set", f"tasks.*.data_dir={FMNIST_DIR}", *CPU_PIN,
              cwd=tmp_path, env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "row m2: sweep array" in res.stdout, res.stdout
    final = res.stdout.strip().splitlines()[-1]
    logs = [tmp_path / "fedast-*.out"]
    (summary,) = wait_job(final, 780, logs)
    text = read_logs(logs)
    assert summary["JobState"] == "COMPLETED", text
    for name in ("fedast-seed0", "sync-seed0"):
        assert run_attrs(out / "m2" / name / "run.h5")["status"] == "completed", text
    md = (out / "reproduce.md").read_text()
    assert "| Fashion-MNIST, M = 2 | 2 | 1 |" in md and "| 383.1 |" in md, md
    assert (out / "m2" / "compare.md").exists()
