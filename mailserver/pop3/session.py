"""The POP3 server session (RFC 1939, RFC 2449, RFC 5034, RFC 2595) as a state machine with
no I/O.

The glue (:mod:`mailserver.pop3.server`) feeds it command lines and the results of the work it
asked for; every method returns what to do next: a :class:`Reply` to send, or an action for
the glue to carry out (start TLS, check credentials, open the mailbox, send a message, apply
the deletions, close).

States (RFC 1939 §3) and the commands allowed in each are the table ``ALLOWED`` below; a known
command outside its states gets the reply ``OUT_OF_STATE`` names for the current state.

- AUTHORIZATION: USER then PASS, or AUTH (SASL PLAIN or LOGIN); STLS; CAPA and QUIT. QUIT
  here ends the session without touching the mailbox (RFC 1939 §4).
- TRANSACTION: the mailbox is locked and its snapshot numbered 1..n for the whole session;
  STAT LIST RETR DELE NOOP RSET TOP UIDL CAPA QUIT. DELE only marks (§5).
- UPDATE: entered by QUIT from TRANSACTION: the marked messages are removed, then the
  connection closes (§6). No command is read in UPDATE.

While a SASL exchange is under way, the next line is the client's response, not a command
(RFC 5034 §4); the mechanisms themselves are :mod:`mailserver.sasl`, shared with SMTP AUTH.
Every login mechanism offered sends the password itself (USER/PASS, PLAIN, LOGIN), so they
work only inside TLS or where the configuration allows plaintext (``plaintext_allowed``);
CAPA leaves them out elsewhere, so a client never tries them.

TLS: on an implicit-TLS listener (RFC 8314) the session starts encrypted. Otherwise, where
the listener has a certificate, STLS (RFC 2595 §4) switches the connection to TLS once; the
glue then throws away whatever the client had pipelined after STLS, and the session forgets
what it learned in plaintext (a pending USER), so nothing said before the handshake counts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailserver import sasl
from mailserver.interfaces import MessageInfo
from mailserver.pop3 import replies
from mailserver.pop3.replies import Reply
from mailserver.sasl import Credentials

# RFC 2449 §4: a command line is at most 255 octets, its CRLF included.
MAX_COMMAND_LINE = 255
# A SASL response line is not a command (RFC 5034 §4); a PLAIN response with the longest login
# and password we accept fits with room to spare.
MAX_SASL_RESPONSE_LINE = 4096


class State(enum.Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"
    CLOSED = "closed"


_AUTHORIZATION = frozenset({State.AUTHORIZATION})
_TRANSACTION = frozenset({State.TRANSACTION})
_BOTH = _AUTHORIZATION | _TRANSACTION
ALLOWED: dict[str, frozenset[State]] = {
    "CAPA": _BOTH,  # RFC 2449 §5
    "QUIT": _BOTH,  # RFC 1939 §4 and §6
    "USER": _AUTHORIZATION,  # RFC 1939 §7
    "PASS": _AUTHORIZATION,
    "AUTH": _AUTHORIZATION,  # RFC 5034 §4
    "STLS": _AUTHORIZATION,  # RFC 2595 §4: "Only permitted in AUTHORIZATION state"
    "STAT": _TRANSACTION,  # RFC 1939 §5
    "LIST": _TRANSACTION,
    "RETR": _TRANSACTION,
    "DELE": _TRANSACTION,
    "NOOP": _TRANSACTION,
    "RSET": _TRANSACTION,
    "TOP": _TRANSACTION,  # RFC 1939 §7
    "UIDL": _TRANSACTION,
}
OUT_OF_STATE: dict[State, Reply] = {
    State.AUTHORIZATION: replies.NOT_LOGGED_IN,
    State.TRANSACTION: replies.ALREADY_LOGGED_IN,
}


@dataclass(frozen=True)
class SessionPolicy:
    """Settings for every session of one listener set."""

    hostname: str
    max_errors: int = 20  # protocol errors before the session is closed
    max_auth_failures: int = 3  # failed logins on one connection before it is closed
    implementation: str = "mailserver"  # RFC 2449 §6.9


# Actions for the glue.
@dataclass(frozen=True)
class StartTLS:
    """Send ``reply`` in plaintext, throw away any input already received after it, and
    start the TLS handshake (RFC 2595 §4)."""

    reply: Reply


@dataclass(frozen=True)
class Authenticate:
    """Check the credentials (:class:`mailserver.logins.LoginChecker`, which also applies the
    SASL authorization rule), then call :meth:`POP3Session.authenticated`. The mechanism is
    "USER" for USER/PASS. Its repr never shows the password."""

    credentials: Credentials


@dataclass(frozen=True)
class OpenMailbox:
    """Lock the mailbox and snapshot it, then call :meth:`POP3Session.mailbox_opened` (or
    ``mailbox_in_use`` / ``mailbox_unavailable``)."""

    address: str


@dataclass(frozen=True)
class SendMessage:
    """Send ``reply`` and then message ``index`` (0-based), byte-stuffed: all of it (RETR), or
    its header and ``top_lines`` body lines (TOP). If its first read fails, nothing is sent:
    call :meth:`POP3Session.message_unavailable` for the reply instead."""

    reply: Reply
    index: int
    top_lines: int | None = None


@dataclass(frozen=True)
class Commit:
    """UPDATE state (RFC 1939 §6): remove ``deleted`` and mark ``seen`` as read, release the
    mailbox, then call :meth:`POP3Session.committed` or ``commit_failed``."""

    deleted: tuple[int, ...]
    seen: tuple[int, ...]


@dataclass(frozen=True)
class Close:
    """Send ``reply`` and close the connection (releasing the mailbox, changing nothing)."""

    reply: Reply


Outcome = Reply | StartTLS | Authenticate | OpenMailbox | SendMessage | Commit | Close


class POP3Session:
    """Protocol state of one POP3 connection; see the module docstring for the table."""

    def __init__(
        self,
        policy: SessionPolicy,
        plaintext_allowed: bool,
        tls_available: bool = False,
        encrypted: bool = False,
    ) -> None:
        """``plaintext_allowed``: whether the configuration lets a password be sent on this
        connection as it is now; once it is encrypted, a password always may be.
        ``tls_available``: the listener has a certificate for STLS. ``encrypted``: the
        connection is TLS already (implicit TLS, RFC 8314)."""
        self.policy = policy
        self.tls_available = tls_available
        self.encrypted = encrypted
        self._plaintext_allowed = plaintext_allowed
        self.state = State.AUTHORIZATION
        self.address: str | None = None  # the mailbox, once logged in
        self._errors = 0
        self._auth_failures = 0
        self._user: str | None = None  # login given by USER, waiting for PASS
        self._sasl: sasl.Exchange | None = None  # a SASL exchange waiting for a response
        self._pending: Authenticate | None = None
        self._messages: Sequence[MessageInfo] = ()
        self._deleted: set[int] = set()
        self._total_size = 0  # of the whole snapshot
        self._deleted_size = 0  # of the messages marked as deleted
        self._retrieved: set[int] = set()

    # -- entry points -------------------------------------------------------------------

    def greeting(self) -> Reply:
        # RFC 1939 §4; no APOP timestamp, as APOP is not offered.
        return replies.GREETING.with_text(f"{self.policy.hostname} POP3 server ready")

    @property
    def plaintext_allowed(self) -> bool:
        """Whether a login that sends the password itself may be used now: always inside TLS
        (RFC 2595 §2.2 asks for plaintext passwords to be refusable without it)."""
        return self.encrypted or self._plaintext_allowed

    @property
    def line_limit(self) -> int:
        """Longest line accepted now, CRLF included."""
        return MAX_SASL_RESPONSE_LINE if self._sasl is not None else MAX_COMMAND_LINE

    def handle_line(self, line: bytes) -> Outcome:
        """Handle one line from the client, without its line ending."""
        if len(line) + 2 > self.line_limit:
            return self.line_too_long()
        if self._sasl is not None:
            return self._sasl_response(line)
        if b"\r" in line or b"\n" in line or b"\0" in line:
            return self._error(replies.SYNTAX_ERROR.with_text("Bad characters in command"))
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(replies.SYNTAX_ERROR.with_text("Command is not valid UTF-8"))
        keyword, _, argument = text.partition(" ")
        keyword = keyword.upper()  # RFC 1939 §3: keywords are case-insensitive
        handler = self._HANDLERS.get(keyword)
        if handler is None:
            self._user = None
            return self._error(replies.UNKNOWN_COMMAND)
        if self.state not in ALLOWED[keyword]:
            return self._error(OUT_OF_STATE[self.state])
        if keyword != "PASS":
            self._user = None  # RFC 1939 §7: PASS only immediately after USER
        return handler(self, argument)

    def line_too_long(self) -> Outcome:
        """The client sent a line over :attr:`line_limit` (RFC 2449 §4)."""
        if self._sasl is not None:
            self._sasl = None
            return self._error(replies.BAD_SASL_RESPONSE.with_text("Response too long"))
        self._user = None
        return self._error(replies.LINE_TOO_LONG)

    def authenticated(self, address: str | None) -> Outcome:
        """The credentials of the pending :class:`Authenticate` log in to ``address``, or to
        nothing (None: unknown login, wrong password, or an authorization identity that is
        not the user's own)."""
        assert self._pending is not None
        self._pending = None
        if address is None:
            self._auth_failures += 1
            if self._auth_failures >= self.policy.max_auth_failures:
                self.state = State.CLOSED
                return Close(replies.TOO_MANY_FAILURES)
            # The same reply for an unknown user as for a wrong password.
            return replies.AUTH_FAILED
        return OpenMailbox(address)

    def authentication_unavailable(self) -> Reply:
        """Checking the credentials failed on our side."""
        self._pending = None
        return replies.TEMPORARY_FAILURE

    def mailbox_opened(self, address: str, messages: Sequence[MessageInfo]) -> Reply:
        """The mailbox is locked; ``messages`` is the snapshot for this session."""
        self.state = State.TRANSACTION
        self.address = address
        self._messages = messages
        self._total_size = sum(message.size for message in messages)
        count, size = self._totals()
        return replies.LOGGED_IN.with_text(
            f"Logged in as {address}: {count} messages ({size} octets)"
        )

    def mailbox_in_use(self) -> Reply:
        # RFC 1939 §4 / RFC 2449 §8.1.1: no exclusive lock, no TRANSACTION state.
        return replies.IN_USE

    def mailbox_unavailable(self, permanent: bool) -> Reply:
        return replies.MAILBOX_UNAVAILABLE if permanent else replies.TEMPORARY_FAILURE

    def message_unavailable(self, index: int, gone: bool) -> Reply:
        """The message of a :class:`SendMessage` could not be opened: removed by another
        program (``gone``) or unreadable for now. Nothing was sent."""
        self._retrieved.discard(index)
        return replies.MESSAGE_GONE if gone else replies.TEMPORARY_FAILURE

    def committed(self) -> Close:
        self.state = State.CLOSED
        left = len(self._messages) - len(self._deleted)
        return Close(
            replies.BYE.with_text(f"{self.policy.hostname} signing off ({left} messages left)")
        )

    def commit_failed(self) -> Close:
        # RFC 1939 §6: "-ERR some deleted messages not removed".
        self.state = State.CLOSED
        return Close(replies.NOT_ALL_DELETED)

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

    def _totals(self) -> tuple[int, int]:
        """Count and octets of the messages not marked as deleted (RFC 1939 §5, STAT), kept
        up to date rather than summed on each call: mailboxes can hold 100,000 messages."""
        return (
            len(self._messages) - len(self._deleted),
            self._total_size - self._deleted_size,
        )

    def _message_number(self, argument: str) -> int | Reply:
        """The 0-based index for a message-number argument, or the error reply."""
        if not argument.isascii() or not argument.isdigit():
            return replies.SYNTAX_ERROR.with_text("Expected a message number")
        number = int(argument)
        if not 1 <= number <= len(self._messages):
            return replies.NO_SUCH_MESSAGE
        index = number - 1
        if index in self._deleted:
            # RFC 1939 §5: a message marked as deleted may not be referred to.
            return replies.ALREADY_DELETED.with_text(f"Message {number} already deleted")
        return index

    def _one_message(self, argument: str) -> int | Reply:
        words = argument.split()
        if len(words) != 1:
            return replies.SYNTAX_ERROR.with_text("Expected one message number")
        return self._message_number(words[0])

    def _capabilities(self) -> list[str]:
        # RFC 2449 §5: the same list in both states; only what works on this connection.
        capabilities = ["TOP", "UIDL"]
        if self._stls_offered:
            capabilities.append("STLS")  # RFC 2595 §4
        if self.plaintext_allowed:
            capabilities.append("USER")  # RFC 2449 §6.3
            capabilities.append("SASL " + " ".join(sasl.MECHANISMS))  # RFC 5034 §3
        capabilities += [
            "RESP-CODES",  # RFC 2449 §6.4
            "AUTH-RESP-CODE",  # RFC 3206 §3
            "PIPELINING",  # RFC 2449 §6.6
            f"IMPLEMENTATION {self.policy.implementation}",  # RFC 2449 §6.9
        ]
        return capabilities

    @property
    def _stls_offered(self) -> bool:
        return self.tls_available and not self.encrypted

    def _start_authentication(self, credentials: Credentials) -> Outcome:
        action = Authenticate(credentials)
        self._pending = action
        return action

    # -- SASL (RFC 5034) ---------------------------------------------------------------

    def _sasl_response(self, line: bytes) -> Outcome:
        exchange = self._sasl
        assert exchange is not None
        self._sasl = None
        if line == sasl.CANCEL:
            # RFC 5034 §4: "*" cancels, and the server MUST answer -ERR.
            return self._error(replies.AUTH_CANCELLED)
        try:
            step = exchange.respond(sasl.decode_response(line))
        except sasl.SASLError:
            return self._error(replies.BAD_SASL_RESPONSE)
        return self._sasl_step(exchange, step)

    def _sasl_step(self, exchange: sasl.Exchange, step: bytes | Credentials) -> Outcome:
        """The credentials to check, or the next challenge: "+ " and base64 (RFC 5034 §4),
        after which the next line is the client's response."""
        if isinstance(step, Credentials):
            return self._start_authentication(step)
        self._sasl = exchange
        return replies.SASL_CHALLENGE.with_text(sasl.encode_challenge(step))

    # -- commands -----------------------------------------------------------------------

    def _capa(self, argument: str) -> Outcome:
        return replies.CAPABILITIES.with_lines(self._capabilities())

    def _quit(self, argument: str) -> Outcome:
        if self.state is State.AUTHORIZATION:
            self.state = State.CLOSED  # RFC 1939 §4: no UPDATE state from here
            return Close(replies.BYE.with_text(f"{self.policy.hostname} signing off"))
        self.state = State.UPDATE  # RFC 1939 §6
        deleted = tuple(sorted(self._deleted))
        seen = tuple(sorted(self._retrieved - self._deleted))
        return Commit(deleted, seen)

    def _user_command(self, argument: str) -> Outcome:
        if not self.plaintext_allowed:
            return self._error(replies.PLAINTEXT_DISALLOWED)
        login = argument.strip()
        if not login:
            return self._error(replies.SYNTAX_ERROR.with_text("Syntax: USER name"))
        # RFC 1939 §7 lets the server say "-ERR never heard of mailbox name"; we do not, so
        # that USER cannot be used to find out who has a mailbox here.
        self._user = login
        return replies.USER_OK

    def _pass(self, argument: str) -> Outcome:
        login = self._user
        self._user = None
        if login is None:
            return self._error(replies.USER_FIRST)
        if not self.plaintext_allowed:
            return self._error(replies.PLAINTEXT_DISALLOWED)
        # RFC 1939 §7: PASS has one argument, and spaces in it are part of the password.
        return self._start_authentication(Credentials(login, argument, mechanism="USER"))

    def _auth(self, argument: str) -> Outcome:
        words = argument.split()
        if not words:
            # Not in RFC 5034, but older clients send a bare AUTH to list the mechanisms.
            mechanisms = sasl.MECHANISMS if self.plaintext_allowed else ()
            return replies.MECHANISMS.with_lines(mechanisms)
        if len(words) > 2:
            return self._error(replies.SYNTAX_ERROR.with_text("Syntax: AUTH mechanism [response]"))
        mechanism = words[0].upper()
        if mechanism not in sasl.MECHANISMS:
            return self._error(replies.UNKNOWN_MECHANISM)
        if not self.plaintext_allowed:
            return self._error(replies.PLAINTEXT_DISALLOWED)
        exchange = sasl.Exchange(mechanism)
        try:
            initial = None
            if len(words) == 2:
                initial = sasl.decode_initial_response(words[1])  # RFC 5034 §4
            step = exchange.start(initial)
        except sasl.SASLError:
            return self._error(replies.BAD_SASL_RESPONSE)
        return self._sasl_step(exchange, step)

    def _stls(self, argument: str) -> Outcome:
        if argument.strip():
            return self._error(replies.SYNTAX_ERROR.with_text("STLS takes no argument"))
        if self.encrypted:
            # RFC 2595 §4: "A -ERR response MAY result if a security layer is already active."
            return self._error(replies.TLS_ACTIVE)
        if not self.tls_available:
            return self._error(replies.TLS_UNAVAILABLE)
        # Whatever the client said in plaintext was open to a man in the middle: a pending
        # USER is forgotten (RFC 2595 §4 has the client start over from CAPA; RFC 3207 §4.2
        # states the server's half for SMTP), and every line from now on comes through TLS.
        # No SASL exchange can be pending: during one, "STLS" is read as its response.
        self._user = None
        self.encrypted = True
        return StartTLS(replies.TLS_READY)

    def _stat(self, argument: str) -> Outcome:
        count, size = self._totals()
        # RFC 1939 §5: "+OK nn mm", nothing more, so that clients can parse it.
        return replies.STATUS.with_text(f"{count} {size}")

    def _list(self, argument: str) -> Outcome:
        if argument.strip():
            index = self._one_message(argument)
            if isinstance(index, Reply):
                return self._error(index)
            return replies.SCAN_LINE.with_text(f"{index + 1} {self._messages[index].size}")
        count, size = self._totals()
        deleted = self._deleted
        lines = [
            f"{index + 1} {message.size}"
            for index, message in enumerate(self._messages)
            if index not in deleted
        ]
        return replies.SCAN_LISTING.with_text(f"{count} messages ({size} octets)").with_lines(lines)

    def _uidl(self, argument: str) -> Outcome:
        if argument.strip():
            index = self._one_message(argument)
            if isinstance(index, Reply):
                return self._error(index)
            return replies.UID_LINE.with_text(f"{index + 1} {self._messages[index].uid}")
        deleted = self._deleted
        lines = [
            f"{index + 1} {message.uid}"
            for index, message in enumerate(self._messages)
            if index not in deleted
        ]
        return replies.UID_LISTING.with_lines(lines)

    def _retr(self, argument: str) -> Outcome:
        index = self._one_message(argument)
        if isinstance(index, Reply):
            return self._error(index)
        self._retrieved.add(index)
        size = self._messages[index].size
        return SendMessage(replies.MESSAGE_FOLLOWS.with_text(f"{size} octets"), index)

    def _top(self, argument: str) -> Outcome:
        words = argument.split()
        if len(words) != 2 or not words[1].isascii() or not words[1].isdigit():
            return self._error(replies.SYNTAX_ERROR.with_text("Syntax: TOP msg n"))
        index = self._message_number(words[0])
        if isinstance(index, Reply):
            return self._error(index)
        # TOP does not count as reading the message: it is not marked as seen.
        return SendMessage(replies.TOP_FOLLOWS, index, top_lines=int(words[1]))

    def _dele(self, argument: str) -> Outcome:
        index = self._one_message(argument)
        if isinstance(index, Reply):
            return self._error(index)
        self._deleted.add(index)  # RFC 1939 §5: only marked; removed in the UPDATE state
        self._deleted_size += self._messages[index].size
        return replies.DELETED.with_text(f"Message {index + 1} deleted")

    def _noop(self, argument: str) -> Outcome:
        return replies.NOOP

    def _rset(self, argument: str) -> Outcome:
        self._deleted.clear()  # RFC 1939 §5: unmark every message marked as deleted
        self._deleted_size = 0
        count, size = self._totals()
        return replies.RESET.with_text(f"Maildrop has {count} messages ({size} octets)")

    _HANDLERS: dict[str, Callable[[POP3Session, str], Outcome]] = {
        "CAPA": _capa,
        "QUIT": _quit,
        "USER": _user_command,
        "PASS": _pass,
        "AUTH": _auth,
        "STLS": _stls,
        "STAT": _stat,
        "LIST": _list,
        "RETR": _retr,
        "DELE": _dele,
        "NOOP": _noop,
        "RSET": _rset,
        "TOP": _top,
        "UIDL": _uidl,
    }
