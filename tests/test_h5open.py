"""Tests of the shared HDF5 opener (no file locking) and the retry of reads overlapping a flush."""

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedast_mpi import h5open
from fedast_mpi.h5open import open_h5, with_retry

ROOT = Path(__file__).resolve().parents[1]


class Flaky:
    """A read that raises `errors` one after the other, then returns "ok"."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_retry_succeeds_after_transient_failures():
    read = Flaky(OSError("flush"), KeyError("/events"))
    assert with_retry(read, attempts=3, delay=0) == "ok"
    assert read.calls == 3


def test_retry_gives_up_after_attempts_reraising_the_last_error():
    first, last = RuntimeError("first"), ValueError("last")
    read = Flaky(first, OSError("middle"), last, OSError("never reached"))
    with pytest.raises(ValueError) as info:
        with_retry(read, attempts=3, delay=0)
    assert info.value is last
    assert read.calls == 3


def test_retry_waits_between_attempts(monkeypatch):
    sleeps = []
    monkeypatch.setattr(h5open.time, "sleep", sleeps.append)
    with pytest.raises(OSError):
        with_retry(Flaky(*[OSError()] * 5), attempts=4, delay=0.25)
    assert sleeps == [0.25] * 3  # between attempts, not before the first nor after the last


def test_retry_defaults_and_a_single_attempt():
    read = Flaky(*[OSError()] * (h5open.ATTEMPTS + 1))
    with pytest.raises(OSError):
        with_retry(read, delay=0)
    assert read.calls == h5open.ATTEMPTS
    read = Flaky(OSError())
    with pytest.raises(OSError):
        with_retry(read, attempts=0, delay=0)  # at least one call
    assert read.calls == 1


def test_non_retryable_error_propagates_at_once():
    read = Flaky(TypeError("a bug, not a flush"))
    with pytest.raises(TypeError):
        with_retry(read, attempts=5, delay=10)  # a retry would sleep 10 s
    assert read.calls == 1
    read = Flaky(KeyError("x"))
    with pytest.raises(KeyError):
        with_retry(read, attempts=5, delay=10, retry_on=OSError)
    assert read.calls == 1


def test_open_h5_reads_a_file_another_handle_has_open_for_writing(tmp_path):
    path = tmp_path / "live.h5"
    writer = h5py.File(path, "w")  # plain h5py: it holds HDF5's file lock while open
    try:
        writer["rows"] = np.arange(5)
        writer.flush()
        script = textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            from fedast_mpi.h5open import open_h5
            with open_h5({str(path)!r}) as f:
                print(f.mode, f["rows"][:].sum())
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["r", "10"]
    finally:
        writer.close()


def test_open_h5_modes_and_errors(tmp_path):
    path = tmp_path / "f.h5"
    with open_h5(path, "w-") as f:
        f.attrs["x"] = 1
    with pytest.raises(FileExistsError):
        open_h5(path, "w-")
    with open_h5(str(path)) as f:
        assert f.mode == "r" and int(f.attrs["x"]) == 1
    with pytest.raises(FileNotFoundError):
        open_h5(tmp_path / "missing.h5")
