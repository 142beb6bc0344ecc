"""The POP3 Twisted glue over StringTransport and MemoryReactorClock (mailserver.pop3.server)."""

from __future__ import annotations

import re

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailserver.authlimit import LoginThrottle
from mailserver.interfaces import IMailboxStore
from mailserver.limits import ConnectionLimiter
from mailserver.memory import MemoryMailboxStore, MemoryUserDatabase
from mailserver.pop3.server import (
    CHUNK_SIZE,
    POP3ServerFactory,
    POP3ServerProtocol,
    is_loopback,
    plaintext_allowed,
)
from mailserver.pop3.session import SessionPolicy

ALICE = "alice@example.org"
MESSAGE = b"From: carol@sender.example\r\nSubject: hi\r\n\r\nbody\r\n.dot line\r\n..two\r\nend\r\n"


class Transport(StringTransport):
    """StringTransport that records each write and NODELAY, and can act like a socket whose
    buffer fills up: above ``pause_above`` buffered octets it pauses its producer."""

    def __init__(self, host: str = "127.0.0.1", pause_above: int | None = None) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", host, 40000))
        self.writes: list[bytes] = []
        self.no_delay = False
        self.pause_above = pause_above

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)
        if (
            self.producer is not None
            and self.pause_above is not None
            and len(self.value()) > self.pause_above
        ):
            self.producer.pauseProducing()


def unstuff(wire: bytes) -> bytes:
    """A multi-line body as a client reads it back (after the status line, up to ".")."""
    lines = [line for line in re.split(b"(?<=\n)", wire) if line]
    out = []
    for line in lines[1:]:
        if line == b".\r\n":
            return b"".join(out)
        out.append(line[1:] if line.startswith(b".") else line)
    raise AssertionError("unterminated")


