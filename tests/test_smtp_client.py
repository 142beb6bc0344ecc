"""Tests for mailserver.smtp.client: the SMTP client's Twisted glue.

Most tests script the server: :func:`connect` runs against a ``MemoryReactorClock`` (with
``callFromThread``), the test builds the protocol from the connector it recorded, feeds it
the server's replies over a ``StringTransport`` and reads what it wrote. Message files are
real files, read through a thread pool stand-in that runs at once. The end-to-end tests put
our own SMTP server on the other side of an in-memory connection (``twisted.test.iosim``),
with real TLS handshakes for STARTTLS.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump
from twisted.test.iosim import connect as pump_connect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailserver import streaming
from mailserver.interfaces import (
    DeliveryOutcome,
    OutboundMessage,
    OutboundRecipient,
    RecipientResult,
    ReplyInfo,
)
from mailserver.limits import ConnectionLimiter
from mailserver.memory import MemoryMailStore, MemoryUserDatabase
from mailserver.smtp import client
from mailserver.smtp.client import (
    ClientSettings,
    ClientTimeouts,
    ConnectFailed,
    SMTPClientProtocol,
    SMTPConnection,
    TrustFiles,
    connect,
)
from mailserver.smtp.client_session import (
    CONNECT_TIMEOUT,
    CONNECTION_FAILED,
    CONNECTION_LOST,
    LOCAL_ERROR,
    NOT_CONNECTED,
    PROTOCOL_ERROR,
    TIMEOUT,
    TRUST_FILE_UNUSABLE,
    ours,
)
from mailserver.smtp.server import SMTPServerFactory, Timeouts
from mailserver.smtp.session import SessionPolicy
from mailserver.tls import ServerTLS, TLSFiles, write_self_signed
from tests.immediate import ImmediateThreadPool
from tests.tls_transport import STLSTransport

SERVER_NAME = "mx.ours.example"  # the name in the test certificate
ADDRESS = "192.0.2.25"
PEER = f"{SERVER_NAME} [{ADDRESS}]"
CLIENT_ADDRESS = IPv4Address("TCP", "198.51.100.7", 40000)
SETTINGS = ClientSettings(hostname="out.client.example")
TIMEOUTS = ClientTimeouts(
    connect=1, greeting=2, command=3, mail=4, rcpt=5, data_init=6, data_block=7, data_end=8
)

GREETING = b"220 mx.ours.example ESMTP\r\n"
EHLO_PIPELINING = b"250-mx.ours.example\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250 8BITMIME\r\n"
EHLO_PLAIN = b"250-mx.ours.example\r\n250 SIZE 100000\r\n"
EHLO_STARTTLS = b"250-mx.ours.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
BODY = b"Subject: hi\r\n\r\n.dot line\r\n.\r\nend\r\n"
MAIL = b"MAIL FROM:<alice@client.example> SIZE=%d\r\n" % len(BODY)
WIRE_BODY = b"Subject: hi\r\n\r\n..dot line\r\n..\r\nend\r\n.\r\n"


@implementer(IReactorFromThreads)
class Reactor(MemoryReactorClock):
    """The memory reactor, with ``callFromThread`` calling at once (for deferToThreadPool)."""

    def callFromThread(self, callable: Callable[..., Any], *args: object, **kwargs: object) -> None:
        callable(*args, **kwargs)


class Transport(StringTransport):
    """A StringTransport that records ``startTLS`` and can act like a socket whose buffer
    fills: above ``pause_above`` buffered octets it pauses its producer."""

    def __init__(self, pause_above: int | None = None) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", ADDRESS, 25))
        self.pause_above = pause_above
        self.tls_contexts: list[object] = []
        self.paused = False

    def startTLS(self, context: object) -> None:
        self.tls_contexts.append(context)

    def write(self, data: bytes) -> None:
        super().write(data)
        if (
            self.pause_above is not None
            and self.producer is not None
            and not self.paused
            and len(self.value()) > self.pause_above
        ):
            self.paused = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """The peer reads everything: the buffer empties and a paused producer resumes."""
        data = self.value()
        self.clear()
        if self.paused and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()
        return data


class TLSFakeTransport(STLSTransport):
    """iosim's transport with a real ``startTLS``, whose handle after it is the TLS
    connection, as Twisted's TCP transports do (so describe_connection sees it)."""

    def startTLS(self, contextFactory: Any, beNormal: bool = True) -> None:
        super().startTLS(contextFactory, beNormal)
        assert self._tls is not None
        self.getHandle = self._tls.getHandle


