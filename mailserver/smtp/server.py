"""Twisted glue for the SMTP server: bytes in, session outcomes carried out, replies out.

The protocol owns the connection's byte stream and nothing else. It splits command lines
(never letting one grow past the limit), switches to content mode when the session asks,
runs the look-ups and deliveries the session asks for, and keeps pipelined input waiting
(with the transport paused once a little has piled up) until each one is answered, so replies
always go out in command order (RFC 2920). It also starts TLS (STARTTLS, throwing away any
input that came with the command), checks logins through the shared :class:`LoginChecker`, and
looks up whether addresses belong to the authenticated user, all as the session asks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver import durable, events
from mailserver.deadline import Deadline
from mailserver.interfaces import IMailStore, IUserDatabase, RecipientLookup, StorageFull
from mailserver.limits import Admission, ConnectionLimiter
from mailserver.lineserver import LineServerProtocol, WireReply
from mailserver.logins import LoginChecker
from mailserver.queue.record import QueueRecord
from mailserver.smtp import replies
from mailserver.smtp.data import ContentInspector, DotDecoder
from mailserver.smtp.replies import Reply
from mailserver.smtp.session import (
    MAX_COMMAND_LINE,
    Authenticate,
    CheckOwnership,
    CheckRecipient,
    ClientInfo,
    Close,
    Deliver,
    Outcome,
    ReceiveContent,
    Security,
    SessionPolicy,
    SMTPSession,
    StartTLS,
    Transaction,
    refusal,
)
from mailserver.spool import Spool
from mailserver.tcp import PLAINTEXT_POLICIES, is_ip_address, plaintext_allowed
from mailserver.tls import describe_connection

if TYPE_CHECKING:  # built by the composition root only when configured
    from mailserver.authcheck import InboundCheck, InboundChecks
    from mailserver.authresults import ForgedResultsFilter
    from mailserver.dkim import Signer, SigningTable

log = Logger()


@dataclass(frozen=True)
class Timeouts:
    command: float  # to receive each complete command line
    data: float  # of silence while message content is arriving


def new_message_id() -> str:
    return secrets.token_hex(8).upper()


class SMTPServerFactory(Factory):
    """Everything one SMTP listener set shares: policy, storage, limits, clock, and for
    STARTTLS and AUTH the certificate, the plaintext-password policy and the login checker;
    the SPF/DKIM/DMARC checks of mail from other servers, and the DKIM keys of our users' mail.

    Implicit TLS (RFC 8314) needs nothing here: the composition root wraps this factory in a
    TLS one, and the session starts out encrypted.
    """

    def __init__(
        self,
        policy: SessionPolicy,
        timeouts: Timeouts,
        users: IUserDatabase,
        store: IMailStore,
        spool_directory: Path,
        limiter: ConnectionLimiter,
        reactor: IReactorTime,
        tls: IOpenSSLServerConnectionCreator | None = None,
        logins: LoginChecker | None = None,
        plaintext_auth: str = "never",
        checks: InboundChecks | None = None,
        signing: SigningTable | None = None,
    ) -> None:
        if policy.auth and logins is None:
            raise ValueError("a policy offering AUTH needs a login checker")
        if plaintext_auth not in PLAINTEXT_POLICIES:
            raise ValueError(f"plaintext_auth must be one of {PLAINTEXT_POLICIES}")
        self.tls = tls
        self.logins = logins
        self.plaintext_auth = plaintext_auth
        self.policy = policy
        self.timeouts = timeouts
        self.users = users
        self.store = store
        self.spool_directory = spool_directory
        self.limiter = limiter
        self.reactor = reactor
        self.checks = checks
        self.signing = signing

    def buildProtocol(self, addr: object) -> SMTPServerProtocol:
        return SMTPServerProtocol(self)


class _Content:
    """A message being received (across BDAT chunks): its spool and inspector, and how the
    octets now arriving are framed: dot-stuffed DATA (``decoder``) or a counted chunk.

    On its way to the spool the content passes the inbound checks or the DKIM signer (which
    see it as the client sent it), then the filter of forged Authentication-Results fields.
    """

    def __init__(
        self,
        spool: Spool | None,
        max_size: int,
        keep_header: bool = False,
        check: InboundCheck | None = None,
        signer: Signer | None = None,
        checks: InboundChecks | None = None,
    ) -> None:
        self.spool = spool
        self.write_error: OSError | None = None
        self.check = check
        self.signer = signer
        self.results_filter: ForgedResultsFilter | None = (
            checks.results_filter(self.write) if checks is not None and spool else None
        )
        self._store_sink = self.results_filter.feed if self.results_filter else self.write
        self.inspector = ContentInspector(
            self._pass_on if spool else _discard, max_size, keep_header=keep_header
        )
        self.decoder: DotDecoder | None = None
        self.local_headers = 0  # octets at the start for local copies only
        self.chunk_remaining = 0
        self.last = True
        self.discard_reply: Reply | None = None
        self.receiving = False

    def release(self) -> None:
        if self.check is not None:
            self.check.cancel()
        if self.spool is not None:
            self.spool.discard()

    def _pass_on(self, data: bytes) -> None:
        if self.check is not None:
            self.check.feed(data)
        if self.signer is not None:
            self.signer.feed(data)
        self._store_sink(data)

    def end(self) -> None:
        """All content has arrived: let the filter decide on what it still holds."""
        if self.results_filter is not None:
            self.results_filter.end()

    def write(self, data: bytes) -> None:
        """Spool the content; after a write error (disk full, say) read on and discard, so
        the client still gets its reply at the end of the message."""
        if self.write_error is not None or self.spool is None:
            return
        try:
            self.spool.write(data)
        except OSError as error:
            self.write_error = error
            self.spool.discard()


def _discard(data: bytes) -> None:
    """Sink for content that is read only to be thrown away."""


class SMTPServerProtocol(LineServerProtocol):
    def __init__(self, factory: SMTPServerFactory) -> None:
        super().__init__(factory.limiter, factory.reactor)
        self.factory = factory
        self._content: _Content | None = None
        self._deadline = Deadline(factory.reactor, self._timed_out)
        self._login_check: Deferred[str | None] | None = None
        self.session: SMTPSession | None = None

    @property
    def line_limit(self) -> int:  # type: ignore[override]
        return self._session.line_limit if self.session is not None else MAX_COMMAND_LINE

    # -- connection life ----------------------------------------------------------------

    def refusal(self, admission: Admission) -> Reply:
        if admission is Admission.TOO_MANY_FROM_CLIENT:
            return replies.TOO_MANY_CONNECTIONS
        return replies.SERVER_BUSY

    def connection_admitted(self, peer: object) -> None:
        factory = self.factory
        encrypted = ISSLTransport.providedBy(self.transport)
        self.session = SMTPSession(
            factory.policy,
            ClientInfo(self._client, int(getattr(peer, "port", 0))),
            now=factory.reactor.seconds,
            new_id=new_message_id,
            security=Security(
                encrypted=encrypted,
                starttls=factory.tls is not None,
                plaintext_auth=plaintext_allowed(factory.plaintext_auth, peer),
            ),
        )
        self.send(self.session.greeting())
        self._arm_timer(factory.timeouts.command)

    def tls_established(self) -> None:
        if self.session is not None:
            self.session.tls_started(describe_connection(self.transport))

    def connection_released(self) -> None:
        self._cancel_timer()
        if self._login_check is not None:
            self._login_check.cancel()
        if self._content is not None:
            # Not yet handed to the store (delivery takes it over before waiting).
            self._content.release()
        self._content = None

    def input_arrived(self) -> None:
        if self._receiving and not self._waiting:
            self._arm_timer(self.factory.timeouts.data)

    def bug_reply(self) -> Reply:
        return replies.LOCAL_ERROR

    @property
    def _receiving(self) -> bool:
        return self._content is not None and self._content.receiving

    # -- the input loop -----------------------------------------------------------------

    def input_pending(self) -> bool:
        # A chunk of zero octets (RFC 3030 §2: "BDAT 0 LAST") is complete with no input.
        content = self._content
        return bool(self._buffer) or (
            content is not None
            and content.receiving
            and content.decoder is None
            and content.chunk_remaining == 0
        )

    def input_step(self) -> bool:
        content = self._content
        if content is None or not content.receiving:
            return self.next_line()
        if content.decoder is not None:
            self._feed_data(content, content.decoder)
        else:
            self._feed_chunk(content)
        return True

    def line_too_long(self) -> None:
        self._perform(self._session.line_too_long())

    def line_received(self, line: bytes) -> None:
        self._arm_timer(self.factory.timeouts.command)
        self._perform(self._session.handle_line(line))
        self._drop_abandoned_content()

    def _drop_abandoned_content(self) -> None:
        """Release the content of a transaction that ended without delivery: RSET or EHLO
        between BDAT chunks, or a refusal after the last one."""
        if (
            self._content is not None
            and not self._content.receiving
            and self._session.transaction is None
        ):
            self._content.release()
            self._content = None

    def _feed_data(self, content: _Content, decoder: DotDecoder) -> None:
        data = bytes(self._buffer)
        del self._buffer[:]
        rest = decoder.feed(data)
        if rest is not None:
            self._buffer[:0] = rest
            self._content_finished(content)
        else:
            self._cut_off_runaway(content)

    def _feed_chunk(self, content: _Content) -> None:
        take = min(content.chunk_remaining, len(self._buffer))
        if take:
            content.inspector.feed(bytes(self._buffer[:take]))
            del self._buffer[:take]
            content.chunk_remaining -= take
        if content.chunk_remaining == 0:
            self._content_finished(content)
        else:
            self._cut_off_runaway(content)

    def _cut_off_runaway(self, content: _Content) -> None:
        """Past twice the size limit (or 2 MiB for a small limit), stop reading an endless
        message, or a refused chunk, and hang up."""
        if content.inspector.size > 2 * max(self.factory.policy.max_message_size, 1024 * 1024):
            self._reject_content(content, replies.MESSAGE_TOO_BIG, self._session.transaction)
            self.close_with(replies.MESSAGE_TOO_BIG)

    def _content_finished(self, content: _Content) -> None:
        content.receiving = False
        content.decoder = None
        if content.discard_reply is not None:
            self._content = None
            self._arm_timer(self.factory.timeouts.command)
            self._perform(self._session.chunk_discarded(content.discard_reply))
            return
        summary = content.inspector.summary()
        transaction = self._session.transaction  # a refusal below ends it
        if content.write_error is not None:
            reply = self._spooling_failed(content, transaction)
            self._arm_timer(self.factory.timeouts.command)
            self._perform(self._session.delivery_finished(reply))
            return
        outcome = self._session.content_received(summary, content.last)
        refused = refusal(outcome)
        if refused is not None:
            self._reject_content(content, refused, transaction)
        self._arm_timer(self.factory.timeouts.command)
        self._perform(outcome)

    def _spooling_failed(self, content: _Content, transaction: Transaction | None) -> Reply:
        """Our trouble, never the client's: 452 for a full disk, else 451."""
        assert content.write_error is not None
        reply = (
            replies.INSUFFICIENT_STORAGE
            if durable.is_full(content.write_error)
            else replies.LOCAL_ERROR
        )
        log.error("spooling failed: {error}", error=content.write_error)
        self._reject_content(content, reply, transaction)
        return reply

    def _reject_content(
        self, content: _Content, reply: Reply, transaction: Transaction | None
    ) -> None:
        self._log_rejection(reply, transaction)
        content.release()
        self._content = None

    def _log_rejection(
        self,
        reply: Reply,
        transaction: Transaction | None,
        recipient: str | None = None,
        sender: str | None = None,
        detail: str = "",
    ) -> None:
        if transaction is not None:
            sender = str(transaction.sender or "")
        events.message_rejected(
            id=transaction.id if transaction else None,
            client=self._client,
            sender=sender,
            recipient=recipient,
            code=reply.code,
            enhanced=reply.enhanced,
            reason=reply.text + detail,
        )

    # -- carrying out outcomes ------------------------------------------------------------

    def _perform(self, outcome: Outcome) -> None:
        if isinstance(outcome, Reply):
            self.send(outcome)
        elif isinstance(outcome, Close):
            self.close_with(outcome.reply)
        elif isinstance(outcome, CheckRecipient):
            self._check_recipient(outcome)
        elif isinstance(outcome, ReceiveContent):
            self._receive_content(outcome)
        elif isinstance(outcome, Deliver):
            self._deliver(outcome)
        elif isinstance(outcome, StartTLS):
            assert self.factory.tls is not None
            self.start_tls(outcome.reply, self.factory.tls)
        elif isinstance(outcome, Authenticate):
            self._authenticate(outcome)
        elif isinstance(outcome, CheckOwnership):
            self._check_ownership(outcome)

    def _authenticate(self, action: Authenticate) -> None:
        logins = self.factory.logins
        assert logins is not None
        check = logins.check("smtp", self._client, action.credentials)
        self._login_check = check

        def checked(address: str | None) -> Outcome:
            self._login_check = None
            return self._session.authenticated(address)

        def failed(failure: Failure) -> Outcome | None:
            self._login_check = None
            if failure.check(CancelledError):
                return None  # the client went away while its login was delayed
            log.failure("checking SMTP credentials failed", failure)
            return self._session.authentication_unavailable()

        self._wait_for(check.addCallbacks(checked, failed))

    def _check_ownership(self, action: CheckOwnership) -> None:
        users = self.factory.users
        transaction = self._session.transaction
        lookups: Deferred[list[RecipientLookup]] = gatherResults(
            [users.resolve_recipient(address) for address in action.addresses],
            consumeErrors=True,
        )

        def checked(results: list[RecipientLookup]) -> Outcome:
            outcome = self._session.ownership_checked(results)
            refused = refusal(outcome)
            if refused is not None:
                # Without a transaction it was the envelope sender that was checked.
                self._log_rejection(
                    refused,
                    transaction,
                    sender=str(action.addresses[0]),
                    detail=f": {', '.join(map(str, action.addresses))}",
                )
            self._drop_abandoned_content()
            return outcome

        def failed(failure: Failure) -> Outcome:
            if isinstance(failure.value, FirstError):
                failure = failure.value.subFailure  # the look-up's own error, for the log
            log.failure("looking up the user's addresses failed", failure)
            outcome = self._session.ownership_unavailable()
            self._drop_abandoned_content()
            return outcome

        work: Deferred[Outcome] = lookups.addCallbacks(checked, failed)
        self._wait_for(work)

    def _check_recipient(self, action: CheckRecipient) -> None:
        def checked(lookup: RecipientLookup) -> Outcome:
            outcome = self._session.recipient_checked(lookup)
            refused = refusal(outcome)
            if refused is not None:
                self._log_rejection(
                    refused, self._session.transaction, recipient=str(action.recipient)
                )
            return outcome

        def failed(failure: Failure) -> Outcome:
            log.failure(
                "recipient look-up failed for {recipient}", failure, recipient=str(action.recipient)
            )
            return self._session.recipient_unavailable()

        self._wait_for(
            self.factory.users.resolve_recipient(action.recipient).addCallbacks(checked, failed)
        )

    def _receive_content(self, action: ReceiveContent) -> None:
        if action.reply is not None:
            self.send(action.reply)
        content = self._content
        if action.discard is not None:
            content = _Content(None, 0)
            content.discard_reply = action.discard
        elif content is None:
            content = self._new_content(action)
            content.write(action.trace_headers)
            content.local_headers = action.local_headers
        if action.chunk_size is None:
            content.decoder = DotDecoder(content.inspector)
        else:
            content.chunk_remaining = action.chunk_size
            content.last = action.last
        content.receiving = True
        self._content = content
        self._arm_timer(self.factory.timeouts.data)

    def _new_content(self, action: ReceiveContent) -> _Content:
        """A spool for the message, with the checks for mail from other servers or the DKIM
        signer for our users' mail."""
        factory = self.factory
        checks, signing = factory.checks, factory.signing
        transaction = self._session.transaction
        check = signer = None
        if action.authenticated:
            if signing is not None:
                signer = signing.signer()
        elif checks is not None and transaction is not None and is_ip_address(self._client):
            # A UNIX socket client has no address for SPF to judge.
            check = checks.start(
                self._client, self._session.helo or "", str(transaction.sender or "")
            )
        return _Content(
            Spool(factory.spool_directory),
            action.max_size,
            action.keep_header,
            check=check,
            signer=signer,
            checks=checks,
        )

    def _deliver(self, action: Deliver) -> None:
        content = self._content
        assert content is not None and content.spool is not None
        self._content = None
        content.end()
        if content.write_error is not None:  # in what the filter held back to the end
            reply = self._spooling_failed(content, action.transaction)
            self.send(self._session.delivery_finished(reply))
            return
        if content.check is not None:
            self._wait_for(Deferred.fromCoroutine(self._checked(action.transaction, content)))
            return
        if content.signer is not None:
            fields = content.signer.signature_fields(int(self.factory.reactor.seconds()))
            content.spool.insert(content.local_headers, fields)
        self._wait_for(self._store(action.transaction, content))

    async def _checked(self, transaction: Transaction, content: _Content) -> Outcome:
        """Wait for the checks' verdict; refuse the message, or store it with its
        Authentication-Results field."""
        assert content.check is not None and content.spool is not None
        try:
            verdict = await content.check.verdict()
        except Exception:
            log.failure("checking message {id} failed", id=transaction.id)
            content.release()
            return self._session.delivery_finished(replies.LOCAL_ERROR)
        if self._closing:
            # The client is gone without a reply: it will send again, so keep no copy.
            content.release()
            return replies.LOCAL_ERROR
        events.message_checked(id=transaction.id, results=verdict.summary())
        if verdict.refusal is not None:
            self._log_rejection(verdict.refusal, transaction)
            content.release()
            return self._session.delivery_finished(verdict.refusal)
        content.spool.insert(content.local_headers, verdict.header)
        return await self._store(transaction, content)

    def _store(self, transaction: Transaction, content: _Content) -> Deferred[Reply]:
        assert content.spool is not None
        size = content.inspector.size
        events.message_received(
            id=transaction.id,
            client=self._client,
            helo=self._session.helo,
            sender=str(transaction.sender or ""),
            recipients=[str(r) for r in transaction.recipients],
            size=size,
        )
        queued = None
        if transaction.remote or transaction.notify_delivered:
            queued = QueueRecord.for_transaction(
                id=transaction.id,
                sender=str(transaction.sender or ""),
                recipients=transaction.remote,
                delivered=transaction.notify_delivered,
                created=self.factory.reactor.seconds(),
                size=content.spool.size,
                body_8bit=transaction.body_8bit,
                # RFC 6531 §3.2: only a message that really is internationalised must find a
                # server with SMTPUTF8; a client asking for the extension is not enough.
                smtputf8=transaction.smtputf8
                and (
                    content.inspector.header_8bit
                    or not all(r.address.isascii() for r in transaction.remote)
                    or not (transaction.sender is None or transaction.sender.is_ascii)
                ),
                envid=transaction.envid,
                ret=transaction.ret,
                offset=content.local_headers,
            )

        def delivered(name: str) -> Reply:
            if transaction.mailboxes:
                events.message_delivered(
                    id=transaction.id, mailboxes=transaction.mailboxes, size=size, name=name
                )
            if queued is not None:
                events.message_queued(
                    id=transaction.id, recipients=[r.address for r in transaction.remote]
                )
            return self._session.delivery_finished(None)

        def failed(failure: Failure) -> Reply:
            if failure.check(StorageFull):
                reply = replies.INSUFFICIENT_STORAGE
            else:
                reply = replies.LOCAL_ERROR
                log.failure("delivery of {id} failed", failure, id=transaction.id)
            events.delivery_failed(
                id=transaction.id,
                mailboxes=transaction.mailboxes,
                code=reply.code,
                reason=failure.getErrorMessage(),
            )
            return self._session.delivery_finished(reply)

        return self.factory.store.deliver(
            content.spool, transaction.mailboxes, queued
        ).addCallbacks(delivered, failed)

    def _wait_for(
        self, work: Deferred[Outcome] | Deferred[Reply] | Deferred[Outcome | None]
    ) -> None:
        """Hold the input loop until ``work`` gives the next outcome, then carry it out."""
        self._cancel_timer()
        self.wait_for(work, self._resume)

    def _resume(self, outcome: Outcome | None) -> None:
        self._arm_timer(
            self.factory.timeouts.data if self._content else self.factory.timeouts.command
        )
        if outcome is not None:
            self._perform(outcome)

    # -- output, timers, flow control ------------------------------------------------------

    @property
    def _session(self) -> SMTPSession:
        assert self.session is not None
        return self.session

    def close_with(self, reply: WireReply) -> None:
        self._cancel_timer()
        super().close_with(reply)

    def _arm_timer(self, seconds: float) -> None:
        self._deadline.set(seconds)

    def _cancel_timer(self) -> None:
        self._deadline.cancel()

    def _timed_out(self) -> None:
        content = self._content
        if content is not None:
            self._reject_content(content, replies.TIMEOUT, self._session.transaction)
        self.close_with(replies.TIMEOUT)
