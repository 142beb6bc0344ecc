"""Tests for mailserver.deadline: the cheap, often pushed-back timeout."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from mailserver.deadline import Deadline


def make() -> tuple[MemoryReactorClock, Deadline, list[float]]:
    clock = MemoryReactorClock()
    fired: list[float] = []
    return clock, Deadline(clock, lambda: fired.append(clock.seconds())), fired


def test_fires_once_when_the_time_is_up() -> None:
    """A deadline set for 10 s fires at 10 s, once."""
    clock, deadline, fired = make()
    deadline.set(10)
    clock.advance(9.9)
    assert fired == []
    clock.advance(0.1)
    clock.advance(100)
    assert fired == [10]


def test_pushing_back_moves_expiry_with_one_timer() -> None:
    """Setting the deadline again later moves the expiry; only one reactor timer exists."""
    clock, deadline, fired = make()
    deadline.set(10)
    for _ in range(5):
        clock.advance(5)
        deadline.set(10)
        assert len(clock.getDelayedCalls()) == 1
    clock.advance(9.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [35]


def test_a_shorter_deadline_fires_sooner() -> None:
    """Setting a shorter timeout than the pending one makes it expire at the shorter time."""
    clock, deadline, fired = make()
    deadline.set(300)
    deadline.set(2)
    clock.advance(2)
    assert fired == [2]


def test_cancel_stops_it_and_set_rearms() -> None:
    """A cancelled deadline never fires; setting it again starts a new one."""
    clock, deadline, fired = make()
    deadline.set(5)
    deadline.cancel()
    clock.advance(10)
    assert fired == [] and clock.getDelayedCalls() == []
    deadline.set(5)
    clock.advance(5)
    assert fired == [15]
