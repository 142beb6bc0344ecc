"""Tests for mailserver.smtp.server: the SMTP glue between a transport and the session machine.

Every test drives a real :class:`SMTPServerProtocol` over ``StringTransport`` with a
``MemoryReactorClock`` as its reactor, the in-memory user database and the in-memory mail store
from :mod:`mailserver.memory`, and a real spool directory in a temporary folder. Replies are
compared by their code and enhanced code against the names in :mod:`mailserver.smtp.replies`.
"""

from __future__ import annotations

import base64
import errno
import itertools
import re
import shutil
import tempfile
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailserver.address import Mailbox
from mailserver.authlimit import LoginThrottle
from mailserver.interfaces import Lookup, RecipientLookup, StorageFull
from mailserver.limits import ConnectionLimiter
from mailserver.lineserver import PAUSE_BACKLOG
from mailserver.logins import LoginChecker
from mailserver.memory import MemoryMailStore, MemoryUserDatabase
from mailserver.smtp import replies, server
from mailserver.smtp.replies import Reply
from mailserver.smtp.server import SMTPServerFactory, Timeouts, new_message_id
from mailserver.smtp.session import MAX_COMMAND_LINE, SessionPolicy
from mailserver.spool import SPILL_THRESHOLD

HOSTNAME = "mx.ours.example"
PEER = IPv4Address("TCP", "192.0.2.1", 4321)
SECOND_PEER = IPv4Address("TCP", "192.0.2.2", 4321)
THIRD_PEER = IPv4Address("TCP", "192.0.2.3", 4321)
MiB = 2**20
START = 1_700_000_000.0  # the clock's time when each test begins (dates in Received headers)
TIMEOUTS = Timeouts(command=300.0, data=600.0)
POLICY = SessionPolicy(
    hostname=HOSTNAME,
    max_message_size=10 * MiB,
    max_recipients=50,
    max_received_headers=5,
    max_errors=10,
    postmaster="postmaster@ours.example",
)
MAX_PER_CLIENT = 2
MAX_TOTAL = 3

EHLO = b"EHLO client.example\r\n"
MAIL = b"MAIL FROM:<alice@client.example>\r\n"
RCPT_BOB = b"RCPT TO:<bob@ours.example>\r\n"
TRANSACTION = EHLO + MAIL + RCPT_BOB
BODY = b"Subject: hello\r\n\r\nHi Bob.\r\n..a line that began with a dot\r\n"
STORED_BODY = b"Subject: hello\r\n\r\nHi Bob.\r\n.a line that began with a dot\r\n"
EHLO_REPLY = [(250, None)]

_REPLY_LINE = re.compile(rb"(\d{3})([ -])(.*)\r\n")
_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3}) ")


def parse_replies(output: bytes) -> list[tuple[int, str | None, str]]:
    """Split server output into replies as (code, enhanced code or None, text), checking that
    it is nothing but well-formed reply lines and that continuation lines share their code."""
    found: list[tuple[int, str | None, str]] = []
    lines: list[str] = []
    first_code = 0
    position = 0
    while position < len(output):
        match = _REPLY_LINE.match(output, position)
        assert match is not None, f"malformed reply output at {output[position:]!r}"
        position = match.end()
        code, separator, text = int(match[1]), match[2], match[3].decode("utf-8")
        if not lines:
            first_code = code
        assert code == first_code, f"continuation with another code in {output!r}"
        lines.append(text)
        if separator == b" ":
            enhanced = _ENHANCED.match(lines[0])
            if enhanced:
                lines = [line.removeprefix(enhanced[0]) for line in lines]
            found.append((code, enhanced[1] if enhanced else None, "\n".join(lines)))
            lines = []
    assert not lines, f"unfinished multi-line reply in {output!r}"
    return found


def codes(*expected: Reply) -> list[tuple[int, str | None]]:
    """The (code, enhanced code) pairs of named replies, to compare with :meth:`Client.codes`."""
    return [(reply.code, reply.enhanced) for reply in expected]


def message(body: bytes) -> bytes:
    """``body`` sent after DATA: dot-stuffed by the caller, with the end marker added."""
    return body + b".\r\n"


class FailingUserDatabase(MemoryUserDatabase):
    """The in-memory user database, but the next look-up fails with ``error``."""

    def __init__(self, error: Exception, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.error: Exception | None = error

    def resolve_recipient(self, address: Mailbox) -> Deferred[RecipientLookup]:
        error, self.error = self.error, None
        if error is not None:
            return defer.fail(error)
        return super().resolve_recipient(address)


class BrokenUserDatabase(MemoryUserDatabase):
    """A user database with a bug: its look-ups answer None instead of a RecipientLookup."""

    def resolve_recipient(self, address: Mailbox) -> Deferred[RecipientLookup]:
        return defer.succeed(None)  # type: ignore[arg-type]


class NoDelayTransport(StringTransport):
    """A StringTransport with ``setTcpNoDelay``, as TCP transports have; it records the
    setting, or raises ``error`` (as a socket that is not TCP does)."""

    def __init__(self, peer: IPv4Address, error: OSError | None = None) -> None:
        super().__init__(peerAddress=peer)
        self.error = error
        self.no_delay: bool | None = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        if self.error is not None:
            raise self.error
        self.no_delay = enabled


class Client:
    """One connection to the protocol under test, seen from the client's side."""

    def __init__(
        self,
        factory: SMTPServerFactory,
        peer: IPv4Address,
        transport: StringTransport | None = None,
    ) -> None:
        self.protocol = factory.buildProtocol(peer)
        self.transport = transport if transport is not None else StringTransport(peerAddress=peer)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def send_bytewise(self, data: bytes) -> None:
        for index in range(len(data)):
            self.protocol.dataReceived(data[index : index + 1])

    def take(self) -> bytes:
        """Everything the server wrote since the last call."""
        output = self.transport.value()
        self.transport.clear()
        return output

    def replies(self) -> list[tuple[int, str | None, str]]:
        return parse_replies(self.take())

    def codes(self) -> list[tuple[int, str | None]]:
        return [(code, enhanced) for code, enhanced, _ in self.replies()]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError("the client went away")))


class ServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(START)
        self.users: MemoryUserDatabase = MemoryUserDatabase(
            domains=["ours.example"],
            users={"bob@ours.example": "x", "carol@ours.example": "x"},
            aliases={"team@ours.example": ["bob@ours.example", "carol@ours.example"]},
        )
        self.store = MemoryMailStore()
        temporary = tempfile.mkdtemp(prefix="smtp-server-test-")
        self.addCleanup(shutil.rmtree, temporary)
        self.spool_directory = Path(temporary) / "spool"
        self.spool_directory.mkdir()
        self.limiter = ConnectionLimiter(MAX_TOTAL, MAX_PER_CLIENT)
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self._observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        ids = itertools.count(1)
        self.patch(server, "new_message_id", lambda: f"ID{next(ids)}")

    def _observe(self, event: LogEvent) -> None:
        if "mail_event" in event:
            self.events.append(event)

    def factory(self, policy: SessionPolicy = POLICY, **options: Any) -> SMTPServerFactory:
        """A factory over this test's stores, limits and clock; ``options`` are the
        factory's optional arguments (TLS, logins, checks, signing)."""
        return SMTPServerFactory(
            policy=policy,
            timeouts=TIMEOUTS,
            users=self.users,
            store=self.store,
            spool_directory=self.spool_directory,
            limiter=self.limiter,
            reactor=self.clock,
            **options,
        )

    def connect(
        self, peer: IPv4Address = PEER, policy: SessionPolicy = POLICY, greeted: bool = True
    ) -> Client:
        client = Client(self.factory(policy), peer)
        if greeted:
            self.assertEqual(client.codes(), codes(replies.GREETING))
        return client

    def in_transaction(self, policy: SessionPolicy = POLICY) -> Client:
        """A client whose EHLO, MAIL and RCPT for bob have been accepted."""
        client = self.connect(policy=policy)
        client.send(TRANSACTION)
        self.assertEqual(
            client.codes(), EHLO_REPLY + codes(replies.SENDER_OK, replies.RECIPIENT_OK)
        )
        return client

    def spool_files(self) -> list[Path]:
        return sorted(self.spool_directory.iterdir())

    def trace_headers(self, message_id: str, recipient: str = "bob@ours.example") -> bytes:
        return (
            "Return-Path: <alice@client.example>\r\n"
            f"Delivered-To: {recipient}\r\n"
            f"Received: from client.example ([192.0.2.1])\r\n"
            f"\tby {HOSTNAME} with ESMTP id {message_id}\r\n"
            f"\tfor <{recipient}>;\r\n"
            f"\t{formatdate(START, localtime=True)}\r\n"
        ).encode()

    def events_of(self, kind: str) -> list[LogEvent]:
        return [event for event in self.events if event["mail_event"] == kind]


class ConnectionTests(ServerTestCase):
    def test_greeting(self) -> None:
        """A new connection is greeted at once with 220 and the server's name, nothing else."""
        client = self.connect(greeted=False)
        self.assertEqual(client.take(), f"220 {HOSTNAME} ESMTP ready\r\n".encode())
        self.assertFalse(client.closed)

    def test_full_transaction_end_to_end(self) -> None:
        """A whole session, byte for byte: every reply's exact wire form, and the stored message
        is the trace headers followed by the dot-unstuffed content."""
        client = self.connect(greeted=False)
        client.send(TRANSACTION + b"DATA\r\n" + message(BODY) + b"QUIT\r\n")
        self.assertEqual(
            client.take(),
            f"220 {HOSTNAME} ESMTP ready\r\n"
            f"250-{HOSTNAME} greets client.example\r\n"
            "250-PIPELINING\r\n"
            f"250-SIZE {10 * MiB}\r\n"
            "250-8BITMIME\r\n"
            "250-ENHANCEDSTATUSCODES\r\n"
            "250-SMTPUTF8\r\n"
            "250-CHUNKING\r\n"
            "250 DSN\r\n"
            "250 2.1.0 Sender OK\r\n"
            "250 2.1.5 Recipient OK\r\n"
            "354 End data with <CR><LF>.<CR><LF>\r\n"
            "250 2.0.0 Message accepted, id ID1\r\n"
            f"221 2.0.0 {HOSTNAME} closing connection\r\n".encode(),
        )
        self.assertEqual(
            self.store.mailboxes, {"bob@ours.example": [self.trace_headers("ID1") + STORED_BODY]}
        )
        self.assertTrue(client.closed)
        self.assertEqual(self.spool_files(), [])

    def test_ipv4_client_of_a_dual_stack_socket_is_named_by_ipv4(self) -> None:
        """A client reaching an IPv6 socket over IPv4 (::ffff:192.0.2.1) is 192.0.2.1 in the
        Received field, as it would be on an IPv4 socket."""
        mapped = IPv6Address("TCP", "::ffff:192.0.2.1", 4321)
        client = Client(self.factory(), mapped)  # type: ignore[arg-type]
        client.send(TRANSACTION + b"DATA\r\n" + message(BODY))
        self.assertEqual(client.codes()[-1:], codes(replies.MESSAGE_ACCEPTED))
        (stored,) = self.store.mailboxes["bob@ours.example"]
        self.assertIn(b"Received: from client.example ([192.0.2.1])", stored)

    def test_nagle_disabled(self) -> None:
        """Replies are not held back by Nagle's algorithm: TCP_NODELAY is set on a transport
        that supports it, and a transport that refuses it still gets its greeting."""
        transport = NoDelayTransport(PEER)
        Client(self.factory(), PEER, transport)
        self.assertIs(transport.no_delay, True)
        refusing = NoDelayTransport(SECOND_PEER, OSError(95, "Operation not supported"))
        client = Client(self.factory(), SECOND_PEER, refusing)
        self.assertEqual(client.codes(), codes(replies.GREETING))

    def test_message_ids(self) -> None:
        """Message ids are 16 upper-case hexadecimal digits, different every time."""
        made = {new_message_id() for _ in range(1000)}
        self.assertEqual(len(made), 1000)
        for message_id in made:
            self.assertRegex(message_id, r"\A[0-9A-F]{16}\Z")

    def test_our_bug_is_logged_and_answered_451(self) -> None:
        """An exception in our own code while carrying out an answer (here a user database
        that answers nonsense) is logged as a bug and answered 451 4.3.0 with the connection
        closed, rather than leaving the client waiting for a reply."""
        self.users = BrokenUserDatabase(domains=["ours.example"])
        client = self.connect()
        client.send(EHLO + MAIL + RCPT_BOB + b"NOOP\r\n")
        self.assertEqual(client.codes(), EHLO_REPLY + codes(replies.SENDER_OK, replies.LOCAL_ERROR))
        self.assertTrue(client.closed)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    def test_quit_closes(self) -> None:
        """QUIT is answered 221 and the connection closed; input after it is ignored."""
        client = self.connect()
        client.send(b"QUIT\r\nNOOP\r\n")
        self.assertEqual(client.codes(), codes(replies.CLOSING))
        self.assertTrue(client.closed)
        client.send(b"NOOP\r\n")
        self.assertEqual(client.take(), b"")

    def test_alias_delivers_one_copy_per_mailbox(self) -> None:
        """A recipient that is an alias for two users stores one message in both mailboxes, with
        no Delivered-To naming one of them; "for" names the address the sender used."""
        client = self.connect()
        client.send(EHLO + MAIL + b"RCPT TO:<team@ours.example>\r\nDATA\r\n" + message(BODY))
        self.assertEqual(client.codes()[-2:], codes(replies.START_DATA, replies.MESSAGE_ACCEPTED))
        self.assertEqual(sorted(self.store.mailboxes), ["bob@ours.example", "carol@ours.example"])
        stored = self.store.mailboxes["bob@ours.example"][0]
        self.assertEqual(self.store.mailboxes["carol@ours.example"], [stored])
        self.assertNotIn(b"Delivered-To:", stored)
        self.assertIn(b"\tfor <team@ours.example>;", stored)
        self.assertTrue(stored.endswith(b"\r\n\r\n" + STORED_BODY.split(b"\r\n\r\n", 1)[1]))


