"""slurm/fedast-multinode.sbatch on a real two-node SLURM: ranks on both nodes, checkpoint +
requeue + resume across nodes, and a rank killed on the second node ending the whole job.

The cluster. Both nodes run on this one machine: `../shared/slurm-local.sh` with
SLURM_LOCAL_NODES=2 starts one slurmd per node ("node1", "node2"), each in its own UTS namespace
(so a rank's gethostname() is its node's name) on loopback addresses 127.0.2.x. PIDs are
shared, so the test sees every process of a job and tells the nodes apart by the UTS namespace
of each process (`/proc/PID/ns/uts` against that of the node's slurmd), which does not depend on
what a launcher exports (measured: the ranks' SLURMD_NODENAME and SLURM_NODEID agree with it
under Hydra's mpiexec; the test prints them).

Coexistence with tests/test_slurm.py. That module's session fixture uses whatever SLURM
answers with a usable node, else starts the one-node cluster (slurm-local.sh without
SLURM_LOCAL_NODES) and stops it at the end of the session if it started it. The module fixture
here (`two_nodes`):
- uses a SLURM that already answers with two or more usable nodes as it is, and leaves it;
- otherwise (root, slurm-local.sh present) starts the two-node cluster with
  SLURM_LOCAL_NODES=2 SLURM_LOCAL_CRED_EXPIRE=10 (a requeued job may restart after 10 s instead
  of 120 s), which replaces a running one-node slurm-local cluster (slurm-local.sh rewrites
  slurm.conf and restarts the daemons), and at the end of this module stops it
  (slurm-local-stop.sh, which also removes the node names from /etc/hosts) and, if a
  slurm-local cluster ran before, starts that one again with the knobs read back from the
  slurm.conf it had written (node count, advertised CPUs, cred_expire, MpiDefault, TaskProlog).
  So test_slurm.py's fixture, which decided once at its start, finds its cluster as it left
  it, in either module order; and a later session-scoped start sees "nothing runs" as before.
- skips (with the reason) when a one-node SLURM that is not slurm-local.sh's answers (it is not
  reconfigured), when not root, or when the cluster does not start.
The jobs override the template's GPU/size defaults on the sbatch line (2 nodes x 2 tasks, one CPU
per task, --gres=none, a short --time); the template's --exclusive cannot be undone from the
command line (sbatch 22.05 has no --no-exclusive) and is harmless here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_slurm import (BIN, SHARED, SLURM, TERMINAL, _sh, _slurm_answers, assert_same_events,
                        job_env, job_records, read_logs, run_attrs, sbatch, wait_job)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PER_NODE = 2
RANKS = 2 * PER_NODE
TWO_NODE_OPTS = ["--nodes=2", f"--ntasks-per-node={PER_NODE}", "--cpus-per-task=1",
                 "--gres=none"]
CONF = Path("/etc/slurm/slurm.conf")
USABLE = ("idle", "mixed", "allocated")


def _stall_timeout_set(seconds: int) -> list[str]:
    """`--set run.stall_timeout=S` where the config has the key (fedast_mpi.watchdog)."""
    from fedast_mpi.config import RunConfig
    if "stall_timeout" in {f.name for f in dataclasses.fields(RunConfig)}:
        return ["--set", f"run.stall_timeout={seconds}"]
    return []


STALL = 20
STALL_SET = _stall_timeout_set(STALL)


def long_job(max_time: float) -> list[str]:
    """The default job made long: no task reaches accuracy 1.0, so the run stops at max_time
    (virtual clock: the /events of a run do not depend on where its ranks run)."""
    return ["--set", f"run.max_time={max_time:g}", "--set", "tasks.0.target_accuracy=1.0",
            "--set", "tasks.1.target_accuracy=1.0", "--set", "tasks.2.target_accuracy=1.0",
            "--set", "run.checkpoint.every_seconds=20", "--set", "run.log_every=10",
            "--set", "run.device=cpu"]


SIGNAL_LEAD = 120
"""--signal=B:USR1@SIGNAL_LEAD; the test later shortens the time limit so that the signal is
due at once (see test_two_nodes_requeue_resume)."""
SIGNAL_LATENCY = 40
"""Seconds the first start must keep running after the signal is due: slurmctld looks at time
limits (and sends --signal) only every 30 s; measured here 8-23 s."""


def calibrate(out: Path, seconds: float) -> tuple[float, str]:
    """A max_time that the job's run needs about `seconds` of wall time for next to the
    reference run, from a run of 60 simulated units alone (-n RANKS, `out`): the two runs
    share the cores, so each goes at about half the speed of one alone. Returns (max_time,
    what was measured)."""
    res = subprocess.run([str(BIN / "mpiexec"), "-n", str(RANKS), str(BIN / "fedast-mpi"), "run",
                          "--out", str(out), *long_job(60)],
                         capture_output=True, text=True, timeout=300,
                         env={**job_env(), "OMP_NUM_THREADS": "1"})
    m = re.search(r"simulated time ([\d.]+), \d+ updates(?: \([^)]*\))? in ([\d.]+) s wall",
                  res.stdout + res.stderr)
    assert res.returncode == 0 and m, f"calibration run failed:\n{res.stdout}{res.stderr}"
    alone = float(m[1]) / max(float(m[2]), 0.1)  # simulated units per wall second
    max_time = min(max(round(alone / 2 * seconds / 50) * 50, 300), 5000)
    return max_time, f"{alone:.1f} units/s alone -> run.max_time={max_time}"


# ------------------------------------------------------------------------------ the cluster

def _usable_nodes() -> list[str]:
    res = _sh("sinfo", "-h", "-N", "-o", "%N %T")
    nodes = set()
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].rstrip("*~#").lower() in USABLE:
            nodes.add(parts[0])
    return sorted(nodes)


def _local_cluster_knobs() -> dict[str, str] | None:
    """The slurm-local.sh environment that writes the running slurm.conf again, or None when
    slurm.conf is not slurm-local.sh's."""
    try:
        text = CONF.read_text()
    except OSError:
        return None
    if not text.startswith("# Written by slurm-local.sh"):
        return None
    nodes = re.findall(r"^NodeName=(\S+) .*?\bCPUs=(\d+)", text, re.M)
    if not nodes:
        return None
    knobs = {"SLURM_LOCAL_NODES": str(len(nodes))}
    if len(nodes) > 1:
        knobs["SLURM_LOCAL_NODE_PREFIX"] = re.sub(r"\d+$", "", nodes[0][0])
    if re.search(r"^SlurmdParameters=config_overrides", text, re.M):
        knobs["SLURM_LOCAL_CPUS"] = nodes[0][1]
    if m := re.search(r"^AuthInfo=cred_expire=(\d+)", text, re.M):
        knobs["SLURM_LOCAL_CRED_EXPIRE"] = m[1]
    if m := re.search(r"^MpiDefault=(\S+)", text, re.M):
        knobs["SLURM_LOCAL_MPI_DEFAULT"] = m[1]
        if m[1] == "pmix":
            knobs["SLURM_LOCAL_PMIX"] = "1"
    knobs["SLURM_LOCAL_LO_ENV"] = "1" if re.search(r"^TaskProlog=", text, re.M) else "0"
    return knobs


