"""Tests for mailserver.lineserver, through a minimal echo protocol built on it."""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailserver.limits import Admission, ConnectionLimiter
from mailserver.lineserver import CLOSE_GRACE, PAUSE_BACKLOG, LineServerProtocol, write_now

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


class FlowControlTests(SynchronousTestCase):
    def connect(self) -> tuple[Echo, StringTransport]:
        protocol, transport = Echo(ConnectionLimiter(10, 10)), StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        protocol.flow_controlled()
        return protocol, transport

    def test_no_command_while_the_transport_is_full(self) -> None:
        """Paused by its transport (too much unsent output), the protocol takes no command;
        resumed, it answers the ones that waited, in order."""
        protocol, transport = self.connect()
        self.assertIs(transport.producer, protocol)
        protocol.pauseProducing()
        protocol.dataReceived(b"a\r\nb\r\n")
        self.assertEqual(transport.value(), b"hello\r\n")
        protocol.resumeProducing()
        self.assertEqual(transport.value(), b"hello\r\na\r\nb\r\n")

    def test_reading_pauses_while_output_is_stuck(self) -> None:
        """Input piling up behind output the client does not read pauses reading too."""
        protocol, transport = self.connect()
        protocol.pauseProducing()
        protocol.dataReceived(b"z\r\n" * (PAUSE_BACKLOG // 3 + 1))
        self.assertEqual(transport.producerState, "paused")
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_pause_during_a_wait_holds_the_lines_after_it(self) -> None:
        """Work that finishes while the output is paused answers, and the lines after it wait
        for the resume."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"wait\r\nafter\r\n")
        protocol.pauseProducing()
        assert protocol.pending is not None
        protocol.pending.callback("done")
        self.assertEqual(transport.value(), b"hello\r\ndone\r\n")
        protocol.resumeProducing()
        self.assertEqual(transport.value(), b"hello\r\ndone\r\nafter\r\n")

    def test_close_unregisters_first(self) -> None:
        """A transport with a producer registered would not close: close_with unregisters."""
        protocol, transport = self.connect()
        protocol.close_with(Text("bye"))
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)

    def test_stop_means_the_connection_is_gone(self) -> None:
        """stopProducing (the connection was lost) stops the input loop at once."""
        protocol, transport = self.connect()
        protocol.stopProducing()
        protocol.dataReceived(b"a\r\n")
        self.assertEqual(transport.value(), b"hello\r\n")


class WriteNowTests(SynchronousTestCase):
    """write_now on a real loopback TCP connection, through Twisted's own TCP transport (so a
    Twisted release that changes what it relies on fails here)."""

    def setUp(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.client = socket.socket()
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up soon
        self.client.settimeout(10)
        self.client.connect(listener.getsockname())
        accepted, peer = listener.accept()
        listener.close()
        self.reactor = MemoryReactor()
        self.transport = tcp.Server(accepted, Protocol(), peer, None, 1, self.reactor)  # type: ignore[arg-type]
        self.addCleanup(self.client.close)
        self.addCleanup(accepted.close)

    def receive(self, size: int, push: bool = False) -> bytes:
        """``size`` octets from the client's end; with ``push``, the transport is given its
        turns to write meanwhile, as the reactor would."""
        data = bytearray()
        deadline = time.monotonic() + 10
        self.client.settimeout(0.05 if push else 10)
        while len(data) < size:
            self.assertLess(time.monotonic(), deadline)
            if push and self.transport.doWrite() is not None:
                raise AssertionError("connection lost")
            with contextlib.suppress(TimeoutError):  # waiting for an ACK: write again
                data += self.client.recv(size - len(data))
        return bytes(data)

    def test_sent_at_once_when_nothing_waits(self) -> None:
        """With nothing queued, the octets go to the kernel at once: the peer has them without
        a turn of the reactor, and the transport is not left waiting to write."""
        self.assertTrue(write_now(self.transport, b"+OK hello\r\n"))
        self.assertEqual(self.receive(11), b"+OK hello\r\n")
        self.assertNotIn(self.transport, self.reactor.getWriters())

    def test_queued_behind_output_already_waiting(self) -> None:
        """Output the transport already holds goes first: the new octets queue behind it."""
        self.transport.write(b"first ")
        self.assertFalse(write_now(self.transport, b"second"))
        self.assertEqual(self.receive(12, push=True), b"first second")

    def test_what_the_kernel_does_not_take_is_queued(self) -> None:
        """Octets beyond what the socket buffer takes wait in the transport, in order."""
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * 1024  # more than the kernel buffers
        self.assertFalse(write_now(self.transport, data))
        self.assertIn(self.transport, self.reactor.getWriters())
        self.assertEqual(self.receive(len(data), push=True), data)

    def test_tls_and_other_transports_get_a_plain_write(self) -> None:
        """TLS (the octets must be encrypted) and any transport that is not plain TCP: the
        transport's own write."""
        self.transport.TLS = True
        written: list[bytes] = []
        self.transport.write = written.append  # type: ignore[method-assign]
        self.assertFalse(write_now(self.transport, b"secret"))
        self.assertEqual(written, [b"secret"])
        other = StringTransport()
        self.assertFalse(write_now(other, b"hello"))
        self.assertEqual(other.value(), b"hello")
