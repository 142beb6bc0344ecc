"""The POP3 Twisted glue over StringTransport and MemoryReactorClock (mailserver.pop3.server);
TLS over iosim's in-memory connections, with real handshakes."""

from __future__ import annotations

import datetime
import functools
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailserver.authlimit import LoginThrottle
from mailserver.interfaces import IMailboxStore, MessageInfo
from mailserver.limits import ConnectionLimiter
from mailserver.logins import LoginChecker
from mailserver.memory import MemoryMailboxStore, MemoryUserDatabase
from mailserver.pop3.server import POP3ServerFactory, POP3ServerProtocol
from mailserver.pop3.session import SessionPolicy
from mailserver.streaming import CHUNK_SIZE
from tests.tls_transport import STLSTransport

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
        self.tls_started: list[object] = []  # the context of each startTLS call

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def startTLS(self, context: object) -> None:
        """Only records the call: what comes after it is taken to arrive through TLS."""
        self.tls_started.append(context)

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


# -- TLS in memory ------------------------------------------------------------------------------

HOSTNAME = "mx.example.org"
REMOTE = IPv4Address("TCP", "192.0.2.7", 40000)  # not loopback: no plaintext login by policy


@functools.cache
def certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed certificate for HOSTNAME and its key, made once per test run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAME)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOSTNAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """A server TLS context for HOSTNAME (what the listener's factory is given)."""

    def __init__(self) -> None:
        certificate_, key = certificate()
        self._context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._context.use_certificate(certificate_)
        self._context.use_privatekey(key)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)


def client_tls() -> Any:
    """Verifies the server's certificate and name, as a real client does."""
    pem = certificate()[0].public_bytes(serialization.Encoding.PEM)
    return optionsForClientTLS(HOSTNAME, trustRoot=Certificate.loadPEM(pem))


