"""Tests for mailserver.lineserver, through a minimal echo protocol built on it."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailserver.limits import Admission, ConnectionLimiter
from mailserver.lineserver import CLOSE_GRACE, PAUSE_BACKLOG, LineServerProtocol

PEER = IPv4Address("TCP", "192.0.2.1", 1)


@dataclass
class Text:
    text: str

    def to_bytes(self) -> bytes:
        return self.text.encode() + b"\r\n"


class Echo(LineServerProtocol):
    """Answers each line with it; "wait" holds the loop on ``pending``; "bug" fails."""

    line_limit = 20

    def __init__(self, limiter: ConnectionLimiter, clock: MemoryReactorClock | None = None) -> None:
        super().__init__(limiter, clock or MemoryReactorClock())
        self.pending: Deferred[str] | None = None

    def refusal(self, admission: Admission) -> Text:
        return Text(f"refused {admission.value}")

    def connection_admitted(self, peer: object) -> None:
        self.send(Text("hello"))

    def line_received(self, line: bytes) -> None:
        if line == b"wait":
            self.pending = Deferred()
            self.wait_for(self.pending, lambda result: self.send(Text(result)))
        elif line == b"bug":
            self.wait_for(fail(RuntimeError("ours")), lambda result: None)
        else:
            self.send(Text(line.decode()))

    def line_too_long(self) -> None:
        self.send(Text("too long"))

    def bug_reply(self) -> Text:
        return Text("local error")


class LineServerTests(SynchronousTestCase):
    def connect(self, limiter: ConnectionLimiter) -> tuple[Echo, StringTransport]:
        protocol, transport = Echo(limiter), StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_replies_keep_command_order_while_waiting(self) -> None:
        """Lines after one that waits are answered only after it, in order."""
        protocol, transport = self.connect(ConnectionLimiter(10, 10))
        protocol.dataReceived(b"a\r\nwait\r\nb\r\n")
        self.assertEqual(transport.value(), b"hello\r\na\r\n")
        assert protocol.pending is not None
        protocol.pending.callback("done")
        self.assertEqual(transport.value(), b"hello\r\na\r\ndone\r\nb\r\n")

    def test_overlong_line_refused_once_and_dropped(self) -> None:
        """A line past the limit gets one refusal; its bytes up to its end are dropped."""
        protocol, transport = self.connect(ConnectionLimiter(10, 10))
        protocol.dataReceived(b"x" * 30)
        protocol.dataReceived(b"y" * 30 + b"\r\nok\r\n")
        self.assertEqual(transport.value(), b"hello\r\ntoo long\r\nok\r\n")

    def test_reading_pauses_while_much_input_waits(self) -> None:
        """Past PAUSE_BACKLOG octets held during a wait, the transport is paused, then
        resumed once the wait is over and the input consumed."""
        protocol, transport = self.connect(ConnectionLimiter(10, 10))
        protocol.dataReceived(b"wait\r\n" + b"z\r\n" * (PAUSE_BACKLOG // 3 + 1))
        self.assertEqual(transport.producerState, "paused")
        assert protocol.pending is not None
        protocol.pending.callback("done")
        self.assertEqual(transport.producerState, "producing")

    def test_limits_and_release(self) -> None:
        """Over the per-client limit the refusal is sent and the connection closed; a closed
        connection gives its place back."""
        limiter = ConnectionLimiter(10, 1)
        first, _ = self.connect(limiter)
        _, transport = self.connect(limiter)
        self.assertEqual(transport.value(), b"refused too-many-from-client\r\n")
        self.assertTrue(transport.disconnecting)
        first.connectionLost(None)
        self.assertEqual(limiter.open_connections, 0)

    def test_a_bug_is_logged_answered_and_closes(self) -> None:
        """A failure of work waited for is our bug: logged, answered, connection closed."""
        protocol, transport = self.connect(ConnectionLimiter(10, 10))
        protocol.dataReceived(b"bug\r\nlater\r\n")
        self.assertEqual(transport.value(), b"hello\r\nlocal error\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class RecordingTransport(StringTransport):
    """Records aborts, and whether TLS was started; like a TLS transport whose peer is silent,
    it never reports the connection lost by itself."""

    def __init__(self) -> None:
        super().__init__(peerAddress=PEER)
        self.aborted = False
        self.tls: object = None

    def abortConnection(self) -> None:
        self.aborted = True

    def startTLS(self, context: object) -> None:
        self.tls = context


class ClosingTests(SynchronousTestCase):
    def connect(self) -> tuple[Echo, RecordingTransport, MemoryReactorClock]:
        clock = MemoryReactorClock()
        protocol, transport = Echo(ConnectionLimiter(10, 10), clock), RecordingTransport()
        protocol.makeConnection(transport)
        return protocol, transport, clock

    def test_close_that_never_completes_is_aborted(self) -> None:
        """A peer that never lets the close finish (a silent TLS peer) is cut off after the
        grace period; one that does is not."""
        protocol, transport, clock = self.connect()
        protocol.close_with(Text("bye"))
        self.assertTrue(transport.disconnecting)
        clock.advance(CLOSE_GRACE - 1)
        self.assertFalse(transport.aborted)
        clock.advance(1)
        self.assertTrue(transport.aborted)

        protocol, transport, clock = self.connect()
        protocol.close_with(Text("bye"))
        protocol.connectionLost(None)
        clock.advance(CLOSE_GRACE)
        self.assertFalse(transport.aborted)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_close_during_tls_handshake_aborts_at_once(self) -> None:
        """Before the handshake is done nothing could be read: the connection is dropped at
        once rather than waiting for a handshake that may never come."""
        protocol, transport, _ = self.connect()
        protocol.start_tls(Text("go ahead"), object())  # type: ignore[arg-type]
        protocol.close_with(Text("timeout"))
        self.assertTrue(transport.aborted)
        self.assertNotIn(b"timeout", transport.value())

    def test_start_tls_drops_pipelined_input(self) -> None:
        """Lines that came with the command asking for TLS are thrown away unread; lines after
        the handshake are handled."""
        protocol, transport, _ = self.connect()
        context = object()
        original = protocol.line_received

        def line_received(line: bytes) -> None:
            if line == b"tls":
                protocol.start_tls(Text("go ahead"), context)  # type: ignore[arg-type]
            else:
                original(line)

        protocol.line_received = line_received  # type: ignore[method-assign]
        protocol.dataReceived(b"tls\r\ninjected\r\n")
        self.assertIs(transport.tls, context)
        self.assertEqual(transport.value(), b"hello\r\ngo ahead\r\n")
        protocol.handshakeCompleted()
        protocol.dataReceived(b"after\r\n")
        self.assertEqual(transport.value(), b"hello\r\ngo ahead\r\nafter\r\n")
