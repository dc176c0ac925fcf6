"""Tests of the run file writer, its checked opener and the text summary."""

import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from fedast_mpi import schema
from fedast_mpi.errors import ConfigError, FedastError
from fedast_mpi.runlog import RunFileError, RunLog, open_run
from fedast_mpi.summary import summarize

CONFIG = "seed: 7\ntasks:\n  - name: a\n"
H5DUMP = shutil.which("h5dump")


def new_log(tmp_path, **kw):
    """A RunLog in tmp_path/run/run.h5 with two tasks."""
    log = RunLog(tmp_path / "run" / schema.RUN_FILE, config_yaml=CONFIG, algorithm="fedast",
                 clock="virtual", seed=7, world_size=3, package_version="0.1.0", **kw)
    log.add_task(0, "alpha", dataset="synthetic", model="logreg", n_params=110,
                 target_accuracy=0.8)
    log.add_task(1, "beta", dataset="mnist", model="mlp", n_params=5000, target_accuracy=0.9)
    return log


def event_row(i, task=0, accepted=1):
    """An EVENT_DTYPE row whose fields are all derived from i."""
    return (i, task, i % 5, 1 + i % 2, i, i + 1, i % 4, 0.5 * i, 0.5 * i + 1, 0.5 * i + 1.5,
            0.01 * i, 1.0 / (i + 1), 2.0, accepted)


def reader_script(path):
    """Python source a second process runs to read the live file."""
    return textwrap.dedent(f"""
        import h5py
        with h5py.File({str(path)!r}, "r", locking=False) as f:
            ev = f["/events"][:]
            print(len(ev), int(ev["request"][-1]), f.attrs["status"],
                  f["/tasks/alpha/eval"].shape[0])
    """)


