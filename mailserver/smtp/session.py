"""The SMTP server session (RFC 5321) as a state machine with no I/O.

The glue (:mod:`mailserver.smtp.server`) feeds it command lines and the results of the work
it asked for; every method returns what to do next: a :class:`Reply` to send, or an action for
the glue to carry out (look a recipient up, receive message content, deliver, close).

States and the commands allowed in each are the table ``ALLOWED`` below; a command outside
its states gets the 503 reply that ``OUT_OF_SEQUENCE`` names for the current state (RFC 5321
§4.1.4), except BDAT, whose octets must still be read before it is refused (RFC 3030 §3), and
STARTTLS and AUTH, which are refused during a transaction (RFC 3207 §4, RFC 4954 §4).
RSET, NOOP, QUIT, VRFY and HELP are allowed in every state. EHLO/HELO and RSET end any
transaction. While content is being received the glue feeds no command lines at all.

Security and policy (RFC 3207, RFC 4954, RFC 6409):

- STARTTLS, offered when the listener has a certificate and the connection is not yet
  encrypted, sends the session back to GREETED with everything learnt from the client
  forgotten (RFC 3207 §4.2); the glue throws away any input that came with it.
- AUTH (SASL PLAIN and LOGIN) is offered only where the listener takes submissions, and only
  inside TLS unless plaintext logins are allowed on this connection (then 538). While a SASL
  exchange is under way, the next line is the client's response, not a command.
- A submission listener requires AUTH before MAIL (530). An authenticated user may send only
  from addresses that deliver to their own mailbox (their address, aliases, subaddresses),
  checked for the envelope sender at MAIL and, if the policy says so, for the From header at
  the end of the data; and may send to any domain. Without authentication, mail is accepted
  only for our own domains: never a relay. Authenticated users' mail for other domains goes
  to the outbound queue.

DSN (RFC 3461): RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT are checked here and carried
with the transaction into the queue.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate

from mailserver import sasl, xtext
from mailserver.address import AddressError, Mailbox, parse_address_literal, parse_path
from mailserver.interfaces import Lookup, OutboundRecipient, RecipientLookup
from mailserver.sasl import Credentials
from mailserver.smtp import replies
from mailserver.smtp.data import AuthorError, ContentSummary, authors_of
from mailserver.smtp.replies import Reply

# Octets including CRLF: RFC 5321 §4.5.3.1.4's 512, raised by the 500 that RFC 3461 §5 adds for
# ORCPT (which also covers its 100 for ENVID and RFC 4954 §5's 500 for AUTH= on MAIL).
MAX_COMMAND_LINE = 512 + 500
MAX_AUTH_LINE = 12288  # octets including CRLF, RFC 4954 §4
MAX_ENVID = 100  # RFC 3461 §4.4
MAX_ORCPT = 500  # RFC 3461 §4.2
NOTIFY_CONDITIONS = frozenset({"SUCCESS", "FAILURE", "DELAY"})

# HELO/EHLO argument: a domain (underscores tolerated, as real clients send them) or literal.
_HELO_DOMAIN = re.compile(
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*"
)
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


class State(enum.Enum):
    GREETED = "greeted"  # connected, no EHLO/HELO yet
    READY = "ready"  # greeted, no transaction
    MAIL = "mail"  # MAIL accepted, no recipient accepted yet
    RCPT = "rcpt"  # at least one recipient accepted
    BDAT = "bdat"  # BDAT chunks arriving, the LAST one not yet
    CLOSED = "closed"


_HELLO_STATES = frozenset({State.GREETED, State.READY, State.MAIL, State.RCPT})
_ANYTIME = frozenset(State) - {State.CLOSED}
ALLOWED: dict[str, frozenset[State]] = {
    "EHLO": _HELLO_STATES,
    "HELO": _HELLO_STATES,
    "MAIL": frozenset({State.READY}),
    "RCPT": frozenset({State.MAIL, State.RCPT}),
    "DATA": frozenset({State.MAIL, State.RCPT}),  # in MAIL: 554, RFC 2920 §3.1
    "BDAT": frozenset({State.MAIL, State.RCPT, State.BDAT}),
    "STARTTLS": frozenset({State.READY}),
    "AUTH": frozenset({State.READY}),
}
OUT_OF_SEQUENCE: dict[State, Reply] = {
    State.GREETED: replies.NEED_HELO,
    State.READY: replies.NEED_MAIL,
    State.MAIL: replies.NESTED_MAIL,
    State.RCPT: replies.NESTED_MAIL,
    State.BDAT: replies.BDAT_IN_PROGRESS,
}
_REFUSED_IN_TRANSACTION = frozenset({"STARTTLS", "AUTH"})


@dataclass(frozen=True)
class SessionPolicy:
    """Limits and identity for one listener; built from the configuration."""

    hostname: str
    max_message_size: int
    max_recipients: int
    max_received_headers: int
    max_errors: int
    postmaster: str  # where "<Postmaster>" without a domain goes (§4.1.1.3)
    auth: bool = False  # AUTH offered: the listener takes submissions from our users
    auth_required: bool = False  # RFC 6409 §4: a submission listener, MAIL only after AUTH
    check_from_header: bool = True  # authenticated users' From addresses must be theirs
    max_auth_failures: int = 3  # failed AUTH on one connection before it is closed


@dataclass(frozen=True)
class ClientInfo:
    address: str  # IP address as text
    port: int


@dataclass(frozen=True)
class Security:
    """What the connection offers for encryption and logins."""

    encrypted: bool = False  # TLS from the first octet (implicit TLS, RFC 8314)
    starttls: bool = False  # the listener has a certificate for STARTTLS
    plaintext_auth: bool = False  # passwords may be sent without TLS on this connection


@dataclass
class Transaction:
    """One mail transaction: MAIL, its accepted recipients, then content."""

    id: str
    sender: Mailbox | None
    smtputf8: bool
    body_8bit: bool
    recipients: list[Mailbox] = field(default_factory=list)
    mailboxes: list[str] = field(default_factory=list)
    remote: list[OutboundRecipient] = field(default_factory=list)  # for the outbound queue
    # Local recipients whose sender asked to hear of their delivery (RFC 3461 NOTIFY=SUCCESS):
    # the queue sends those "delivered" notices, once the local copies are stored.
    notify_delivered: list[OutboundRecipient] = field(default_factory=list)
    ret: str | None = None  # RFC 3461 §4.3
    envid: str | None = None  # RFC 3461 §4.4, decoded

    def add_mailboxes(self, mailboxes: tuple[str, ...]) -> None:
        for mailbox in mailboxes:
            if mailbox not in self.mailboxes:
                self.mailboxes.append(mailbox)


# Actions for the glue.
@dataclass(frozen=True)
class CheckRecipient:
    """Look ``recipient`` up, then call :meth:`SMTPSession.recipient_checked`."""

    recipient: Mailbox


@dataclass(frozen=True)
class ReceiveContent:
    """Send ``reply`` (354, or nothing for BDAT), then receive message content.

    ``trace_headers`` go first into the stored message; its first ``local_headers`` octets
    (Return-Path, Delivered-To) belong to local copies only and are not sent on to other
    servers (RFC 5321 §4.4: Return-Path is added at final delivery). With ``chunk_size`` None
    the content
    is dot-stuffed and ends at CRLF.CRLF (DATA); otherwise exactly ``chunk_size`` octets
    follow (BDAT), and ``last`` says whether this chunk ends the message. ``discard`` asks for
    the octets to be read and thrown away (a BDAT that must be refused once read, RFC 3030 §3).
    """

    reply: Reply | None
    trace_headers: bytes
    max_size: int
    chunk_size: int | None = None
    last: bool = True
    discard: Reply | None = None
    keep_header: bool = False  # the session will need the header section (From check)
    local_headers: int = 0
    authenticated: bool = False  # from a logged-in user: to be signed, not checked


@dataclass(frozen=True)
class StartTLS:
    """Send ``reply``, throw away any input already received, and start TLS."""

    reply: Reply


@dataclass(frozen=True)
class Authenticate:
    """Check the credentials, then call :meth:`SMTPSession.authenticated`."""

    credentials: Credentials


@dataclass(frozen=True)
class CheckOwnership:
    """Look each address up as a recipient, then call :meth:`SMTPSession.ownership_checked`
    with the results in the same order."""

    addresses: tuple[Mailbox, ...]


@dataclass(frozen=True)
class Deliver:
    """Store the received message for ``transaction.mailboxes``, then call
    :meth:`SMTPSession.delivery_finished`."""

    transaction: Transaction


@dataclass(frozen=True)
class Close:
    """Send ``reply`` and close the connection."""

    reply: Reply


Outcome = (
    Reply
    | CheckRecipient
    | ReceiveContent
    | Deliver
    | Close
    | StartTLS
    | Authenticate
    | CheckOwnership
)


def refusal(outcome: Outcome) -> Reply | None:
    """The error reply an outcome carries, if it refuses something."""
    if isinstance(outcome, Close):
        return outcome.reply
    if isinstance(outcome, Reply) and outcome.is_error:
        return outcome
    return None


class SMTPSession:
    """Protocol state of one SMTP connection; see the module docstring for the table."""

    def __init__(
        self,
        policy: SessionPolicy,
        client: ClientInfo,
        now: Callable[[], float],
        new_id: Callable[[], str],
        security: Security = Security(),
    ) -> None:
        self.policy = policy
        self.client = client
        self._now = now
        self._new_id = new_id
        self.state = State.GREETED
        self.helo: str | None = None
        self.esmtp = False
        self.transaction: Transaction | None = None
        self.encrypted = security.encrypted
        self.tls_description: str | None = None  # for the Received header, set by the glue
        self.user: str | None = None  # the mailbox address authenticated as
        self._starttls = security.starttls
        self._plaintext_auth = security.plaintext_auth
        self._errors = 0
        self._auth_failures = 0
        self._exchange: sasl.Exchange | None = None  # SASL exchange waiting for a response
        self._pending_recipient: Mailbox | None = None
        self._pending_dsn: tuple[frozenset[str] | None, str | None] = (None, None)
        self._pending_sender: Transaction | None = None  # MAIL waiting for CheckOwnership
        self._checking_authors = False
        self._content_started = False

    # -- entry points -------------------------------------------------------------------

    def greeting(self) -> Reply:
        return replies.GREETING.with_text(f"{self.policy.hostname} ESMTP ready")

    @property
    def line_limit(self) -> int:
        """Longest line accepted now, CRLF included."""
        return MAX_AUTH_LINE if self._exchange is not None else MAX_COMMAND_LINE

    def handle_line(self, line: bytes) -> Outcome:
        """Handle one command line (or SASL response), without its line ending."""
        if len(line) + 2 > self.line_limit:
            return self.line_too_long()
        if self._exchange is not None:
            return self._sasl_response(line)
        if b"\r" in line or b"\n" in line:
            return self._error(replies.BARE_LINE_ENDING_IN_COMMAND)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(replies.SYNTAX_ERROR.with_text("Command is not valid UTF-8"))
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        handler = self._HANDLERS.get(verb)
        if handler is None:
            return self._error(replies.UNRECOGNIZED_COMMAND)
        if self.state not in ALLOWED.get(verb, _ANYTIME):
            refusal = OUT_OF_SEQUENCE[self.state]
            if verb == "BDAT":
                return self._refuse_chunk(argument, refusal)
            if verb in _REFUSED_IN_TRANSACTION and self.state is not State.GREETED:
                refusal = replies.IN_TRANSACTION
            return self._error(refusal)
        return handler(self, argument)

    def line_too_long(self) -> Outcome:
        """The glue saw a line longer than :attr:`line_limit` (§4.5.3.1.4, RFC 4954 §4)."""
        if self._exchange is not None:
            self._exchange = None
            return self._error(replies.AUTH_LINE_TOO_LONG)
        return self._error(replies.LINE_TOO_LONG)

    def tls_started(self, description: str | None) -> None:
        """The TLS handshake is done; ``description`` names the version and cipher."""
        self.encrypted = True
        self.tls_description = description

    def authenticated(self, address: str | None) -> Outcome:
        """The credentials of the pending :class:`Authenticate` log in to ``address``, or to
        nobody (None): the same reply for an unknown user as for a wrong password."""
        if address is not None:
            self.user = address
            return replies.AUTHENTICATED
        self._auth_failures += 1
        if self._auth_failures >= self.policy.max_auth_failures:
            self.state = State.CLOSED
            return Close(replies.TOO_MANY_AUTH_FAILURES)
        return replies.AUTH_FAILED

    def authentication_unavailable(self) -> Reply:
        """Checking the credentials failed on our side (RFC 4954 §6: 454)."""
        return replies.AUTH_UNAVAILABLE

    def ownership_checked(self, lookups: Sequence[RecipientLookup]) -> Outcome:
        """The results of :class:`CheckOwnership`: an address is the user's when mail to it
        reaches the user's own mailbox."""
        owned = all(
            lookup.outcome is Lookup.DELIVER and self.user in lookup.mailboxes for lookup in lookups
        )
        if self._checking_authors:
            self._checking_authors = False
            transaction = self.transaction
            assert transaction is not None
            if owned:
                return Deliver(transaction)
            self._end_transaction()
            return self._error(replies.AUTHOR_NOT_OWNED)
        transaction = self._pending_sender
        assert transaction is not None
        self._pending_sender = None
        if not owned:
            return self._error(replies.SENDER_NOT_OWNED)
        return self._begin(transaction)

    def ownership_unavailable(self) -> Reply:
        """Looking the addresses of :class:`CheckOwnership` up failed on our side."""
        if self._checking_authors:
            self._checking_authors = False
            self._end_transaction()
        self._pending_sender = None
        return replies.LOCAL_ERROR

    def recipient_checked(self, lookup: RecipientLookup) -> Outcome:
        recipient = self._pending_recipient
        transaction = self.transaction
        assert recipient is not None and transaction is not None
        self._pending_recipient = None
        if lookup.outcome is Lookup.DELIVER:
            notify, orcpt = self._pending_dsn
            # A success notice only for our own users' mail: for anyone's, it would be a
            # way to make us send mail to an address of their choosing (backscatter).
            if notify and "SUCCESS" in notify and transaction.sender and self.user:
                transaction.notify_delivered.append(
                    OutboundRecipient(str(recipient), notify, orcpt)
                )
            transaction.recipients.append(recipient)
            transaction.add_mailboxes(lookup.mailboxes)
            self.state = State.RCPT
            return replies.RECIPIENT_OK
        if lookup.outcome is Lookup.NOT_OUR_DOMAIN and self.user is not None:
            # RFC 6409 §3.3: an authenticated user may send anywhere, through the queue.
            notify, orcpt = self._pending_dsn
            if recipient not in transaction.recipients:  # the same address twice: one copy
                transaction.recipients.append(recipient)
                transaction.remote.append(OutboundRecipient(str(recipient), notify, orcpt))
            self.state = State.RCPT
            return replies.RECIPIENT_OK
        refusal = {
            Lookup.NOT_OUR_DOMAIN: replies.RELAY_DENIED,
            Lookup.NO_SUCH_USER: replies.NO_SUCH_USER,
            Lookup.ALIAS_LOOP: replies.ALIAS_LOOP,
        }[lookup.outcome]
        return self._error(refusal)

    def recipient_unavailable(self) -> Reply:
        """The look-up for the pending recipient failed on our side (§4.2.5: temporary)."""
        self._pending_recipient = None
        return replies.LOCAL_ERROR

    def content_received(self, summary: ContentSummary, last: bool = True) -> Outcome:
        """All of DATA, or one BDAT chunk, has arrived and been inspected."""
        transaction = self.transaction
        assert transaction is not None
        refusal = self._content_refusal(summary, last)
        if refusal is not None:
            self._end_transaction()
            return self._error(refusal)
        if not last:
            self.state = State.BDAT
            return replies.CHUNK_OK.with_text(f"{summary.size} octets received")
        if self.user is not None and self.policy.check_from_header:
            try:
                authors = authors_of(summary.header, whole_message=summary.whole_message_kept)
            except AuthorError as error:
                self._end_transaction()
                return self._error(
                    replies.UNCHECKABLE_AUTHOR.with_text(f"Message refused: {error}")
                )
            self._checking_authors = True
            return CheckOwnership(authors)
        return Deliver(transaction)

    def chunk_discarded(self, refusal: Reply) -> Outcome:
        """A BDAT chunk that had to be refused has been read and thrown away."""
        return self._error(refusal)

    def delivery_finished(self, failure: Reply | None) -> Reply:
        """Delivery of the transaction's message succeeded (None) or failed with ``failure``.

        A failure here is our own trouble, not the client's: it does not count as an error.
        """
        transaction = self.transaction
        assert transaction is not None
        self._end_transaction()
        if failure is not None:
            return failure
        return replies.MESSAGE_ACCEPTED.with_text(f"Message accepted, id {transaction.id}")

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # -- helpers ------------------------------------------------------------------------

    def _error(self, reply: Reply) -> Outcome:
        """A protocol error by the client; too many of them end the session."""
        self._errors += 1
        if self._errors > self.policy.max_errors:
            self.state = State.CLOSED
            return Close(replies.TOO_MANY_ERRORS)
        return reply

    def _end_transaction(self) -> None:
        self.transaction = None
        self._content_started = False
        if self.state is not State.CLOSED:
            self.state = State.READY

    def _content_refusal(self, summary: ContentSummary, last: bool) -> Reply | None:
        if summary.too_big:
            return replies.MESSAGE_TOO_BIG
        # Judged at the end only: a BDAT chunk may end with the CR whose LF starts the next
        # (RFC 3030 chunks are octet counts), which the summary counts as bare until then.
        if summary.bare_line_ending and last:
            return replies.BARE_LINE_ENDING_IN_DATA
        # §6.3: loop detection by counting trace headers; ours will be one more.
        if summary.received_headers + 1 > self.policy.max_received_headers:
            return replies.TOO_MANY_HOPS
        return None

    def _trace_headers(self, transaction: Transaction) -> tuple[bytes, int]:
        """Return-Path, Received (§4.4) and, for a single mailbox, Delivered-To; and how
        many octets at their start are for local copies only (all but Received).

        Every value here was parsed and validated (no CR or LF can reach it). With several
        recipients the "for" clause and Delivered-To are left out: the file is shared by all
        of them and must not tell one recipient who else received it.
        """
        sender = f"<{transaction.sender}>" if transaction.sender else "<>"
        lines = [f"Return-Path: {sender}"]
        if len(transaction.mailboxes) == 1:
            lines.append(f"Delivered-To: {transaction.mailboxes[0]}")
        received = f"Received: from {self.helo} ([{self.client.address}])\r\n"
        if self.tls_description is not None:
            received += f"\t(using {self.tls_description})\r\n"
        protocol = self._protocol_name(transaction)
        received += f"\tby {self.policy.hostname} with {protocol} id {transaction.id}"
        if len(transaction.recipients) == 1:
            received += f"\r\n\tfor <{transaction.recipients[0]}>"
        received += f";\r\n\t{formatdate(self._now(), localtime=True)}"
        local = ("".join(line + "\r\n" for line in lines)).encode("utf-8")
        return local + (received + "\r\n").encode("utf-8"), len(local)

    def _protocol_name(self, transaction: Transaction) -> str:
        """The Received header's "with" keyword: RFC 3848 (ESMTPS, ESMTPA, ESMTPSA) and
        RFC 6531 §3.7.3 (UTF8SMTP and its S/A/SA forms)."""
        if transaction.smtputf8:
            base = "UTF8SMTP"
        elif self.esmtp:
            base = "ESMTP"
        else:
            return "SMTP"
        return base + ("S" if self.encrypted else "") + ("A" if self.user else "")

    def _auth_offered(self) -> bool:
        return self.policy.auth and (self.encrypted or self._plaintext_auth)

    def _begin(self, transaction: Transaction) -> Outcome:
        self.transaction = transaction
        self.state = State.MAIL
        return replies.SENDER_OK

    def _start_content(self, reply: Reply | None, chunk_size: int | None, last: bool) -> Outcome:
        transaction = self.transaction
        assert transaction is not None
        first = not self._content_started
        self._content_started = True
        trace, local = self._trace_headers(transaction) if first else (b"", 0)
        return ReceiveContent(
            reply=reply,
            trace_headers=trace,
            local_headers=local,
            max_size=self.policy.max_message_size,
            chunk_size=chunk_size,
            last=last,
            keep_header=self.user is not None and self.policy.check_from_header,
            authenticated=self.user is not None,
        )

    # -- commands -----------------------------------------------------------------------

    def _ehlo(self, argument: str) -> Outcome:
        return self._hello(argument, esmtp=True)

    def _helo(self, argument: str) -> Outcome:
        return self._hello(argument, esmtp=False)

    def _hello(self, argument: str, esmtp: bool) -> Outcome:
        name = argument.strip()
        if not _valid_helo(name):
            return self._error(replies.BAD_HELO)
        self.helo = name
        self.esmtp = esmtp
        self._end_transaction()
        greeting = f"{self.policy.hostname} greets {name}"
        if not esmtp:
            return replies.HELO_OK.with_text(greeting)
        extensions = [
            greeting,
            "PIPELINING",  # RFC 2920
            f"SIZE {self.policy.max_message_size}",  # RFC 1870
            "8BITMIME",  # RFC 6152
            "ENHANCEDSTATUSCODES",  # RFC 2034
            "SMTPUTF8",  # RFC 6531
            "CHUNKING",  # RFC 3030
            "DSN",  # RFC 3461
        ]
        if self._starttls and not self.encrypted:
            extensions.append("STARTTLS")  # RFC 3207
        if self._auth_offered() and self.user is None:
            extensions.append("AUTH " + " ".join(sasl.MECHANISMS))  # RFC 4954
        return replies.EHLO_OK.with_text("\n".join(extensions))

    def _starttls_command(self, argument: str) -> Outcome:
        if not self._starttls:
            return self._error(replies.NOT_IMPLEMENTED)
        if self.encrypted:
            return self._error(replies.TLS_ALREADY_ACTIVE)
        if argument.strip():
            return self._error(replies.SYNTAX_ERROR.with_text("STARTTLS takes no argument"))
        # RFC 3207 §4.2: forget everything the client said before TLS; it must EHLO again.
        self._end_transaction()
        self.helo = None
        self.esmtp = False
        self.user = None
        self.state = State.GREETED
        self.encrypted = True
        return StartTLS(replies.READY_FOR_TLS)

    def _auth(self, argument: str) -> Outcome:
        if not self.policy.auth:
            return self._error(replies.NOT_IMPLEMENTED)
        if not self.esmtp:
            return self._error(replies.NEED_EHLO)  # AUTH is an extension: EHLO offers it
        if self.user is not None:
            return self._error(replies.ALREADY_AUTHENTICATED)  # RFC 4954 §4
        words = argument.split()
        if not 1 <= len(words) <= 2:
            return self._error(
                replies.SYNTAX_ERROR.with_text("Syntax: AUTH mechanism [initial-response]")
            )
        mechanism = words[0].upper()
        if mechanism not in sasl.MECHANISMS:
            return self._error(replies.UNKNOWN_MECHANISM)
        if not self._auth_offered():
            return self._error(replies.ENCRYPTION_REQUIRED)  # RFC 4954 §6: 538
        exchange = sasl.Exchange(mechanism)
        initial = None
        if len(words) == 2:
            try:
                initial = sasl.decode_initial_response(words[1])  # RFC 4954 §4
            except sasl.SASLError:
                return self._error(replies.BAD_AUTH_RESPONSE)
        return self._sasl_step(exchange, lambda: exchange.start(initial))

    def _sasl_response(self, line: bytes) -> Outcome:
        exchange = self._exchange
        assert exchange is not None
        self._exchange = None
        if line == sasl.CANCEL:
            return self._error(replies.AUTH_CANCELLED)  # RFC 4954 §4: 501
        try:
            response = sasl.decode_response(line)
        except sasl.SASLError:
            return self._error(replies.BAD_AUTH_RESPONSE)
        return self._sasl_step(exchange, lambda: exchange.respond(response))

    def _sasl_step(
        self, exchange: sasl.Exchange, step: Callable[[], bytes | Credentials]
    ) -> Outcome:
        try:
            result = step()
        except sasl.SASLError as error:
            return self._error(replies.BAD_AUTH_RESPONSE.with_text(f"Malformed response: {error}"))
        if isinstance(result, Credentials):
            return Authenticate(result)
        self._exchange = exchange
        return replies.AUTH_CHALLENGE.with_text(sasl.encode_challenge(result))

    def _mail(self, argument: str) -> Outcome:
        parsed = _split_path_argument(argument, "FROM:")
        if parsed is None:
            return self._error(replies.SYNTAX_ERROR.with_text("Syntax: MAIL FROM:<address>"))
        path, parameters = parsed
        params = _parse_parameters(parameters)
        if params is None:
            return self._error(replies.SYNTAX_ERROR)
        if self.policy.auth_required and self.user is None:
            return self._error(replies.AUTH_REQUIRED)  # RFC 6409 §4.3, RFC 4954 §6
        smtputf8 = False
        body_8bit = False
        ret: str | None = None
        envid: str | None = None
        for keyword, value in params.items():
            if keyword == "SIZE" and self.esmtp:
                if value is None or not _is_number(value):
                    return self._error(replies.BAD_SIZE_PARAMETER)
                if int(value) > self.policy.max_message_size:  # RFC 1870 §6.2
                    return self._error(replies.MESSAGE_TOO_BIG)
            elif keyword == "BODY" and self.esmtp:
                if value is None or value.upper() not in {"7BIT", "8BITMIME"}:
                    return self._error(replies.BAD_BODY_PARAMETER)
                body_8bit = value.upper() == "8BITMIME"
            elif keyword == "SMTPUTF8" and self.esmtp and value is None:
                smtputf8 = True
            elif keyword == "AUTH" and self._auth_offered() and value is not None:
                pass  # RFC 4954 §5: accepted; we do not relay the identity it claims
            elif keyword == "RET" and self.esmtp:
                if value is None or value.upper() not in {"FULL", "HDRS"}:
                    return self._error(
                        replies.BAD_DSN_PARAMETER.with_text("RET must be FULL or HDRS")
                    )
                ret = value.upper()
            elif keyword == "ENVID" and self.esmtp:
                envid = _decode_xtext(value, MAX_ENVID)
                if envid is None:
                    return self._error(replies.BAD_DSN_PARAMETER.with_text("Bad ENVID"))
            else:
                return self._error(replies.UNKNOWN_PARAMETER)
        try:
            sender = parse_path(path, allow_null=True)
        except AddressError as error:
            return self._error(replies.BAD_SENDER_SYNTAX.with_text(f"Bad sender address: {error}"))
        if sender is not None and not sender.is_ascii and not smtputf8:
            return self._error(replies.NEEDS_SMTPUTF8)  # RFC 6531 §3.5
        transaction = Transaction(
            id=self._new_id(),
            sender=sender,
            smtputf8=smtputf8,
            body_8bit=body_8bit,
            ret=ret,
            envid=envid,
        )
        if self.user is not None and sender is not None:
            self._pending_sender = transaction
            return CheckOwnership((sender,))
        return self._begin(transaction)

    def _rcpt(self, argument: str) -> Outcome:
        transaction = self.transaction
        assert transaction is not None
        parsed = _split_path_argument(argument, "TO:")
        if parsed is None:
            return self._error(replies.SYNTAX_ERROR.with_text("Syntax: RCPT TO:<address>"))
        path, parameters = parsed
        params = _parse_parameters(parameters)
        if params is None:
            return self._error(replies.SYNTAX_ERROR)
        dsn = self._recipient_dsn(params)
        if isinstance(dsn, Reply):
            return self._error(dsn)
        if path.lower() == "<postmaster>":
            path = f"<{self.policy.postmaster}>"  # §4.1.1.3: must be accepted without domain
        try:
            recipient = parse_path(path, allow_null=False)
        except AddressError as error:
            return self._error(
                replies.BAD_RECIPIENT_SYNTAX.with_text(f"Bad recipient address: {error}")
            )
        assert recipient is not None
        if not recipient.is_ascii and not transaction.smtputf8:
            return self._error(replies.NEEDS_SMTPUTF8)
        if len(transaction.recipients) >= self.policy.max_recipients:
            return replies.TOO_MANY_RECIPIENTS  # §4.5.3.1.10: 452, the client sends the rest later
        if recipient.is_address_literal:
            return self._error(replies.RELAY_DENIED)
        self._pending_recipient = recipient
        self._pending_dsn = dsn
        return CheckRecipient(recipient)

    def _recipient_dsn(
        self, params: dict[str, str | None]
    ) -> tuple[frozenset[str] | None, str | None] | Reply:
        """NOTIFY and ORCPT (RFC 3461 §4.1, §4.2), the only RCPT parameters we know."""
        notify: frozenset[str] | None = None
        orcpt: str | None = None
        for keyword, value in params.items():
            if keyword == "NOTIFY" and self.esmtp:
                conditions = frozenset((value or "").upper().split(","))
                if conditions != {"NEVER"} and not conditions <= NOTIFY_CONDITIONS:
                    return replies.BAD_DSN_PARAMETER.with_text(
                        "NOTIFY must be NEVER, or some of SUCCESS, FAILURE and DELAY"
                    )
                notify = conditions
            elif keyword == "ORCPT" and self.esmtp:
                kind, semicolon, address = (value or "").partition(";")
                decoded = _decode_xtext(address, MAX_ORCPT) if semicolon else None
                if not kind or decoded is None:
                    return replies.BAD_DSN_PARAMETER.with_text("ORCPT must be type;address")
                orcpt = f"{kind.lower()};{decoded}"
            else:
                return replies.UNKNOWN_PARAMETER
        return notify, orcpt

    def _data(self, argument: str) -> Outcome:
        if argument.strip():
            return self._error(replies.SYNTAX_ERROR.with_text("DATA takes no argument"))
        if self.state is State.MAIL:
            # RFC 2920 §3.1: the pipelined DATA after every recipient was refused.
            self._end_transaction()
            return self._error(replies.NO_VALID_RECIPIENTS)
        return self._start_content(replies.START_DATA, chunk_size=None, last=True)

    def _bdat(self, argument: str) -> Outcome:
        chunk = _parse_bdat(argument)
        if chunk is None:
            # The size is unknown, so the octets cannot be skipped: the session is unusable.
            self.state = State.CLOSED
            return Close(replies.SYNTAX_ERROR.with_text("Syntax: BDAT <size> [LAST]"))
        size, last = chunk
        if self.state is State.MAIL:
            self._end_transaction()
            return ReceiveContent(
                None, b"", 0, chunk_size=size, last=last, discard=replies.NO_VALID_RECIPIENTS
            )
        return self._start_content(None, chunk_size=size, last=last)

    def _refuse_chunk(self, argument: str, refusal: Reply) -> Outcome:
        chunk = _parse_bdat(argument)
        if chunk is None:
            self.state = State.CLOSED
            return Close(replies.SYNTAX_ERROR.with_text("Syntax: BDAT <size> [LAST]"))
        size, last = chunk
        return ReceiveContent(None, b"", 0, chunk_size=size, last=last, discard=refusal)

    def _rset(self, argument: str) -> Outcome:
        if self.state is not State.GREETED:
            self._end_transaction()
        return replies.RESET_OK

    def _noop(self, argument: str) -> Outcome:
        return replies.OK

    def _quit(self, argument: str) -> Outcome:
        self.state = State.CLOSED
        return Close(replies.CLOSING.with_text(f"{self.policy.hostname} closing connection"))

    def _vrfy(self, argument: str) -> Outcome:
        # RFC 5321 §3.5.3: 252 without verifying, so VRFY cannot enumerate users.
        if not argument.strip():
            return self._error(replies.SYNTAX_ERROR.with_text("Syntax: VRFY <address>"))
        return replies.VRFY_CANNOT_VERIFY

    def _help(self, argument: str) -> Outcome:
        return replies.HELP

    def _not_implemented(self, argument: str) -> Outcome:
        return self._error(replies.NOT_IMPLEMENTED)

    _HANDLERS: dict[str, Callable[[SMTPSession, str], Outcome]] = {
        "EHLO": _ehlo,
        "HELO": _helo,
        "MAIL": _mail,
        "RCPT": _rcpt,
        "DATA": _data,
        "BDAT": _bdat,
        "RSET": _rset,
        "NOOP": _noop,
        "QUIT": _quit,
        "VRFY": _vrfy,
        "HELP": _help,
        "EXPN": _not_implemented,
        "TURN": _not_implemented,
        "ETRN": _not_implemented,
        "STARTTLS": _starttls_command,
        "AUTH": _auth,
    }


