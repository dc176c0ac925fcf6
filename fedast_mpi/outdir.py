"""Output directories checked before a job starts: every problem is a usage error (exit 2).

`fedast-mpi run --out DIR` and `compare --out DIR` call these on every rank before MPI
starts, so a bad directory ends the job at once with one line naming the path and the
problem, whether or not the directory exists yet. They only look: nothing is created,
and the run file's own exclusive creation (`fedast_mpi.runlog.RunLog`) still refuses a
run file that appears in between.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedast_mpi.errors import ConfigError
from fedast_mpi.schema import RUN_FILE


def out_option(text: str | None, option: str = "--out") -> Path | None:
    """The directory an `--out` option names (None when not given); empty text is refused
    (it would silently fall back to the default directory)."""
    if text is None:
        return None
    if not text.strip():
        raise ConfigError(f"{option}: must not be empty")
    return Path(text)


def check_writable_dir(path: Path, what: str = "output directory") -> None:
    """`path` is a directory this process may write in, or one it may create."""
    problem = _dir_problem(path)
    if problem is not None:
        raise ConfigError(f"{what} {str(path)!r}: {problem}")


def check_new_run_dir(path: Path, what: str = "output directory") -> None:
    """`path` can hold a new run: a writable directory (or creatable) without a run file."""
    check_writable_dir(path, what)
    run_file = path / RUN_FILE
    if os.path.lexists(run_file):
        raise ConfigError(f"{run_file} already exists; choose another output directory")


def _dir_problem(path: Path) -> str | None:
    """Why `path` cannot be (or become) a writable directory; None when it can."""
    try:
        if path.is_dir():
            return None if _writable(path) else "the directory is not writable"
        if os.path.lexists(path):
            return "exists and is not a directory"
    except OSError as exc:  # e.g. a component that cannot be searched
        return exc.strerror or str(exc)
    ancestor = path.absolute().parent
    while True:
        try:
            if ancestor.is_dir():
                break
            if os.path.lexists(ancestor):
                return f"cannot be created: {str(ancestor)!r} is not a directory"
        except OSError as exc:
            return f"cannot be created: {str(ancestor)!r}: {exc.strerror or exc}"
        ancestor = ancestor.parent
    if not _writable(ancestor):
        return f"cannot be created: {str(ancestor)!r} is not writable"
    return None


def _writable(directory: Path) -> bool:
    """Whether entries can be created in `directory`: write and search permission, on a file
    system mounted read-write (access(2) checks both)."""
    return os.access(directory, os.W_OK | os.X_OK)
