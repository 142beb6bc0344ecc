"""What our line-based server protocols (SMTP and POP3) share.

A connection is first counted against the listener's limits and refused with the protocol's
own reply when there are too many. Then an input loop takes command lines one by one
(pipelining: RFC 2920, RFC 2449), refuses an overlong line once and drops its bytes up to its
end, and stops while the session waits for work it asked for (a look-up, a delivery, a
mailbox), so replies always go out in command order; once a little input has piled up
meanwhile, reading is paused. Subclasses say what a line means and what to send.

Switching to TLS in the middle of a connection (SMTP STARTTLS, POP3 STLS) goes through
:meth:`LineServerProtocol.start_tls`, which throws away whatever the client sent after the
command: those octets arrived in plaintext, where anyone on the path could have added them.

Closing always ends the connection, whatever the peer does: a TLS connection closes only once
its pending output is sent and the peer answers the close, which a silent peer never does, so
a close is followed by an abort after :data:`CLOSE_GRACE` seconds, and at once when the TLS
handshake is not even done (the reply could never be read).

Output can be flow-controlled too: a subclass that registers itself as its transport's
streaming producer (:meth:`LineServerProtocol.flow_controlled`) takes no further command while
the transport holds more unsent output than it wants, so a client that pipelines commands
and never reads the replies cannot make the server buffer them without bound. And
:func:`write_now` hands a reply to the kernel at once on a plain TCP connection instead of
waiting for the reactor's next turn.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver.limits import Admission, ConnectionLimiter
from mailserver.tcp import client_address, disable_nagle

log = Logger()

PAUSE_BACKLOG = 64 * 1024  # pipelined input held while waiting, before reading pauses
CLOSE_GRACE = 10.0  # seconds a closing connection has to flush, before it is aborted


class WireReply(Protocol):
    def to_bytes(self) -> bytes: ...


def write_now(transport: object, data: bytes) -> bool:
    """Write ``data`` to ``transport``; True if the kernel took all of it at once.

    Twisted's TCP transport only queues what it is given and sends it on the reactor's next
    turn, once the socket reports it writable: for a reply that would fit in the socket
    buffer straight away, that is two more system calls and a turn of the loop per reply.
    So on a plain TCP connection (not TLS) whose queue is empty, the octets are sent here
    with one ``send``; whatever the kernel does not take, and everything on any other
    transport or while something is queued (so order is kept), goes through
    ``transport.write`` as usual. A send error is left for the transport to meet and report
    the usual way. Whether the queue is empty is read from Twisted's own attributes
    (``dataBuffer``, ``offset``, ``_tempDataLen``; ``WriteNowTests`` pins them), and a
    transport without them simply gets ``write``.
    """
    if (
        type(transport) is tcp.Server
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not getattr(transport, "_tempDataLen", 1)
        and getattr(transport, "offset", -1) == len(getattr(transport, "dataBuffer", b""))
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # full (EAGAIN), or an error that the transport's own write will meet
        if sent == len(data):
            return True
        data = data[sent:]
    transport.write(data)  # type: ignore[attr-defined]
    return False


@implementer(IHandshakeListener, IPushProducer)
class LineServerProtocol(TwistedProtocol, ABC):
    """The shared connection life and input loop; see the module docstring."""

    line_limit: int  # octets a command line may have, its CRLF included

    def __init__(self, limiter: ConnectionLimiter, clock: IReactorTime) -> None:
        self._limiter = limiter
        self._clock = clock
        self._abort_call: IDelayedCall | None = None
        self._handshaking = False  # TLS started but its handshake not finished
        self._buffer = bytearray()
        self._waiting = False  # for work the session asked for; input waits meanwhile
        self._processing = False  # inside the input loop
        self._paused = False  # reading from the transport, for too much pipelined input
        self._output_paused = False  # by the transport, for too much unsent output
        self._flow_controlled = False
        self._closing = False
        self._discarding_line = False
        self._admitted = False
        self._client = "unknown"

    # -- what a subclass provides --------------------------------------------------------

    @abstractmethod
    def refusal(self, admission: Admission) -> WireReply:
        """The reply for a connection over one of the limits."""

    @abstractmethod
    def connection_admitted(self, peer: object) -> None:
        """Start the session: greet the client."""

    @abstractmethod
    def line_received(self, line: bytes) -> None:
        """Handle one command line, without its line ending."""

    @abstractmethod
    def line_too_long(self) -> None:
        """Refuse a line longer than :attr:`line_limit` (once per such line)."""

    def connection_released(self) -> None:
        """Release what the session holds; the connection is gone."""

    @abstractmethod
    def bug_reply(self) -> WireReply:
        """The reply for a bug of ours met while waiting for work."""

    def input_step(self) -> bool:
        """Consume some input; False when nothing can be done until more arrives."""
        return self.next_line()

    def input_pending(self) -> bool:
        return bool(self._buffer)

    # -- connection life ----------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self._client = client_address(peer)
        self._handshaking = ISSLTransport.providedBy(self.transport)  # implicit TLS
        admission = self._limiter.admit(self._client)
        if admission is not Admission.ADMITTED:
            self.close_with(self.refusal(admission))
            return
        self._admitted = True
        disable_nagle(self.transport)
        self.connection_admitted(peer)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self._admitted:
            self._limiter.release(self._client)
            self._admitted = False
        self.connection_released()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        self.input_arrived()
        self.process()

    def input_arrived(self) -> None:
        """Bytes have arrived (before they are processed)."""

    def handshakeCompleted(self) -> None:
        """The TLS handshake is over (implicit TLS, or after :meth:`start_tls`)."""
        self._handshaking = False
        self.tls_established()

    def tls_established(self) -> None:
        """The connection is now encrypted; subclasses note its parameters."""

    # -- the input loop -----------------------------------------------------------------

    def process(self) -> None:
        if self._processing:
            # Work that answered at once, from inside the loop below: the loop carries on by
            # itself (recursing here would grow the stack per command).
            return
        self._processing = True
        try:
            while (
                self.input_pending()
                and not self._waiting
                and not self._output_paused
                and not self._closing
            ):
                if not self.input_step():
                    break
        finally:
            self._processing = False
        self._apply_backpressure()

    def next_line(self) -> bool:
        """Handle one complete command line; False when none is complete yet."""
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) >= self.line_limit:
                # Overlong: refuse it now, then drop its bytes until its line ends.
                del buffer[:]
                if not self._discarding_line:
                    self._discarding_line = True
                    self.line_too_long()
            return False
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        if self._discarding_line:
            self._discarding_line = False
            return True
        if line.endswith(b"\r"):
            line = line[:-1]
        self.line_received(line)
        return True

    def wait_for(self, work: Deferred[Any], resume: Callable[[Any], None]) -> None:
        """Hold the input loop until ``work`` fires; ``resume`` gets its result, then the
        loop goes on. A failure here is a bug of ours: logged, answered, connection closed."""
        self._waiting = True
        work.addCallback(lambda result: self.stop_waiting(lambda: resume(result))).addErrback(
            self.work_failed
        )

    def work_failed(self, failure: Failure) -> None:
        """Work the input loop waited for failed: a bug of ours, logged and answered, and the
        connection closed."""
        log.failure("unexpected error in {protocol}", failure, protocol=type(self).__name__)
        self._waiting = False
        if not self._closing:
            self.close_with(self.bug_reply())

    def stop_waiting(self, then: Callable[[], None]) -> None:
        """The work the input loop waited for is over: unless the connection is closing, run
        ``then`` and let the loop go on."""
        self._waiting = False
        if self._closing:
            return
        then()
        self.process()

    # -- output and flow control ----------------------------------------------------------

    def send(self, reply: WireReply) -> None:
        self.transport.write(reply.to_bytes())  # type: ignore[union-attr]

    def start_tls(self, reply: WireReply, context: IOpenSSLServerConnectionCreator) -> None:
        """Send ``reply`` in plaintext, then make the connection TLS.

        Every octet the client sent after the command that asked for TLS is thrown away
        unread (RFC 3207 §4.2, RFC 2595 §4): it came before the handshake, in plaintext, so a
        man in the middle could have put it there to run inside the encrypted session
        (CVE-2011-0411). The caller resets its session state as the RFC asks.
        """
        self.send(reply)
        del self._buffer[:]
        self._discarding_line = False
        self._handshaking = True
        self.transport.startTLS(context)  # type: ignore[union-attr]

    def close_with(self, reply: WireReply) -> None:
        """Send ``reply`` and close; see the module docstring for a peer that stays silent."""
        self._closing = True
        if self._handshaking:
            self.abort()
            return
        self.send(reply)
        if self._flow_controlled:
            # A transport does not close while a producer is registered.
            self._flow_controlled = False
            self.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]
        if self._abort_call is None:
            self._abort_call = self._clock.callLater(CLOSE_GRACE, self.abort)

    def abort(self) -> None:
        """Drop the connection at once, whatever is still unsent."""
        self._closing = True
        self._abort_call = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def flow_controlled(self) -> None:
        """Register as the transport's streaming producer for the rest of the connection:
        while the transport has more unsent output than it wants, no command is taken (and
        reading pauses once :data:`PAUSE_BACKLOG` octets of input wait)."""
        self._flow_controlled = True
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]

    # IPushProducer, called by the transport once registered.

    def pauseProducing(self) -> None:
        self._output_paused = True

    def resumeProducing(self) -> None:
        self._output_paused = False
        if not self._waiting and not self._closing:
            self.process()

    def stopProducing(self) -> None:
        """The connection is going away; :meth:`connectionLost` follows."""
        self._closing = True

    def _apply_backpressure(self) -> None:
        should_pause = (self._waiting or self._output_paused) and len(self._buffer) > PAUSE_BACKLOG
        if should_pause and not self._paused:
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self._paused = True
        elif not should_pause and self._paused and not self._closing:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
