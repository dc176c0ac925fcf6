"""Every random stream of a run, derived from the run seed with SeedSequence.

A stream is named by a purpose and integers (client, task, request...), so the
same draw is made whatever rank makes it and in whatever order streams are used.
"""

import zlib

import numpy as np

# Purposes: stable integers so that renaming a constant never changes a stream.
PARTITION = 1
TIERS = 2
DELAY = 3
SELECT = 4
REQUEST = 5
MODEL_INIT = 6
DATASET = 7
HANDOVER = 8


def seed_sequence(seed: int, purpose: int, *keys: int) -> np.random.SeedSequence:
    """The SeedSequence of one stream: (run seed, purpose, keys...)."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(purpose), *(int(k) for k in keys)])


def generator(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    """A numpy Generator (PCG64) for one named stream."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, purpose, *keys)))


def int_seed(seed: int, purpose: int, *keys: int) -> int:
    """A 63-bit integer seed for one stream (e.g. for torch.Generator.manual_seed)."""
    return int(seed_sequence(seed, purpose, *keys).generate_state(2, np.uint64)[0] >> np.uint64(1))


def name_key(name: str) -> int:
    """A stable integer for a string (e.g. a dataset name) to use as a stream key."""
    return zlib.crc32(name.encode("utf-8"))
