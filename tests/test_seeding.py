"""seeding.int_seed: its block path gives numpy SeedSequence's values exactly."""

import numpy as np
import pytest

from fedast_mpi import seeding


def reference(seed, purpose, *keys):
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(purpose), *(int(k) for k in keys)])
    return int(ss.generate_state(2, np.uint64)[0] >> np.uint64(1))


def test_sequential_request_seeds_match_numpy():
    for rid in range(5000):
        assert seeding.int_seed(7, seeding.REQUEST, rid) == reference(7, seeding.REQUEST, rid)


@pytest.mark.parametrize("seed", [0, 1, 2**31, 2**32 - 1, 2**32 + 3, -1])
@pytest.mark.parametrize("prefix", [(), (5,), (0, 2**32 + 7), (1, 2, 3)])
def test_blocks_match_numpy_at_edges(seed, prefix):
    for last in (0, 1, 1023, 1024, 1025, 2**20, 2**32 - 1025, 2**32 - 1, 2**32, 2**40):
        for _ in range(2):  # the second call of a prefix goes through a block
            got = seeding.int_seed(seed, seeding.DELAY, *prefix, last)
            assert got == reference(seed, seeding.DELAY, *prefix, last)
            assert isinstance(got, int)


def test_random_keys_and_large_purposes():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        purpose = int(rng.choice([1, 5, 2**32 - 1, 2**33]))
        keys = [int(k) for k in rng.integers(0, 3000, size=int(rng.integers(1, 4)))]
        assert seeding.int_seed(3, purpose, *keys) == reference(3, purpose, *keys)


def test_block_function_directly():
    last = np.arange(0, 4096, dtype=np.int64)
    got = seeding._seed_block([11, 5, 2], last)
    assert [int(x) for x in got[::97]] == [reference(11, 5, 2, int(k)) for k in last[::97]]


def test_negative_keys_still_raise():
    with pytest.raises(ValueError):
        seeding.int_seed(0, seeding.REQUEST, -3)
    with pytest.raises(ValueError):
        seeding.int_seed(0, seeding.REQUEST, 5, -1)


def test_memory_bounded():
    for p in range(100):
        for k in range(3):
            seeding.int_seed(1, p, k * 5000)
    assert len(seeding._BLOCKS.blocks) <= seeding._SeedBlocks.KEEP
    assert len(seeding._BLOCKS.seen) <= seeding._SeedBlocks.KEEP


def test_run_seeds_beyond_32_bits_would_alias_so_the_config_refuses_them():
    from fedast_mpi.config import SEED_MAX, load_config
    from fedast_mpi.errors import ConfigError
    # the streams keep the run seed's low 32 bits: 2**32 would replay seed 0's streams
    assert seeding.int_seed(SEED_MAX + 1, seeding.MODEL_INIT, 0) == \
        seeding.int_seed(0, seeding.MODEL_INIT, 0)
    # every seed the config accepts is its own stream, taken as it is
    assert int(seeding.seed_sequence(SEED_MAX, seeding.DELAY).entropy[0]) == SEED_MAX
    assert load_config(None, [f"run.seed={SEED_MAX}"]).run.seed == SEED_MAX
    for bad in (SEED_MAX + 1, -1, 2**70):
        with pytest.raises(ConfigError, match=r"^run\.seed: must be in \[0, 4294967295\]"):
            load_config(None, [f"run.seed={bad}"])
