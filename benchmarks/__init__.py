"""fedast-mpi benchmarks: `python -m benchmarks` (see README.md here)."""

import json


def emit(record: dict, path: str | None) -> None:
    """A sub-process result as JSON: into `path` if given, else on stdout."""
    text = json.dumps(record)
    if path:
        with open(path, "w") as fh:
            fh.write(text)
    else:
        print(text)
