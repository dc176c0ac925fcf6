"""Every random stream of a run, derived from the run seed with SeedSequence.

A stream is named by a purpose and integers (client, task, request...), so the
same draw is made whatever rank makes it and in whatever order streams are used.
"""

import json
import zlib
from collections import OrderedDict

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


def _int_seed_numpy(seed: int, purpose: int, *keys: int) -> int:
    return int(seed_sequence(seed, purpose, *keys).generate_state(2, np.uint64)[0] >> np.uint64(1))


def int_seed(seed: int, purpose: int, *keys: int) -> int:
    """A 63-bit integer seed for one stream (e.g. for torch.Generator.manual_seed).

    Equal to `seed_sequence(seed, purpose, *keys).generate_state(2, uint64)[0] >> 1`. Streams
    that differ only in their last key and are asked for repeatedly (the server's one seed per
    request id) are computed a block of consecutive last keys at a time (`_SeedBlocks`, the
    same arithmetic vectorised); anything else goes through numpy's SeedSequence.
    """
    if keys:
        value = _BLOCKS.get(seed, purpose, keys)
        if value is not None:
            return value
    return _int_seed_numpy(seed, purpose, *keys)


def rng_state(gen: np.random.Generator) -> str:
    """A Generator's exact state as JSON (PCG64 states are 128-bit integers), for checkpoints."""
    return json.dumps(gen.bit_generator.state)


def set_rng_state(gen: np.random.Generator, state: str) -> None:
    """Put a Generator back where `rng_state` found it."""
    gen.bit_generator.state = json.loads(state)


def name_key(name: str) -> int:
    """A stable integer for a string (e.g. a dataset name) to use as a stream key."""
    return zlib.crc32(name.encode("utf-8"))


# -- int_seed in blocks ------------------------------------------------------------------------
# numpy's SeedSequence (numpy/random/bit_generator.pyx, unchanged since numpy 1.17) with the
# default pool of 4 uint32 words and no spawn key: the entropy list is coerced to uint32 words
# (each int little-endian, 0 as one word), hashed into the pool (`mix_entropy`), and
# `generate_state` hashes the pool into output words; uint64 output word 0 is words 0 and 1.
# All arithmetic is modulo 2**32, which uint32 numpy arrays do natively.
_MASK32 = 0xFFFFFFFF
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_XSHIFT = 16
_POOL_SIZE = 4


def _words(n: int) -> list[int] | None:
    """numpy's uint32 coercion of one non-negative int (None for a negative one)."""
    if n < 0:
        return None
    if n == 0:
        return [0]
    out = []
    while n > 0:
        out.append(n & _MASK32)
        n >>= 32
    return out


def _hash_consts(n: int, init: int, mult: int) -> list[tuple[int, int]]:
    """(constant before, constant after) of n successive hashmix calls."""
    out, h = [], init
    for _ in range(n):
        nxt = (h * mult) & _MASK32
        out.append((h, nxt))
        h = nxt
    return out


def _seed_block(prefix: list[int], last: np.ndarray) -> np.ndarray:
    """int_seed for entropy words `prefix` + [last[i]] (each last[i] one word), as uint64."""
    n_words = len(prefix) + 1
    n_mix = _POOL_SIZE + _POOL_SIZE * (_POOL_SIZE - 1) + max(0, n_words - _POOL_SIZE) * _POOL_SIZE
    consts = iter(_hash_consts(n_mix, _INIT_A, _MULT_A))
    u32 = np.uint32
    entropy = [np.full(len(last), w, u32) for w in prefix] + [last.astype(u32)]

    def hashmix(value):
        before, after = next(consts)
        v = (value ^ u32(before)) * u32(after)
        return v ^ (v >> u32(_XSHIFT))

    def mix(x, y):
        r = u32(_MIX_MULT_L) * x - u32(_MIX_MULT_R) * y
        return r ^ (r >> u32(_XSHIFT))

    zero = np.zeros(len(last), u32)
    pool = [hashmix(entropy[i] if i < n_words else zero) for i in range(_POOL_SIZE)]
    for src in range(_POOL_SIZE):
        for dst in range(_POOL_SIZE):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL_SIZE, n_words):
        for dst in range(_POOL_SIZE):
            pool[dst] = mix(pool[dst], hashmix(entropy[src]))
    out = []
    for i, (before, after) in enumerate(_hash_consts(2, _INIT_B, _MULT_B)):
        v = (pool[i % _POOL_SIZE] ^ u32(before)) * u32(after)
        out.append((v ^ (v >> u32(_XSHIFT))).astype(np.uint64))
    return (out[0] | (out[1] << np.uint64(32))) >> np.uint64(1)


class _SeedBlocks:
    """int_seed of `BLOCK` consecutive last keys at once, for streams asked for repeatedly.

    A (seed, purpose, leading keys) prefix gets blocks from its second call on; at most
    `KEEP` blocks are kept (least recently used dropped), so memory stays bounded.
    """

    BLOCK = 1024
    KEEP = 16

    def __init__(self) -> None:
        self.blocks: OrderedDict = OrderedDict()  # (prefix, block start) -> list of int seeds
        self.seen: OrderedDict = OrderedDict()  # prefixes asked for once
        # (prefix, start, stop, seeds) of the latest hit
        self.last: tuple[tuple[int, ...], int, int, list[int]] | None = None

    def get(self, seed: int, purpose: int, keys: tuple) -> int | None:
        last = int(keys[-1])
        head = (int(seed) & _MASK32, int(purpose), *[int(k) for k in keys[:-1]])
        hit = self.last
        if hit is not None and hit[0] == head and hit[1] <= last < hit[2]:
            return hit[3][last - hit[1]]
        if not 0 <= last <= _MASK32:
            return None
        start = last - last % self.BLOCK
        seeds = self.blocks.get((head, start))
        if seeds is None:
            if head not in self.seen:
                self.seen[head] = True
                if len(self.seen) > self.KEEP:
                    self.seen.popitem(last=False)
                return None
            prefix = []
            for k in head:
                w = _words(k)
                if w is None:
                    return None
                prefix += w
            stop = min(start + self.BLOCK, _MASK32 + 1)
            seeds = _seed_block(prefix, np.arange(start, stop, dtype=np.int64)).tolist()
            self.blocks[(head, start)] = seeds
            if len(self.blocks) > self.KEEP:
                self.blocks.popitem(last=False)
        else:
            self.blocks.move_to_end((head, start))
        self.last = (head, start, start + len(seeds), seeds)
        return seeds[last - start]


_BLOCKS = _SeedBlocks()
