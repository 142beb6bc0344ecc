"""Listening sockets bound before twistd drops privileges, and shareable with worker processes.

Twisted's ``StreamServerEndpointService`` binds in ``privilegedStartService`` too, but keeps
its port to itself; SMTP worker processes (:mod:`mailserver.workers`) need the listening
socket's descriptor and address family to accept on the same socket.

Implicit TLS listeners ("ssl:" in the configuration, RFC 8314) are ours rather than Twisted's
ssl: endpoints, which load their certificate once and for all: :func:`split_tls_listener`
turns one into a plain tcp: endpoint plus the certificate files it names, and the composition
root wraps the protocol factory in TLS with a context that reloads renewed certificates.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from mailserver.tls import TLSFiles

# The parts of an ssl: description that carry over to the tcp: endpoint, and the file options.
_TCP_OPTIONS = ("interface", "backlog")
_FILE_OPTIONS = ("privateKey", "certKey")
_FIELD_SEPARATOR = re.compile(r"(?<!\\):")


def endpoint_fields(description: str) -> list[str]:
    """The colon-separated fields of an endpoint string, backslash escapes kept."""
    return _FIELD_SEPARATOR.split(description)


class ListenerError(ValueError):
    """An ssl: listener description that cannot be used; the message says why."""


def split_tls_listener(description: str) -> tuple[str, TLSFiles | None]:
    """The tcp: description of an ssl: listener, and the certificate files it names.

    ``ssl:465:interface=127.0.0.1:privateKey=key.pem:certKey=chain.pem`` listens like
    ``tcp:465:interface=127.0.0.1``. ``certKey`` (the certificate chain) defaults to the
    ``privateKey`` file, as with Twisted's ssl: endpoints; without either, the files are None
    and the [tls] section's certificate applies.
    """
    fields = endpoint_fields(description)
    if fields[0] != "ssl":
        raise ListenerError(f"not an ssl: listener: {description}")
    tcp = ["tcp"]
    options: dict[str, str] = {}
    for field in fields[1:]:
        name, equals, value = field.partition("=")
        if not equals:
            if len(tcp) > 1:
                raise ListenerError("too many fields; write options as name=value")
            tcp.append(field)
        elif name == "port" and len(tcp) == 1:
            tcp.append(value)
        elif name in _TCP_OPTIONS:
            tcp.append(field)
        elif name in _FILE_OPTIONS:
            options[name] = value.replace("\\:", ":")
        else:
            known = ", ".join(("port", *_TCP_OPTIONS, *_FILE_OPTIONS))
            hint = (
                "; put the chain in the certKey file, after the certificate"
                if name == "extraCertChain"
                else ""
            )
            raise ListenerError(f'unknown option "{name}" for ssl: listeners ({known}){hint}')
    if len(tcp) == 1:
        raise ListenerError("missing port")
    files = None
    if "privateKey" in options:
        key = Path(options["privateKey"])
        files = TLSFiles(certificate=Path(options.get("certKey", key)), private_key=key)
    elif "certKey" in options:
        raise ListenerError("certKey is given without privateKey")
    return ":".join(tcp), files


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
