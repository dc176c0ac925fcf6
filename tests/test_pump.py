"""Rank 0's progress passes per wake-up (`ServerTransport.pump`): as many as land something,
then `passes` in a row that land nothing; one failing pass with few workers, as before."""

from __future__ import annotations

from types import SimpleNamespace

from fedast_mpi.transport import ServerTransport


def pumped(script, passes, done_after=None):
    """(result, passes made) of `pump` over scripted progress results."""
    calls = []

    def progress():
        calls.append(1)
        return script[len(calls) - 1] if len(calls) <= len(script) else False
    fake = SimpleNamespace(progress=progress, passes=passes)
    done = (lambda: False) if done_after is None else (lambda: len(calls) >= done_after)
    return ServerTransport.pump(fake, done), len(calls)


def test_one_failing_pass_ends_a_wake_up_with_few_workers():
    assert pumped([], passes=1) == (False, 1)
    assert pumped([True, True, False, True], passes=1) == (True, 3)


def test_with_many_workers_it_keeps_passing_after_a_pass_lands_nothing():
    assert pumped([], passes=4) == (False, 4)
    # a pass that lands something starts the count again
    assert pumped([False, False, True, False, False, False, True], passes=3) == (True, 6)


def test_it_stops_as_soon_as_the_awaited_is_in():
    assert pumped([True] * 50, passes=32, done_after=5) == (True, 5)
    assert pumped([], passes=32, done_after=0) == (False, 0)

