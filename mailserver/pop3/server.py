"""Twisted glue for the POP3 server: bytes in, session outcomes carried out, replies out.

The protocol owns the connection's byte stream and nothing else. It splits lines (never
letting one grow past the session's limit: 255 octets for a command, RFC 2449 §4), runs the
work the session asks for (starting TLS, throttled credential checks through the
:class:`~mailserver.logins.LoginChecker` shared with SMTP, opening the mailbox, streaming a
message, applying the deletions) and keeps pipelined commands waiting, with reading paused
once a little has piled up, until each one is answered, so replies go out in command order
(RFC 2449 §6.6). Every reply is written whole in one ``write``, multi-line listings too, and
Nagle's algorithm is off, so a reply leaves at once.

RETR and TOP: a message listed as shorter than one chunk (:data:`CHUNK_SIZE`; most mail) is
read at once, in the reactor thread like every chunk, and goes out in a single write
together with its status line and the terminating "."; a larger one streams through
:class:`MessageStreamer` chunk by chunk as the client reads. On a plain TCP connection a
reply is handed to the kernel at once (:func:`~mailserver.lineserver.write_now`), so a small
RETR costs one read from the client, one file read and one send, all in one turn of the
reactor.

Memory stays flat whatever the message size and however slow the reader: the protocol is its
transport's producer for the whole connection, so once the transport holds more unsent output
than it wants, no further command is taken (and a streaming message pauses) until the client
has read some. A client that pipelines RETRs and never reads gets its replies one
transport buffer at a time.

A dropped connection, an idle timeout or a crash never reaches the UPDATE state: the mailbox
is released without change (RFC 1939 §6). Only QUIT applies deletions.

TLS comes two ways. On an ``ssl:`` listener the composition root wraps the factory in
``TLSMemoryBIOFactory``, so the transport is already TLS when the connection is made and the
session starts encrypted (RFC 8314). On a plain listener whose factory has a certificate,
STLS switches over (RFC 2595 §4) through :meth:`LineServerProtocol.start_tls`.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IOpenSSLServerConnectionCreator,
    IProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver.deadline import Deadline
from mailserver.interfaces import (
    IMailbox,
    IMailboxStore,
    MailboxInUse,
    MailboxUnavailable,
    MessageGone,
)
from mailserver.limits import Admission, ConnectionLimiter
from mailserver.lineserver import LineServerProtocol, WireReply, write_now
from mailserver.logins import LoginChecker
from mailserver.pop3 import replies
from mailserver.pop3.replies import Reply
from mailserver.pop3.session import (
    Authenticate,
    Close,
    Commit,
    OpenMailbox,
    Outcome,
    POP3Session,
    SendMessage,
    SessionPolicy,
    StartTLS,
)
from mailserver.pop3.stuffing import encoder_for
from mailserver.streaming import CHUNK_SIZE, MessageStreamer
from mailserver.tcp import PLAINTEXT_POLICIES, plaintext_allowed

log = Logger()


class POP3ServerFactory(Factory):
    """Everything the POP3 listeners share: policy, storage, limits, login checks, clock, and
    the TLS certificate (None: no STLS)."""

    def __init__(
        self,
        policy: SessionPolicy,
        idle_timeout: float,
        plaintext_auth: str,
        store: IMailboxStore,
        limiter: ConnectionLimiter,
        logins: LoginChecker,
        reactor: IReactorTime,
        tls: IOpenSSLServerConnectionCreator | None = None,
    ) -> None:
        if plaintext_auth not in PLAINTEXT_POLICIES:
            raise ValueError(f"plaintext_auth must be one of {PLAINTEXT_POLICIES}")
        self.policy = policy
        self.idle_timeout = idle_timeout
        self.plaintext_auth = plaintext_auth
        self.store = store
        self.limiter = limiter
        self.logins = logins
        self.reactor = reactor
        self.tls = tls

    def buildProtocol(self, addr: object) -> POP3ServerProtocol:
        return POP3ServerProtocol(self)


class POP3ServerProtocol(LineServerProtocol):
    def __init__(self, factory: POP3ServerFactory) -> None:
        super().__init__(factory.limiter, factory.reactor)
        self.factory = factory
        self._idle = Deadline(factory.reactor, self._idle_expired)
        self._login_check: Deferred[str | None] | None = None
        self._mailbox: IMailbox | None = None
        self._committing = False
        self._streamer: MessageStreamer | None = None
        self.session: POP3Session | None = None

    # -- connection life ----------------------------------------------------------------

    @property
    def line_limit(self) -> int:  # type: ignore[override]
        return self._session.line_limit if self.session is not None else 255

    def refusal(self, admission: Admission) -> Reply:
        if admission is Admission.TOO_MANY_FROM_CLIENT:
            return replies.TOO_MANY_CONNECTIONS
        return replies.SERVER_BUSY

    def connection_admitted(self, peer: object) -> None:
        # Implicit TLS (RFC 8314): the transport is the TLS layer itself.
        encrypted = ISSLTransport.providedBy(self.transport)
        self.session = POP3Session(
            self.factory.policy,
            plaintext_allowed(self.factory.plaintext_auth, peer),
            tls_available=self.factory.tls is not None,
            encrypted=encrypted,
        )
        self.flow_controlled()
        self.send(self.session.greeting())
        self._touch()

    def bug_reply(self) -> Reply:
        return replies.LOCAL_ERROR

    def connection_released(self) -> None:
        self._idle.cancel()
        if self._login_check is not None:
            # Stops a throttle wait (or a check) whose answer nobody would read.
            check, self._login_check = self._login_check, None
            check.cancel()
        if self._streamer is not None:
            self._streamer.stopProducing()
            self._streamer = None
        if self._mailbox is not None and not self._committing:
            # RFC 1939 §6: without QUIT there is no UPDATE state; nothing is removed.
            self._release_mailbox()

    # -- the input loop -----------------------------------------------------------------

    def line_too_long(self) -> None:
        # RFC 2449 §4: refused; the rest of the line is dropped up to its end.
        self._perform(self._session.line_too_long())

    def line_received(self, line: bytes) -> None:
        self._touch()
        self._perform(self._session.handle_line(line))

    # -- carrying out outcomes ------------------------------------------------------------

    def _perform(self, outcome: Outcome) -> None:
        if isinstance(outcome, Reply):
            self.send(outcome)
        elif isinstance(outcome, StartTLS):
            assert self.factory.tls is not None  # the session offers STLS only then
            self.start_tls(outcome.reply, self.factory.tls)
        elif isinstance(outcome, SendMessage):
            self._send_message(outcome)
        elif isinstance(outcome, Close):
            self.close_with(outcome.reply)
        elif isinstance(outcome, Authenticate):
            self._authenticate(outcome)
        elif isinstance(outcome, OpenMailbox):
            self._open_mailbox(outcome)
        elif isinstance(outcome, Commit):
            self._commit(outcome)

    def _authenticate(self, action: Authenticate) -> None:
        # The checker waits out the throttle, then checks, authorizes and logs the outcome.
        check = self.factory.logins.check("pop3", self._client, action.credentials)
        self._login_check = check

        def checked(address: str | None) -> Outcome:
            self._login_check = None
            return self._session.authenticated(address)

        def unavailable(failure: Failure) -> Outcome | None:
            self._login_check = None
            if failure.check(CancelledError) and self._closing:
                return None  # we cancelled it: the client has gone
            log.failure("checking POP3 credentials failed", failure)
            return self._session.authentication_unavailable()

        self.wait_for(check.addCallbacks(checked, unavailable), self._resume)

    def _open_mailbox(self, action: OpenMailbox) -> None:
        def opened(mailbox: IMailbox) -> Outcome:
            if self._closing:
                mailbox.close()  # the client left while we were opening it
                return replies.BYE
            self._mailbox = mailbox
            messages = mailbox.messages
            log.info(
                "pop3 mailbox opened address={address} client={client} messages={count}",
                pop3_event="opened",
                address=action.address,
                client=self._client,
                count=len(messages),
            )
            return self._session.mailbox_opened(action.address, messages)

        def failed(failure: Failure) -> Outcome:
            if failure.check(MailboxInUse):
                log.info(
                    "pop3 mailbox in use address={address} client={client}",
                    pop3_event="in-use",
                    address=action.address,
                    client=self._client,
                )
                return self._session.mailbox_in_use()
            log.failure("opening the mailbox of {address} failed", failure, address=action.address)
            return self._session.mailbox_unavailable(
                permanent=failure.check(MailboxUnavailable) is not None
            )

        self._wait_for(self.factory.store.open_mailbox(action.address).addCallbacks(opened, failed))

    def _send_message(self, action: SendMessage) -> None:
        mailbox = self._mailbox
        assert mailbox is not None
        self._waiting = True
        if mailbox.messages[action.index].size < CHUNK_SIZE:
            self._send_small(mailbox, action)
        else:
            self._stream(mailbox, action)

    def _send_small(self, mailbox: IMailbox, action: SendMessage) -> None:
        """One read of up to a chunk: a short read is the whole message (IMailbox), sent
        with its status line and "." in one write. The Maildir store reads at once, so the
        input loop simply goes on; no producer, no turn of the reactor."""

        def read(data: bytes) -> None:
            if self._closing:
                self._waiting = False
            elif len(data) < CHUNK_SIZE:
                encoder = encoder_for(action.top_lines)
                body = encoder.feed(data)
                write_now(
                    self.transport, b"".join((action.reply.to_bytes(), body, encoder.finish()))
                )
                self.stop_waiting(_nothing)
            else:
                self._stream(mailbox, action)  # longer than listed: streamed after all

        def unreadable(failure: Failure) -> None:
            if self._closing:
                self._waiting = False
                return
            unavailable = self._unavailable(action.index, failure)
            self.stop_waiting(lambda: self._resume(unavailable))

        reading = mailbox.read_message(action.index, 0, CHUNK_SIZE)
        reading.addCallbacks(read, unreadable).addErrback(self.work_failed)

    def _stream(self, mailbox: IMailbox, action: SendMessage) -> None:
        """Chunk by chunk through a :class:`MessageStreamer`, which this protocol pauses and
        resumes as the transport asks."""
        index = action.index

        def read(offset: int, size: int) -> Deferred[bytes]:
            return mailbox.read_message(index, offset, size)

        def done(failure: Failure | None) -> None:
            self._streamer = None
            if failure is None:
                self.stop_waiting(lambda: self._resume(None))
            elif self._closing:
                pass
            elif not streamer.started:
                # Nothing sent yet: the client gets -ERR and the session goes on.
                unavailable = self._unavailable(index, failure)
                self.stop_waiting(lambda: self._resume(unavailable))
            else:
                # The status line is out: the only honest way to stop is to hang up.
                log.failure("reading message {index} failed mid-stream", failure, index=index)
                self.abort()

        streamer = MessageStreamer(
            _StreamOutput(self.transport),
            read,
            encoder_for(action.top_lines),
            action.reply.to_bytes(),
            on_progress=self._touch,
            on_done=done,
        )
        self._streamer = streamer
        if self._output_paused:
            streamer.pauseProducing()
        streamer.start()

    def _unavailable(self, index: int, failure: Failure) -> Outcome:
        """The reply for a message whose first read failed (nothing was sent)."""
        gone = failure.check(MessageGone) is not None
        if not gone:
            log.failure("reading message {index} failed", failure, index=index)
        return self._session.message_unavailable(index, gone)

    def _commit(self, action: Commit) -> None:
        mailbox = self._mailbox
        assert mailbox is not None
        self._committing = True
        client = self._client
        address = self._session.address

        def done(_: None) -> Outcome:
            self._release_mailbox()
            log.info(
                "pop3 logout address={address} client={client} deleted={deleted} seen={seen}",
                pop3_event="logout",
                address=address,
                client=client,
                deleted=len(action.deleted),
                seen=len(action.seen),
            )
            return self._session.committed()

        def failed(failure: Failure) -> Outcome:
            self._release_mailbox()
            log.failure("applying the deletions of {address} failed", failure, address=address)
            return self._session.commit_failed()

        # RFC 1939 §6: the client said QUIT, so the deletions happen even if it leaves now.
        self._wait_for(mailbox.commit(action.deleted, action.seen).addCallbacks(done, failed))

    def _release_mailbox(self) -> None:
        mailbox = self._mailbox
        self._mailbox = None
        self._committing = False
        if mailbox is not None:
            mailbox.close()

    def _wait_for(self, work: Deferred[Outcome]) -> None:
        """Hold the input loop until ``work`` gives the next outcome, then carry it out."""
        self.wait_for(work, self._resume)

    def _resume(self, outcome: Outcome | None) -> None:
        if outcome is not None:
            self._touch()
            self._perform(outcome)

    # -- output, timers, flow control ------------------------------------------------------

    def send(self, reply: WireReply) -> None:
        write_now(self.transport, reply.to_bytes())

    def pauseProducing(self) -> None:
        """The transport has more unsent output than it wants: no new command, and the
        message being streamed, if any, waits too."""
        super().pauseProducing()
        if self._streamer is not None:
            self._streamer.pauseProducing()

    def resumeProducing(self) -> None:
        streamer = self._streamer
        super().resumeProducing()
        if streamer is not None:
            streamer.resumeProducing()

    @property
    def _session(self) -> POP3Session:
        assert self.session is not None
        return self.session

    def _touch(self) -> None:
        """Note activity (a command arrived, or a message made progress): RFC 1939 §3's
        autologout timer starts again."""
        self._idle.set(self.factory.idle_timeout)

    def _idle_expired(self) -> None:
        """Close without entering the UPDATE state (RFC 1939 §3)."""
        if self._closing:
            return
        if self._waiting and self._streamer is None:
            self._touch()  # our own work, such as a login delay: not the client's idleness
            return
        log.info("pop3 autologout client={client}", pop3_event="timeout", client=self._client)
        if self._streamer is not None:
            self.abort()  # in the middle of a message: no reply can be sent
        else:
            self.close_with(replies.TIMEOUT)


def _nothing() -> None:
    pass


@implementer(IConsumer)
class _StreamOutput:
    """What a :class:`MessageStreamer` writes to: the connection. The protocol is already the
    transport's producer for the whole connection and passes its pauses and resumes on to the
    streamer, so the streamer's own registration is not needed."""

    def __init__(self, transport: object) -> None:
        self._transport = transport

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        write_now(self._transport, data)
