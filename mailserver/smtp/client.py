"""Twisted glue for the SMTP client: a connection, the server's replies in, the session's
actions carried out.

:func:`connect` opens a TCP connection and drives :class:`ClientSession` through the
greeting, EHLO, STARTTLS and AUTH; it fires with an :class:`SMTPConnection` over which
messages are then sent one after another, or fails with :class:`ConnectFailed` so the caller
tries the next server. Everything the protocol decides is the session's; this module only
moves octets, runs the timers (RFC 5321 §4.5.3.2, on the injected clock), does the TLS
handshake and streams the message.

The message file is read in chunks in a thread pool and goes out through a push producer,
so memory stays flat whatever the message size and the producer stops while the server is
slow to read. Each chunk is encoded by :class:`~mailserver.stuffing.SMTPDataEncoder`, which
keeps the dot-stuffing and line-ending state across chunk boundaries.

TLS: ``"required"`` verifies the certificate against the server's name with
``optionsForClientTLS`` (the system's trust store, or the configured bundle);
``"opportunistic"`` (RFC 7435) encrypts without checking anything, since an unverified
encryption still beats plaintext against a passive listener, and when its handshake fails
the server is tried once more in plaintext, as Postfix does at its "may" level. Both refuse
anything older than TLS 1.2.
"""

from __future__ import annotations

