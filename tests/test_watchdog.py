"""The watchdog's decisions (pure: a fake clock, no MPI)."""

from __future__ import annotations

import pytest

from fedast_mpi.watchdog import HEARTBEAT_EVERY, Awaited, Halt, Watchdog


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def dog(stall=30.0, signal=None, beat=None, grace=5.0):
    clock = Clock()
    box = {"signal": signal}
    w = Watchdog(stall, lambda: box["signal"], ["n0", "n1", "n2"], beat=beat, grace=grace,
                 clock=clock)
    return w, clock, box


def test_quiet_wait_goes_on():
    w, clock, _ = dog()
    clock.t += 29
    w.check(100.0, [Awaited(1, "request 7")], {})


def test_silent_worker_past_the_timeout_stalls_naming_rank_host_and_request():
    w, clock, _ = dog()
    clock.t += 31
    with pytest.raises(Halt) as err:
        w.check(100.0, [Awaited(2, "the update of request 7")], {1: 130.0})
    assert err.value.status == "failed" and err.value.signal is None
    text = str(err.value)
    assert "rank 2 on n2" in text and "request 7" in text and "run.stall_timeout = 30 s" in text


def test_a_worker_heard_from_recently_is_not_stalled():
    w, clock, _ = dog()
    clock.t += 100
    w.check(100.0, [Awaited(1, "request 7")], {1: clock.t - 10})  # a long queue, still talking
    with pytest.raises(Halt):
        w.check(100.0, [Awaited(1, "request 7"), Awaited(2, "chunk 0")], {1: clock.t - 10})


def test_stall_timeout_zero_waits_forever():
    w, clock, _ = dog(stall=0)
    clock.t += 1e6
    w.check(100.0, [Awaited(1, "request 7")], {})


def test_signal_ends_a_wait_only_after_the_grace():
    w, clock, box = dog()
    box["signal"] = ("SIGTERM", 101.0)
    clock.t = 105.5
    w.check(100.0, [Awaited(1, "request 7")], {})  # 4.5 s after the signal: may still arrive
    clock.t = 106.0
    with pytest.raises(Halt) as err:
        w.check(100.0, [Awaited(1, "request 7")], {})
    assert err.value.status == "interrupted" and err.value.signal == "SIGTERM"
    assert "SIGTERM received" in str(err.value) and "rank 1 on n1" in str(err.value)


def test_grace_counts_from_the_wait_when_the_signal_came_before_it():
    w, clock, box = dog()
    box["signal"] = ("SIGUSR1", 50.0)  # received long ago, acted on at a tick, then a new wait
    clock.t = 104.0
    w.check(100.0, [Awaited(1, "request 7")], {})
    clock.t = 105.0
    with pytest.raises(Halt):
        w.check(100.0, [Awaited(1, "request 7")], {})


def test_heartbeat_while_waiting():
    beats = []
    w, clock, _ = dog(beat=lambda: beats.append(clock.t))
    for _ in range(25):
        clock.t += 1
        w.check(100.0, [Awaited(1, "request 7")], {1: clock.t})
    assert beats == [100.0 + HEARTBEAT_EVERY, 100.0 + 2 * HEARTBEAT_EVERY]
