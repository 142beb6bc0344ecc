"""Failed-login throttling per client address (mailserver.authlimit)."""

from __future__ import annotations

from twisted.internet.task import Clock

from mailserver.authlimit import LoginThrottle


def test_no_delay_without_failures() -> None:
    """An address with no failures is never delayed."""
    throttle = LoginThrottle(Clock())
    assert throttle.reserve("192.0.2.1") == 0
    assert throttle.reserve("192.0.2.1") == 0
    assert len(throttle) == 0


def test_delays_grow_with_failures_and_cap() -> None:
    """Each failure in a row delays the next attempt more: 2, 4, 8, then 15 s each."""
    clock = Clock()
    throttle = LoginThrottle(clock)
    waits = []
    for _ in range(6):
        wait = throttle.reserve("192.0.2.1")
        waits.append(wait)
        clock.advance(wait)
        throttle.failed("192.0.2.1", "alice")
    assert waits == [0, 2, 4, 8, 15, 15]


def test_success_resets() -> None:
    """A successful login forgets that login's failures (here all of the address's)."""
    clock = Clock()
    throttle = LoginThrottle(clock)
    throttle.failed("192.0.2.1", "alice")
    throttle.failed("192.0.2.1", "alice")
    throttle.succeeded("192.0.2.1", "alice")
    assert throttle.reserve("192.0.2.1") == 0


def test_addresses_are_independent() -> None:
    """Failures from one address do not delay another."""
    throttle = LoginThrottle(Clock())
    throttle.failed("192.0.2.1", "alice")
    assert throttle.reserve("192.0.2.2") == 0
    assert throttle.reserve("192.0.2.1") == 2


def test_parallel_attempts_are_spaced_out() -> None:
    """Attempts arriving together from one address wait one delay after another, so many
    connections at once do not multiply the guessing rate."""
    throttle = LoginThrottle(Clock())
    throttle.failed("192.0.2.1", "alice")
    assert [throttle.reserve("192.0.2.1") for _ in range(3)] == [2, 4, 6]


def test_time_already_waited_counts() -> None:
    """An attempt that comes after the delay has passed is not delayed again."""
    clock = Clock()
    throttle = LoginThrottle(clock)
    throttle.failed("192.0.2.1", "alice")
    clock.advance(5)
    assert throttle.reserve("192.0.2.1") == 0


def test_quiet_addresses_are_forgotten() -> None:
    """An address quiet for forget_after seconds drops out, so memory does not grow."""
    clock = Clock()
    throttle = LoginThrottle(clock, forget_after=60)
    throttle.failed("192.0.2.1", "alice")
    clock.advance(120)
    throttle.failed("192.0.2.2", "alice")
    assert len(throttle) == 1
    assert throttle.reserve("192.0.2.1") == 0


def test_bounded_number_of_entries() -> None:
    """Past max_entries the least recently seen address is dropped."""
    throttle = LoginThrottle(Clock(), max_entries=100)
    for number in range(1000):
        throttle.failed(f"10.0.{number // 256}.{number % 256}", "alice")
    assert len(throttle) == 100
    assert throttle.reserve("10.0.0.0") == 0  # the first one went
    assert throttle.reserve("10.0.3.231") > 0  # the last one stayed


def test_success_for_one_login_keeps_the_failures_of_another() -> None:
    """Logging in to one's own account between guesses at another does not reset the delay:
    only the failures of the login that succeeded are forgotten."""
    clock = Clock()
    throttle = LoginThrottle(clock)
    throttle.failed("192.0.2.1", "victim")
    throttle.failed("192.0.2.1", "mallory")
    throttle.succeeded("192.0.2.1", "Mallory")
    assert len(throttle) == 1
    assert throttle.reserve("192.0.2.1") == throttle.delay(2)  # as set by both failures
    throttle.succeeded("192.0.2.1", "victim")
    assert len(throttle) == 0
