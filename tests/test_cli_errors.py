"""Usage errors of the `fedast-mpi` command: one line, exit 2, found before MPI starts.

Every case here fails before a run could start; `mpi4py` is hidden from the in-process
calls, so a check that came too late would show as an ImportError instead of training.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fedast_mpi.cli import main


@pytest.fixture
def no_mpi(monkeypatch):
    """`import mpi4py` fails: a command that got as far as MPI fails the test."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)


def error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedast-mpi: error: "), err
    return lines[0]


# ---------------------------------------------------------------- --out


@pytest.mark.parametrize("out", ["", "  "])
def test_empty_out_is_refused(no_mpi, capsys, tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)  # the default run directory would be made here
    assert main(["run", "--out", out]) == 2
    assert "--out: must not be empty" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_out_is_a_file(no_mpi, capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["run", "--out", str(target)]) == 2
    assert f"'{target}': exists and is not a directory" in error_line(capsys)
    assert target.read_text() == "x"


def test_out_under_a_file(no_mpi, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "a" / "b"
    assert main(["run", "--out", str(target)]) == 2
    line = error_line(capsys)
    assert f"'{target}': cannot be created: '{tmp_path / 'file'}' is not a directory" in line


def test_run_file_already_there(no_mpi, capsys, tmp_path):
    (tmp_path / "run.h5").write_bytes(b"old")
    assert main(["run", "--out", str(tmp_path)]) == 2
    assert f"{tmp_path / 'run.h5'} already exists" in error_line(capsys)
    assert (tmp_path / "run.h5").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any directory")
def test_parent_not_writable(no_mpi, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["run", "--out", str(locked / "run")]) == 2
        assert f"'{locked}' is not writable" in error_line(capsys)
        assert main(["run", "--out", str(locked)]) == 2
        assert "the directory is not writable" in error_line(capsys)
    finally:
        locked.chmod(0o700)


def test_compare_out_problems(no_mpi, capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    args = ["compare", "--algorithms", "fedast,sync", "--seeds", "2"]
    assert main([*args, "--out", str(target)]) == 2
    assert "exists and is not a directory" in error_line(capsys)
    assert main([*args, "--out", ""]) == 2
    assert "--out: must not be empty" in error_line(capsys)
    (tmp_path / "cmp" / "sync-seed1").mkdir(parents=True)
    (tmp_path / "cmp" / "sync-seed1" / "run.h5").write_bytes(b"old")
    assert main([*args, "--out", str(tmp_path / "cmp")]) == 2
    assert "sync-seed1/run.h5 already exists" in error_line(capsys)


def test_compare_last_seed_in_range(no_mpi, capsys, tmp_path):
    # seeds run.seed .. run.seed + N - 1: the last one must be a valid seed too
    assert main(["compare", "--algorithms", "fedast", "--seeds", "2", "--summarize",
                 "--set", "run.seed=4294967295", "--out", str(tmp_path)]) == 2
    assert "run.seed: must be in [0, 4294967295]" in error_line(capsys)


# ---------------------------------------------------------------- argparse


@pytest.mark.parametrize("argv,needle", [
    ([], "the following arguments are required: command"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
    (["compare", "--algorithms", "fedast"], "the following arguments are required: --out"),
    (["compare", "--algorithms", "fedast", "--out", "x", "--seeds", "two"],
     "argument --seeds: invalid int value: 'two'"),
    (["data"], "the following arguments are required: data_command"),
])
def test_usage_errors_are_one_line_exit_2(no_mpi, capsys, argv, needle):
    assert main(argv) == 2
    line = error_line(capsys)
    assert needle in line and line.endswith("--help)")


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: fedast-mpi run") and err == ""


# ---------------------------------------------------------------- closed stdout


def closed_stdout(*args: str, unbuffered: bool) -> subprocess.CompletedProcess:
    """`python -m fedast_mpi ARGS` writing into a pipe whose reader has already gone."""
    read, write = os.pipe()
    os.close(read)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        return subprocess.run([sys.executable, "-m", "fedast_mpi", *args], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(write)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    from fedast_mpi.config import load_config, to_yaml
    from fedast_mpi.runlog import RunLog
    path = tmp_path_factory.mktemp("inspect") / "run.h5"
    log = RunLog(path, config_yaml=to_yaml(load_config(None)), algorithm="fedast",
                 clock="virtual", seed=0, world_size=1, package_version="0")
    log.close("completed", "test")
    return path


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", ["validate", "inspect"])
def test_closed_stdout_ends_quietly(run_file, command, unbuffered):
    args = ["validate", "--set", "run.device=cpu"] if command == "validate" else \
        ["inspect", str(run_file)]
    res = closed_stdout(*args, unbuffered=unbuffered)
    assert res.returncode == 0 and res.stderr == "", res.stderr


# ---------------------------------------------------------------- a diverging run


@pytest.mark.launch
@pytest.mark.parametrize("n", [1, 3])
def test_diverging_run_prints_one_line_and_no_warning(tmp_path, n):
    """numpy's overflow warnings of the update norm (which the server then reports as a
    non-finite update) must not add lines to the one error line, on rank 0 or a worker."""
    from conftest import launch
    res = launch(n, "run", "--out", str(tmp_path / "run"), "--set", "run.log_every=0",
                 "--set", "tasks.0.local_lr=1e30", timeout=90)
    assert res.rc != 0
    assert len(res.error_lines()) == 1 and "non-finite update" in res.stderr
    assert "Warning" not in res.stderr, res.stderr
