"""Rank 0's heap kept mapped, so that update-sized allocations do not fault in fresh pages.

Rank 0 allocates arrays of one update's size all the time (the speculation log's copies,
aggregation results) and frees them in bulk (a snapshot drops hundreds of logged updates).
glibc serves such blocks with mmap or returns the freed top of the heap to the kernel, and
the next allocations fault every page in again: at 64 EMULATED workers that was a quarter of
rank 0's loop (0.6 ms per 178 KB copy in a VM, against 10 µs without the faults), measured by
py-spy and by the same runs under GLIBC_TUNABLES (README, Performance). Keeping the heap makes
those pages stay mapped; the memory is bounded by what rank 0 holds at its peak anyway.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""Blocks below this come from the heap (glibc's largest allowed value on 64-bit: a ResNet's
44 MB update is still mapped on its own)."""
TRIM_THRESHOLD = 1 << 30
"""Free memory at the top of the heap up to this stays mapped."""


def keep_heap() -> bool:
    """Set this process's malloc thresholds (glibc's `mallopt`); False where there is none
    (not Linux, another C library) or it refused, and nothing changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