class Client(Protocol):
    """Collects what the server sends."""

    def __init__(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def take(self) -> bytes:
        data = bytes(self.received)
        self.received.clear()
        return data


class POP3ServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.users = MemoryUserDatabase(
            domains=["example.org"], users={ALICE: "secret", "bob@example.org": "pw"}
        )
        self.store = MemoryMailboxStore()
        self.throttle = LoginThrottle(self.clock)
        self.logins = LoginChecker(self.users, self.throttle, self.clock)
        self.limiter = ConnectionLimiter(100, 3)
        self.factory = self.make_factory("loopback")

    def make_factory(
        self, plaintext: str, idle_timeout: float = 600.0, tls: Any = None
    ) -> POP3ServerFactory:
        return POP3ServerFactory(
            policy=SessionPolicy(hostname="mx.example.org"),
            idle_timeout=idle_timeout,
            plaintext_auth=plaintext,
            store=self.store,
            limiter=self.limiter,
            logins=self.logins,
            reactor=self.clock,
            tls=tls,
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
        self.clock.advance(0)  # the login check runs on the next turn of the reactor
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
        self.clock.advance(0)
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

    def test_unknown_user_and_wrong_password_look_the_same(self) -> None:
        """Both get the same bytes: USER never says whether the user exists."""
        answers = []
        for user, password in (("nobody", "secret"), ("alice", "wrong")):
            self.clock.advance(100)  # past any throttle delay
            protocol, transport = self.connect()
            protocol.dataReceived(f"USER {user}\r\nPASS {password}\r\n".encode())
            self.clock.advance(0)
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
        self.clock.advance(0)
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
        self.clock.advance(0)
        self.assertIn(b"+OK Logged in as alice@example.org", transport.value())

    def test_sasl_login_pipelined(self) -> None:
        """AUTH LOGIN's two challenges and answers, all sent at once, log in (the shared
        SASL code: mailserver.sasl)."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n")  # alice, secret
        self.clock.advance(0)
        self.assertEqual(
            transport.value().split(b"\r\n")[:3],
            [
                b"+ VXNlcm5hbWU6",
                b"+ UGFzc3dvcmQ6",
                b"+OK Logged in as alice@example.org: 0 messages (0 octets)",
            ],
        )

    def test_authzid_of_another_user_fails_like_a_wrong_password(self) -> None:
        """A PLAIN authorization identity naming someone else: the login checker refuses it,
        and the client gets the same -ERR [AUTH] as for a wrong password."""
        protocol, transport = self.connect()
        # "bob@example.org\0alice\0secret"
        protocol.dataReceived(b"AUTH PLAIN Ym9iQGV4YW1wbGUub3JnAGFsaWNlAHNlY3JldA==\r\n")
        self.clock.advance(0)
        self.assertEqual(transport.value(), b"-ERR [AUTH] Authentication failed\r\n")

    def test_failed_login_is_logged_once_by_the_login_checker(self) -> None:
        """A failed login is one "login-failed" event from the shared login checker (with the
        protocol, login, client and mechanism); POP3 logs no second one of its own."""
        with capturedLogs() as events:
            protocol, _ = self.connect()
            protocol.dataReceived(b"USER alice\r\nPASS wrong\r\n")
            self.clock.advance(0)
        failures = [
            event
            for event in events
            if "login-failed" in (event.get("login_event"), event.get("pop3_event"))
        ]
        self.assertEqual(len(failures), 1)
        [failure] = failures
        self.assertEqual(
            (failure["protocol"], failure["login"], failure["client"], failure["mechanism"]),
            ("pop3", "alice", "127.0.0.1", "USER"),
        )

    def test_drop_while_the_login_waits_cancels_it_quietly(self) -> None:
        """A client that leaves during its throttle delay: the wait is cancelled, the
        password is never checked, nothing is logged, no timer is left behind."""
        protocol, _ = self.connect()
        protocol.dataReceived(b"USER alice\r\nPASS wrong\r\n")
        self.clock.advance(0)
        other, other_transport = self.connect()
        other.dataReceived(b"USER alice\r\nPASS secret\r\n")
        checked: list[str] = []

        def authenticate(login: str, password: str) -> Deferred[str | None]:
            checked.append(login)
            return Deferred()

        self.users.authenticate = authenticate  # type: ignore[method-assign]
        with capturedLogs() as events:
            self.drop(other)
            self.clock.advance(10)
        self.assertEqual(checked, [])
        self.assertEqual(list(events), [])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(other_transport.value(), b"+OK Send your password\r\n")
        self.drop(protocol)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_user_database_failure_is_sys_temp(self) -> None:
        """If the credentials cannot be checked (our trouble), -ERR [SYS/TEMP], logged, and
        the session goes on."""
        broken: Deferred[str | None] = fail(OSError("database is gone"))
        self.users.authenticate = lambda login, password: broken  # type: ignore[method-assign]
        protocol, transport = self.connect()
        protocol.dataReceived(b"USER alice\r\nPASS secret\r\nNOOP\r\n")
        self.clock.advance(0)
        self.assertEqual(
            transport.value(),
            b"+OK Send your password\r\n"
            b"-ERR [SYS/TEMP] Temporary problem on the server, try again later\r\n"
            b"-ERR Log in first\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    # -- TLS: STLS (RFC 2595) and implicit TLS (RFC 8314) ---------------------------------

    def test_stls_offered_and_started(self) -> None:
        """With a certificate, CAPA lists STLS; STLS answers +OK in plaintext and then starts
        TLS with the factory's context. Without one, STLS is neither listed nor accepted."""
        context = object()
        protocol, transport = self.connect(factory=self.make_factory("never", tls=context))
        protocol.dataReceived(b"CAPA\r\n")
        self.assertIn(b"\r\nSTLS\r\n", transport.value())
        transport.clear()
        protocol.dataReceived(b"STLS\r\n")
        self.assertEqual(transport.value(), b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(transport.tls_started, [context])
        plain, plain_transport = self.connect()
        plain.dataReceived(b"CAPA\r\nSTLS\r\n")
        self.assertNotIn(b"STLS", plain_transport.value())
        self.assertTrue(plain_transport.value().endswith(b"-ERR TLS is not available here\r\n"))
        self.assertEqual(plain_transport.tls_started, [])

    def test_commands_pipelined_after_stls_are_thrown_away(self) -> None:
        """CVE-2011-0411 class: whatever arrived with STLS came in plaintext, so none of it
        runs inside TLS: one +OK, startTLS, and no USER reply, no login attempted."""
        checked: list[str] = []

        def authenticate(login: str, password: str) -> Deferred[str | None]:
            checked.append(login)
            return Deferred()

        self.users.authenticate = authenticate  # type: ignore[method-assign]
        factory = self.make_factory("always", tls=object())
        protocol, transport = self.connect(factory=factory)
        with capturedLogs() as events:
            protocol.dataReceived(b"STLS\r\nUSER bob\r\nPASS x\r\n")
            self.clock.advance(100)
        self.assertEqual(transport.value(), b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(len(transport.tls_started), 1)
        self.assertEqual((checked, list(events)), ([], []))
        protocol.dataReceived(b"PASS x\r\n")  # the next line, through TLS, is a command
        self.assertTrue(transport.value().endswith(b"-ERR Send USER first\r\n"))

    def test_user_before_stls_does_not_count_after_it(self) -> None:
        """USER sent in plaintext, then STLS: a PASS inside TLS is refused as USER-first."""
        factory = self.make_factory("always", tls=object())
        protocol, transport = self.connect(factory=factory)
        protocol.dataReceived(b"USER alice\r\n")
        protocol.dataReceived(b"STLS\r\n")
        transport.clear()
        protocol.dataReceived(b"PASS secret\r\n")
        self.clock.advance(0)
        self.assertEqual(transport.value(), b"-ERR Send USER first\r\n")

    def test_stls_lets_a_remote_client_log_in(self) -> None:
        """Under the "never" policy a remote client may not send a password in plaintext, but
        may after STLS; a second STLS gets -ERR."""
        factory = self.make_factory("never", tls=object())
        protocol, transport = self.connect(Transport(host="192.0.2.7"), factory)
        protocol.dataReceived(b"USER alice\r\n")
        self.assertTrue(transport.value().startswith(b"-ERR [AUTH] "))
        protocol.dataReceived(b"STLS\r\n")
        transport.clear()
        protocol.dataReceived(b"STLS\r\nUSER alice\r\nPASS secret\r\n")
        self.clock.advance(0)
        self.assertEqual(
            transport.value().split(b"\r\n")[:3],
            [
                b"-ERR Command not permitted when TLS active",
                b"+OK Send your password",
                b"+OK Logged in as alice@example.org: 0 messages (0 octets)",
            ],
        )

    def test_implicit_tls_real_handshake(self) -> None:
        """RFC 8314: behind TLSMemoryBIOFactory (an ssl: listener), a real handshake with a
        client that verifies the certificate; the greeting and CAPA come inside TLS, STLS is
        not offered, and a remote client may log in with USER/PASS under "never"."""
        factory = self.make_factory("never", tls=ServerTLS())
        # The clock: the TLS layer sends what the protocol wrote on the reactor's next turn.
        listener = TLSMemoryBIOFactory(ServerTLS(), False, factory, clock=self.clock)
        server = listener.buildProtocol(REMOTE)
        client = Client()
        client_side = TLSMemoryBIOFactory(
            client_tls(), True, Factory.forProtocol(Client), clock=self.clock
        )
        client_layer = TLSMemoryBIOProtocol(client_side, client)
        server_io = FakeTransport(server, isServer=True, peerAddress=REMOTE)
        client_io = FakeTransport(client_layer, isServer=False)
        pump = connect(server, server_io, client_layer, client_io, clock=self.clock)
        self.assertTrue(client.take().startswith(b"+OK mx.example.org POP3 server ready"))
        client_layer.write(b"CAPA\r\nSTLS\r\nUSER alice\r\nPASS secret\r\nQUIT\r\n")
        pump.flush()
        wire = client.take()
        capabilities = wire.split(b"\r\n.\r\n")[0].split(b"\r\n")
        self.assertIn(b"USER", capabilities)
        self.assertIn(b"SASL PLAIN LOGIN", capabilities)
        self.assertNotIn(b"STLS", capabilities)
        self.assertIn(b"-ERR Command not permitted when TLS active\r\n", wire)
        self.assertIn(b"+OK Logged in as alice@example.org", wire)
        self.assertTrue(wire.endswith(b"+OK mx.example.org signing off (0 messages left)\r\n"))
        self.assertTrue(server_io.disconnected)

    def test_stls_real_handshake(self) -> None:
        """STLS over an in-memory connection with a real TLS handshake afterwards. A USER
        pipelined after STLS in plaintext is dropped without upsetting the handshake; inside
        TLS, PASS needs a new USER, CAPA lists USER but no STLS, and the remote client logs
        in."""
        factory = self.make_factory("never", tls=ServerTLS())
        server = factory.buildProtocol(REMOTE)
        client = Client()
        server_io = STLSTransport(server, isServer=True, peerAddress=REMOTE)
        client_io = STLSTransport(client, isServer=False)
        pump = connect(server, server_io, client, client_io, clock=self.clock)
        self.assertTrue(client.take().startswith(b"+OK mx.example.org"))
        client_io.write(b"CAPA\r\nSTLS\r\nUSER alice\r\n")
        pump.flush()
        before = client.take()
        self.assertIn(b"\r\nSTLS\r\n", before)
        self.assertNotIn(b"\r\nUSER\r\n", before)
        self.assertTrue(before.endswith(b"+OK Begin TLS negotiation\r\n"))
        client_io.startTLS(client_tls())
        pump.flush()
        client_io.write(b"PASS secret\r\nCAPA\r\nUSER alice\r\nPASS secret\r\n")
        pump.flush()
        inside = client.take()
        self.assertTrue(inside.startswith(b"-ERR Send USER first\r\n+OK Capability list"))
        capabilities = inside.split(b"\r\n.\r\n")[0].split(b"\r\n")
        self.assertIn(b"USER", capabilities)
        self.assertNotIn(b"STLS", capabilities)
        self.assertIn(b"+OK Logged in as alice@example.org", inside)
        client_io.write(b"QUIT\r\n")
        pump.flush()
        self.assertTrue(client.take().startswith(b"+OK mx.example.org signing off"))

    # -- the mailbox --------------------------------------------------------------------

    def test_second_login_gets_in_use(self) -> None:
        """Two sessions on one mailbox: the second gets -ERR [IN-USE] until the first ends."""
        first, _ = self.login()
        protocol, transport = self.connect()
        protocol.dataReceived(b"USER alice@example.org\r\nPASS secret\r\n")
        self.clock.advance(0)
        self.assertTrue(
            transport.value().endswith(
                b"-ERR [IN-USE] Mailbox is in use by another POP3 session\r\n"
            )
        )
        self.drop(first)
        transport.clear()
        protocol.dataReceived(b"USER alice\r\nPASS secret\r\n")
        self.clock.advance(0)
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
        self.assertIs(transport.producer, protocol)  # the connection's own, nothing more

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
        """A message many chunks long, with "." lines across chunk boundaries, streams as the
        transport pauses and resumes the connection: no write is much bigger than a chunk,
        later commands wait their turn, and the client reads back the exact message."""
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
        while not received.endswith(b"+OK\r\n"):
            rounds += 1
            self.assertLess(rounds, 1000)
            self.assertLessEqual(len(transport.value()), 2 * CHUNK_SIZE + 100)
            received += transport.value()
            transport.clear()
            protocol.resumeProducing()  # the client has read it all: the transport has room
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

    def test_pipelined_retrs_to_a_client_that_does_not_read(self) -> None:
        """Once the transport holds more than it wants, no further command is taken (input
        piling up pauses reading), so replies are never buffered without bound; as the
        client reads, the rest follow, each whole and in order."""
        message = b"Subject: x\r\n\r\n" + b"y" * 20_000 + b"\r\n"
        self.store.deliver_bytes(ALICE, message)
        protocol, transport = self.login(Transport(pause_above=CHUNK_SIZE))
        command = b"RETR" + b" " * 200 + b"1\r\n"  # padded: input piles up sooner
        protocol.dataReceived(command * 500)  # 103,500 octets of commands
        reply = b"+OK %d octets\r\n" % len(message) + message + b".\r\n"
        self.assertLessEqual(len(transport.value()), CHUNK_SIZE + len(reply))
        self.assertEqual(transport.producerState, "paused")  # reading, too
        received = bytearray()
        rounds = 0
        while len(received) < 500 * len(reply):
            rounds += 1
            self.assertLess(rounds, 500)
            self.assertLessEqual(len(transport.value()), CHUNK_SIZE + len(reply))
            received += transport.value()
            transport.clear()
            protocol.resumeProducing()
        self.assertEqual(bytes(received), reply * 500)
        self.assertEqual(transport.producerState, "producing")

    def test_small_message_read_later_holds_the_next_command(self) -> None:
        """A store that answers a read later: the commands after the RETR wait for it."""
        self.store.deliver_bytes(ALICE, MESSAGE)
        protocol, transport = self.login()
        [mailbox] = self.store.opened
        later: Deferred[bytes] = Deferred()
        mailbox.read_message = lambda index, offset, size: later  # type: ignore[method-assign]
        protocol.dataReceived(b"RETR 1\r\nNOOP\r\n")
        self.assertEqual(transport.value(), b"")
        later.callback(MESSAGE)
        wire = transport.value()
        self.assertTrue(wire.endswith(b"end\r\n.\r\n+OK\r\n"))
        self.assertEqual(unstuff(wire[: -len(b"+OK\r\n")]), MESSAGE)

    def test_message_longer_than_listed_is_sent_whole(self) -> None:
        """A message whose listed size says "small" but which fills a whole chunk is streamed
        after all: the client gets every octet, not just the first chunk."""
        message = b"Subject: long\r\n\r\n" + b"z" * 98 + b"\r\n" + b".x\r\n" * 40_000
        self.store.deliver_bytes(ALICE, message)
        protocol, transport = self.login()
        [mailbox] = self.store.opened
        mailbox.messages[0] = MessageInfo(mailbox.messages[0].uid, 100)  # type: ignore[index]
        protocol.dataReceived(b"RETR 1\r\nNOOP\r\n")
        wire = transport.value()
        self.assertTrue(wire.endswith(b"\r\n.\r\n+OK\r\n"))
        self.assertEqual(unstuff(wire[: -len(b"+OK\r\n")]), message)

    def test_small_message_unreadable_is_sys_temp(self) -> None:
        """A first read failing for a reason of ours: -ERR [SYS/TEMP], logged, and the session
        goes on."""
        self.store.deliver_bytes(ALICE, MESSAGE)
        protocol, transport = self.login()
        [mailbox] = self.store.opened
        mailbox.read_message = lambda index, offset, size: fail(OSError("disk"))  # type: ignore[method-assign]
        protocol.dataReceived(b"RETR 1\r\nNOOP\r\n")
        self.assertEqual(
            transport.value(),
            b"-ERR [SYS/TEMP] Temporary problem on the server, try again later\r\n+OK\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_closing_unregisters_the_connection_producer(self) -> None:
        """The protocol is its transport's producer while connected; a transport does not
        close while one is registered, so closing unregisters it first."""
        protocol, transport = self.connect()
        self.assertIs(transport.producer, protocol)
        protocol.dataReceived(b"QUIT\r\n")
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)

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
        self.clock.advance(0)
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
