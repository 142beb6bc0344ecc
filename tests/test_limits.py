"""Tests for mailserver.limits: connection counts overall and per client address."""

from __future__ import annotations

from mailserver.limits import Admission, ConnectionLimiter


def test_per_client_limit() -> None:
    """A client gets as many connections as its limit allows, then TOO_MANY_FROM_CLIENT,
    while another client is still admitted."""
    limiter = ConnectionLimiter(max_total=10, max_per_client=2)
    assert limiter.admit("192.0.2.1") is Admission.ADMITTED
    assert limiter.admit("192.0.2.1") is Admission.ADMITTED
    assert limiter.admit("192.0.2.1") is Admission.TOO_MANY_FROM_CLIENT
    assert limiter.admit("192.0.2.2") is Admission.ADMITTED
    assert limiter.open_connections == 3


def test_overall_limit() -> None:
    """Past the overall limit every client is refused with TOO_MANY_OVERALL, which is checked
    before the per-client limit."""
    limiter = ConnectionLimiter(max_total=2, max_per_client=1)
    assert limiter.admit("a") is Admission.ADMITTED
    assert limiter.admit("b") is Admission.ADMITTED
    assert limiter.admit("c") is Admission.TOO_MANY_OVERALL
    assert limiter.admit("a") is Admission.TOO_MANY_OVERALL


def test_refusals_are_not_counted() -> None:
    """A refused admission takes no place: only admitted connections are counted."""
    limiter = ConnectionLimiter(max_total=3, max_per_client=1)
    limiter.admit("a")
    for _ in range(5):
        assert limiter.admit("a") is Admission.TOO_MANY_FROM_CLIENT
    assert limiter.open_connections == 1
    assert limiter.admit("b") is Admission.ADMITTED


def test_release_frees_both_counts() -> None:
    """release() gives back the client's place and the overall place."""
    limiter = ConnectionLimiter(max_total=2, max_per_client=2)
    limiter.admit("a")
    limiter.admit("a")
    assert limiter.admit("b") is Admission.TOO_MANY_OVERALL
    limiter.release("a")
    assert limiter.open_connections == 1
    assert limiter.admit("b") is Admission.ADMITTED
    assert limiter.admit("a") is Admission.TOO_MANY_OVERALL
    limiter.release("b")
    assert limiter.admit("a") is Admission.ADMITTED


def test_memory_does_not_grow_with_past_clients() -> None:
    """A client whose connections have all been released is forgotten, so a long-running
    server does not keep an entry for every address it ever saw."""
    limiter = ConnectionLimiter(max_total=10, max_per_client=5)
    for number in range(1000):
        client = f"198.51.100.{number}"
        limiter.admit(client)
        limiter.release(client)
    assert limiter.open_connections == 0
    assert len(limiter._per_client) == 0