PIPELINED_SESSION = (
    EHLO
    + MAIL
    + RCPT_BOB
    + b"RCPT TO:<nobody@ours.example>\r\n"
    + b"RCPT TO:<someone@elsewhere.example>\r\n"
    + b"DATA\r\n"
    + message(BODY)
    + b"NOOP\r\n"
    + MAIL
    + b"RCPT TO:<carol@ours.example>\r\n"
    + b"BDAT 12\r\nfirst chunk "
    + b"BDAT 8 LAST\r\n.\r\nend\r\n"
    + b"RSET\r\n"
    + b"QUIT\r\n"
)
PIPELINED_REPLIES = EHLO_REPLY + codes(
    replies.SENDER_OK,
    replies.RECIPIENT_OK,
    replies.NO_SUCH_USER,
    replies.RELAY_DENIED,
    replies.START_DATA,
    replies.MESSAGE_ACCEPTED,
    replies.OK,
    replies.SENDER_OK,
    replies.RECIPIENT_OK,
    replies.CHUNK_OK,
    replies.MESSAGE_ACCEPTED,
    replies.RESET_OK,
    replies.CLOSING,
)


class PipeliningTests(ServerTestCase):
    def test_whole_session_in_one_read(self) -> None:
        """A whole pipelined session arriving in one read gets every reply, in command order,
        and both of its messages are stored."""
        client = self.connect()
        client.send(PIPELINED_SESSION)
        self.assertEqual(client.codes(), PIPELINED_REPLIES)
        self.assertTrue(client.closed)
        self.assertEqual(
            self.store.mailboxes,
            {
                "bob@ours.example": [self.trace_headers("ID1") + STORED_BODY],
                "carol@ours.example": [
                    self.trace_headers("ID2", "carol@ours.example") + b"first chunk .\r\nend\r\n"
                ],
            },
        )

    def test_byte_by_byte_gives_identical_output(self) -> None:
        """The same session fed one byte per read produces exactly the same output and stored
        messages as when it arrives in one read."""
        whole = self.connect(greeted=False)
        whole.send(PIPELINED_SESSION)
        expected_output, expected_store = whole.take(), dict(self.store.mailboxes)

        self.store.mailboxes.clear()
        ids = itertools.count(1)
        self.patch(server, "new_message_id", lambda: f"ID{next(ids)}")
        bytewise = self.connect(greeted=False)
        bytewise.send_bytewise(PIPELINED_SESSION)
        self.assertEqual(parse_replies(expected_output)[-1][:2], codes(replies.CLOSING)[0])
        self.assertEqual(bytewise.take(), expected_output)
        self.assertEqual(self.store.mailboxes, expected_store)

    def test_long_pipelined_session_with_immediate_lookups(self) -> None:
        """Hundreds of transactions pipelined in one read, against a user database and store
        that answer at once, are all answered in order: the input loop does not recurse once
        per answered look-up (which used to exhaust the stack after a few hundred)."""
        client = self.connect()
        count = 400
        client.send(EHLO + (MAIL + RCPT_BOB + b"DATA\r\n" + message(BODY)) * count)
        self.assertEqual(
            client.codes(),
            EHLO_REPLY
            + codes(
                replies.SENDER_OK,
                replies.RECIPIENT_OK,
                replies.START_DATA,
                replies.MESSAGE_ACCEPTED,
            )
            * count,
        )
        self.assertEqual(len(self.store.mailboxes["bob@ours.example"]), count)

    def test_commands_after_end_of_data_wait_for_delivery(self) -> None:
        """Commands pipelined after the end of data are not answered before the delivery reply:
        nothing is written while the store holds the delivery, then all replies in order."""
        client = self.in_transaction()
        self.store.hold_next()
        client.send(b"DATA\r\n" + message(BODY) + b"NOOP\r\n" + MAIL + b"RSET\r\n")
        self.assertEqual(client.codes(), codes(replies.START_DATA))
        self.assertTrue(self.store.holding)
        client.send(b"NOOP\r\n")
        self.clock.advance(TIMEOUTS.command * 2)  # no timeout while the store works
        self.assertEqual(client.take(), b"")
        self.assertFalse(client.closed)
        self.store.release()
        self.assertEqual(
            client.codes(),
            codes(
                replies.MESSAGE_ACCEPTED,
                replies.OK,
                replies.SENDER_OK,
                replies.RESET_OK,
                replies.OK,
            ),
        )

    def test_backpressure_pauses_and_resumes_reading(self) -> None:
        """While waiting for the store, reading goes on until more than 64 KiB of pipelined
        input is held, then the transport is paused; it is resumed once the input is used."""
        client = self.in_transaction()
        self.store.hold_next()
        client.send(b"DATA\r\n" + message(BODY))
        line = b"NOOP 012345678\r\n"
        self.assertEqual(PAUSE_BACKLOG % len(line), 0)
        client.send(line * (PAUSE_BACKLOG // len(line)))
        self.assertEqual(client.transport.producerState, "producing")
        client.send(b"RSET\r\n")
        self.assertEqual(client.transport.producerState, "paused")
        self.store.release()
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(
            client.codes(),
            codes(replies.START_DATA, replies.MESSAGE_ACCEPTED)
            + codes(replies.OK) * (PAUSE_BACKLOG // len(line))
            + codes(replies.RESET_OK),
        )

    def test_backpressure_released_by_quit(self) -> None:
        """Held input that ends the session (QUIT) is answered and the connection closed
        without resuming the paused transport, which a closing transport refuses."""
        client = self.in_transaction()
        self.store.hold_next()
        client.send(b"DATA\r\n" + message(BODY))
        client.send(b"NOOP\r\n" * (PAUSE_BACKLOG // 6 + 1) + b"QUIT\r\n")
        self.assertEqual(client.transport.producerState, "paused")
        self.store.release()
        self.assertEqual(client.replies()[-1][:2], codes(replies.CLOSING)[0])
        self.assertTrue(client.closed)


class CommandLineTests(ServerTestCase):
    def test_overlong_line_refused_once(self) -> None:
        """A command line with no newline in its first 512 octets gets exactly one
        500 5.5.2, however much more of it follows; the command after its end works."""
        client = self.connect()
        client.send(b"x" * (MAX_COMMAND_LINE + 88))
        self.assertEqual(client.codes(), codes(replies.LINE_TOO_LONG))
        client.send(b"y" * 2000)
        client.send(b"z" * 600)
        self.assertEqual(client.take(), b"")
        client.send(b"\r\nNOOP\r\n")
        self.assertEqual(client.codes(), codes(replies.OK))
        self.assertFalse(client.closed)

    def test_line_length_boundary_bytewise(self) -> None:
        """Fed byte by byte, a command of 510 octets plus CRLF is accepted and one of 511
        octets plus CRLF is refused once (RFC 5321 4.5.3.1.4 counts the CRLF)."""
        client = self.connect()
        longest = b"NOOP " + b"a" * (MAX_COMMAND_LINE - 2 - 5)
        client.send_bytewise(longest + b"\r\n")
        self.assertEqual(client.codes(), codes(replies.OK))
        client.send_bytewise(longest + b"b\r\n")
        client.send(b"NOOP\r\n")
        self.assertEqual(client.codes(), codes(replies.LINE_TOO_LONG, replies.OK))

    def test_overlong_line_in_one_read(self) -> None:
        """An overlong line that arrives whole, with the next command, is refused once and the
        next command is answered normally."""
        client = self.connect()
        client.send(b"NOOP " + b"a" * MAX_COMMAND_LINE + b"\r\nNOOP\r\n")
        self.assertEqual(client.codes(), codes(replies.LINE_TOO_LONG, replies.OK))

    def test_too_many_errors_closes(self) -> None:
        """One protocol error more than the policy allows is answered 421 4.7.0 and the
        connection closed; the commands after it are not answered."""
        client = self.connect()
        client.send(b"BOGUS\r\n" * (POLICY.max_errors + 1) + b"NOOP\r\n")
        self.assertEqual(
            client.codes(),
            codes(replies.UNRECOGNIZED_COMMAND) * POLICY.max_errors
            + codes(replies.TOO_MANY_ERRORS),
        )
        self.assertTrue(client.closed)

    def test_command_timeout(self) -> None:
        """With no complete command for the command timeout, the server answers 421 4.4.2 and
        closes; a partial line does not restart the timer, a complete one does."""
        client = self.connect()
        self.clock.advance(TIMEOUTS.command - 1)
        client.send(b"NOOP\r\n")
        self.clock.advance(TIMEOUTS.command - 1)
        client.send(b"NO")
        self.assertEqual(client.codes(), codes(replies.OK))
        self.clock.advance(1)
        self.assertEqual(client.codes(), codes(replies.TIMEOUT))
        self.assertTrue(client.closed)

    def test_user_database_failure_at_rcpt(self) -> None:
        """A failed recipient look-up is our trouble: 451 4.3.0, logged, and the same RCPT
        succeeds when tried again."""
        self.users = FailingUserDatabase(
            OSError("database locked"), domains=["ours.example"], users={"bob@ours.example": "x"}
        )
        client = self.connect()
        client.send(EHLO + MAIL + RCPT_BOB + RCPT_BOB)
        self.assertEqual(
            client.codes(),
            EHLO_REPLY + codes(replies.SENDER_OK, replies.LOCAL_ERROR, replies.RECIPIENT_OK),
        )
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class ContentTests(ServerTestCase):
    def test_large_message_streams_through_a_spool_file(self) -> None:
        """A 5 MiB message fed in 64 KiB pieces goes to a file in the spool directory while it
        arrives (not into memory), and is stored exactly; the spool file is gone afterwards."""
        client = self.in_transaction()
        client.send(b"DATA\r\n")
        line = b"x" * 1022 + b"\r\n"
        body = line * (5 * MiB // len(line))
        sent = 0
        for start in range(0, len(body), 64 * 1024):
            client.send(body[start : start + 64 * 1024])
            sent += len(body[start : start + 64 * 1024])
            if sent > SPILL_THRESHOLD:
                [spool_file] = self.spool_files()
                self.assertGreater(spool_file.stat().st_size, sent - SPILL_THRESHOLD)
        client.send(b".\r\n")
        self.assertEqual(client.codes(), codes(replies.START_DATA, replies.MESSAGE_ACCEPTED))
        self.assertEqual(
            self.store.mailboxes["bob@ours.example"], [self.trace_headers("ID1") + body]
        )
        self.assertEqual(self.spool_files(), [])

    def test_message_over_the_limit(self) -> None:
        """Content one octet over the size limit is refused 552 5.3.4 and nothing is stored;
        exactly at the limit it is accepted."""
        policy = replace(POLICY, max_message_size=1000)
        client = self.in_transaction(policy)
        line = b"y" * 98 + b"\r\n"
        client.send(b"DATA\r\n" + message(line * 10 + b"z\r\n"))
        self.assertEqual(client.codes(), codes(replies.START_DATA, replies.MESSAGE_TOO_BIG))
        self.assertEqual(self.store.mailboxes, {})
        self.assertEqual(self.spool_files(), [])
        client.send(MAIL + RCPT_BOB + b"DATA\r\n" + message(line * 10))
        self.assertEqual(
            client.codes(),
            codes(
                replies.SENDER_OK,
                replies.RECIPIENT_OK,
                replies.START_DATA,
                replies.MESSAGE_ACCEPTED,
            ),
        )
        self.assertFalse(client.closed)

    def test_runaway_data_cut_off(self) -> None:
        """DATA content past twice the limit (the limit taken as at least 1 MiB) is refused
        552 5.3.4 at once and the connection closed, without waiting for an end of data."""
        client = self.in_transaction(replace(POLICY, max_message_size=1 * MiB))
        client.send(b"DATA\r\n")
        for _ in range(32):
            client.send(b"x" * (64 * 1024))
        self.assertEqual(client.codes(), codes(replies.START_DATA))
        self.assertFalse(client.closed)
        client.send(b"x")
        self.assertEqual(client.codes(), codes(replies.MESSAGE_TOO_BIG))
        self.assertTrue(client.closed)
        self.assertEqual(self.spool_files(), [])
        self.assertEqual(self.store.mailboxes, {})

    def test_runaway_bdat_cut_off(self) -> None:
        """A BDAT chunk announced far larger than the limit is cut off the same way, once
        past twice the limit."""
        client = self.in_transaction(replace(POLICY, max_message_size=1 * MiB))
        client.send(b"BDAT 100000000 LAST\r\n" + b"x" * (2 * MiB))
        self.assertEqual(client.take(), b"")
        client.send(b"x")
        self.assertEqual(client.codes(), codes(replies.MESSAGE_TOO_BIG))
        self.assertTrue(client.closed)
        self.assertEqual(self.spool_files(), [])

    def test_bare_line_feed_refused(self) -> None:
        """A bare LF in the content refuses the message 550 5.5.2; nothing is stored, the spool
        is removed and the session goes on."""
        client = self.in_transaction()
        client.send(
            b"DATA\r\n" + message(b"Subject: x\r\n\r\nline one\nline two\r\n") + b"NOOP\r\n"
        )
        self.assertEqual(
            client.codes(),
            codes(replies.START_DATA, replies.BARE_LINE_ENDING_IN_DATA, replies.OK),
        )
        self.assertEqual(self.store.mailboxes, {})
        self.assertEqual(self.spool_files(), [])

    def test_too_many_received_headers(self) -> None:
        """With a limit of 5 hops, content already carrying 4 Received headers is accepted
        (ours makes 5) and content with 5 is refused 554 5.4.0 as a probable loop."""
        headers = b"".join(b"Received: from hop%d.example\r\n" % hop for hop in range(5))
        client = self.in_transaction()
        client.send(b"DATA\r\n" + message(headers + b"\r\nbody\r\n"))
        self.assertEqual(client.codes(), codes(replies.START_DATA, replies.TOO_MANY_HOPS))
        client.send(MAIL + RCPT_BOB + b"DATA\r\n")
        client.send(message(headers.split(b"\r\n", 1)[1] + b"\r\nbody\r\n"))
        self.assertEqual(
            client.codes()[-1:],
            codes(replies.MESSAGE_ACCEPTED),
        )
        self.assertEqual(len(self.store.mailboxes["bob@ours.example"]), 1)

    def test_data_timeout(self) -> None:
        """Inside DATA the data timeout applies instead of the command timeout, restarted by
        every read; when it passes: 421 4.4.2, the connection closed and the spool file gone."""
        client = self.in_transaction()
        client.send(b"DATA\r\n" + b"x" * (SPILL_THRESHOLD + 1))
        self.assertEqual(len(self.spool_files()), 1)
        self.clock.advance(TIMEOUTS.data - 1)
        client.send(b"x")
        self.clock.advance(TIMEOUTS.data - 1)
        self.assertEqual(client.codes(), codes(replies.START_DATA))
        self.clock.advance(1)
        self.assertEqual(client.codes(), codes(replies.TIMEOUT))
        self.assertTrue(client.closed)
        self.assertEqual(self.spool_files(), [])
        [rejected] = self.events_of("rejected")
        self.assertEqual((rejected["code"], rejected["id"]), (421, "ID1"))

    def test_connection_lost_during_data(self) -> None:
        """A connection dropped in the middle of DATA removes the spool file and frees its
        place in the connection limits."""
        client = self.in_transaction()
        client.send(b"DATA\r\n" + b"x" * (SPILL_THRESHOLD + 1))
        self.assertEqual(len(self.spool_files()), 1)
        self.assertEqual(self.limiter.open_connections, 1)
        client.lose()
        self.assertEqual(self.spool_files(), [])
        self.assertEqual(self.limiter.open_connections, 0)
        self.assertEqual(self.store.mailboxes, {})

    def test_connection_lost_while_delivering(self) -> None:
        """A delivery that finishes after the client has gone writes nothing and fails nothing;
        the message is still stored (the store had it)."""
        client = self.in_transaction()
        self.store.hold_next()
        client.send(b"DATA\r\n" + message(BODY) + b"NOOP\r\n")
        client.take()
        client.lose()
        self.store.release()
        self.assertEqual(client.take(), b"")
        self.assertEqual(len(self.store.mailboxes["bob@ours.example"]), 1)
        self.assertEqual(self.spool_files(), [])


class ChunkingTests(ServerTestCase):
    def test_bdat_chunks(self) -> None:
        """BDAT chunks are taken as counted octets (no dot-unstuffing, a "." line is content),
        answered 250 each, and BDAT LAST delivers their concatenation."""
        client = self.in_transaction()
        client.send(b"BDAT 10\r\nSubject: a")
        client.send(b"BDAT 11\r\n\r\n\r\n.\r\n")
        client.send(b"..\r\n")
        client.send(b"BDAT 3 LAST\r\nz\r\n")
        self.assertEqual(
            client.codes(), codes(replies.CHUNK_OK, replies.CHUNK_OK, replies.MESSAGE_ACCEPTED)
        )
        self.assertEqual(
            self.store.mailboxes["bob@ours.example"],
            [self.trace_headers("ID1") + b"Subject: a\r\n\r\n.\r\n..\r\nz\r\n"],
        )

    def test_empty_last_chunk(self) -> None:
        """ "BDAT 0 LAST" (RFC 3030 2) ends the message at once, without waiting for more input."""
        client = self.in_transaction()
        client.send(b"BDAT 5\r\nabc\r\n")
        client.send(b"BDAT 0 LAST\r\n")
        self.assertEqual(client.codes(), codes(replies.CHUNK_OK, replies.MESSAGE_ACCEPTED))
        self.assertEqual(
            self.store.mailboxes["bob@ours.example"], [self.trace_headers("ID1") + b"abc\r\n"]
        )

    def test_bdat_without_transaction(self) -> None:
        """BDAT with no transaction reads exactly its octets (commands among them are not run)
        and only then refuses with 503; the next command is read after them."""
        client = self.connect()
        client.send(EHLO + b"BDAT 12\r\nNOOP\r\n")
        self.assertEqual(client.codes(), EHLO_REPLY)
        client.send(b"QUIT\r\nNOOP\r\n")
        self.assertEqual(client.codes(), codes(replies.NEED_MAIL, replies.OK))
        self.assertFalse(client.closed)
        self.assertEqual(self.spool_files(), [])

    def test_runaway_refused_chunk_cut_off(self) -> None:
        """A huge BDAT chunk that is read only to be refused is not read forever: past twice
        the limit the connection is closed with 552 5.3.4."""
        client = self.connect(policy=replace(POLICY, max_message_size=1 * MiB))
        client.send(EHLO + b"BDAT 100000000000\r\n" + b"x" * (2 * MiB))
        self.assertEqual(client.codes(), EHLO_REPLY)
        client.send(b"x")
        self.assertEqual(client.codes(), codes(replies.MESSAGE_TOO_BIG))
        self.assertTrue(client.closed)

    def test_empty_chunk_without_transaction(self) -> None:
        """ "BDAT 0 LAST" with no transaction is refused at once, not after further input."""
        client = self.connect()
        client.send(EHLO + b"BDAT 0 LAST\r\n")
        self.assertEqual(client.codes(), EHLO_REPLY + codes(replies.NEED_MAIL))

    def test_connection_lost_while_discarding_a_chunk(self) -> None:
        """A connection dropped while a refused BDAT chunk is being read (no spool behind it)
        goes cleanly and frees its place."""
        client = self.connect()
        client.send(EHLO + b"BDAT 100\r\npartial")
        client.lose()
        self.assertEqual(self.limiter.open_connections, 0)
        self.assertEqual(self.spool_files(), [])

    def test_rset_between_chunks_discards_spool(self) -> None:
        """RSET between BDAT chunks ends the transaction and removes its spool file; the next
        transaction stores only its own content."""
        client = self.in_transaction()
        client.send(b"BDAT %d\r\n" % (SPILL_THRESHOLD + 1) + b"x" * (SPILL_THRESHOLD + 1))
        self.assertEqual(client.codes(), codes(replies.CHUNK_OK))
        self.assertEqual(len(self.spool_files()), 1)
        client.send(b"RSET\r\n")
        self.assertEqual(client.codes(), codes(replies.RESET_OK))
        self.assertEqual(self.spool_files(), [])
        client.send(MAIL + RCPT_BOB + b"BDAT 4 LAST\r\nnew\n")
        self.assertEqual(client.codes()[-1:], codes(replies.BARE_LINE_ENDING_IN_DATA))
        client.send(MAIL + RCPT_BOB + b"BDAT 5 LAST\r\nnew\r\n")
        self.assertEqual(client.codes()[-1:], codes(replies.MESSAGE_ACCEPTED))
        self.assertEqual(
            self.store.mailboxes["bob@ours.example"], [self.trace_headers("ID3") + b"new\r\n"]
        )


class StoreFailureTests(ServerTestCase):
    def deliver_failing(self, error: Exception) -> Client:
        client = self.in_transaction()
        self.store.fail_next(error)
        client.send(b"DATA\r\n" + message(BODY))
        return client

    def test_storage_full(self) -> None:
        """A full disk answers 452 4.3.1 (try later), not an error logged as a bug."""
        client = self.deliver_failing(StorageFull("No space left on device"))
        self.assertEqual(client.codes(), codes(replies.START_DATA, replies.INSUFFICIENT_STORAGE))
        self.assertEqual(self.flushLoggedErrors(), [])
        [failed] = self.events_of("delivery-failed")
        self.assertEqual((failed["id"], failed["code"]), ("ID1", 452))

    def test_os_error(self) -> None:
        """Other storage trouble answers 451 4.3.0 and is logged with its traceback."""
        client = self.deliver_failing(OSError(5, "Input/output error"))
        self.assertEqual(client.codes(), codes(replies.START_DATA, replies.LOCAL_ERROR))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        [failed] = self.events_of("delivery-failed")
        self.assertEqual(failed["code"], 451)

    def test_unexpected_exception_keeps_session_usable(self) -> None:
        """A bug in the store answers 451 4.3.0, is logged, and the session goes on: the next
        transaction is delivered."""
        client = self.deliver_failing(RuntimeError("a bug"))
        self.assertEqual(client.codes(), codes(replies.START_DATA, replies.LOCAL_ERROR))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        client.send(MAIL + RCPT_BOB + b"DATA\r\n" + message(BODY))
        self.assertEqual(client.codes()[-1:], codes(replies.MESSAGE_ACCEPTED))
        self.assertFalse(client.closed)
        self.assertEqual(len(self.store.mailboxes["bob@ours.example"]), 1)

    def spool_fails(self, error: OSError) -> None:
        def failing_write(spool: object, data: bytes) -> None:
            raise error

        self.patch(server.Spool, "write", failing_write)

    def test_spooling_disk_full_answers_452_at_end_of_data(self) -> None:
        """A full disk while the message arrives is answered 452 4.3.1 once the message has
        ended (never a dropped connection), nothing is stored, and the session goes on."""
        client = self.in_transaction()
        self.spool_fails(OSError(errno.ENOSPC, "No space left on device"))
        client.send(b"DATA\r\n" + message(BODY))
        self.assertEqual(client.codes(), codes(replies.START_DATA, replies.INSUFFICIENT_STORAGE))
        self.assertEqual(self.store.mailboxes, {})
        self.assertEqual(self.spool_files(), [])
        client.send(b"NOOP\r\n")
        self.assertEqual(client.codes(), codes(replies.OK))
        [rejected] = self.events_of("rejected")
        self.assertEqual(rejected["code"], 452)

    def test_spooling_io_error_answers_451(self) -> None:
        """Another error while spooling is answered 451 4.3.0 at the end of the message."""
        client = self.in_transaction()
        self.spool_fails(OSError(errno.EIO, "Input/output error"))
        client.send(b"DATA\r\n" + message(BODY))
        self.assertEqual(client.codes(), codes(replies.START_DATA, replies.LOCAL_ERROR))
        self.assertFalse(client.closed)


class ConnectionLimitTests(ServerTestCase):
    def test_per_client_and_overall_limits(self) -> None:
        """The (n+1)th connection from one address gets 421 4.7.0 and is closed, another
        address is still admitted, past the overall limit 421 4.3.2; a lost connection frees
        its place, and a refused one frees nothing when it goes."""
        first = [self.connect(PEER) for _ in range(MAX_PER_CLIENT)]
        refused = self.connect(PEER, greeted=False)
        self.assertEqual(refused.codes(), codes(replies.TOO_MANY_CONNECTIONS))
        self.assertTrue(refused.closed)
        self.connect(SECOND_PEER)
        self.assertEqual(self.limiter.open_connections, MAX_TOTAL)
        busy = self.connect(THIRD_PEER, greeted=False)
        self.assertEqual(busy.codes(), codes(replies.SERVER_BUSY))
        self.assertTrue(busy.closed)
        refused.lose()
        busy.lose()
        self.assertEqual(self.limiter.open_connections, MAX_TOTAL)
        first[0].lose()
        self.assertEqual(self.limiter.open_connections, MAX_TOTAL - 1)
        self.connect(PEER)

    def test_refused_connection_ignores_input(self) -> None:
        """A refused connection answers nothing to what the client sends anyway."""
        for _ in range(MAX_PER_CLIENT):
            self.connect(PEER)
        refused = self.connect(PEER, greeted=False)
        refused.take()
        refused.send(b"EHLO client.example\r\n")
        self.assertEqual(refused.take(), b"")


class LoggingTests(ServerTestCase):
    def test_received_and_delivered_events(self) -> None:
        """An accepted message logs "received" (id, client, helo, sender, recipients, size of
        the content) and then "delivered" (id, mailboxes, size, stored name)."""
        client = self.in_transaction()
        client.send(b"DATA\r\n" + message(BODY))
        [received] = self.events_of("received")
        self.assertEqual(
            {key: received[key] for key in ("id", "client", "helo", "sender", "recipients")},
            {
                "id": "ID1",
                "client": "192.0.2.1",
                "helo": "client.example",
                "sender": "alice@client.example",
                "recipients": ["bob@ours.example"],
            },
        )
        self.assertEqual(received["size"], len(STORED_BODY))
        [delivered] = self.events_of("delivered")
        self.assertEqual(delivered["id"], "ID1")
        self.assertEqual(delivered["mailboxes"], ["bob@ours.example"])
        self.assertEqual(delivered["size"], len(STORED_BODY))
        self.assertEqual(delivered["name"], self.store.names[0])
        self.assertEqual([event["mail_event"] for event in self.events], ["received", "delivered"])

    def test_rejected_recipient_event(self) -> None:
        """A refused recipient logs "rejected" with the transaction id, client, sender,
        recipient and the reply's codes."""
        client = self.connect()
        client.send(EHLO + MAIL + b"RCPT TO:<nobody@ours.example>\r\n")
        client.take()
        [rejected] = self.events_of("rejected")
        self.assertEqual(
            {
                key: rejected[key]
                for key in ("id", "client", "sender", "recipient", "code", "enhanced")
            },
            {
                "id": "ID1",
                "client": "192.0.2.1",
                "sender": "alice@client.example",
                "recipient": "nobody@ours.example",
                "code": 550,
                "enhanced": "5.1.1",
            },
        )

    def test_rejected_content_event_names_the_transaction(self) -> None:
        """A message refused for its content logs "rejected" with the id and sender of the
        transaction it ended (they used to be lost, as the session ends it first)."""
        client = self.in_transaction()
        client.send(b"DATA\r\n" + message(b"bare\nline\r\n"))
        client.take()
        [rejected] = self.events_of("rejected")
        self.assertEqual(
            (rejected["id"], rejected["sender"], rejected["client"], rejected["code"]),
            ("ID1", "alice@client.example", "192.0.2.1", 550),
        )
        self.assertEqual(self.events_of("received"), [])

    def test_delivery_failed_event(self) -> None:
        """A failed delivery logs "received" then "delivery-failed" with id, mailboxes, code
        and the error's message."""
        client = self.in_transaction()
        self.store.fail_next(StorageFull("quota exceeded"))
        client.send(b"DATA\r\n" + message(BODY))
        client.take()
        self.assertEqual(
            [event["mail_event"] for event in self.events], ["received", "delivery-failed"]
        )
        failed = self.events[-1]
        self.assertEqual(
            (failed["id"], failed["mailboxes"], failed["code"], failed["reason"]),
            ("ID1", ["bob@ours.example"], 452, "quota exceeded"),
        )


class TLSTransport(StringTransport):
    """A StringTransport that can start TLS, as TCP transports can: it records the context
    and what had been written before, in plaintext."""

    def __init__(self, peer: IPv4Address) -> None:
        super().__init__(peerAddress=peer)
        self.tls_context: object = None
        self.written_before_tls = b""

    def startTLS(self, context: object) -> None:
        self.tls_context = context
        self.written_before_tls = self.value()


SUBMISSION = replace(POLICY, auth=True, auth_required=True)
ALICE = "alice@ours.example"
PASSWORD = "correct horse"


def plain(login: str, password: str) -> bytes:
    return base64.b64encode(f"\0{login}\0{password}".encode())


class SecurityTests(ServerTestCase):
    """STARTTLS, AUTH and the submission policy, through the glue."""

    def setUp(self) -> None:
        super().setUp()
        self.users.add_user(ALICE, PASSWORD)
        self.users.add_alias("sales@ours.example", [ALICE])
        self.throttle = LoginThrottle(self.clock)
        self.tls_context = object()

    def secure_factory(
        self, policy: SessionPolicy = SUBMISSION, plaintext_auth: str = "always"
    ) -> SMTPServerFactory:
        return SMTPServerFactory(
            policy=policy,
            timeouts=TIMEOUTS,
            users=self.users,
            store=self.store,
            spool_directory=self.spool_directory,
            limiter=self.limiter,
            reactor=self.clock,
            tls=cast(IOpenSSLServerConnectionCreator, self.tls_context),
            logins=LoginChecker(self.users, self.throttle, self.clock),
            plaintext_auth=plaintext_auth,
        )

    def secure_client(self, **kwargs: object) -> tuple[Client, TLSTransport]:
        transport = TLSTransport(PEER)
        client = Client(self.secure_factory(**kwargs), PEER, transport)  # type: ignore[arg-type]
        self.assertEqual(client.codes(), codes(replies.GREETING))
        return client, transport

    def logged_in(self, policy: SessionPolicy = SUBMISSION) -> Client:
        client, _ = self.secure_client(policy=policy)
        client.send(EHLO + b"AUTH PLAIN " + plain(ALICE, PASSWORD) + b"\r\n")
        self.assertEqual(client.codes(), EHLO_REPLY + codes(replies.AUTHENTICATED))
        return client

    def test_starttls_discards_pipelined_input(self) -> None:
        """Commands sent in the same packet as STARTTLS are thrown away unread: only the 220
        goes out, in plaintext, before TLS starts; afterwards the session starts afresh
        (RFC 3207 §4.2, CVE-2011-0411)."""
        client, transport = self.secure_client()
        client.send(EHLO)
        self.assertIn("STARTTLS", client.replies()[0][2].split("\n"))
        client.send(b"STARTTLS\r\nMAIL FROM:<alice@ours.example>\r\nRCPT TO:<bob@ours.example>\r\n")
        self.assertIs(transport.tls_context, self.tls_context)
        self.assertEqual(
            parse_replies(transport.written_before_tls), [(220, "2.0.0", "Ready to start TLS")]
        )
        self.assertEqual(client.codes(), codes(replies.READY_FOR_TLS))
        client.protocol.handshakeCompleted()
        client.send(b"MAIL FROM:<alice@ours.example>\r\n")
        self.assertEqual(client.codes(), codes(replies.NEED_HELO))
        client.send(EHLO)
        self.assertNotIn("STARTTLS", client.replies()[0][2].split("\n"))

    def test_authenticated_submission_is_delivered(self) -> None:
        """A user who logged in sends from an alias of theirs to a local user; the message is
        delivered with ESMTPA in its Received header."""
        client = self.logged_in()
        client.send(b"MAIL FROM:<sales@ours.example>\r\n" + RCPT_BOB + b"DATA\r\n")
        self.assertEqual(
            client.codes(), codes(replies.SENDER_OK, replies.RECIPIENT_OK, replies.START_DATA)
        )
        client.send(message(b"From: Sales <sales@ours.example>\r\n\r\nHello\r\n"))
        self.assertEqual(client.codes(), codes(replies.MESSAGE_ACCEPTED))
        [content] = self.store.mailboxes["bob@ours.example"]
        self.assertEqual(list(self.store.mailboxes), ["bob@ours.example"])
        self.assertIn(b"with ESMTPA id", content)

    def test_foreign_sender_and_author_are_refused(self) -> None:
        """Another user's envelope sender is 553 5.7.1; another user's From header is 550 5.7.1
        at the end of the data, and the spooled message is thrown away."""
        client = self.logged_in()
        client.send(b"MAIL FROM:<bob@ours.example>\r\n")
        self.assertEqual(client.codes(), codes(replies.SENDER_NOT_OWNED))
        client.send(b"MAIL FROM:<alice@ours.example>\r\n" + RCPT_BOB + b"DATA\r\n")
        client.take()
        client.send(message(b"From: bob@ours.example\r\n\r\n" + b"x" * SPILL_THRESHOLD + b"\r\n"))
        self.assertEqual(client.codes(), codes(replies.AUTHOR_NOT_OWNED))
        self.assertEqual(self.store.mailboxes, {})
        self.assertEqual(self.spool_files(), [])
        self.assertEqual(len(self.events_of("rejected")), 2)

    def test_submission_requires_auth_and_never_relays_without_it(self) -> None:
        """Without AUTH, MAIL is 530 on submission; on the MX, mail for another domain is
        relay denied even for a client that could have logged in."""
        client, _ = self.secure_client()
        client.send(EHLO + MAIL)
        self.assertEqual(client.codes(), EHLO_REPLY + codes(replies.AUTH_REQUIRED))
        mx, _ = self.secure_client(policy=POLICY)
        mx.send(EHLO + MAIL + b"RCPT TO:<someone@elsewhere.example>\r\n")
        self.assertEqual(mx.codes(), EHLO_REPLY + codes(replies.SENDER_OK, replies.RELAY_DENIED))

    def test_remote_recipients_are_queued_with_the_local_copies(self) -> None:
        """An authenticated user's message for a local user and for another domain is stored
        once: delivered to the local mailbox and queued, in the same durable step, for the
        remote recipient with its DSN parameters."""
        client = self.logged_in()
        client.send(
            b"MAIL FROM:<alice@ours.example> RET=HDRS ENVID=E1\r\n"
            b"RCPT TO:<Friend@Elsewhere.example> NOTIFY=FAILURE\r\n" + RCPT_BOB + b"DATA\r\n"
        )
        client.take()
        client.send(message(b"From: alice@ours.example\r\n\r\nHello\r\n"))
        self.assertEqual(client.codes(), codes(replies.MESSAGE_ACCEPTED))
        [(record, content)] = self.store.queued
        self.assertEqual(self.store.mailboxes["bob@ours.example"], [content])
        self.assertEqual([r.address for r in record.recipients], ["Friend@Elsewhere.example"])
        self.assertEqual(record.recipients[0].notify, frozenset({"FAILURE"}))
        self.assertEqual((record.sender, record.ret, record.envid), (ALICE, "HDRS", "E1"))
        self.assertEqual(record.size, len(content))
        self.assertEqual(len(self.events_of("queued")), 1)

    def test_plaintext_auth_refused_from_the_network(self) -> None:
        """With plaintext_auth = "loopback", a client on another machine gets no AUTH in EHLO
        and 538 for AUTH before TLS."""
        client, _ = self.secure_client(plaintext_auth="loopback")
        client.send(EHLO)
        self.assertNotIn("AUTH PLAIN LOGIN", client.replies()[0][2].split("\n"))
        client.send(b"AUTH PLAIN " + plain(ALICE, PASSWORD) + b"\r\n")
        self.assertEqual(client.codes(), codes(replies.ENCRYPTION_REQUIRED))

    def test_failed_logins_are_delayed(self) -> None:
        """A wrong password is 535 5.7.8; the next attempt from that address waits out the
        throttle's delay before it is even checked, with pipelined commands held behind it."""
        client, _ = self.secure_client()
        client.send(EHLO + b"AUTH PLAIN " + plain(ALICE, "wrong") + b"\r\n")
        self.assertEqual(client.codes(), EHLO_REPLY + codes(replies.AUTH_FAILED))
        client.send(b"AUTH PLAIN " + plain(ALICE, PASSWORD) + b"\r\nNOOP\r\n")
        self.assertEqual(client.take(), b"")
        self.clock.advance(self.throttle.delay(1))
        self.assertEqual(client.codes(), codes(replies.AUTHENTICATED, replies.OK))

    def test_client_leaving_during_login_delay(self) -> None:
        """A client that hangs up while its login is delayed has its check cancelled: no
        password is checked and nothing is logged as an error."""
        client, _ = self.secure_client()
        client.send(EHLO + b"AUTH PLAIN " + plain(ALICE, "wrong") + b"\r\n")
        client.take()
        client.send(b"AUTH PLAIN " + plain(ALICE, PASSWORD) + b"\r\n")
        checked: list[str] = []
        self.patch(self.users, "authenticate", lambda login, password: checked.append(login))
        client.lose()
        self.clock.advance(60)
        self.assertEqual(checked, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_ownership_lookup_failure_is_temporary(self) -> None:
        """When the user database fails while checking the sender, the answer is 451."""
        client = self.logged_in()
        failing = FailingUserDatabase(OSError("database is locked"))
        client.protocol.factory.users = failing
        client.send(b"MAIL FROM:<alice@ours.example>\r\nNOOP\r\n")
        self.assertEqual(client.codes(), codes(replies.LOCAL_ERROR, replies.OK))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_disconnect_during_the_from_check_leaves_no_spool_file(self) -> None:
        """A client that leaves while its From addresses are looked up leaves nothing behind:
        the spooled message is removed, and the late answer is ignored."""
        client = self.logged_in()
        client.send(b"MAIL FROM:<alice@ours.example>\r\n" + RCPT_BOB + b"DATA\r\n")
        client.take()
        held: Deferred[RecipientLookup] = Deferred()
        self.patch(self.users, "resolve_recipient", lambda address: held)
        client.send(message(b"From: alice@ours.example\r\n\r\n" + b"x" * SPILL_THRESHOLD + b"\r\n"))
        self.assertEqual(len(self.spool_files()), 1)
        client.lose()
        self.assertEqual(self.spool_files(), [])
        held.callback(RecipientLookup(Lookup.DELIVER, (ALICE,)))
        self.assertEqual(self.store.mailboxes, {})

    def test_each_submission_logs_received_then_delivered(self) -> None:
        """A submitted message whose From was checked is logged as received, then delivered."""
        client = self.logged_in()
        client.send(b"MAIL FROM:<alice@ours.example>\r\n" + RCPT_BOB + b"DATA\r\n")
        client.take()
        client.send(message(b"From: alice@ours.example\r\n\r\nHi\r\n"))
        self.assertEqual(client.codes(), codes(replies.MESSAGE_ACCEPTED))
        kinds = [event["mail_event"] for event in self.events]
        self.assertEqual(kinds, ["received", "delivered"])

    def test_smtputf8_kept_only_for_mail_that_needs_it(self) -> None:
        """A client asking for SMTPUTF8 does not make an ASCII message internationalised: the
        queued copy needs SMTPUTF8 downstream only when its header has UTF-8."""
        client = self.logged_in()
        for header, expected in ((b"Subject: plain", False), ("Subject: caf\u00e9".encode(), True)):
            client.send(
                b"MAIL FROM:<alice@ours.example> SMTPUTF8\r\n"
                b"RCPT TO:<friend@elsewhere.example>\r\nDATA\r\n"
            )
            client.take()
            client.send(message(b"From: alice@ours.example\r\n" + header + b"\r\n\r\nHi\r\n"))
            self.assertEqual(client.codes(), codes(replies.MESSAGE_ACCEPTED))
            record, _ = self.store.queued[-1]
            self.assertIs(record.smtputf8, expected)

    def test_local_delivery_notice_when_asked_for(self) -> None:
        """NOTIFY=SUCCESS on a local recipient: the copy is delivered at once, and a queue
        record owing the "delivered" notice is written with it (RFC 3461 §5.2.3)."""
        client = self.logged_in()
        client.send(
            b"MAIL FROM:<alice@ours.example>\r\n"
            b"RCPT TO:<bob@ours.example> NOTIFY=SUCCESS ORCPT=rfc822;bob@ours.example\r\n"
            b"DATA\r\n"
        )
        client.take()
        client.send(message(b"From: alice@ours.example\r\n\r\nHi\r\n"))
        self.assertEqual(client.codes(), codes(replies.MESSAGE_ACCEPTED))
        self.assertEqual(len(self.store.mailboxes["bob@ours.example"]), 1)
        [(record, _)] = self.store.queued
        self.assertEqual(record.pending, [])
        self.assertEqual(record.owed, [("delivered", ("bob@ours.example",))])
        self.assertEqual(record.recipients[0].orcpt, "rfc822;bob@ours.example")
