"""An in-memory transport whose ``startTLS`` is real, for STARTTLS and STLS tests over iosim."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport
from zope.interface import directlyProvides, implementer


@implementer(IHandshakeListener)
class _Relay(Protocol):
    """What a TLS layer added by startTLS delivers to: the protocol the transport had."""

    def __init__(self, application: Any) -> None:
        self.application = application

    def dataReceived(self, data: bytes) -> None:
        self.application.dataReceived(data)

    def handshakeCompleted(self) -> None:
        if IHandshakeListener.providedBy(self.application):
            self.application.handshakeCompleted()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.application.connectionLost(reason)


class _Raw:
    """The octets under the TLS layer: writes bypass it, everything else is the transport's."""

    def __init__(self, transport: FakeTransport) -> None:
        self._transport = transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes) -> None:
        FakeTransport.write(self._transport, data)

    def writeSequence(self, data: list[bytes]) -> None:
        FakeTransport.write(self._transport, b"".join(data))

    def loseConnection(self) -> None:
        FakeTransport.loseConnection(self._transport)


class STLSTransport(FakeTransport):
    """iosim's memory transport with a real ``startTLS``, done the way Twisted's TCP
    transports do it: from the call on, octets in and out pass through a TLS layer."""

    _tls: TLSMemoryBIOProtocol | None = None

    def startTLS(self, contextFactory: Any, beNormal: bool = True) -> None:
        factory = TLSMemoryBIOFactory(contextFactory, not self.isServer, Factory())
        layer = TLSMemoryBIOProtocol(factory, _Relay(self.protocol))
        self._tls = layer
        self.protocol = layer  # iosim delivers incoming octets to .protocol
        layer.makeConnection(_Raw(self))
        directlyProvides(self, ISSLTransport)

    def write(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls.write(data)
        else:
            super().write(data)

    def loseConnection(self) -> None:
        if self._tls is not None:
            self._tls.loseConnection()  # close_notify first
        else:
            super().loseConnection()