def _local_script(name: str, knobs: dict[str, str], timeout: float):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_LOCAL_")}
    env.update(knobs)
    return _sh("bash", str(SHARED / name), timeout=timeout, env=env)


@pytest.fixture(scope="module")
def two_nodes():
    """Two usable SLURM nodes; see the module docstring for how the cluster is started and
    restored."""
    why = _slurm_answers()
    nodes = _usable_nodes() if why is None else []
    if len(nodes) >= 2:  # a multi-node SLURM answers: used as it is, left running
        if len(node_namespaces(nodes[:2])) < 2:
            pytest.skip(f"SLURM nodes {nodes[:2]} are not slurm-local.sh's nodes on this machine "
                        "(no /var/run/slurmd-NODE.pid): the tests watch the job's processes")
        yield nodes[:2]
        return
    script = SHARED / "slurm-local.sh"
    before = _local_cluster_knobs() if why is None else None
    if why is None and before is None:
        pytest.skip(f"a SLURM with {len(nodes)} usable node(s) answers and is not slurm-local.sh's "
                    "test cluster: not reconfiguring it into two nodes")
    if not script.exists():
        pytest.skip(f"fewer than 2 SLURM nodes ({why or nodes}) and no {script} to start two")
    if os.geteuid() != 0:
        pytest.skip(f"fewer than 2 SLURM nodes ({why or nodes}); starting the local two-node "
                    "cluster needs root")
    t0 = time.monotonic()
    try:
        knobs = {"SLURM_LOCAL_NODES": "2", "SLURM_LOCAL_CRED_EXPIRE": "10",
                 "SLURM_LOCAL_CPUS": os.environ.get("SLURM_LOCAL_CPUS", "8")}
        try:
            res = _local_script("slurm-local.sh", knobs, timeout=900)
        except subprocess.TimeoutExpired:
            pytest.skip(f"{script} with SLURM_LOCAL_NODES=2 did not finish in 900 s")
        if res.returncode != 0:
            tail = (res.stdout + res.stderr).strip().splitlines()[-5:]
            pytest.skip(f"{script} with SLURM_LOCAL_NODES=2 failed (rc {res.returncode}): "
                        + " | ".join(tail))
        nodes = _usable_nodes()
        if len(nodes) < 2:
            pytest.skip(f"local two-node SLURM started but nodes usable: {nodes}")
        print(f"\n[two_nodes] started {nodes} in {time.monotonic() - t0:.1f} s"
              + (f" (replacing a slurm-local cluster {before})" if before else ""))
        yield nodes[:2]
    finally:
        t1 = time.monotonic()
        stop = _local_script("slurm-local-stop.sh", {}, timeout=180)
        restored = None
        if before is not None:
            restored = _local_script("slurm-local.sh", {**before, "SLURM_LOCAL_SELFTEST": "0"},
                                     timeout=900)
        print(f"\n[two_nodes] stopped (rc {stop.returncode})"
              + (f", restored {before} (rc {restored.returncode})" if restored else "")
              + f" in {time.monotonic() - t1:.1f} s")
        assert stop.returncode == 0, f"slurm-local-stop.sh: {stop.stdout}{stop.stderr}"
        if restored is not None:
            assert restored.returncode == 0, \
                f"restoring the previous cluster {before}: {restored.stdout}{restored.stderr}"
            assert _slurm_answers() is None, "the restored cluster does not answer"