import ipaddress
import os
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import (
    IConnector,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorFromThreads,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver.address import AddressError, normalize_domain
from mailserver.deadline import Deadline
from mailserver.interfaces import OutboundMessage, RecipientResult, ReplyInfo
from mailserver.smtp.client_session import (
    CONNECT_TIMEOUT,
    CONNECTION_FAILED,
    LOCAL_ERROR,
    TRUST_FILE_UNUSABLE,
    Capabilities,
    ClientAction,
    ClientSession,
    ClientSettings,
    ClientTimeouts,
    Close,
    Finished,
    Ready,
    RemoteProtocolError,
    ReplyParser,
    Send,
    SendContent,
    SetupFailed,
    StartTLS,
    State,
    ours,
)
from mailserver.streaming import CHUNK_SIZE, MessageStreamer, StreamStopped
from mailserver.stuffing import SMTPDataEncoder
from mailserver.tcp import disable_nagle
from mailserver.tls import describe_connection

if TYPE_CHECKING:
    from twisted.python.threadpool import ThreadPool

__all__ = [
    "CHUNK_SIZE",
    "ClientSettings",
    "ClientTimeouts",
    "ConnectFailed",
    "SMTPConnection",
    "connect",
]

log = Logger()


class ConnectFailed(Exception):
    """No SMTP session could be set up with this server; try the next one.

    ``reply`` says why (the server's own reply, or ours: a refused connection is 451 4.4.1);
    ``permanent`` when the server refused for good (a 5xx greeting or HELO).
    """

    def __init__(self, reply: ReplyInfo, permanent: bool) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.permanent = permanent


class _HandshakeFailed(ConnectFailed):
    """The TLS handshake failed: an opportunistic client tries again without TLS."""


def connect(
    reactor: IReactorTCP,
    address: str,
    port: int,
    server_name: str,
    settings: ClientSettings,
    *,
    pool: ThreadPool | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Deferred[SMTPConnection]:
    """TCP to ``address:port`` (an IPv4 or IPv6 literal), then the greeting, EHLO (HELO when
    EHLO gets a 5xx), STARTTLS as ``settings.tls`` says (EHLO again inside TLS, anything the
    server sent before the handshake thrown away: RFC 3207 §4.2), and AUTH if configured.

    ``reactor`` must also provide IReactorTime and IReactorFromThreads; the message file is
    read in ``pool`` (the reactor's own pool when None), ``chunk_size`` octets at a time.
    Fails with :class:`ConnectFailed` when no session could be set up.
    """
    attempt = _connect_once(reactor, address, port, server_name, settings, pool, chunk_size)
    if settings.tls != "opportunistic":
        return attempt

    def without_tls(failure: Failure) -> Deferred[SMTPConnection]:
        if not failure.check(_HandshakeFailed):
            return fail(failure)
        log.info(
            "TLS with {host} [{address}] failed ({reason}); trying again without TLS",
            host=server_name,
            address=address,
            reason=str(failure.value),
        )
        plaintext = replace(settings, tls="off")
        return _connect_once(reactor, address, port, server_name, plaintext, pool, chunk_size)

    return attempt.addErrback(without_tls)


def _connect_once(
    reactor: IReactorTCP,
    address: str,
    port: int,
    server_name: str,
    settings: ClientSettings,
    pool: ThreadPool | None,
    chunk_size: int,
) -> Deferred[SMTPConnection]:
    peer = f"{server_name} [{address}]"
    try:
        tls = _tls_creator(settings, server_name)
    except _TrustFileError as error:
        reply = ours(TRUST_FILE_UNUSABLE, path=settings.trust_file, reason=error)
        return fail(ConnectFailed(reply, permanent=False))
    if pool is None:
        pool = IReactorThreads(reactor).getThreadPool()
    ready: Deferred[SMTPConnection] = Deferred(lambda _: connector.disconnect())
    factory = _ConnectingFactory(
        lambda: SMTPClientProtocol(
            ClientSession(settings, server_name, peer),
            ready,
            IReactorTime(reactor),
            _FileReader(IReactorFromThreads(reactor), pool),
            tls,
            chunk_size,
        ),
        ready,
        peer,
    )
    connector: IConnector = reactor.connectTCP(
        address, port, factory, timeout=settings.timeouts.connect
    )
    return ready


class _ConnectingFactory(ClientFactory):
    """Builds the one protocol of a connection attempt, or reports why TCP failed."""

    noisy = False  # no "Starting factory" log lines for every outbound connection

    def __init__(
        self,
        build: Callable[[], SMTPClientProtocol],
        ready: Deferred[SMTPConnection],
        peer: str,
    ) -> None:
        self._build = build
        self._ready = ready
        self._peer = peer

    def buildProtocol(self, addr: object) -> SMTPClientProtocol:
        return self._build()

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if self._ready.called:
            return  # cancelled
        if reason.check(ConnectTimeoutError):
            reply = ours(CONNECT_TIMEOUT, host=self._peer)
        else:
            detail = reason.getErrorMessage() if reason.check(ConnectError) else str(reason.value)
            reply = ours(CONNECTION_FAILED, host=self._peer, reason=detail.rstrip("."))
        self._ready.errback(ConnectFailed(reply, permanent=False))


# --- TLS ----------------------------------------------------------------------------------------


class _TrustFileError(Exception):
    pass


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedClientTLS:
    """Opportunistic TLS (RFC 7435): TLS 1.2 or later, the server's name sent with SNI
    (RFC 6066 §3, never for an IP address), and the certificate not checked at all: most MX
    certificates would fail a check (RFC 7672 §1.3), and refusing them would only mean
    sending in plaintext instead."""

    def __init__(self, server_name: str) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION)
        context.set_verify(SSL.VERIFY_NONE)
        self._context = context
        self._server_name = _sni(server_name)

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


def _sni(server_name: str) -> bytes | None:
    """The name to send with SNI, as A-labels (RFC 6066 §3): none for an IP address or an
    address literal, or a name IDNA 2008 cannot encode."""
    if server_name.startswith("["):
        return None
    try:
        ipaddress.ip_address(server_name)
    except ValueError:
        try:
            return normalize_domain(server_name.rstrip(".")).encode("ascii")
        except AddressError:
            return None
    return None


def _tls_creator(settings: ClientSettings, server_name: str) -> IOpenSSLClientConnectionCreator:
    if settings.tls != "required":
        return UnverifiedClientTLS(server_name)
    name = server_name.rstrip(".")
    minimum = {"raiseMinimumTo": TLSVersion.TLSv1_2}
    if settings.trust_file is None:
        return optionsForClientTLS(name, platformTrust(), extraCertificateOptions=minimum)
    authorities = trustRootFromCertificates(_TRUST_FILES.authorities(settings.trust_file))
    return optionsForClientTLS(name, authorities, extraCertificateOptions=minimum)


class TrustFiles:
    """The CA bundles of ``trust_file``, each parsed once and kept.

    Parsing a system-sized bundle takes tens of milliseconds, on the reactor thread, and it
    would be done for every connection attempt. Each time the file is opened and its
    identity checked (``fstat``: device, inode, size, modification and change times), so a
    bundle replaced or edited in place is read again; a file that fails is not remembered,
    and fails again on the next attempt.
    """

    def __init__(self) -> None:
        self._parsed: dict[Path, tuple[tuple[int, ...], list[Certificate]]] = {}

    def authorities(self, path: Path) -> list[Certificate]:
        """The CA certificates of the bundle at ``path`` (the same list while the file stays
        the same); raises :class:`_TrustFileError`."""
        try:
            with open(path, "rb") as file:
                status = os.fstat(file.fileno())
                identity = (
                    status.st_dev,
                    status.st_ino,
                    status.st_size,
                    status.st_mtime_ns,
                    status.st_ctime_ns,
                )
                known = self._parsed.get(path)
                if known is not None and known[0] == identity:
                    return known[1]
                data = file.read()
        except OSError as error:
            raise _TrustFileError(error.strerror or str(error)) from None
        certificates = _authorities(data)
        self._parsed[path] = (identity, certificates)
        return certificates


_TRUST_FILES = TrustFiles()


def _authorities(pem: bytes) -> list[Certificate]:
    """The CA certificates of a PEM bundle."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise _TrustFileError("no PEM certificate in it, or a damaged one") from None
    return [Certificate.loadPEM(each.public_bytes(Encoding.PEM)) for each in certificates]


def _reason(failure: Failure) -> str:
    """A connection's end as words: OpenSSL's reasons for a TLS error."""
    error = failure.value
    if isinstance(error, VerificationError):
        return "the certificate is not for this name"
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [entry[2] for entry in error.args[0] if isinstance(entry, tuple)]
        if reasons:
            return "; ".join(str(reason) for reason in reasons)
    return failure.getErrorMessage().rstrip(".")


# --- Reading the message ------------------------------------------------------------------------


class _FileReader:
    """Reads chunks of message files in a thread pool, never on the reactor thread."""

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        self._reactor = reactor
        self._pool = pool

    def reader(self, path: Path, start: int = 0) -> Callable[[int, int], Deferred[bytes]]:
        """Reads of ``path`` counted from octet ``start``."""

        def read(offset: int, size: int) -> Deferred[bytes]:
            return deferToThreadPool(
                self._reactor, self._pool, read_chunk, path, start + offset, size
            )

        return read


def read_chunk(path: Path, offset: int, size: int) -> bytes:
    """``size`` octets of ``path`` from ``offset``, fewer only where the file ends.

    The file is opened for each chunk, so a connection that goes away mid-message leaves
    nothing open."""
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(size)


# --- The connection -----------------------------------------------------------------------------


@implementer(IHandshakeListener)
class SMTPClientProtocol(Protocol):
    """Feeds one connection's replies to its :class:`ClientSession` and carries out the
    actions; :class:`SMTPConnection` is its public face."""

    def __init__(
        self,
        session: ClientSession,
        ready: Deferred[SMTPConnection],
        clock: IReactorTime,
        files: _FileReader,
        tls: IOpenSSLClientConnectionCreator,
        chunk_size: int,
    ) -> None:
        self.session = session
        self._ready = ready
        self._files = files
        self._tls = tls
        self._chunk_size = chunk_size
        self._timeouts = session.settings.timeouts
        self._parser = ReplyParser()
        self._deadline = Deadline(clock, self._timed_out)
        self._queue: deque[tuple[OutboundMessage, Deferred[list[RecipientResult]]]] = deque()
        self._sending: Deferred[list[RecipientResult]] | None = None
        self._streamer: MessageStreamer | None = None
        self._closing = False  # close() was called: QUIT once the queue is empty
        self._hanging_up = False  # closing: input is ignored, and a slow close aborted
        self._connected = True
        self._closed: list[Deferred[None]] = []

    # -- what SMTPConnection asks ---------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self._connected and self.session.usable and not self._closing

    def send(self, message: OutboundMessage) -> Deferred[list[RecipientResult]]:
        sent: Deferred[list[RecipientResult]] = Deferred()
        self._queue.append((message, sent))
        self._next()
        return sent

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = Deferred()
        if not self._connected:
            closed.callback(None)
            return closed
        self._closed.append(closed)
        self._closing = True
        self._next()
        return closed

    def _next(self) -> None:
        """Start the next queued message, or QUIT once close() was asked and all are sent.
        A message for a connection that is gone gets its results from the session at once."""
        if self._sending is not None:
            return
        if self._queue:
            message, self._sending = self._queue.popleft()
            self._perform(self.session.begin(message))
            self._rearm()
        elif self._closing and self.session.state is State.READY:
            self._perform(self.session.quit())
            self._rearm()

    # -- Twisted's calls -----------------------------------------------------------------

    def connectionMade(self) -> None:
        disable_nagle(self.transport)
        self._rearm()  # the greeting's timeout

    def dataReceived(self, data: bytes) -> None:
        if self._hanging_up:
            return
        try:
            self._parser.feed(data)
        except RemoteProtocolError as error:
            self._parser.discard()
            self._perform(self.session.protocol_error(str(error)))
            return
        if self._take_replies():
            self._rearm()

    def handshakeCompleted(self) -> None:
        self._perform(self.session.tls_started(describe_connection(self.transport)))
        self._rearm()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._connected = False
        self._deadline.cancel()
        if self._streamer is not None:
            self._streamer.stopProducing()
        text = _reason(reason) if reason is not None else "connection closed"
        self._perform(self.session.connection_lost(text))
        self._next()  # anything still queued gets its results now
        closed, self._closed = self._closed, []
        for waiter in closed:
            waiter.callback(None)

    # -- the replies -----------------------------------------------------------------------

    def _take_replies(self) -> bool:
        """Hand the session every complete reply it waits for; True if any was taken."""
        taken = False
        while self.session.waiting and self._connected and not self._hanging_up:
            reply = self._parser.next_reply()
            if reply is None:
                break
            taken = True
            self._perform(self.session.reply_received(reply))
        return taken

    def _perform(self, actions: list[ClientAction]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.transport.write(action.data)  # type: ignore[union-attr]
            elif isinstance(action, StartTLS):
                # RFC 3207 §4.2: what came after the 220 came in plaintext: an attacker's.
                self._parser.discard()
                self.transport.startTLS(self._tls)  # type: ignore[union-attr]
            elif isinstance(action, SendContent):
                self._stream(action.message)
            elif isinstance(action, Ready):
                self._setup_done()
            elif isinstance(action, SetupFailed):
                error_type = _HandshakeFailed if action.during_tls else ConnectFailed
                self._setup_failed(error_type(action.reply, action.permanent))
            elif isinstance(action, Finished):
                self._finished(action.results)
            elif isinstance(action, Close):
                self._hang_up(action.abort)

    def _setup_done(self) -> None:
        log.debug(
            "SMTP session with {peer} set up ({tls})",
            peer=self.session.peer,
            tls=self.session.tls or "no TLS",
        )
        if not self._ready.called:
            self._ready.callback(SMTPConnection(self))

    def _setup_failed(self, error: ConnectFailed) -> None:
        if not self._ready.called:
            self._ready.errback(error)

    def _finished(self, results: list[RecipientResult]) -> None:
        sent, self._sending = self._sending, None
        if sent is not None:
            sent.callback(results)
        self._next()

    def _hang_up(self, abort: bool) -> None:
        """Close; from now on input is ignored."""
        self._stop_streaming()
        self._hanging_up = True
        if abort:
            self._deadline.cancel()
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.transport.loseConnection()  # type: ignore[union-attr]
        # A server that stops reading would keep the connection open for ever.
        self._deadline.set(self._timeouts.command)

    # -- the message -----------------------------------------------------------------------

    def _stream(self, message: OutboundMessage) -> None:
        def done(failure: Failure | None) -> None:
            self._streamer = None
            if failure is None:
                self._perform(self.session.content_sent())
                self._rearm()
            elif not failure.check(StreamStopped):
                log.failure("reading {path} failed", failure, path=str(message.path))
                detail = f"cannot read the message file: {failure.getErrorMessage()}"
                self._perform(self.session.local_failure(ours(LOCAL_ERROR, detail=detail)))

        streamer = MessageStreamer(
            self.transport,  # type: ignore[arg-type]
            self._files.reader(message.path, message.offset),
            SMTPDataEncoder(),
            b"",
            on_progress=self._block_written,
            on_done=done,
            chunk_size=self._chunk_size,
        )
        self._streamer = streamer
        self._block_written()
        streamer.start()

    def _block_written(self) -> None:
        """RFC 5321 §4.5.3.2.5: each block must be taken within the data block timeout."""
        self._deadline.set(self._timeouts.data_block)

    def _stop_streaming(self) -> None:
        streamer, self._streamer = self._streamer, None
        if streamer is not None:
            streamer.stopProducing()

    # -- timers ------------------------------------------------------------------------------

    def _rearm(self) -> None:
        """Time the wait the session is in now (a streamer keeps its own timer)."""
        if self._hanging_up or self._streamer is not None or not self._connected:
            return
        seconds = self.session.timeout
        if seconds is None:
            self._deadline.cancel()
        else:
            self._deadline.set(seconds)

    def _timed_out(self) -> None:
        if self._hanging_up:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._perform(self.session.timed_out())


class SMTPConnection:
    """One connection to one server; several messages may be sent over it, one after another."""

    def __init__(self, protocol: SMTPClientProtocol) -> None:
        self._protocol = protocol
        self.remote_host: str = protocol.session.remote_host

    @property
    def tls(self) -> str | None:
        """The TLS version and cipher ("TLSv1.3 with cipher ..."), None without TLS."""
        return self._protocol.session.tls

    @property
    def capabilities(self) -> Capabilities:
        return self._protocol.session.capabilities

    @property
    def usable(self) -> bool:
        """False once the connection failed or closed: the caller opens another."""
        return self._protocol.usable

    def send(self, message: OutboundMessage) -> Deferred[list[RecipientResult]]:
        """Send ``message``; fires with one result per recipient, in order. Never fails:
        trouble of any kind becomes TRANSIENT or PERMANENT results. A message sent while
        another is under way waits for it."""
        return self._protocol.send(message)

    def close(self) -> Deferred[None]:
        """QUIT once the messages given are sent, and close; never fails."""
        return self._protocol.close()