def _decode_xtext(value: str | None, limit: int) -> str | None:
    """An xtext parameter value (RFC 3461 §4), decoded; None when missing, too long or bad."""
    if not value or len(value) > limit:
        return None
    try:
        return xtext.decode(value)
    except xtext.XtextError:
        return None


def _valid_helo(name: str) -> bool:
    if not name or len(name) > 255 or " " in name:
        return False
    if name.startswith("["):
        try:
            parse_address_literal(name)
        except AddressError:
            return False
        return name.endswith("]")
    return _HELO_DOMAIN.fullmatch(name) is not None


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts superscripts (which ``int`` refuses)
    and other scripts' digits, neither of which RFC 1870 or RFC 3030 allows."""
    return text.isascii() and text.isdigit()


def _parse_bdat(argument: str) -> tuple[int, bool] | None:
    """``BDAT <size> [LAST]`` (RFC 3030 §2) as (size, last)."""
    words = argument.split()
    if not 1 <= len(words) <= 2 or not _is_number(words[0]):
        return None
    if len(words) == 2 and words[1].upper() != "LAST":
        return None
    return int(words[0]), len(words) == 2


def _split_path_argument(argument: str, prefix: str) -> tuple[str, str] | None:
    """Split ``FROM:<path> params`` into the path and the parameter text.

    The path ends at the ``>`` that closes it, outside any quoted local part, so a quoted
    space or ``>`` cannot cut it short. Some clients put a space after the colon: tolerated.
    """
    if argument[: len(prefix)].upper() != prefix:
        return None
    rest = argument[len(prefix) :].lstrip(" ")
    if not rest.startswith("<"):
        path, _, parameters = rest.partition(" ")  # bare address, tolerated
        return (path, parameters) if path else None
    in_quotes = False
    escaped = False
    for index, char in enumerate(rest):
        if escaped:
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == ">" and not in_quotes:
            path, parameters = rest[: index + 1], rest[index + 1 :]
            if parameters and not parameters.startswith(" "):
                return None
            return path, parameters.strip(" ")
    return None


def _parse_parameters(text: str) -> dict[str, str | None] | None:
    """RFC 5321 §4.1.2 esmtp-param list; None when malformed or a keyword repeats."""
    params: dict[str, str | None] = {}
    for word in text.split():
        keyword, equals, value = word.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (equals and not value):
            return None
        keyword = keyword.upper()
        if keyword in params:
            return None
        params[keyword] = value if equals else None
    return params