class Server:
    """The scripted server end of one connection made by :func:`connect`."""

    def __init__(self, reactor: Reactor, transport: Transport | None = None) -> None:
        host, port, factory, _, _ = reactor.tcpClients[-1]
        self.connector = reactor.connectors[-1]
        self.factory = factory
        self.protocol = cast(
            SMTPClientProtocol, factory.buildProtocol(IPv4Address("TCP", host, port))
        )
        self.transport = transport if transport is not None else Transport()
        self.protocol.makeConnection(self.transport)

    def say(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def heard(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lose(self, error: Exception | None = None) -> None:
        self.protocol.connectionLost(Failure(error or ConnectionDone()))


@functools.cache
def certificate_files() -> TLSFiles:
    """A self-signed certificate for SERVER_NAME, made once for all the tests."""
    directory = Path(tempfile.mkdtemp(prefix="smtp-client-test-"))
    files = TLSFiles(directory / "cert.pem", directory / "key.pem")
    write_self_signed(SERVER_NAME, files.certificate, files.private_key)
    return files


class ClientTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Reactor()
        self.pool = ImmediateThreadPool()
        self.directory = Path(tempfile.mkdtemp(prefix="smtp-client-test-"))
        self.addCleanup(shutil.rmtree, self.directory)

    def message(self, *recipients: str, content: bytes = BODY, **fields: Any) -> OutboundMessage:
        path = self.directory / f"message-{len(list(self.directory.iterdir()))}"
        path.write_bytes(content)
        values: dict[str, Any] = {
            "id": "Q1",
            "sender": "alice@client.example",
            "recipients": tuple(OutboundRecipient(address) for address in recipients),
            "path": path,
            "size": len(content),
        }
        values.update(fields)
        return OutboundMessage(**values)

    def connect(
        self,
        settings: ClientSettings = SETTINGS,
        chunk_size: int = 64 * 1024,
        address: str = ADDRESS,
        transport: Transport | None = None,
    ) -> tuple[Deferred[SMTPConnection], Server]:
        connecting = connect(
            self.reactor,
            address,
            25,
            SERVER_NAME,
            settings,
            pool=self.pool,  # type: ignore[arg-type]
            chunk_size=chunk_size,
        )
        return connecting, Server(self.reactor, transport)

    def ready(
        self,
        ehlo: bytes = EHLO_PIPELINING,
        settings: ClientSettings = SETTINGS,
        chunk_size: int = 64 * 1024,
        transport: Transport | None = None,
    ) -> tuple[SMTPConnection, Server]:
        """A connection set up over the scripted server, with ``ehlo`` as its EHLO reply."""
        connecting, server = self.connect(settings, chunk_size, transport=transport)
        server.say(GREETING)
        self.assertEqual(server.heard(), b"EHLO out.client.example\r\n")
        server.say(ehlo)
        return self.successResultOf(connecting), server

    def failure(self, connecting: Deferred[SMTPConnection]) -> ConnectFailed:
        error = self.failureResultOf(connecting, ConnectFailed).value
        assert isinstance(error, ConnectFailed)
        return error


def outcomes(results: list[RecipientResult]) -> list[tuple[DeliveryOutcome, ReplyInfo]]:
    return [(result.outcome, result.reply) for result in results]


class ScriptedTests(ClientTestCase):
    def test_connects_to_the_address_with_the_connect_timeout(self) -> None:
        """TCP goes to the given address and port, with the connect timeout; IPv6 literals
        too."""
        self.connect(replace(SETTINGS, timeouts=TIMEOUTS))
        self.assertEqual(self.reactor.tcpClients[-1][:2], (ADDRESS, 25))
        self.assertEqual(self.reactor.tcpClients[-1][3], TIMEOUTS.connect)
        self.connect(address="2001:db8::25")
        self.assertEqual(self.reactor.tcpClients[-1][0], "2001:db8::25")

    def test_pipelined_delivery_then_quit(self) -> None:
        """With PIPELINING: MAIL, RCPT and DATA in one write; after 354 the content,
        dot-stuffed, then "."; the 250 makes every accepted recipient DELIVERED; close()
        sends QUIT and the connection closes on its reply."""
        connection, server = self.ready()
        self.assertEqual((connection.remote_host, connection.tls), (SERVER_NAME, None))
        sent = connection.send(self.message("bob@ours.example", "carol@ours.example"))
        self.assertEqual(
            server.heard(),
            MAIL + b"RCPT TO:<bob@ours.example>\r\nRCPT TO:<carol@ours.example>\r\nDATA\r\n",
        )
        server.say(b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 No such user\r\n354 Go\r\n")
        self.assertEqual(server.heard(), WIRE_BODY)
        self.assertNoResult(sent)
        server.say(b"250 2.0.0 Queued as X\r\n")
        self.assertEqual(
            outcomes(self.successResultOf(sent)),
            [
                (DeliveryOutcome.DELIVERED, ReplyInfo(250, "2.0.0", "Queued as X")),
                (DeliveryOutcome.PERMANENT, ReplyInfo(550, "5.1.1", "No such user")),
            ],
        )
        self.assertTrue(connection.usable)
        closed = connection.close()
        self.assertFalse(connection.usable)
        self.assertEqual(server.heard(), b"QUIT\r\n")
        server.say(b"221 2.0.0 Bye\r\n")
        self.assertTrue(server.transport.disconnecting)
        self.assertNoResult(closed)
        server.lose()
        self.successResultOf(closed)

    def test_one_command_at_a_time_without_pipelining(self) -> None:
        """Without PIPELINING each command is written only once the previous one is
        answered."""
        connection, server = self.ready(EHLO_PLAIN)
        sent = connection.send(self.message("bob@ours.example"))
        self.assertEqual(server.heard(), MAIL)
        server.say(b"250 OK\r\n")
        self.assertEqual(server.heard(), b"RCPT TO:<bob@ours.example>\r\n")
        server.say(b"250 OK\r\n")
        self.assertEqual(server.heard(), b"DATA\r\n")
        server.say(b"354 Go\r\n")
        self.assertEqual(server.heard(), WIRE_BODY)
        server.say(b"250 Done\r\n")
        self.assertEqual(
            outcomes(self.successResultOf(sent)),
            [(DeliveryOutcome.DELIVERED, ReplyInfo(250, None, "Done"))],
        )

    def test_all_recipients_refused_sends_no_content(self) -> None:
        """Every RCPT refused: the refused DATA is followed by RSET, no content is written,
        and the next message goes over the same connection."""
        connection, server = self.ready()
        sent = connection.send(self.message("bob@ours.example"))
        server.heard()
        server.say(b"250 OK\r\n550 5.1.1 No\r\n554 5.5.1 No valid recipients\r\n")
        self.assertEqual(server.heard(), b"RSET\r\n")
        server.say(b"250 Reset\r\n")
        self.assertEqual(
            outcomes(self.successResultOf(sent)),
            [(DeliveryOutcome.PERMANENT, ReplyInfo(550, "5.1.1", "No"))],
        )
        self.assertTrue(connection.usable)
        connection.send(self.message("carol@ours.example"))
        self.assertTrue(server.heard().startswith(b"MAIL FROM:"))

    def test_end_of_data_refused(self) -> None:
        """A 4xx to the final "." makes the accepted recipients TRANSIENT, a 5xx PERMANENT."""
        connection, server = self.ready()
        for reply, outcome in (
            (ReplyInfo(451, "4.3.0", "Later"), DeliveryOutcome.TRANSIENT),
            (ReplyInfo(554, "5.6.0", "Never"), DeliveryOutcome.PERMANENT),
        ):
            sent = connection.send(self.message("bob@ours.example"))
            server.say(b"250 OK\r\n250 OK\r\n354 Go\r\n")
            server.say(f"{reply.code} {reply.enhanced} {reply.text}\r\n".encode())
            self.assertEqual(outcomes(self.successResultOf(sent)), [(outcome, reply)])
            self.assertTrue(connection.usable)

    def test_messages_wait_their_turn(self) -> None:
        """A message sent while another is under way starts once the first is done."""
        connection, server = self.ready()
        first = connection.send(self.message("bob@ours.example"))
        second = connection.send(self.message("carol@ours.example"))
        self.assertEqual(server.heard().count(b"MAIL FROM"), 1)
        server.say(b"250 OK\r\n250 OK\r\n354 Go\r\n250 Done\r\n")
        self.successResultOf(first)
        self.assertIn(b"RCPT TO:<carol@ours.example>", server.heard())
        server.say(b"250 OK\r\n250 OK\r\n354 Go\r\n250 Done\r\n")
        self.successResultOf(second)

    def test_greeting_554(self) -> None:
        """RFC 5321 §3.1: a 554 greeting fails the connection for good; QUIT is said."""
        connecting, server = self.connect()
        server.say(b"554 5.7.1 No SMTP service here\r\n")
        error = self.failure(connecting)
        self.assertEqual(error.reply, ReplyInfo(554, "5.7.1", "No SMTP service here"))
        self.assertTrue(error.permanent)
        self.assertEqual(server.heard(), b"QUIT\r\n")
        self.assertTrue(server.transport.disconnecting)

    def test_ehlo_refused_then_helo(self) -> None:
        """RFC 5321 §3.2: EHLO answered 500: HELO, and the session is set up without
        extensions (so no pipelining)."""
        connecting, server = self.connect()
        server.say(GREETING)
        server.heard()
        server.say(b"500 5.5.1 What?\r\n")
        self.assertEqual(server.heard(), b"HELO out.client.example\r\n")
        server.say(b"250 mx.ours.example\r\n")
        connection = self.successResultOf(connecting)
        connection.send(self.message("bob@ours.example"))
        self.assertEqual(server.heard(), b"MAIL FROM:<alice@client.example>\r\n")

    def test_connection_refused_and_connect_timeout(self) -> None:
        """A refused or timed-out TCP connection fails with our 451 4.4.1, for now."""
        connecting, server = self.connect()
        server.factory.clientConnectionFailed(server.connector, Failure(ConnectionRefusedError()))
        error = self.failure(connecting)
        refused = ours(CONNECTION_FAILED, host=PEER, reason="Connection was refused by other side")
        self.assertEqual(error.reply, refused)
        self.assertFalse(error.permanent)
        connecting, server = self.connect()
        server.factory.clientConnectionFailed(server.connector, Failure(ConnectTimeoutError()))
        self.assertEqual(self.failure(connecting).reply, ours(CONNECT_TIMEOUT, host=PEER))

    def test_cancel(self) -> None:
        """Cancelling the attempt before the session is set up fails it with CancelledError;
        a later failure of the connection changes nothing."""
        connecting, server = self.connect()
        connecting.cancel()
        self.failureResultOf(connecting, CancelledError)
        server.lose()

    def test_greeting_timeout(self) -> None:
        """No greeting within its timeout: the set-up fails and the connection is aborted."""
        connecting, server = self.connect(replace(SETTINGS, timeouts=TIMEOUTS))
        self.reactor.advance(TIMEOUTS.greeting - 0.1)
        self.assertNoResult(connecting)
        self.reactor.advance(0.1)
        self.assertEqual(
            self.failure(connecting).reply,
            ours(TIMEOUT, host=PEER, doing="waiting for the reply to greeting"),
        )
        self.assertTrue(server.transport.disconnected)  # aborted

    def test_timeouts_per_command(self) -> None:
        """Each reply has its own timeout (RFC 5321 §4.5.3.2): a slow RCPT reply is waited
        for up to the RCPT timeout counted from the MAIL reply, then the recipients are
        TRANSIENT and the connection is aborted and unusable."""
        connection, server = self.ready(EHLO_PLAIN, replace(SETTINGS, timeouts=TIMEOUTS))
        sent = connection.send(self.message("bob@ours.example"))
        self.reactor.advance(TIMEOUTS.mail - 0.1)
        server.say(b"250 OK\r\n")
        self.reactor.advance(TIMEOUTS.rcpt - 0.1)
        self.assertNoResult(sent)
        server.say(b"250 ")  # part of a reply does not restart the wait
        self.reactor.advance(0.1)
        self.assertEqual(
            outcomes(self.successResultOf(sent)),
            [
                (
                    DeliveryOutcome.TRANSIENT,
                    ours(TIMEOUT, host=PEER, doing="waiting for the reply to RCPT"),
                )
            ],
        )
        self.assertTrue(server.transport.disconnected)
        self.assertFalse(connection.usable)

    def test_data_end_timeout(self) -> None:
        """The reply to the final "." is waited for up to its own (longest) timeout."""
        connection, server = self.ready(settings=replace(SETTINGS, timeouts=TIMEOUTS))
        sent = connection.send(self.message("bob@ours.example"))
        server.say(b"250 OK\r\n250 OK\r\n354 Go\r\n")
        self.reactor.advance(TIMEOUTS.data_end - 0.1)
        self.assertNoResult(sent)
        self.reactor.advance(0.1)
        [result] = self.successResultOf(sent)
        self.assertEqual(result.outcome, DeliveryOutcome.TRANSIENT)

    def test_streaming_follows_flow_control(self) -> None:
        """The file is read chunk by chunk while the transport takes it; when the transport
        pauses, reading stops until it resumes, and the content arrives whole."""
        content = b"".join(b".line %d\r\n" % number for number in range(400))
        transport = Transport(pause_above=200)
        connection, server = self.ready(chunk_size=64, transport=transport)
        sent = connection.send(self.message("bob@ours.example", content=content))
        server.heard()
        server.say(b"250 OK\r\n250 OK\r\n354 Go\r\n")
        self.assertTrue(transport.paused)
        reads = self.pool.calls
        self.reactor.advance(1)
        self.assertEqual(self.pool.calls, reads)  # nothing read while paused
        wire = b""
        for _ in range(200):
            wire += transport.drain()
            if wire.endswith(b"\r\n.\r\n"):
                break
        stuffed = b"." + content.replace(b"\r\n.", b"\r\n..")  # every line starts with "."
        self.assertEqual(wire, stuffed + b".\r\n")
        server.say(b"250 Done\r\n")
        self.assertEqual(self.successResultOf(sent)[0].outcome, DeliveryOutcome.DELIVERED)

    def test_data_block_timeout(self) -> None:
        """A server that stops reading the content for longer than the data block timeout:
        the recipients are TRANSIENT and the connection is aborted."""
        content = b"x" * 1000 + b"\r\n"
        transport = Transport(pause_above=100)
        connection, server = self.ready(
            settings=replace(SETTINGS, timeouts=TIMEOUTS), chunk_size=64, transport=transport
        )
        sent = connection.send(self.message("bob@ours.example", content=content))
        server.say(b"250 OK\r\n250 OK\r\n354 Go\r\n")
        self.reactor.advance(TIMEOUTS.data_block - 0.1)
        self.assertNoResult(sent)
        self.reactor.advance(0.1)
        self.assertEqual(
            outcomes(self.successResultOf(sent)),
            [(DeliveryOutcome.TRANSIENT, ours(TIMEOUT, host=PEER, doing="sending the message"))],
        )
        self.assertTrue(transport.disconnected)
        self.assertFalse(transport.value().endswith(b"\r\n.\r\n"))

    def test_connection_lost_mid_data(self) -> None:
        """Lost while the content is being sent: the accepted recipients are TRANSIENT with
        451 4.4.2 naming the server, the connection is unusable, and a later message gets
        its TRANSIENT results at once."""
        transport = Transport(pause_above=100)
        connection, server = self.ready(chunk_size=64, transport=transport)
        sent = connection.send(
            self.message("bob@ours.example", "carol@ours.example", content=b"y\r\n" * 500)
        )
        server.say(b"250 OK\r\n250 OK\r\n550 5.1.1 No\r\n354 Go\r\n")
        server.lose(ConnectionLost())
        reason = "Connection to the other side was lost in a non-clean fashion"
        lost = ours(CONNECTION_LOST, host=PEER, reason=reason)
        self.assertEqual(
            outcomes(self.successResultOf(sent)),
            [
                (DeliveryOutcome.TRANSIENT, lost),
                (DeliveryOutcome.PERMANENT, ReplyInfo(550, "5.1.1", "No")),
            ],
        )
        self.assertFalse(connection.usable)
        later = self.successResultOf(connection.send(self.message("bob@ours.example")))
        self.assertEqual(
            outcomes(later), [(DeliveryOutcome.TRANSIENT, ours(NOT_CONNECTED, host=PEER))]
        )
        self.successResultOf(connection.close())

    def test_unreadable_file_aborts_without_the_terminator(self) -> None:
        """A message file that cannot be read: the connection is aborted, never ended with
        ".", so the server keeps no partial message; the recipients are TRANSIENT."""
        connection, server = self.ready()
        message = self.message("bob@ours.example")
        message.path.unlink()
        sent = connection.send(message)
        server.heard()
        server.say(b"250 OK\r\n250 OK\r\n354 Go\r\n")
        [result] = self.successResultOf(sent)
        self.assertEqual(result.outcome, DeliveryOutcome.TRANSIENT)
        self.assertEqual((result.reply.code, result.reply.enhanced), (451, LOCAL_ERROR.enhanced))
        self.assertEqual(server.heard(), b"")
        self.assertTrue(server.transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(FileNotFoundError)), 1)

    def test_hostile_endless_reply_line(self) -> None:
        """A reply line that never ends is cut off at the limit: the set-up fails with our
        451 4.5.0, the connection is aborted, and memory never grows past the limit."""
        connecting, server = self.connect()
        for _ in range(10):
            server.say(b"220-" + b"x" * 1000)
        error = self.failure(connecting)
        self.assertEqual((error.reply.code, error.reply.enhanced), (451, PROTOCOL_ERROR.enhanced))
        self.assertTrue(server.transport.disconnected)

    def test_garbage_mid_transaction(self) -> None:
        """Garbage instead of a reply mid-transaction: TRANSIENT, connection unusable."""
        connection, server = self.ready()
        sent = connection.send(self.message("bob@ours.example"))
        server.say(b"hello there\r\n")
        [result] = self.successResultOf(sent)
        self.assertEqual(
            (result.outcome, result.reply.enhanced), (DeliveryOutcome.TRANSIENT, "4.5.0")
        )
        self.assertFalse(connection.usable)

    def test_starttls_discards_what_came_before_the_handshake(self) -> None:
        """RFC 3207 §4.2: octets after the 220 to STARTTLS (here an injected EHLO reply
        offering PIPELINING and no STARTTLS) are thrown away; after the handshake EHLO is sent
        again and only its reply counts."""
        connecting, server = self.connect()
        server.say(GREETING)
        server.heard()
        server.say(EHLO_STARTTLS)
        self.assertEqual(server.heard(), b"STARTTLS\r\n")
        server.say(b"220 2.0.0 Go ahead\r\n250-injected\r\n250 PIPELINING\r\n")
        self.assertEqual(len(server.transport.tls_contexts), 1)
        self.assertEqual(server.heard(), b"")
        server.protocol.handshakeCompleted()
        self.assertEqual(server.heard(), b"EHLO out.client.example\r\n")
        self.assertNoResult(connecting)
        server.say(b"250 mx.ours.example\r\n")
        connection = self.successResultOf(connecting)
        self.assertFalse(connection.capabilities.pipelining)

    def test_opportunistic_handshake_failure_retries_in_plaintext(self) -> None:
        """Opportunistic TLS whose handshake fails: the same server is tried once more
        without TLS (RFC 7435), and the STARTTLS it offers is then left alone."""
        connecting, server = self.connect()
        server.say(GREETING + EHLO_STARTTLS + b"220 Go ahead\r\n")
        server.lose(SSL.Error([("SSL routines", "", "wrong version number")]))
        self.assertNoResult(connecting)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        retry = Server(self.reactor)
        retry.say(GREETING + EHLO_STARTTLS)
        self.assertEqual(retry.heard(), b"EHLO out.client.example\r\n")
        self.assertIsNone(self.successResultOf(connecting).tls)

    def test_required_tls_handshake_failure_is_final(self) -> None:
        """With TLS required, a failed handshake fails the set-up (454 4.7.5) with no
        plaintext retry."""
        connecting, server = self.connect(replace(SETTINGS, tls="required"))
        server.say(GREETING + EHLO_STARTTLS + b"220 Go ahead\r\n")
        server.lose(SSL.Error([("SSL routines", "", "certificate verify failed")]))
        error = self.failure(connecting)
        self.assertEqual(
            str(error.reply), f"454 4.7.5 TLS with {PEER} failed: certificate verify failed"
        )
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_unusable_trust_file(self) -> None:
        """A trust file that cannot be read fails at once, naming it, without connecting."""
        missing = self.directory / "missing.pem"
        connecting = connect(
            self.reactor,
            ADDRESS,
            25,
            SERVER_NAME,
            replace(SETTINGS, tls="required", trust_file=missing),
            pool=self.pool,  # type: ignore[arg-type]
        )
        error = self.failure(connecting)
        self.assertEqual(
            error.reply,
            ours(TRUST_FILE_UNUSABLE, path=missing, reason="No such file or directory"),
        )
        self.assertEqual(self.reactor.tcpClients, [])

    def test_trust_file_parsed_once(self) -> None:
        """A trust file is parsed once and its certificates kept while the file stays the
        same (it would otherwise be parsed on the reactor thread for every attempt)."""
        bundle = self.directory / "bundle.pem"
        shutil.copy(certificate_files().certificate, bundle)
        files = TrustFiles()
        first = files.authorities(bundle)
        self.assertEqual(len(first), 1)
        self.assertIs(files.authorities(bundle), first)

    def test_trust_file_read_again_when_changed(self) -> None:
        """A bundle edited in place (another size) or replaced is parsed again."""
        bundle = self.directory / "bundle.pem"
        pem = certificate_files().certificate.read_bytes()
        bundle.write_bytes(pem)
        files = TrustFiles()
        first = files.authorities(bundle)
        bundle.write_bytes(pem + pem)
        second = files.authorities(bundle)
        self.assertEqual(len(second), 2)
        replacement = self.directory / "replacement.pem"
        replacement.write_bytes(pem)
        replacement.replace(bundle)
        third = files.authorities(bundle)
        self.assertEqual(len(third), 1)
        self.assertIsNot(third, first)
        self.assertIs(files.authorities(bundle), third)

    def test_damaged_trust_file_not_remembered(self) -> None:
        """A bundle that fails to parse fails every time, naming why, until it is fixed; the
        failure itself is never kept."""
        bundle = self.directory / "bundle.pem"
        bundle.write_bytes(b"not a certificate\n")
        files = TrustFiles()
        for _ in range(2):
            with self.assertRaisesRegex(Exception, "no PEM certificate"):
                files.authorities(bundle)
        shutil.copy(certificate_files().certificate, bundle)
        self.assertEqual(len(files.authorities(bundle)), 1)


class PiecesTests(SynchronousTestCase):
    def test_sni_is_idna_2008(self) -> None:
        """SNI carries the A-label of IDNA 2008 (``ß`` kept), lower-cased; nothing for an
        IP address, an address literal or a name IDNA refuses (RFC 6066 §3)."""
        self.assertEqual(client._sni("MX.Straße.example."), b"mx.xn--strae-oqa.example")
        self.assertEqual(client._sni("mx.ours.example"), b"mx.ours.example")
        for name in ("192.0.2.25", "2001:db8::1", "[192.0.2.25]", "\U0001f600.example"):
            self.assertIsNone(client._sni(name))

    def test_one_chunk_size(self) -> None:
        """The client reads message files in the chunks every streamer uses."""
        self.assertIs(client.CHUNK_SIZE, streaming.CHUNK_SIZE)

    def test_connecting_factory_docstring_and_quiet(self) -> None:
        """The factory keeps its docstring and logs no "Starting factory" lines."""
        factory = client._ConnectingFactory
        self.assertTrue((factory.__doc__ or "").startswith("Builds the one protocol"))
        self.assertFalse(factory.noisy)


# --- Against our own server ---------------------------------------------------------------------

POLICY = SessionPolicy(
    hostname=SERVER_NAME,
    max_message_size=10 * 2**20,
    max_recipients=50,
    max_received_headers=5,
    max_errors=10,
    postmaster="postmaster@ours.example",
)


class EndToEndTests(ClientTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.users = MemoryUserDatabase(
            domains=["ours.example"], users={"bob@ours.example": "x", "carol@ours.example": "x"}
        )
        self.store = MemoryMailStore()
        self.spool = self.directory / "spool"
        self.spool.mkdir()

    def server_factory(self, tls: ServerTLS | None = None) -> SMTPServerFactory:
        return SMTPServerFactory(
            policy=POLICY,
            timeouts=Timeouts(command=300.0, data=600.0),
            users=self.users,
            store=self.store,
            spool_directory=self.spool,
            limiter=ConnectionLimiter(100, 100),
            reactor=self.reactor,
            tls=tls,
        )

    def loopback(
        self,
        settings: ClientSettings = SETTINGS,
        chunk_size: int = 64 * 1024,
        tls: ServerTLS | None = None,
        server_name: str = SERVER_NAME,
    ) -> tuple[Deferred[SMTPConnection], IOPump]:
        """Our client connected to our server in memory; pump to move the octets."""
        connecting = connect(
            self.reactor,
            ADDRESS,
            25,
            server_name,
            settings,
            pool=self.pool,  # type: ignore[arg-type]
            chunk_size=chunk_size,
        )
        factory = self.reactor.tcpClients[-1][2]
        client = factory.buildProtocol(None)
        server = self.server_factory(tls).buildProtocol(CLIENT_ADDRESS)
        server_io = TLSFakeTransport(server, isServer=True, peerAddress=CLIENT_ADDRESS)
        client_io = TLSFakeTransport(client, isServer=False)
        pump = pump_connect(server, server_io, client, client_io, clock=self.reactor)
        pump.flush()
        return connecting, pump

    def deliver(
        self, connection: SMTPConnection, pump: IOPump, message: OutboundMessage
    ) -> list[RecipientResult]:
        sent = connection.send(message)
        pump.flush()
        return self.successResultOf(sent)

    def stored_content(self, mailbox: str) -> list[bytes]:
        """The stored messages of ``mailbox`` without the server's trace headers."""
        contents = []
        for stored in self.store.mailboxes.get(mailbox, []):
            header_end = stored.index(b";\r\n\t") + 4
            contents.append(stored[stored.index(b"\r\n", header_end) + 2 :])
        return contents

    def test_dot_lines_on_every_chunk_boundary(self) -> None:
        """Lines starting with "." (and a line that is only ".") placed so that, over the
        chunk sizes tried, a dot falls on every position of a chunk, the CRLF before it is
        split, and so on: our server stores exactly the octets of the file each time."""
        content = (
            b"Subject: dots\r\n\r\n"
            + b"".join(b"." * (1 + number % 3) + b"x" * number + b"\r\n" for number in range(40))
            + b".\r\n..\r\n.\r\nlast\r\n"
        )
        for chunk_size in range(1, 14):
            connecting, pump = self.loopback(chunk_size=chunk_size)
            connection = self.successResultOf(connecting)
            results = self.deliver(
                connection, pump, self.message("bob@ours.example", content=content)
            )
            self.assertEqual([result.outcome for result in results], [DeliveryOutcome.DELIVERED])
            closed = connection.close()
            pump.flush()
            self.successResultOf(closed)
        stored = self.stored_content("bob@ours.example")
        self.assertEqual(len(stored), 13)
        for copy in stored:
            self.assertEqual(copy, content)

    def test_mixed_recipients_against_our_server(self) -> None:
        """A known and an unknown recipient, pipelined: the known one is DELIVERED with our
        server's 250, the unknown one PERMANENT with its 550 5.1.1; a second message follows
        over the same connection."""
        connecting, pump = self.loopback()
        connection = self.successResultOf(connecting)
        results = self.deliver(
            connection, pump, self.message("bob@ours.example", "nobody@ours.example")
        )
        self.assertEqual(
            [(r.outcome, r.reply.code, r.reply.enhanced) for r in results],
            [
                (DeliveryOutcome.DELIVERED, 250, "2.0.0"),
                (DeliveryOutcome.PERMANENT, 550, "5.1.1"),
            ],
        )
        results = self.deliver(connection, pump, self.message("carol@ours.example"))
        self.assertEqual(results[0].outcome, DeliveryOutcome.DELIVERED)
        self.assertEqual(self.stored_content("carol@ours.example"), [BODY])

    def test_dsn_passed_against_our_server(self) -> None:
        """Our server offers DSN: a recipient sent with NOTIFY comes back DELIVERED with
        ``dsn_passed``, one without NOTIFY without it (RFC 3461 §5.2.1)."""
        connecting, pump = self.loopback()
        connection = self.successResultOf(connecting)
        recipients = (
            OutboundRecipient("bob@ours.example", notify=frozenset({"SUCCESS"})),
            OutboundRecipient("carol@ours.example"),
        )
        results = self.deliver(connection, pump, self.message(recipients=recipients))
        self.assertEqual(
            [(r.outcome, r.dsn_passed) for r in results],
            [(DeliveryOutcome.DELIVERED, True), (DeliveryOutcome.DELIVERED, False)],
        )

    def test_opportunistic_starttls(self) -> None:
        """Our server offers STARTTLS: the client uses it without checking the self-signed
        certificate, records the cipher, and the message arrives over TLS (ESMTPS)."""
        connecting, pump = self.loopback(tls=ServerTLS(certificate_files()))
        connection = self.successResultOf(connecting)
        assert connection.tls is not None
        self.assertRegex(connection.tls, r"^TLSv1\.[23] with cipher ")
        self.deliver(connection, pump, self.message("bob@ours.example"))
        self.assertIn(b"with ESMTPS", self.store.mailboxes["bob@ours.example"][0])

    def test_required_tls_verified(self) -> None:
        """With TLS required and the certificate trusted through trust_file, the name is
        verified and the session set up."""
        files = certificate_files()
        settings = replace(SETTINGS, tls="required", trust_file=files.certificate)
        connecting, pump = self.loopback(settings, tls=ServerTLS(files))
        connection = self.successResultOf(connecting)
        self.assertIsNotNone(connection.tls)
        results = self.deliver(connection, pump, self.message("bob@ours.example"))
        self.assertEqual(results[0].outcome, DeliveryOutcome.DELIVERED)

    def test_required_tls_wrong_name(self) -> None:
        """With TLS required, a certificate for another name fails the set-up, for now, with
        454 4.7.5, and nothing is sent in plaintext."""
        files = certificate_files()
        settings = replace(SETTINGS, tls="required", trust_file=files.certificate)
        connecting, _ = self.loopback(
            settings, tls=ServerTLS(files), server_name="mx.other.example"
        )
        error = self.failure(connecting)
        self.assertEqual((error.reply.code, error.reply.enhanced), (454, "4.7.5"))
        self.assertIn("the certificate is not for this name", error.reply.text)
        self.assertFalse(error.permanent)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_required_tls_not_offered(self) -> None:
        """With TLS required and a server without STARTTLS: 454 4.7.4, QUIT, no message."""
        connecting, _ = self.loopback(replace(SETTINGS, tls="required"))
        error = self.failure(connecting)
        self.assertEqual((error.reply.code, error.reply.enhanced), (454, "4.7.4"))