def read_in_subprocess(path):
    """Read the run file from a second Python process; its printed fields."""
    out = subprocess.run([sys.executable, "-c", reader_script(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_dtypes_match_spec():
    assert schema.EVENT_DTYPE.names == (
        "request", "task", "client", "worker", "base_version", "version", "staleness",
        "dispatch_time", "finish_time", "time", "wall", "train_loss", "update_norm", "accepted")
    assert schema.EVENT_DTYPE["accepted"] == np.dtype("<i1")
    assert schema.EVAL_DTYPE.names == ("time", "wall", "version", "updates", "accuracy", "loss")
    assert schema.AGGREGATION_DTYPE.names == ("task", "version", "time", "wall", "n_updates",
                                              "max_staleness", "mean_staleness")
    assert schema.ALLOCATION_DTYPE.names == ("time", "task", "requests", "buffer_size", "sigma2")
    for dt in (schema.EVENT_DTYPE, schema.EVAL_DTYPE, schema.AGGREGATION_DTYPE,
               schema.ALLOCATION_DTYPE, schema.CLIENT_DTYPE):
        for name in dt.names:
            assert dt[name].str[0] in "<|", (dt, name)


def test_round_trip(tmp_path):
    log = new_log(tmp_path)
    for i in range(5):
        log.event(event_row(i, task=i % 2, accepted=int(i != 3)))
    block = np.array([event_row(i, task=1) for i in range(5, 9)], dtype=schema.EVENT_DTYPE)
    log.events(block)
    log.event(event_row(9))
    log.eval(0, (1.0, 0.1, 3, 12, 0.55, 1.2))
    log.eval(0, (2.0, 0.2, 6, 24, 0.81, 0.7))
    log.eval(1, (1.5, 0.15, 2, 8, 0.3, 2.0))
    log.aggregation((0, 1, 1.0, 0.1, 4, 2, 0.75))
    log.aggregation((1, 1, 1.2, 0.12, 3, 1, 0.5))
    log.allocation((0.0, 0, 2, 4, math.nan))
    log.allocation((0.0, 1, 1, 3, math.nan))
    log.allocation((5.0, 0, 3, 4, 0.25))
    tier = np.array([0, 1, 2, 1], dtype=np.int8)
    mult = np.array([4.0, 1.0, 0.5, 1.0], dtype=np.float32)
    n_samples = np.arange(8, dtype=np.int32).reshape(4, 2)
    log.write_clients(tier, mult, n_samples)
    log.task_reached(0, 2.0)
    log.task_reached(0, 3.0)  # only the first counts
    model = np.linspace(-1, 1, 110, dtype=np.float64)
    log.final_model(0, model)
    log.set_attrs(throughput=123.5, note="measured")
    log.close("completed", "target reached")
    log.close("failed")  # idempotent: no effect
    assert log.closed

    with open_run(tmp_path / "run") as f:
        a = f.attrs
        assert a["schema"] == schema.RUN_SCHEMA
        assert a["config"] == CONFIG
        assert (a["algorithm"], a["clock"], a["package_version"]) == ("fedast", "virtual", "0.1.0")
        assert (a["seed"], a["world_size"]) == (7, 3)
        assert (a["status"], a["stop_reason"]) == ("completed", "target reached")
        assert a["throughput"] == 123.5 and a["note"] == "measured"

        ev = f[schema.EVENTS]
        assert ev.dtype == schema.EVENT_DTYPE and ev.maxshape == (None,) and ev.chunks
        assert ev.compression is None
        expect = np.array([event_row(i, task=i % 2, accepted=int(i != 3)) for i in range(5)]
                          + [event_row(i, task=1) for i in range(5, 9)] + [event_row(9)],
                          dtype=schema.EVENT_DTYPE)
        np.testing.assert_array_equal(ev[:], expect)

        aggs = f[schema.AGGREGATIONS][:]
        assert aggs.dtype == schema.AGGREGATION_DTYPE
        assert aggs["task"].tolist() == [0, 1] and aggs["mean_staleness"][0] == np.float32(0.75)
        alloc = f[schema.ALLOCATION][:]
        assert alloc.dtype == schema.ALLOCATION_DTYPE
        assert alloc["requests"].tolist() == [2, 1, 3]
        assert np.isnan(alloc["sigma2"][:2]).all() and alloc["sigma2"][2] == 0.25

        c = f[schema.CLIENTS]
        assert isinstance(c, h5py.Group)
        np.testing.assert_array_equal(c["tier"][:], tier)
        np.testing.assert_array_equal(c["multiplier"][:], mult)
        np.testing.assert_array_equal(c["n_samples"][:], n_samples)
        assert c["tier"].dtype == np.int8 and c["n_samples"].dtype == np.int32

        alpha, beta = f[schema.TASKS]["alpha"], f[schema.TASKS]["beta"]
        assert alpha.attrs["index"] == 0 and beta.attrs["index"] == 1
        assert alpha.attrs["dataset"] == "synthetic" and beta.attrs["model"] == "mlp"
        assert alpha.attrs["n_params"] == 110 and beta.attrs["target_accuracy"] == 0.9
        assert alpha.attrs["reached_time"] == 2.0 and np.isnan(beta.attrs["reached_time"])
        ev0 = alpha[schema.EVAL][:]
        assert ev0.dtype == schema.EVAL_DTYPE
        assert ev0["accuracy"].tolist() == [0.55, 0.81] and ev0["updates"].tolist() == [12, 24]
        assert beta[schema.EVAL].shape == (1,)
        fm = alpha[schema.FINAL_MODEL]
        assert fm.dtype == np.float32
        np.testing.assert_array_equal(fm[:], model.astype(np.float32))
        assert schema.FINAL_MODEL not in beta


def test_events_over_several_flushes_keep_order(tmp_path):
    log = new_log(tmp_path, flush_every=0.0)
    n = 0
    for flush in range(7):
        for _ in range(1000 + 37 * flush):  # crosses chunk boundaries
            log.event(event_row(n))
            n += 1
        if flush % 2:
            log.events(np.array([event_row(n), event_row(n + 1)], dtype=schema.EVENT_DTYPE))
            n += 2
        log.maybe_flush()
        assert log.pending() == 0
    log.close("interrupted", "signal")
    with open_run(log.path) as f:
        assert f[schema.EVENTS]["request"].tolist() == list(range(n))
        assert f.attrs["status"] == "interrupted"


def test_maybe_flush_waits(tmp_path):
    log = new_log(tmp_path, flush_every=10.0)
    log.event(event_row(0))
    log.maybe_flush()
    assert log.pending() == 1
    log.maybe_flush(now=1e12)
    assert log.pending() == 0
    log.close("completed")


def test_bad_rows_and_status(tmp_path):
    log = new_log(tmp_path)
    with pytest.raises(ValueError):
        log.events(np.zeros(2, dtype=schema.EVAL_DTYPE))
    with pytest.raises(ValueError):
        log.eval(5, (0.0, 0.0, 0, 0, 0.0, 0.0))
    with pytest.raises(ValueError):
        log.close("finished")
    assert not log.closed
    log.close("failed", "test")


def test_live_reader_in_second_process(tmp_path):
    log = new_log(tmp_path)
    for i in range(5000):
        log.event(event_row(i))
    log.eval(0, (1.0, 0.1, 3, 12, 0.55, 1.2))
    log.flush()
    assert read_in_subprocess(log.path) == ["5000", "4999", "running", "1"]
    for i in range(5000, 5100):
        log.event(event_row(i))
    log.flush()
    assert read_in_subprocess(log.path) == ["5100", "5099", "running", "1"]
    assert "running" in summarize(os.path.dirname(log.path))
    log.close("completed")
    assert read_in_subprocess(log.path) == ["5100", "5099", "completed", "1"]


def h5dump_events(path, locking_env):
    """Run h5dump on /events (first 3 rows) and return (rc, stdout + stderr)."""
    env = dict(os.environ)
    env.pop("HDF5_USE_FILE_LOCKING", None)
    if locking_env:
        env["HDF5_USE_FILE_LOCKING"] = "FALSE"
    out = subprocess.run([H5DUMP, "-d", schema.EVENTS, "-c", "3", str(path)], env=env,
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout + out.stderr


def test_h5dump_reads_while_open_and_after_close(tmp_path):
    if H5DUMP is None:
        print("h5dump not installed (apt-get install hdf5-tools); skipping")
        pytest.skip("h5dump not installed (apt-get install hdf5-tools)")
    log = new_log(tmp_path)
    for i in range(300):
        log.event(event_row(i))
    log.flush()
    for locking_env in (False, True):
        rc, text = h5dump_events(log.path, locking_env)
        assert rc == 0, text
        assert "( 300 ) / ( H5S_UNLIMITED )" in text and '"request"' in text
        assert "(2): {" in text
    log.close("completed")
    for locking_env in (False, True):
        rc, text = h5dump_events(log.path, locking_env)
        assert rc == 0, text
        assert "( 300 ) / ( H5S_UNLIMITED )" in text and "(2): {" in text


def test_refuses_to_overwrite(tmp_path):
    log = new_log(tmp_path)
    log.close("completed")
    with pytest.raises(ConfigError, match="already exists; choose another output directory"):
        new_log(tmp_path)
    with open_run(log.path) as f:  # the old file is untouched
        assert f.attrs["status"] == "completed"


def test_context_manager_marks_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with new_log(tmp_path) as log:
            log.event(event_row(0))
            raise RuntimeError("boom")
    with open_run(log.path) as f:
        assert f.attrs["status"] == "failed" and "boom" in f.attrs["stop_reason"]
        assert f[schema.EVENTS].shape == (1,)


def test_open_run_errors(tmp_path):
    cases = {}
    cases["missing"] = (tmp_path / "nope.h5", "no such run file")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5\n")
    cases["text"] = (text, "not an HDF5 file")
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as f:
        f["x"] = 1
    cases["no schema"] = (bare, "without a schema attribute")
    other = tmp_path / "ckpt.h5"
    with h5py.File(other, "w") as f:
        f.attrs["schema"] = schema.CHECKPOINT_SCHEMA
    cases["wrong schema"] = (other, "has schema 'fedast-mpi/checkpoint/1'")
    for what, (path, message) in cases.items():
        with pytest.raises(RunFileError, match=message) as info:
            open_run(path)
        err = info.value
        assert isinstance(err, FedastError) and err.exit_code == 2, what
        assert "\n" not in str(err) and str(path) in str(err), what
    with pytest.raises(RunFileError, match="no such run file"):
        summarize(str(tmp_path))  # a directory without run.h5


def test_summarize(tmp_path):
    log = new_log(tmp_path)
    for i in range(10):
        log.event(event_row(i, task=i % 2, accepted=int(i < 8)))
    log.eval(0, (2.0, 0.2, 6, 24, 0.8125, 0.7))
    log.aggregation((0, 1, 1.0, 0.1, 4, 2, 0.75))
    log.task_reached(0, 2.0)
    log.flush()
    live = summarize(os.path.dirname(log.path))
    assert "alpha" in live and "beta" in live and "status running" in live
    assert "events 10 (accepted 8)" in live
    log.close("completed", "all targets reached")
    text = summarize(log.path)
    assert "status completed" in text and "all targets reached" in text
    assert "fedast" in text and "virtual" in text and "0.8125" in text
    assert len(text.splitlines()) < 25
    alpha = next(line for line in text.splitlines() if line.startswith("alpha"))
    assert "synthetic" in alpha and "logreg" in alpha and "110" in alpha


def test_run_id_writer_and_heartbeat(tmp_path):
    import socket
    import time
    log = new_log(tmp_path, flush_every=0.5)
    with h5py.File(log.path, "r", locking=False) as f:
        a = dict(f.attrs)
    assert len(log.run_id) == 32 and a["run_id"] == log.run_id
    assert a["writer_pid"] == os.getpid() and a["writer_host"] == socket.gethostname()
    assert a["flush_every"] == 0.5 and abs(a["heartbeat"] - time.time()) < 60
    time.sleep(0.02)
    log.flush()
    with h5py.File(log.path, "r", locking=False) as f:
        assert f.attrs["heartbeat"] > a["heartbeat"]
    log.close("completed")


def set_attrs(path, **attrs):
    with h5py.File(path, "r+") as f:
        for key, value in attrs.items():
            f.attrs[key] = value


def test_summary_tells_a_live_run_from_a_stale_one(tmp_path):
    import time
    log = new_log(tmp_path)
    log.flush()
    run_dir = os.path.dirname(log.path)
    text = summarize(run_dir)
    assert "live (last write" in text and "STALE" not in text
    log.close("interrupted")  # then made to look like a file a killed job left behind
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    set_attrs(log.path, status="running", writer_pid=gone.pid)
    text = summarize(run_dir)
    assert re.search(rf"STALE: no write for \d+ s \(writer pid {gone.pid} on host", text)
    assert "is gone" in text and "no checkpoint in" in text
    os.makedirs(os.path.join(run_dir, "checkpoints"))
    open(os.path.join(run_dir, "checkpoints", "ckpt-000004.h5"), "wb").close()
    set_attrs(log.path, writer_host="elsewhere", heartbeat=time.time() - 3600)
    text = summarize(run_dir)
    assert "STALE: no write for 3600 s (heartbeat older than 60 s" in text
    assert (f"resume with: mpiexec -n 3 fedast-mpi resume {run_dir} "
            f"(newest checkpoint ckpt-000004.h5)") in text
    set_attrs(log.path, heartbeat=time.time() - 30)  # another host, recent: cannot say dead
    assert "live (last write 30 s ago" in summarize(run_dir)
