"""What every protocol of ours does to a new TCP connection, and asks of its peer."""

from __future__ import annotations

import contextlib
import ipaddress

from twisted.internet.address import UNIXAddress


def disable_nagle(transport: object) -> None:
    """Replies must leave at once, not wait for the client's delayed ACK (TCP_NODELAY)."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        with contextlib.suppress(OSError):
            set_no_delay(True)


def is_loopback(peer: object) -> bool:
    """Whether a peer address is this machine: 127.0.0.0/8, ::1 (also IPv4-mapped), a UNIX
    socket."""
    if isinstance(peer, UNIXAddress):
        return True
    host = getattr(peer, "host", None)
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(str(host).partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def client_address(peer: object) -> str:
    """The client's address as logs, Received fields, SPF and per-client limits name it: an
    IPv4 client of a dual-stack IPv6 socket (``::ffff:192.0.2.1``) as plain IPv4, a peer
    without an address (a UNIX socket) as "local"."""
    host = getattr(peer, "host", None)
    if host is None:
        return "local"
    text = str(host)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return text


PLAINTEXT_POLICIES = ("never", "loopback", "always")


def plaintext_allowed(policy: str, peer: object) -> bool:
    """Whether a password may be sent unencrypted from ``peer`` under a ``plaintext_auth``
    policy (one of :data:`PLAINTEXT_POLICIES`); inside TLS it always may, which the sessions
    know for themselves."""
    if policy == "always":
        return True
    if policy == "loopback":
        return is_loopback(peer)
    return False


def is_ip_address(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
