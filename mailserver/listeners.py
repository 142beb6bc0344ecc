"""Listening sockets bound before twistd drops privileges, and shareable with worker processes.

Twisted's ``StreamServerEndpointService`` binds in ``privilegedStartService`` too, but keeps
its port to itself; SMTP worker processes (:mod:`mailserver.workers`) need the listening
socket's descriptor and address family to accept on the same socket.
"""

from __future__ import annotations

import socket

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure


class ListenerService(Service):
    """Listens on one endpoint from ``privilegedStartService`` until the service stops."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Factory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # Binding a TCP or UNIX endpoint completes at once: failures (port in use, no
        # permission) stop the start-up here rather than being logged later.
        outcome: list[IListeningPort | Failure] = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise RuntimeError(f"{self.endpoint} did not bind at once")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self.port = outcome[0]
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:  # started without the privileged step (not under twistd)
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None

    def shared_socket(self) -> tuple[int, socket.AddressFamily]:
        """The listening descriptor and its family, for ``adoptStreamPort`` elsewhere."""
        assert self.port is not None
        host = self.port.getHost()
        if isinstance(host, IPv6Address):
            family = socket.AF_INET6
        elif isinstance(host, IPv4Address):
            family = socket.AF_INET
        elif isinstance(host, UNIXAddress):
            family = socket.AF_UNIX
        else:
            raise ValueError(f"cannot share a listener on {host!r}")
        return self.port.fileno(), family  # type: ignore[attr-defined]
