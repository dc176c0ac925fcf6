"""fedast_mpi.heap: rank 0's freed update-sized blocks stay mapped (no page faults refilling them).

The pattern is the speculation log's: hundreds of update copies kept, all dropped at a
snapshot, then kept again. Measured in a child process (mallopt is process-wide) by its minor
page faults over the second round.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = r"""
import resource, sys
import numpy as np
from fedast_mpi.heap import keep_heap
kept = keep_heap() if sys.argv[1] == "1" else None
delta = np.ones(44426, np.float32)  # one LeNet-5 update, 178 KB

def round_():
    return [np.array(delta) for _ in range(400)]

log = round_()
del log
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
log = round_()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(keep: bool) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, "1" if keep else "0"], check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_heap_refills_without_page_faults():
    pages = 400 * 44426 * 4 // 4096  # what the second round touches
    kept, with_keep = faults(True)
    _, without = faults(False)
    assert kept == "True"
    assert without > pages // 2, "glibc returned no memory: the test shows nothing here"
    assert with_keep < pages // 20, (with_keep, without)