# ---------------------------------------------------------------------- the job's processes

def _environ(pid: str) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def _uts(pid: str | int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/uts")
    except OSError:
        return None


def node_namespaces(nodes: list[str]) -> dict[str, str]:
    """UTS namespace -> node name, from the slurmd of each node (slurm-local.sh's pid files)."""
    out = {}
    for node in nodes:
        try:
            pid = Path(f"/var/run/slurmd-{node}.pid").read_text().strip()
        except OSError:
            continue
        ns = _uts(pid)
        if ns:
            out[ns] = node
    return out


def job_processes(job_id: str) -> list[dict]:
    """Every process of the job: those with SLURM_JOB_ID=job_id in their environment (batch
    shell, mpiexec, srun, Hydra proxies, ranks) and its slurmstepd ("slurmstepd: [JOB.x]")."""
    procs = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        cmd = _cmdline(pid)
        env = _environ(pid)
        if env.get("SLURM_JOB_ID") == job_id or cmd.startswith(f"slurmstepd: [{job_id}."):
            procs.append({"pid": int(pid), "cmd": cmd, "env": env, "uts": _uts(pid)})
    return procs


def rank_processes(job_id: str, nodes: list[str]) -> dict[int, dict]:
    """The job's fedast-mpi ranks: MPI rank -> pid, node (by UTS namespace), MPI_LOCALRANKID,
    SLURMD_NODENAME and SLURM_RESTART_COUNT as their environment holds them."""
    spaces = node_namespaces(nodes)
    ranks = {}
    for p in job_processes(job_id):
        env = p["env"]
        if "fedast-mpi" not in p["cmd"] or "PMI_RANK" not in env:
            continue
        ranks[int(env["PMI_RANK"])] = {
            "pid": p["pid"], "node": spaces.get(p["uts"]), "local": env.get("MPI_LOCALRANKID"),
            "SLURMD_NODENAME": env.get("SLURMD_NODENAME"),
            "SLURM_NODEID": env.get("SLURM_NODEID"),
            "restart": env.get("SLURM_RESTART_COUNT", "0")}
    return ranks


def wait_ranks(job_id: str, nodes: list[str], timeout: float, logs: list[Path]) -> dict[int, dict]:
    """The RANKS rank processes of the job's current start, once all are up."""
    deadline = time.monotonic() + timeout
    ranks: dict[int, dict] = {}
    while time.monotonic() < deadline:
        ranks = rank_processes(job_id, nodes)
        if len(ranks) == RANKS:
            return ranks
        recs = job_records(job_id)
        if recs and recs[0].get("JobState") in TERMINAL:
            break
        time.sleep(0.5)
    pytest.fail(f"job {job_id}: {len(ranks)} of {RANKS} rank processes seen ({ranks})\n"
                + read_logs(logs))


def placement_hosts(text: str) -> dict[int, str]:
    """`rank 0 node1 cpu; rank 1 node1 cpu; ...` (run.h5's device_placement) -> rank: host."""
    return {int(m[1]): m[2] for m in re.finditer(r"rank (\d+) (\S+) ", text + " ")}


def check_block_placement(ranks: dict[int, dict], nodes: list[str]) -> None:
    """Ranks fill the first node's slots first: PER_NODE ranks per node, local ranks 0..
    in rank order on each node."""
    for i, node in enumerate(nodes):
        on_node = sorted(r for r, p in ranks.items() if p["node"] == node)
        assert on_node == list(range(i * PER_NODE, (i + 1) * PER_NODE)), (node, ranks)
        assert [ranks[r]["local"] for r in on_node] == [str(k) for k in range(PER_NODE)], \
            (node, ranks)


def _seconds(text: str) -> int:
    """SLURM's [D-]HH:MM:SS (RunTime) in seconds."""
    days, _, hms = text.rpartition("-")
    h, m, sec = (["0", "0"] + hms.split(":"))[-3:]
    return ((int(days or 0) * 24 + int(h)) * 60 + int(m)) * 60 + int(sec)


def signal_due_now(job_id: str) -> str:
    """Shorten the running job's time limit so that its --signal (SIGNAL_LEAD before the end) is
    due now, leaving more than SIGNAL_LEAD / 2 to the end; returns the new limit."""
    (rec,) = job_records(job_id)
    minutes = (_seconds(rec["RunTime"]) + SIGNAL_LEAD) // 60
    res = _sh("scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}")
    assert res.returncode == 0, res.stdout + res.stderr
    return f"TimeLimit={minutes} at RunTime={rec['RunTime']}"


def wait_requeued_job(job_id: str, timeout: float, logs: list[Path]) -> dict[str, str]:
    """Poll until the job is finished; scancel and fail on timeout.

    Once it has been requeued: lift its time limit to 15 min, so that the resumed run completes
    in one go, and let it start once it has been held (Reason=BeginTime, the credential
    lifetime) for 3 s. Not at once: a start in the same second as the requeue fails ("Killing
    non-startable batch JobId=N: Job credential revoked" in slurmctld.log, the job FAILED),
    since slurmd compares the new credential's and the revocation's times in whole seconds.
    """
    deadline = time.monotonic() + timeout
    rec: dict[str, str] = {}
    lifted = False
    held_since = None
    while time.monotonic() < deadline:
        recs = job_records(job_id)
        rec = recs[0] if recs else {}
        if rec.get("JobState") in TERMINAL:
            return rec
        failed = [ln for ln in read_logs(logs, tail=None).splitlines()
                  if ln.startswith("fedast-mpi: error:")]
        if failed:  # the run failed; the job may still wait for ranks that never end
            time.sleep(5)
            recs = job_records(job_id)
            if recs and recs[0].get("JobState") in TERMINAL:
                return recs[0]
            left = ", ".join(f"rank {p['env']['PMI_RANK']} on {p['env'].get('SLURMD_NODENAME')}"
                             f" (pid {p['pid']})" for p in job_processes(job_id)
                             if "PMI_RANK" in p["env"] and "fedast-mpi" in p["cmd"])
            _sh("scancel", job_id)
            pytest.fail(f"job {job_id}: the run failed, and the job was still "
                        f"{recs[0].get('JobState') if recs else '?'} 5 s later (scancelled); "
                        f"ranks left: {left or 'none'}\n{failed[0]}\n" + read_logs(logs))
        if rec and int(rec.get("Restarts", "0")) >= 1:
            if not lifted:
                _sh("scontrol", "update", f"JobId={job_id}", "TimeLimit=15")
                lifted = True
            if rec.get("JobState") == "PENDING" and rec.get("Reason") == "BeginTime":
                held_since = held_since or time.monotonic()
                if time.monotonic() - held_since >= 3:
                    _sh("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        time.sleep(1)
    _sh("scancel", job_id)
    pytest.fail(f"job {job_id} not finished after {timeout:.0f} s: {rec.get('JobState')} "
                f"({rec.get('Reason')})\n" + read_logs(logs))


# ------------------------------------------------------------------------------------ tests

@pytest.mark.timeout(900)
def test_two_nodes_requeue_resume(two_nodes, tmp_path):
    """A job of fedast-multinode.sbatch over both nodes is signalled before its time limit,
    checkpoints (exit 75), requeues itself, resumes on both nodes and completes with the /events
    of an uninterrupted `mpiexec -n 4` run of the same config (apart from `worker` and `wall`).

    Timing. SLURM sends --signal=B:USR1@LEAD at its periodic time-limit check (every 30 s), so up
    to 30 s after it is due; a signal before the launch would requeue an empty start. So the job
    asks for --time=10:00 --signal=B:USR1@120, and once its run has started (run.h5 written) the
    test shortens the time limit so that the signal is due at once: it arrives within 30 s,
    while the run goes on (run.max_time calibrated for about 90 s of wall time next to the
    reference run), and more than 60 s before the new limit. After the requeue the test lifts
    the limit again (wait_requeued_job). The ranks of the first start are identified in /proc
    (node by UTS namespace, MPI_LOCALRANKID); run.h5 (its device attributes written again by the
    resumed start) names node1 and node2 for its ranks.
    """
    t0 = time.monotonic()
    max_time, measured = calibrate(tmp_path / "calibration", 2 * SIGNAL_LATENCY + 10)
    t_cal = time.monotonic() - t0
    job_args = [*long_job(max_time), *STALL_SET]  # a stalled run fails in 20 s, not 10 min
    run_dir = tmp_path / "run"
    log = tmp_path / "job-%j.out"
    job = sbatch(*TWO_NODE_OPTS, "--time=0:10:00", f"--signal=B:USR1@{SIGNAL_LEAD}",
                 "--job-name=fedast-mn-rq", f"--output={log}",
                 str(SLURM / "fedast-multinode.sbatch"), *job_args,
                 cwd=tmp_path, env=job_env(FEDAST_RUN_DIR=str(run_dir)))
    logs = [tmp_path / f"job-{job}.out"]
    plain_dir = tmp_path / "plain"
    plain = subprocess.Popen([str(BIN / "mpiexec"), "-n", str(RANKS), str(BIN / "fedast-mpi"),
                              "run", "--out", str(plain_dir), *job_args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**job_env(), "OMP_NUM_THREADS": "1"})
    try:
        first = wait_ranks(job, two_nodes, 120, logs)
        deadline = time.monotonic() + 120
        while not (run_dir / "run.h5").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (run_dir / "run.h5").exists(), read_logs(logs)
        t_run = time.monotonic() - t0
        limit = signal_due_now(job)
        rec = wait_requeued_job(job, 600, logs)
        t_job = time.monotonic() - t0
        plain_out, _ = plain.communicate(timeout=600)
    finally:
        if plain.poll() is None:
            plain.kill()
    t_all = time.monotonic() - t0
    text, full = read_logs(logs), read_logs(logs, tail=None)
    print(f"\n[requeue] calibration {t_cal:.1f} s: {measured}; run.h5 at {t_run:.1f} s ({limit}),"
          f" job done {t_job:.1f} s, reference done {t_all:.1f} s after the start of the test"
          f"\n[requeue] first start's ranks: {first}")
    assert plain.returncode == 0, plain_out
    assert int(rec["Restarts"]) >= 1 and "SLURM_RESTART_COUNT=1" in full, \
        f"the job was not requeued (a run faster than calibrated?)\n{text}"
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", text

    # the first start: every rank on its node, in block order, with node-local ranks
    assert all(p["restart"] == "0" for p in first.values()), first
    check_block_placement(first, two_nodes)

    # the log: both nodes, the signal, exit 75, the requeue and the resume
    assert f"nodes: {' '.join(two_nodes)}" in full, text
    assert f"ranks: {RANKS} of {RANKS} task slots" in full, text
    assert "SIGUSR1 received" in full, text
    assert "fedast-mpi exited 75" in full, text
    assert f"scontrol requeue {job}" in full, text
    if PYPI_MPICH_UCX:  # slurm/env.sh avoids the wheel's ANY_SOURCE loss (the test below)
        assert "MPIR_CVAR_CH4_NETMOD=ofi" in full, text
    assert f"launch: mpiexec -n {RANKS} fedast-mpi resume {run_dir}" in full, text
    assert full.rstrip().splitlines()[-1].startswith("fedast-slurm: fedast-mpi exited 0"), text

    # run.h5 (its device attributes written by the resumed start): two nodes, four ranks
    assert list((run_dir / "checkpoints").glob("ckpt-*.h5")), text
    attrs, ref_attrs = run_attrs(run_dir / "run.h5"), run_attrs(plain_dir / "run.h5")
    print(f"[requeue] device_placement: {attrs.get('device_placement')!r}")
    assert attrs["status"] == "completed", text
    assert int(attrs["world_size"]) == RANKS
    hosts = placement_hosts(attrs["device_placement"])
    assert hosts == {r: two_nodes[r // PER_NODE] for r in range(RANKS)}, attrs["device_placement"]
    assert attrs["stop_reason"] == ref_attrs["stop_reason"]

    assert_same_events(run_dir / "run.h5", plain_dir / "run.h5")


@pytest.mark.timeout(600)
def test_rank_killed_on_second_node_ends_job(two_nodes, tmp_path):
    """kill -9 of a worker rank on the second node ends the whole job, on both nodes, within
    60 s (+ run.stall_timeout where the config has it): the job FAILED, no process of it left,
    and its log ends with the failure."""
    t0 = time.monotonic()
    run_dir = tmp_path / "run"
    log = tmp_path / "job-%j.out"
    job = sbatch(*TWO_NODE_OPTS, "--time=0:05:00", "--signal=B:USR1@10",
                 "--job-name=fedast-mn-kill", f"--output={log}",
                 str(SLURM / "fedast-multinode.sbatch"), *long_job(600), *STALL_SET,
                 cwd=tmp_path, env=job_env(FEDAST_RUN_DIR=str(run_dir)))
    logs = [tmp_path / f"job-{job}.out"]
    try:
        ranks = wait_ranks(job, two_nodes, 120, logs)
        check_block_placement(ranks, two_nodes)
        # the run is under way: run.h5 written (after every rank's set-up), a few updates in
        deadline = time.monotonic() + 120
        while not (run_dir / "run.h5").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (run_dir / "run.h5").exists(), read_logs(logs)
        time.sleep(5)
        victim = max(r for r, p in ranks.items() if p["node"] == two_nodes[1] and r != 0)
        pid = ranks[victim]["pid"]
        print(f"\n[kill] ranks {ranks}\n[kill] kill -9 rank {victim} (pid {pid}) on "
              f"{two_nodes[1]}, {time.monotonic() - t0:.1f} s after sbatch")
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        bound = 60 + (STALL if STALL_SET else 0)
        t_done = t_gone = None
        rec: dict[str, str] = {}
        left: list[dict] = []
        while time.monotonic() - t_kill < bound:
            recs = job_records(job)
            if recs and recs[0].get("JobState") in TERMINAL:
                rec = recs[0]
                if t_done is None:
                    t_done = time.monotonic() - t_kill
            left = job_processes(job)
            if t_done is not None and not left:
                t_gone = time.monotonic() - t_kill
                break
            time.sleep(0.5)
    finally:
        if not job_records(job) or job_records(job)[0].get("JobState") not in TERMINAL:
            _sh("scancel", job)
    text = read_logs(logs)
    print(f"[kill] job {rec.get('JobState')} ExitCode={rec.get('ExitCode')} after {t_done} s, "
          f"no process left after {t_gone} s (bound {bound} s); "
          f"total {time.monotonic() - t0:.1f} s\n[kill] log tail:\n{text[-1500:]}")
    assert t_done is not None, f"job not finished {bound} s after the kill\n{text}"
    assert t_gone is not None, (f"processes of job {job} left {bound} s after the kill: "
                                f"{[(p['pid'], p['cmd'][:80]) for p in left]}")
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] != "0:0", (rec, text)
    assert not [ln for ln in text.splitlines() if "SIGUSR1 received" in ln], text
    last = text.rstrip().splitlines()[-1]
    m = re.match(r"fedast-slurm: (error: )?fedast-mpi exited (\d+)", last)
    assert m and int(m[2]) not in (0, 75), last
    # the failure is named before that: Hydra's banner for the killed rank, or fedast-mpi's line
    assert ("BAD TERMINATION" in text or "fedast-mpi: error:" in text), text


def _pypi_mpich_ucx() -> bool:
    """Is this venv's MPI the MPICH wheel from PyPI with its default ucx netmod?"""
    res = _sh(str(BIN / "python"), "-c", "import mpi4py; mpi4py.rc.initialize = False; "
              "from mpi4py import MPI; print(MPI.Get_library_version())")
    return "pypi.org/p/mpich" in res.stdout and "ch4:ucx" in res.stdout


PYPI_MPICH_UCX = _pypi_mpich_ucx()

CHECK_JOB = """#!/bin/bash
. {slurm}/env.sh || exit 2
echo "netmod: ${{MPIR_CVAR_CH4_NETMOD:-default}}"
$FEDAST_LAUNCH python {slurm}/check-anysource.py 3000
"""


@pytest.mark.timeout(300)
def test_anysource_receives_across_nodes_with_env_sh(two_nodes, tmp_path):
    """slurm/check-anysource.py (rank 0's pre-posted ANY_SOURCE receives, without fedast-mpi)
    on both nodes under slurm/env.sh: every message arrives. With the PyPI MPICH wheel's default
    ucx netmod about 2,000 of the 9,000 are lost (closing note of issue 13); env.sh switches a
    multi-node job of that wheel to ofi."""
    script = tmp_path / "check.sbatch"
    script.write_text(CHECK_JOB.format(slurm=SLURM))
    log = tmp_path / "check-%j.out"
    job = sbatch(*TWO_NODE_OPTS, "--time=0:04:00", f"--output={log}", str(script),
                 cwd=tmp_path, env=job_env())
    logs = [tmp_path / f"check-{job}.out"]
    (rec,) = wait_job(job, 240, logs)
    text = read_logs(logs)
    assert rec["JobState"] == "COMPLETED", text
    assert "check-anysource: all 9000 messages arrived (any receives, 3 senders)" in text, text
    if PYPI_MPICH_UCX:
        assert "netmod: ofi" in text, text