class POP3ServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.users = MemoryUserDatabase(
            domains=["example.org"], users={ALICE: "secret", "bob@example.org": "pw"}
        )
        self.store = MemoryMailboxStore()
        self.throttle = LoginThrottle(self.clock)
        self.limiter = ConnectionLimiter(100, 3)
        self.factory = self.make_factory("loopback")

    def make_factory(self, plaintext: str, idle_timeout: float = 600.0) -> POP3ServerFactory:
        return POP3ServerFactory(
            policy=SessionPolicy(hostname="mx.example.org"),
            idle_timeout=idle_timeout,
            plaintext_auth=plaintext,
            users=self.users,
            store=self.store,
            limiter=self.limiter,
            throttle=self.throttle,
            reactor=self.clock,
        )

    def connect(
        self, transport: Transport | None = None, factory: POP3ServerFactory | None = None
    ) -> tuple[POP3ServerProtocol, Transport]:
        transport = transport or Transport()
        protocol = (factory or self.factory).buildProtocol(None)
        protocol.makeConnection(transport)
        assert transport.value().startswith(b"+OK ")
        transport.clear()
        return protocol, transport

    def login(self, transport: Transport | None = None) -> tuple[POP3ServerProtocol, Transport]:
        protocol, transport = self.connect(transport)
        protocol.dataReceived(b"USER alice\r\nPASS secret\r\n")
        self.assertEqual(transport.value().split(b"\r\n")[1][:4], b"+OK ")
        transport.clear()
        return protocol, transport

    def drop(self, protocol: POP3ServerProtocol) -> None:
        protocol.connectionLost(None)

    # -- connection ---------------------------------------------------------------------

    def test_greeting_and_nodelay(self) -> None:
        """A connection is greeted with +OK and Nagle is turned off on it."""
        transport = Transport()
        protocol = self.factory.buildProtocol(None)
        protocol.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"+OK mx.example.org POP3 server ready"))
        self.assertTrue(transport.no_delay)

    def test_memory_twin_provides_the_interface(self) -> None:
        """The in-memory mailbox store used here passes verifyObject."""
        self.assertTrue(verifyObject(IMailboxStore, self.store))

    def test_connection_limit_per_client(self) -> None:
        """Past the per-address limit: -ERR [SYS/TEMP] and the connection closes."""
        for _ in range(3):
            self.connect()
        transport = Transport()
        self.factory.buildProtocol(None).makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"-ERR [SYS/TEMP] "))
        self.assertTrue(transport.disconnecting)

    # -- authentication -----------------------------------------------------------------

    def test_pipelined_session_answered_in_order(self) -> None:
        """RFC 2449 PIPELINING: a whole session in one write gets every reply in order."""
        self.store.deliver_bytes(ALICE, MESSAGE)
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL 1\r\nRETR 1\r\n"
            b"NOOP\r\nQUIT\r\n"
        )
        wire = transport.value()
        statuses = [line for line in wire.split(b"\r\n") if line.startswith((b"+OK", b"-ERR"))]
        self.assertEqual(
            [status.split(b" ")[1] if b" " in status else status for status in statuses],
            [
                b"Capability",
                b"Send",
                b"Logged",
                b"1",
                b"1",
                b"1",
                b"%d" % len(MESSAGE),
                b"+OK",
                b"mx.example.org",
            ],
        )
        self.assertTrue(transport.disconnecting)

    def test_plaintext_only_on_loopback_by_default(self) -> None:
        """The "loopback" policy refuses USER from other addresses with [AUTH]; "always"
        allows it; "never" refuses it even on loopback."""
        protocol, transport = self.connect(Transport(host="192.0.2.7"))
        protocol.dataReceived(b"USER alice\r\n")
        self.assertTrue(transport.value().startswith(b"-ERR [AUTH] "))
        protocol, transport = self.connect(Transport(host="192.0.2.8"), self.make_factory("always"))
        protocol.dataReceived(b"USER alice\r\n")
        self.assertTrue(transport.value().startswith(b"+OK"))
        protocol, transport = self.connect(factory=self.make_factory("never"))
        protocol.dataReceived(b"USER alice\r\n")
        self.assertTrue(transport.value().startswith(b"-ERR [AUTH] "))

    def test_loopback_detection(self) -> None:
        """127/8, ::1, IPv4-mapped loopback and UNIX sockets are local; others are not."""
        self.assertTrue(is_loopback(IPv4Address("TCP", "127.0.0.5", 1)))
        self.assertTrue(is_loopback(IPv6Address("TCP", "::1", 1)))
        self.assertTrue(is_loopback(IPv6Address("TCP", "::ffff:127.0.0.1", 1)))
        self.assertTrue(is_loopback(UNIXAddress(b"/run/pop3.sock")))
        self.assertFalse(is_loopback(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertFalse(is_loopback(IPv6Address("TCP", "2001:db8::1", 1)))
        self.assertFalse(plaintext_allowed("never", UNIXAddress(b"/x")))
        # Inside TLS (an ssl: listener) a password is always protected.
        self.assertTrue(plaintext_allowed("never", IPv4Address("TCP", "192.0.2.9", 1), True))

    def test_unknown_user_and_wrong_password_look_the_same(self) -> None:
        """Both get the same bytes: USER never says whether the user exists."""
        answers = []
        for user, password in (("nobody", "secret"), ("alice", "wrong")):
            self.clock.advance(100)  # past any throttle delay
            protocol, transport = self.connect()
            protocol.dataReceived(f"USER {user}\r\nPASS {password}\r\n".encode())
            answers.append(transport.value())
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(
            answers[0], b"+OK Send your password\r\n-ERR [AUTH] Authentication failed\r\n"
        )

    def test_failures_delay_the_next_attempt(self) -> None:
        """After a failure from an address, its next attempt waits (here 2 s), even on a new
        connection; a success then resets the delay."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"USER alice\r\nPASS wrong\r\n")
        transport.clear()
        other, other_transport = self.connect()
        other.dataReceived(b"USER alice\r\nPASS secret\r\nSTAT\r\n")
        self.assertEqual(other_transport.value(), b"+OK Send your password\r\n")
        self.clock.advance(1.9)
        self.assertEqual(other_transport.value(), b"+OK Send your password\r\n")
        self.clock.advance(0.2)
        self.assertIn(b"+OK Logged in", other_transport.value())
        self.assertTrue(other_transport.value().endswith(b"+OK 0 0\r\n"))
        self.assertEqual(self.throttle.reserve("127.0.0.1"), 0)

    def test_sasl_plain_login(self) -> None:
        """AUTH PLAIN with the challenge step logs in like USER/PASS."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"AUTH PLAIN\r\n")
        self.assertEqual(transport.value(), b"+ \r\n")
        protocol.dataReceived(b"AGFsaWNlAHNlY3JldA==\r\n")  # "\0alice\0secret"
        self.assertIn(b"+OK Logged in as alice@example.org", transport.value())

    # -- the mailbox --------------------------------------------------------------------

    def test_second_login_gets_in_use(self) -> None:
        """Two sessions on one mailbox: the second gets -ERR [IN-USE] until the first ends."""
        first, _ = self.login()
        protocol, transport = self.connect()
        protocol.dataReceived(b"USER alice@example.org\r\nPASS secret\r\n")
        self.assertTrue(
            transport.value().endswith(
                b"-ERR [IN-USE] Mailbox is in use by another POP3 session\r\n"
            )
        )
        self.drop(first)
        transport.clear()
        protocol.dataReceived(b"USER alice\r\nPASS secret\r\n")
        self.assertIn(b"+OK Logged in", transport.value())

    def test_retr_is_one_write_and_byte_stuffed(self) -> None:
        """A small message goes out with its status line and "." in a single write; the
        size announced is the octets the client reads back."""
        self.store.deliver_bytes(ALICE, MESSAGE)
        protocol, transport = self.login()
        transport.writes.clear()
        protocol.dataReceived(b"RETR 1\r\n")
        self.assertEqual(len(transport.writes), 1)
        wire = transport.value()
        self.assertTrue(wire.startswith(b"+OK %d octets\r\n" % len(MESSAGE)))
        self.assertIn(b"\r\n..dot line\r\n...two\r\n", wire)
        self.assertEqual(unstuff(wire), MESSAGE)
        self.assertIsNone(transport.producer)

    def test_top(self) -> None:
        """TOP sends the header, the empty line and n body lines."""
        self.store.deliver_bytes(ALICE, MESSAGE)
        protocol, transport = self.login()
        protocol.dataReceived(b"TOP 1 1\r\n")
        self.assertEqual(
            transport.value(),
            b"+OK Top of message follows\r\nFrom: carol@sender.example\r\nSubject: hi\r\n"
            b"\r\nbody\r\n.\r\n",
        )

    def test_big_message_streams_with_flat_memory(self) -> None:
        """A message many chunks long, with "." lines across chunk boundaries, streams through
        a paused-and-resumed producer: no write is much bigger than a chunk, later commands
        wait their turn, and the client reads back the exact message."""
        line = b"x" * 97 + b"\r\n"
        body = bytearray()
        while len(body) < 20 * CHUNK_SIZE:
            body += line
            body += b".\r\n" if len(body) % CHUNK_SIZE < 200 else b".dot\r\n"
        message = b"Subject: big\r\n\r\n" + bytes(body)
        self.store.deliver_bytes(ALICE, message)
        protocol, transport = self.login(Transport(pause_above=CHUNK_SIZE))
        protocol.dataReceived(b"RETR 1\r\nNOOP\r\n")
        received = bytearray()
        rounds = 0
        while transport.producer is not None:
            rounds += 1
            self.assertLess(rounds, 1000)
            received += transport.value()
            transport.clear()
            transport.producer.resumeProducing()
        received += transport.value()
        self.assertGreater(rounds, 10)
        self.assertLessEqual(max(len(w) for w in transport.writes), 2 * CHUNK_SIZE + 100)
        self.assertTrue(received.endswith(b"\r\n.\r\n+OK\r\n"))  # NOOP answered after
        self.assertEqual(unstuff(bytes(received[: -len(b"+OK\r\n")])), message)

    def test_drop_mid_stream_releases_everything(self) -> None:
        """A client that leaves in the middle of a message: reading stops, the lock is
        released, nothing is deleted (the pipelined DELE and QUIT never ran)."""
        self.store.deliver_bytes(ALICE, b"y" * (5 * CHUNK_SIZE))
        protocol, transport = self.login(Transport(pause_above=CHUNK_SIZE))
        protocol.dataReceived(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")  # DELE and QUIT wait
        producer = transport.producer
        self.assertIsNotNone(producer)
        [mailbox] = self.store.opened
        reads = mailbox.reads
        self.assertLess(reads, 5)
        self.drop(protocol)
        producer.resumeProducing()  # a late resume after the drop reads nothing more
        self.assertEqual(mailbox.reads, reads)
        self.assertTrue(mailbox.closed)
        self.assertEqual(len(self.store.mailboxes[ALICE]), 1)

    def test_small_message_is_one_read(self) -> None:
        """A message shorter than a chunk costs one read: the short read is its end."""
        self.store.deliver_bytes(ALICE, MESSAGE)
        protocol, transport = self.login()
        protocol.dataReceived(b"RETR 1\r\n")
        [mailbox] = self.store.opened
        self.assertEqual(mailbox.reads, 1)
        self.assertTrue(transport.value().endswith(b"end\r\n.\r\n"))

    def test_dele_then_quit_removes(self) -> None:
        """RFC 1939 §6: QUIT applies the deletions, then says +OK and closes."""
        self.store.deliver_bytes(ALICE, b"one\r\n")
        self.store.deliver_bytes(ALICE, b"two\r\n")
        protocol, transport = self.login()
        protocol.dataReceived(b"RETR 2\r\nDELE 1\r\nQUIT\r\n")
        self.assertTrue(transport.value().endswith(b"(1 messages left)\r\n"))
        self.assertTrue(transport.disconnecting)
        [left] = self.store.mailboxes[ALICE]
        self.assertEqual((left.data, left.seen), (b"two\r\n", True))
        self.assertNotIn(ALICE, self.store.locked)

    def test_dele_then_drop_keeps(self) -> None:
        """A dropped connection never reaches UPDATE: a DELE'd message stays."""
        self.store.deliver_bytes(ALICE, b"one\r\n")
        protocol, _ = self.login()
        protocol.dataReceived(b"DELE 1\r\n")
        self.drop(protocol)
        self.assertEqual(len(self.store.mailboxes[ALICE]), 1)
        self.assertNotIn(ALICE, self.store.locked)

    def test_mail_arriving_during_the_session_is_untouched(self) -> None:
        """Numbering is a snapshot at login: new mail is not listed and QUIT leaves it."""
        self.store.deliver_bytes(ALICE, b"old\r\n")
        protocol, transport = self.login()
        self.store.deliver_bytes(ALICE, b"new\r\n")
        protocol.dataReceived(b"STAT\r\nDELE 1\r\nDELE 2\r\nQUIT\r\n")
        self.assertTrue(transport.value().startswith(b"+OK 1 5\r\n"))
        self.assertIn(b"-ERR No such message", transport.value())
        self.assertEqual([m.data for m in self.store.mailboxes[ALICE]], [b"new\r\n"])

    def test_commit_failure_is_sys_temp(self) -> None:
        """If the deletions cannot be applied, QUIT answers -ERR [SYS/TEMP]."""
        self.store.deliver_bytes(ALICE, b"one\r\n")
        self.store.fail_commits = True
        protocol, transport = self.login()
        protocol.dataReceived(b"DELE 1\r\nQUIT\r\n")
        self.assertTrue(
            transport.value().endswith(
                b"-ERR [SYS/TEMP] Some deleted messages were not removed\r\n"
            )
        )
        self.assertNotIn(ALICE, self.store.locked)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_vanished_message(self) -> None:
        """A message removed by another program gets -ERR, and the session goes on."""
        self.store.deliver_bytes(ALICE, b"one\r\n")
        protocol, transport = self.login()
        self.store.mailboxes[ALICE].clear()
        protocol.dataReceived(b"RETR 1\r\nNOOP\r\n")
        self.assertEqual(
            transport.value(), b"-ERR Message was removed by another program\r\n+OK\r\n"
        )

    # -- lines and timers ---------------------------------------------------------------

    def test_overlong_line_refused_once_and_skipped(self) -> None:
        """RFC 2449 §4: a line over 255 octets gets one -ERR; its remainder is not run as a
        command, and the next line is."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"USER " + b"a" * 300)
        protocol.dataReceived(b"b" * 300 + b" QUIT\r\nCAPA\r\n")
        wire = transport.value()
        self.assertTrue(wire.startswith(b"-ERR Command line too long\r\n+OK Capability"))
        self.assertFalse(transport.disconnecting)

    def test_idle_timeout(self) -> None:
        """RFC 1939 §3: after the idle timeout the session ends with -ERR, without UPDATE."""
        self.store.deliver_bytes(ALICE, b"one\r\n")
        protocol, transport = self.login()
        protocol.dataReceived(b"DELE 1\r\n")
        self.clock.advance(599)
        protocol.dataReceived(b"NOOP\r\n")
        self.clock.advance(599)
        self.assertFalse(transport.disconnecting)
        transport.clear()
        self.clock.advance(2)
        self.assertEqual(transport.value(), b"-ERR Autologout: idle for too long\r\n")
        self.assertTrue(transport.disconnecting)
        self.drop(protocol)
        self.assertEqual(len(self.store.mailboxes[ALICE]), 1)

    def test_input_paused_while_waiting(self) -> None:
        """While a login waits (throttled), a flood of pipelined input pauses reading."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"USER alice\r\nPASS wrong\r\n")
        protocol.dataReceived(b"USER alice\r\nPASS secret\r\n" + b"NOOP\r\n" * 20000)
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(3)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(transport.value().count(b"+OK\r\n"), 20000)

    def test_many_pipelined_retrs(self) -> None:
        """Thousands of pipelined RETRs, each finished at once, are answered in a loop rather
        than by recursion (no stack overflow), all in order."""
        self.store.deliver_bytes(ALICE, b"tiny\r\n")
        protocol, transport = self.login()
        protocol.dataReceived(b"RETR 1\r\n" * 5000)
        self.assertEqual(transport.value(), b"+OK 6 octets\r\ntiny\r\n.\r\n" * 5000)
