"""Tests for mailserver.tcp: what every protocol does to a connection and asks of its peer."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from mailserver.tcp import client_address, disable_nagle, is_loopback, plaintext_allowed

REMOTE = IPv4Address("TCP", "192.0.2.9", 1)
LOCAL = IPv4Address("TCP", "127.0.0.1", 1)


@pytest.mark.parametrize(
    "peer, expected",
    [
        (IPv4Address("TCP", "127.0.0.5", 1), True),
        (IPv6Address("TCP", "::1", 1), True),
        (IPv6Address("TCP", "::ffff:127.0.0.1", 1), True),
        (UNIXAddress(b"/run/pop3.sock"), True),
        (IPv4Address("TCP", "192.0.2.1", 1), False),
        (IPv6Address("TCP", "2001:db8::1", 1), False),
        (IPv6Address("TCP", "::ffff:192.0.2.1", 1), False),
        (object(), False),
    ],
)
def test_loopback_detection(peer: object, expected: bool) -> None:
    """127/8, ::1, IPv4-mapped loopback and UNIX sockets are this machine; others are not."""
    assert is_loopback(peer) is expected


def test_plaintext_policies() -> None:
    """ "never" allows passwords only inside TLS, "loopback" also from this machine, "always"
    everywhere."""
    assert not plaintext_allowed("never", LOCAL)
    assert plaintext_allowed("loopback", LOCAL)
    assert not plaintext_allowed("loopback", REMOTE)
    assert plaintext_allowed("always", REMOTE)


def test_disable_nagle_where_possible() -> None:
    """TCP_NODELAY is set on transports that have it; others are left alone."""

    class Transport:
        no_delay = False

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.no_delay = enabled

    transport = Transport()
    disable_nagle(transport)
    assert transport.no_delay
    disable_nagle(object())


def test_client_address_unmaps_ipv4() -> None:
    """Clients of a dual-stack socket are named by their IPv4 address; IPv6 stays as it is;
    a UNIX socket peer is "local"."""
    assert client_address(IPv6Address("TCP", "::ffff:192.0.2.1", 25)) == "192.0.2.1"
    assert client_address(IPv6Address("TCP", "2001:db8::1", 25)) == "2001:db8::1"
    assert client_address(IPv4Address("TCP", "192.0.2.1", 25)) == "192.0.2.1"
    assert client_address(UNIXAddress(b"/run/mail.sock")) == "local"
