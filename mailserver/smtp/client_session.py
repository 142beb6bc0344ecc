"""The SMTP client session (RFC 5321) as a state machine with no I/O.

The glue (:mod:`mailserver.smtp.client`) feeds it the server's replies, parsed by
:class:`ReplyParser`, and what happens to the connection (TLS is up, the content has been
written, the connection was lost, a timer went off); each method returns the actions for the
glue to carry out, in order: bytes to send, TLS to start, the content to stream, the set-up
done or failed, a message's results, close.

Each command waits for a reply of the class ``SUCCESS`` gives it; 4xx and 5xx are refusals,
and any other class means the server broke the protocol. What each reply leads to:

==============  ===================  ==================================  ==========================
state           reply to             on success                          on 4xx / 5xx
==============  ===================  ==================================  ==========================
GREETING        connecting           EHLO                                set-up fails (§3.1)
EHLO            EHLO                 STARTTLS, AUTH or READY             5xx: HELO (§3.2)
HELO            HELO                 (no extensions) AUTH or READY       set-up fails
STARTTLS        STARTTLS             TLS handshake, then EHLO again      plaintext if opportunistic
AUTH            AUTH (and LOGIN's    READY                               set-up fails, transient
                334 steps)
TRANSACTION     MAIL, RCPT, DATA     next RCPT, DATA, the content        decides; nobody left: RSET
CONTENT         (none: streaming)    ``content_sent``: END_OF_DATA
END_OF_DATA     the final "."        results, READY                      results, READY
RESET           RSET                 results, READY                      results, QUIT, close
QUIT            QUIT                 close                               close
==============  ===================  ==================================  ==========================

The set-up ends with :class:`Ready` (a message may be sent) or :class:`SetupFailed`. A 421
at any point is the server closing the connection (§3.8): every undecided recipient gets it.
So does our own reply for a connection lost, a timeout or garbage from the server, after
which the session is CLOSED and the connection unusable.

Security (RFC 3207, RFC 4954, RFC 7435): with ``tls = "opportunistic"``, STARTTLS is used
when offered and the session goes on in plaintext when it is not (or when the server refuses
it); with ``"required"`` the set-up fails instead. After the handshake every capability learnt
before it is forgotten and EHLO sent again; the glue throws away any octet that came with the
220, since an attacker on the path could have put it there (RFC 3207 §4.2). A password is
sent only inside TLS.
"""

from __future__ import annotations

import base64
import enum
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mailserver import xtext
from mailserver.interfaces import (
    DeliveryOutcome,
    OutboundMessage,
    OutboundRecipient,
    RecipientResult,
    ReplyInfo,
)

TLS_MODES = ("opportunistic", "required", "off")

MAX_REPLY_LINE = 4096  # octets with CRLF; RFC 5321 §4.5.3.1.5 says 512, but servers exceed it
MAX_REPLY_LINES = 100  # lines in one reply: an EHLO reply has a dozen
MAX_UNREAD_REPLIES = 1024 * 1024  # octets of complete replies not yet asked for

CRLF = b"\r\n"


# --- Settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientTimeouts:
    """Seconds to wait. RFC 5321 §4.5.3.2 gives the minimum for each wait it names; tests
    use seconds."""

    connect: float = 30.0  # the TCP connection
    greeting: float = 300.0  # §4.5.3.2.1: the 220 greeting
    command: float = 300.0  # EHLO, HELO, STARTTLS and its handshake, AUTH, RSET, QUIT
    mail: float = 300.0  # §4.5.3.2.2
    rcpt: float = 300.0  # §4.5.3.2.3
    data_init: float = 120.0  # §4.5.3.2.4: the 354 to DATA
    data_block: float = 180.0  # §4.5.3.2.5: each block of content to be taken by the server
    data_end: float = 600.0  # §4.5.3.2.6: the reply to the final "."

    def for_reply_to(self, command: Command) -> float:
        """How long to wait for the reply to ``command``."""
        return {
            Command.GREETING: self.greeting,
            Command.MAIL: self.mail,
            Command.RCPT: self.rcpt,
            Command.DATA: self.data_init,
            Command.END_OF_DATA: self.data_end,
        }.get(command, self.command)


@dataclass(frozen=True)
class ClientSettings:
    """How we talk to other servers: our name, and the TLS and AUTH policy."""

    hostname: str  # our name, for EHLO/HELO
    # "opportunistic": STARTTLS when offered, no certificate check (RFC 7435); "required":
    # STARTTLS must be offered and the certificate verified against the server's name; "off".
    tls: str = "opportunistic"
    trust_file: Path | None = None  # CA bundle for "required"; None: the system's trust store
    auth: tuple[str, str] | None = None  # (login, password) for a smarthost; only inside TLS
    timeouts: ClientTimeouts = field(default_factory=ClientTimeouts)

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}, not {self.tls!r}")

    def __repr__(self) -> str:  # never log a password by accident
        login = self.auth[0] if self.auth else None
        return f"ClientSettings(hostname={self.hostname!r}, tls={self.tls!r}, login={login!r})"


# --- Replies ------------------------------------------------------------------------------------


class RemoteProtocolError(Exception):
    """The server broke the protocol: a malformed or oversized reply, or an unexpected one."""


# RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39, then SP or "-" and text, or nothing.
_REPLY_LINE = re.compile(rb"([2-5][0-5][0-9])(?:([ -])(.*))?", re.DOTALL)
# RFC 2034 §4, RFC 3463 §2: class.subject.detail, the class that of the reply code.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |\Z)")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ReplyParser:
    """Splits the server's output into replies, strictly and within fixed limits, so a hostile
    server cannot make us hold an endless line or reply.

    Lines end with LF, with or without the CR before it (as Postfix's client accepts them);
    a reply's lines must all carry its code, every line but the last with "-" after it. The
    enhanced status code (RFC 2034), when the first line has one of the reply's class, is
    taken off every line that repeats it. Control characters in the text become "?", so a
    reply can be put into a log or a bounce as it is.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._code: bytes | None = None  # of the reply whose lines are arriving
        self._lines: list[str] = []
        self._replies: deque[ReplyInfo] = deque()
        self._unread = 0  # octets of the complete replies in _replies

    def feed(self, data: bytes) -> None:
        """Take octets from the server; raises :class:`RemoteProtocolError` on garbage."""
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) >= MAX_REPLY_LINE:
                    raise RemoteProtocolError(f"reply line longer than {MAX_REPLY_LINE} octets")
                return
            if end + 1 > MAX_REPLY_LINE:
                raise RemoteProtocolError(f"reply line longer than {MAX_REPLY_LINE} octets")
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._line(line.removesuffix(b"\r"))

    def next_reply(self) -> ReplyInfo | None:
        """The oldest complete reply not yet taken, or None."""
        if not self._replies:
            return None
        reply = self._replies.popleft()
        self._unread -= len(reply.text)
        return reply

    def discard(self) -> None:
        """Forget everything received and not yet taken (after the 220 to STARTTLS)."""
        self._buffer.clear()
        self._code = None
        self._lines = []
        self._replies.clear()
        self._unread = 0

    def _line(self, line: bytes) -> None:
        match = _REPLY_LINE.fullmatch(line)
        if match is None:
            raise RemoteProtocolError(f"malformed reply line {line[:80]!r}")
        code, separator, text = match[1], match[2], match[3] or b""
        if self._code is not None and code != self._code:
            raise RemoteProtocolError(
                f"reply line {line[:80]!r} continues a {self._code.decode()} reply"
            )
        if len(self._lines) >= MAX_REPLY_LINES:
            raise RemoteProtocolError(f"reply longer than {MAX_REPLY_LINES} lines")
        self._code = code
        self._lines.append(_CONTROL.sub("?", text.decode("utf-8", "replace")))
        if separator == b"-":
            return
        reply = _reply_info(int(code), self._lines)
        self._code = None
        self._lines = []
        self._unread += len(reply.text)
        if self._unread > MAX_UNREAD_REPLIES:
            raise RemoteProtocolError("too many replies that nothing asked for")
        self._replies.append(reply)


def _reply_info(code: int, lines: list[str]) -> ReplyInfo:
    first = _ENHANCED.match(lines[0])
    if first is None or first[1] != str(code)[0]:
        return ReplyInfo(code, None, "\n".join(lines))
    texts = []
    for line in lines:
        enhanced = _ENHANCED.match(line)
        same = enhanced is not None and enhanced.groups() == first.groups()
        texts.append(line[enhanced.end() :] if enhanced is not None and same else line)
    return ReplyInfo(code, f"{first[1]}.{int(first[2])}.{int(first[3])}", "\n".join(texts))


def outcome_of(reply: ReplyInfo) -> DeliveryOutcome:
    """RFC 5321 §4.2.1: 2yz done, 4yz try again later, 5yz never."""
    if reply.code < 300:
        return DeliveryOutcome.DELIVERED
    if reply.code >= 500:
        return DeliveryOutcome.PERMANENT
    return DeliveryOutcome.TRANSIENT


def ours(template: ReplyInfo, **details: object) -> ReplyInfo:
    """One of the replies below, its ``{placeholders}`` filled in."""
    return replace(template, text=template.text.format(**details))


# The replies we write ourselves, for what no server said. Temporary unless the message can
# never go to this server as it is.
CONNECTION_FAILED = ReplyInfo(451, "4.4.1", "Cannot connect to {host}: {reason}")
CONNECT_TIMEOUT = ReplyInfo(451, "4.4.1", "Connection to {host} timed out")
CONNECTION_LOST = ReplyInfo(451, "4.4.2", "Connection with {host} lost: {reason}")
TIMEOUT = ReplyInfo(451, "4.4.2", "Timeout {doing} with {host}")
NOT_CONNECTED = ReplyInfo(451, "4.4.2", "The connection to {host} is closed")
PROTOCOL_ERROR = ReplyInfo(451, "4.5.0", "{host} broke the SMTP protocol: {detail}")
TLS_NOT_OFFERED = ReplyInfo(454, "4.7.4", "{host} does not offer STARTTLS, and TLS is required")
TLS_REFUSED = ReplyInfo(454, "4.7.4", "{host} refused STARTTLS ({reply}), and TLS is required")
TLS_FAILED = ReplyInfo(454, "4.7.5", "TLS with {host} failed: {reason}")
TRUST_FILE_UNUSABLE = ReplyInfo(454, "4.7.5", "Cannot use the trust file {path}: {reason}")
PASSWORD_NEEDS_TLS = ReplyInfo(
    454, "4.7.0", "Not sending the password for {host} without TLS: it offers no STARTTLS"
)
NO_AUTH_MECHANISM = ReplyInfo(
    454, "4.7.0", "{host} offers no AUTH mechanism we can use (we have PLAIN and LOGIN)"
)
MESSAGE_TOO_BIG = ReplyInfo(
    552, "5.3.4", "Message of {size} octets exceeds the {limit} octets {host} accepts"
)
NEEDS_SMTPUTF8 = ReplyInfo(
    553, "5.6.7", "{host} does not support SMTPUTF8, which this message's envelope needs"
)
BAD_SENDER = ReplyInfo(501, "5.1.7", "The sender address has control characters")
BAD_RECIPIENT = ReplyInfo(501, "5.1.3", "The recipient address has control characters")
LOCAL_ERROR = ReplyInfo(451, "4.3.0", "Local error in processing: {detail}")


# --- Capabilities -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What the server's EHLO reply offers (all off after HELO: RFC 5321 §4.1.1.1)."""

    size: int | None = None  # RFC 1870: None not offered; 0 offered without a fixed limit
    pipelining: bool = False  # RFC 2920
    eightbitmime: bool = False  # RFC 6152
    smtputf8: bool = False  # RFC 6531
    dsn: bool = False  # RFC 3461
    starttls: bool = False  # RFC 3207
    enhanced_status_codes: bool = False  # RFC 2034
    auth: frozenset[str] = frozenset()  # RFC 4954: the SASL mechanisms

    @classmethod
    def from_ehlo(cls, reply: ReplyInfo) -> Capabilities:
        """The keywords of an EHLO reply; its first line is the server's greeting."""
        size: int | None = None
        auth: frozenset[str] = frozenset()
        keywords: set[str] = set()
        for line in reply.text.split("\n")[1:]:
            words = line.split()
            if not words:
                continue
            keyword, parameters = words[0].upper(), words[1:]
            if keyword.startswith("AUTH="):  # the pre-RFC 4954 form some servers still send
                keyword, parameters = "AUTH", [keyword[5:], *parameters]
            keywords.add(keyword)
            if keyword == "SIZE":
                limit = parameters[0] if parameters else ""
                # RFC 1870 §4: no number, or 0, means no fixed limit.
                size = int(limit) if limit.isascii() and limit.isdigit() else 0
            elif keyword == "AUTH":
                auth = auth | {word.upper() for word in parameters}
        return cls(
            size=size,
            pipelining="PIPELINING" in keywords,
            eightbitmime="8BITMIME" in keywords,
            smtputf8="SMTPUTF8" in keywords,
            dsn="DSN" in keywords,
            starttls="STARTTLS" in keywords,
            enhanced_status_codes="ENHANCEDSTATUSCODES" in keywords,
            auth=auth,
        )


# --- Building commands --------------------------------------------------------------------------

_UNSENDABLE = re.compile(r"[\x00-\x1f\x7f]")  # a CR or LF would end the command line early
_ADDRESS_TYPE = re.compile(r"[A-Za-z0-9-]+")
_NOTIFY_ORDER = ("SUCCESS", "FAILURE", "DELAY")


def needs_smtputf8(message: OutboundMessage) -> bool:
    """Whether only a server that offers SMTPUTF8 can take ``message`` (RFC 6531 §3.2): an
    envelope address is not ASCII, or the message is flagged as internationalised. The
    queue sets that flag only for a message that really is (UTF-8 in its header or its
    envelope), not merely because the submitting client asked for the extension, so a
    refusal here (553 5.6.7) never bounces mail that could have gone as it is."""
    return (
        message.smtputf8
        or not message.sender.isascii()
        or any(not recipient.address.isascii() for recipient in message.recipients)
    )


def notify_words(recipient: OutboundRecipient) -> list[str]:
    """The NOTIFY words RCPT TO carries for ``recipient`` to a server with DSN (RFC 3461
    §4.1): NEVER stands alone; the others in a fixed order, unknown words left out. Empty
    when the recipient has no NOTIFY, or none we know."""
    if not recipient.notify:
        return []
    notify = [word.upper() for word in recipient.notify]
    return ["NEVER"] if "NEVER" in notify else [w for w in _NOTIFY_ORDER if w in notify]


def mail_command(message: OutboundMessage, capabilities: Capabilities) -> str:
    """MAIL FROM with the parameters the server offers and the message needs."""
    command = f"MAIL FROM:<{message.sender}>"
    if capabilities.size is not None:
        command += f" SIZE={message.size}"  # RFC 1870 §6
    if message.body_8bit and capabilities.eightbitmime:
        command += " BODY=8BITMIME"  # RFC 6152 §3
    if needs_smtputf8(message) and capabilities.smtputf8:
        # RFC 6531 §3.4; the parameter goes only to a server that offers the extension.
        # Without it only an ASCII envelope gets here (begin() refuses the rest: §3.2).
        command += " SMTPUTF8"
    if capabilities.dsn:  # RFC 3461 §4: only to a server that offers DSN
        if message.ret is not None and message.ret.upper() in ("FULL", "HDRS"):
            command += f" RET={message.ret.upper()}"  # §4.3
        if message.envid:
            command += f" ENVID={xtext.encode(message.envid)}"  # §4.4
    return command


def rcpt_command(recipient: OutboundRecipient, capabilities: Capabilities) -> str:
    """RCPT TO with the recipient's DSN parameters when the server offers DSN (RFC 3461)."""
    command = f"RCPT TO:<{recipient.address}>"
    if not capabilities.dsn:
        return command
    words = notify_words(recipient)
    if words:
        command += f" NOTIFY={','.join(words)}"  # §4.1
    if recipient.orcpt:
        kind, semicolon, original = recipient.orcpt.partition(";")
        # §4.2: addr-type ";" xtext. An address that is not ASCII would need RFC 6533's
        # utf-8-addr forms instead; ORCPT is optional, so such an address is left out.
        if semicolon and _ADDRESS_TYPE.fullmatch(kind) and original and original.isascii():
            command += f" ORCPT={kind};{xtext.encode(original)}"
    return command


# --- The session --------------------------------------------------------------------------------


class Command(enum.Enum):
    """What a reply answers."""

    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_DATA = "end of data"
    RSET = "RSET"
    QUIT = "QUIT"


# RFC 5321 §4.3.2, RFC 3207 §4, RFC 4954 §4: the reply class each command succeeds with.
SUCCESS: dict[Command, frozenset[int]] = {
    Command.GREETING: frozenset({2}),
    Command.EHLO: frozenset({2}),
    Command.HELO: frozenset({2}),
    Command.STARTTLS: frozenset({2}),
    Command.AUTH: frozenset({2, 3}),  # 334: the next step of the exchange
    Command.MAIL: frozenset({2}),
    Command.RCPT: frozenset({2}),
    Command.DATA: frozenset({3}),
    Command.END_OF_DATA: frozenset({2}),
    Command.RSET: frozenset({2}),
    Command.QUIT: frozenset({2}),
}


class State(enum.Enum):
    GREETING = "greeting"  # connected, waiting for the 220
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    HANDSHAKE = "handshake"  # the glue is doing the TLS handshake
    AUTH = "auth"
    READY = "ready"  # set up, no transaction: a message may be sent
    TRANSACTION = "transaction"  # MAIL, RCPT and DATA replies awaited
    CONTENT = "content"  # the glue is streaming the message
    END_OF_DATA = "end-of-data"
    RESET = "reset"
    QUIT = "quit"
    CLOSED = "closed"


_SETUP = frozenset(
    {State.GREETING, State.EHLO, State.HELO, State.STARTTLS, State.HANDSHAKE, State.AUTH}
)


# Actions for the glue.
@dataclass(frozen=True)
class Send:
    """Write these octets (one command, or a pipelined group)."""

    data: bytes


@dataclass(frozen=True)
class StartTLS:
    """Throw away all unread input, then start the TLS handshake; then call
    :meth:`ClientSession.tls_started`."""


@dataclass(frozen=True)
class SendContent:
    """Stream the message file, encoded for DATA, then call :meth:`ClientSession.content_sent`."""

    message: OutboundMessage


@dataclass(frozen=True)
class Ready:
    """The connection is set up: messages may be sent."""

    capabilities: Capabilities


@dataclass(frozen=True)
class SetupFailed:
    """No session could be set up: try another server. ``during_tls`` when the TLS handshake
    is what failed (an opportunistic client may try once more without TLS)."""

    reply: ReplyInfo
    permanent: bool
    during_tls: bool = False


@dataclass(frozen=True)
class Finished:
    """The message of :meth:`ClientSession.begin` is done with: one result per recipient."""

    results: list[RecipientResult]


@dataclass(frozen=True)
class Close:
    """Close the connection; ``abort`` when the peer may not be reading any more."""

    abort: bool = False


ClientAction = Send | StartTLS | SendContent | Ready | SetupFailed | Finished | Close


@dataclass(frozen=True)
class _Awaited:
    command: Command
    recipient: int | None = None  # for RCPT: the index of the recipient


@dataclass
class _Transaction:
    message: OutboundMessage
    pipelined: bool
    results: list[RecipientResult | None]
    unsent: deque[tuple[int, str]]  # RCPT commands still to send, without pipelining
    dsn: bool  # the server offers DSN: each RCPT carried the recipient's NOTIFY
    accepted: list[int] = field(default_factory=list)  # recipients a RCPT 2xx accepted
    discarding: bool = False  # RFC 2920 §3.1: DATA got 354 with nobody to send to


QUIT_LINE = b"QUIT\r\n"


class ClientSession:
    """Protocol state of one connection to one server; see the module docstring.

    ``remote_host`` is the server's name, as results report it; ``peer`` describes it in our
    own replies ("mx.example.org [192.0.2.1]").
    """

    def __init__(self, settings: ClientSettings, remote_host: str, peer: str) -> None:
        self.settings = settings
        self.remote_host = remote_host
        self.peer = peer
        self.state = State.GREETING
        self.capabilities = Capabilities()
        self.encrypted = False
        self.tls: str | None = None  # the TLS version and cipher, once the handshake is done
        self._awaited: deque[_Awaited] = deque([_Awaited(Command.GREETING)])
        self._transaction: _Transaction | None = None
        self._starttls_refused = False
        self._login_steps: list[str] = []  # what AUTH LOGIN still has to say

    # -- what the glue asks -------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Whether a reply is awaited (the glue takes replies only then)."""
        return bool(self._awaited)

    @property
    def timeout(self) -> float | None:
        """Seconds to wait for what is awaited now; None when nothing is (idle, or the glue
        is streaming content, which has its own timer)."""
        timeouts = self.settings.timeouts
        if self._awaited:
            return timeouts.for_reply_to(self._awaited[0].command)
        if self.state is State.HANDSHAKE:
            return timeouts.command
        return None

    @property
    def usable(self) -> bool:
        return self.state not in (State.QUIT, State.CLOSED)

    # -- events -------------------------------------------------------------------------

    def reply_received(self, reply: ReplyInfo) -> list[ClientAction]:
        """A complete reply from the server (taken only while :attr:`waiting`)."""
        if not self._awaited:
            return self._end(ours(PROTOCOL_ERROR, host=self.peer, detail=f"unasked reply {reply}"))
        awaited = self._awaited.popleft()
        if awaited.command is Command.QUIT:
            self.state = State.CLOSED
            return [Close()]
        kind = reply.code // 100
        if kind not in SUCCESS[awaited.command] and kind not in (4, 5):
            detail = f"reply {reply} to {awaited.command.value}"
            return self._end(ours(PROTOCOL_ERROR, host=self.peer, detail=detail))
        if reply.code == 421:
            return self._end(reply)  # §3.8: the server is closing the connection
        return self._HANDLERS[awaited.command](self, awaited, reply)

    def tls_started(self, description: str | None) -> list[ClientAction]:
        """The TLS handshake is done; ``description`` names the version and cipher."""
        if self.state is not State.HANDSHAKE:
            return []
        self.encrypted = True
        self.tls = description
        return self._hello()  # RFC 3207 §4.2: EHLO again, inside TLS

    def content_sent(self) -> list[ClientAction]:
        """The whole message and its final "." are written."""
        if self.state is not State.CONTENT:
            return []
        self.state = State.END_OF_DATA
        self._awaited.append(_Awaited(Command.END_OF_DATA))
        return []

    def connection_lost(self, reason: str) -> list[ClientAction]:
        if self.state is State.CLOSED:
            return []
        if self.state is State.QUIT:
            self.state = State.CLOSED
            return []
        if self.state is State.HANDSHAKE:
            reply = ours(TLS_FAILED, host=self.peer, reason=reason)
            return self._end(reply, close=False, during_tls=True)
        return self._end(ours(CONNECTION_LOST, host=self.peer, reason=reason), close=False)

    def timed_out(self) -> list[ClientAction]:
        """The timer for :attr:`timeout` (or, while streaming, for a block) went off."""
        if self.state is State.CLOSED:
            return []
        if self.state is State.CONTENT:
            doing = "sending the message"
        elif self.state is State.HANDSHAKE:
            doing = "in the TLS handshake"
        elif self._awaited:
            doing = f"waiting for the reply to {self._awaited[0].command.value}"
        else:
            doing = "waiting"
        reply = ours(TIMEOUT, host=self.peer, doing=doing)
        return self._end(reply, abort=True, during_tls=self.state is State.HANDSHAKE)

    def protocol_error(self, detail: str) -> list[ClientAction]:
        """The glue found garbage in the server's output (:class:`RemoteProtocolError`)."""
        if self.state is State.CLOSED:
            return []
        return self._end(ours(PROTOCOL_ERROR, host=self.peer, detail=detail), abort=True)

    def local_failure(self, reply: ReplyInfo) -> list[ClientAction]:
        """Our side failed (the message file cannot be read): give up on this connection.
        The connection is aborted, never ended with ".", so no server keeps a partial
        message (RFC 5321 §4.1.1.4: only the final "." makes it theirs)."""
        if self.state is State.CLOSED:
            return []
        return self._end(reply, abort=True)

    # -- what the caller asks -----------------------------------------------------------

    def begin(self, message: OutboundMessage) -> list[ClientAction]:
        """Send ``message`` (only when READY)."""
        if self.state is not State.READY:
            reply = ours(NOT_CONNECTED, host=self.peer)
            return [Finished([self._result(r.address, reply) for r in message.recipients])]
        refusal = self._refusal(message)
        if refusal is not None:
            return [Finished([self._result(r.address, refusal) for r in message.recipients])]
        capabilities = self.capabilities
        results: list[RecipientResult | None] = [
            self._result(r.address, BAD_RECIPIENT) if _UNSENDABLE.search(r.address) else None
            for r in message.recipients
        ]
        commands = deque(
            (index, rcpt_command(recipient, capabilities))
            for index, recipient in enumerate(message.recipients)
            if results[index] is None
        )
        transaction = _Transaction(
            message, capabilities.pipelining, results, commands, capabilities.dsn
        )
        if not commands:
            return [Finished(self._complete(transaction))]
        self._transaction = transaction
        self.state = State.TRANSACTION
        mail = mail_command(message, capabilities)
        if not transaction.pipelined:
            return self._command(Command.MAIL, mail)
        # RFC 2920 §3.1: MAIL, every RCPT and DATA in one group, DATA last; the replies come
        # back in order and every one of them is checked.
        group = [mail]
        self._awaited.append(_Awaited(Command.MAIL))
        while commands:
            index, rcpt = commands.popleft()
            group.append(rcpt)
            self._awaited.append(_Awaited(Command.RCPT, index))
        group.append("DATA")
        self._awaited.append(_Awaited(Command.DATA))
        return [Send("".join(line + "\r\n" for line in group).encode("utf-8"))]

    def quit(self) -> list[ClientAction]:
        """End the connection politely (RFC 5321 §4.1.1.10), or at once if it is busy."""
        if self.state is State.READY:
            self.state = State.QUIT
            return self._command(Command.QUIT, "QUIT")
        if self.state in (State.QUIT, State.CLOSED):
            return []
        return self._end(ours(NOT_CONNECTED, host=self.peer), abort=True)

    # -- set-up -------------------------------------------------------------------------

    def _greeting(self, awaited: _Awaited, reply: ReplyInfo) -> list[ClientAction]:
        if reply.code < 300:
            return self._hello()
        # §3.1: 554 means no SMTP service here, for good; the client sends QUIT.
        return self._setup_failed(reply, permanent=reply.code >= 500)

    def _hello(self) -> list[ClientAction]:
        self.state = State.EHLO
        return self._command(Command.EHLO, f"EHLO {self.settings.hostname}")

    def _ehlo(self, awaited: _Awaited, reply: ReplyInfo) -> list[ClientAction]:
        if reply.code < 300:
            self.capabilities = Capabilities.from_ehlo(reply)
            return self._after_hello()
        if reply.code >= 500:
            # §3.2: a server that does not know EHLO says 5xx; fall back to HELO.
            self.state = State.HELO
            return self._command(Command.HELO, f"HELO {self.settings.hostname}")
        return self._setup_failed(reply, permanent=False)

    def _helo(self, awaited: _Awaited, reply: ReplyInfo) -> list[ClientAction]:
        if reply.code < 300:
            self.capabilities = Capabilities()  # §4.1.1.1: HELO offers no extensions
            return self._after_hello()
        return self._setup_failed(reply, permanent=reply.code >= 500)

    def _after_hello(self) -> list[ClientAction]:
        mode = self.settings.tls
        if not self.encrypted and mode != "off" and not self._starttls_refused:
            if self.capabilities.starttls:
                self.state = State.STARTTLS
                return self._command(Command.STARTTLS, "STARTTLS")
            if mode == "required":
                return self._setup_failed(ours(TLS_NOT_OFFERED, host=self.peer), permanent=False)
        if self.settings.auth is not None:
            return self._authenticate(*self.settings.auth)
        return self._ready()

    def _starttls(self, awaited: _Awaited, reply: ReplyInfo) -> list[ClientAction]:
        if reply.code < 300:
            self.state = State.HANDSHAKE
            # RFC 3207 §4.2: forget what the server said before TLS; the glue throws away
            # whatever came after the 220, and EHLO is sent again once TLS is up.
            self.capabilities = Capabilities()
            return [StartTLS()]
        if self.settings.tls == "required":
            refused = ours(TLS_REFUSED, host=self.peer, reply=str(reply))
            return self._setup_failed(refused, permanent=False)
        # RFC 7435 §1: opportunistic security falls back to cleartext rather than not at all.
        self._starttls_refused = True
        return self._after_hello()

    def _authenticate(self, login: str, password: str) -> list[ClientAction]:
        if not self.encrypted:
            return self._setup_failed(ours(PASSWORD_NEEDS_TLS, host=self.peer), permanent=False)
        self.state = State.AUTH
        mechanisms = self.capabilities.auth
        if "PLAIN" in mechanisms:
            # RFC 4616 §2 message as RFC 4954 §4's initial response: one round trip.
            token = _base64(f"\0{login}\0{password}")
            return self._command(Command.AUTH, f"AUTH PLAIN {token}")
        if "LOGIN" in mechanisms:
            self._login_steps = [_base64(login), _base64(password)]
            return self._command(Command.AUTH, "AUTH LOGIN")
        return self._setup_failed(ours(NO_AUTH_MECHANISM, host=self.peer), permanent=False)

    def _auth(self, awaited: _Awaited, reply: ReplyInfo) -> list[ClientAction]:
        if reply.code < 300:
            self._login_steps = []
            return self._ready()
        if reply.code < 400:
            if not self._login_steps:
                detail = f"unexpected challenge {reply}"
                return self._end(ours(PROTOCOL_ERROR, host=self.peer, detail=detail))
            return self._command(Command.AUTH, self._login_steps.pop(0))
        # Refused credentials are the operator's to fix: never a bounce of the whole queue.
        self._login_steps = []
        return self._setup_failed(reply, permanent=False)

    def _ready(self) -> list[ClientAction]:
        self.state = State.READY
        return [Ready(self.capabilities)]

    def _setup_failed(self, reply: ReplyInfo, permanent: bool) -> list[ClientAction]:
        """Give up on a server that still listens: say QUIT (§3.1, §4.1.1.10) and close."""
        self.state = State.CLOSED
        self._awaited.clear()
        return [SetupFailed(reply, permanent), Send(QUIT_LINE), Close()]

    # -- transactions -------------------------------------------------------------------

    def _refusal(self, message: OutboundMessage) -> ReplyInfo | None:
        """Why ``message`` cannot go to this server at all, if it cannot."""
        limit = self.capabilities.size
        if limit and message.size > limit:
            # RFC 1870 §4: a client must not send a message larger than the declared limit.
            return ours(MESSAGE_TOO_BIG, size=message.size, limit=limit, host=self.peer)
        if needs_smtputf8(message) and not self.capabilities.smtputf8:
            # RFC 6531 §3.2: an internationalised message never goes to a server without
            # SMTPUTF8 (we do not downgrade).
            return ours(NEEDS_SMTPUTF8, host=self.peer)
        if _UNSENDABLE.search(message.sender):
            return BAD_SENDER
        # RFC 6152 §3 asks for a downgrade or a bounce when 8-bit content meets a server
        # without 8BITMIME. We send it as it is, as most MTAs do: servers have taken 8-bit
        # octets for decades, and converting would break DKIM signatures.
        return None

    def _mail(self, awaited: _Awaited, reply: ReplyInfo) -> list[ClientAction]:
        transaction = self._current
        if reply.code >= 400:
            # The sender is refused, so is every recipient, with that reply.
            for index, recipient in enumerate(transaction.message.recipients):
                if transaction.results[index] is None:
                    transaction.results[index] = self._result(recipient.address, reply)
        if transaction.pipelined:
            return []  # the RCPT and DATA replies follow
        if reply.code >= 400:
            return self._reset()
        return self._next_rcpt(transaction)

    def _next_rcpt(self, transaction: _Transaction) -> list[ClientAction]:
        if transaction.unsent:
            index, command = transaction.unsent.popleft()
            return self._command(Command.RCPT, command, index)
        if transaction.accepted:
            return self._command(Command.DATA, "DATA")
        return self._reset()  # nobody accepted: no DATA

    def _rcpt(self, awaited: _Awaited, reply: ReplyInfo) -> list[ClientAction]:
        transaction = self._current
        index = awaited.recipient
        assert index is not None
        if transaction.results[index] is None:  # not already refused with the sender
            if reply.code < 300:
                transaction.accepted.append(index)
            else:
                address = transaction.message.recipients[index].address
                transaction.results[index] = self._result(address, reply)
        if transaction.pipelined:
            return []
        return self._next_rcpt(transaction)

    def _data(self, awaited: _Awaited, reply: ReplyInfo) -> list[ClientAction]:
        transaction = self._current
        if reply.code < 400:
            if transaction.accepted:
                self.state = State.CONTENT
                return [SendContent(transaction.message)]
            # RFC 2920 §3.1: a pipelined DATA accepted although every RCPT failed: "the
            # client SMTP should send a single dot", then reset.
            transaction.discarding = True
            self.state = State.END_OF_DATA
            return self._command(Command.END_OF_DATA, ".")
        self._decide_accepted(transaction, reply)
        return self._reset()

    def _end_of_data(self, awaited: _Awaited, reply: ReplyInfo) -> list[ClientAction]:
        transaction = self._current
        if transaction.discarding:
            return self._reset()
        # §4.1.1.4: the reply to the "." decides for every accepted recipient, and ends the
        # transaction whatever it says.
        self._decide_accepted(transaction, reply)
        return self._finish()

    def _reset(self) -> list[ClientAction]:
        self.state = State.RESET
        return self._command(Command.RSET, "RSET")

    def _rset(self, awaited: _Awaited, reply: ReplyInfo) -> list[ClientAction]:
        if reply.code < 300:
            return self._finish()
        # A server that will not reset cannot be trusted with the next message.
        transaction = self._current
        self._transaction = None
        self.state = State.CLOSED
        return [Finished(self._complete(transaction)), Send(QUIT_LINE), Close()]

    def _finish(self) -> list[ClientAction]:
        transaction = self._current
        self._transaction = None
        self.state = State.READY
        return [Finished(self._complete(transaction))]

    def _decide_accepted(self, transaction: _Transaction, reply: ReplyInfo) -> None:
        # RFC 3461 §5.2.1: a server with DSN that took the message with our NOTIFY reports
        # success itself, so the result says so and no "relayed" notice is sent for it.
        taken = reply.code < 300 and transaction.dsn
        for index in transaction.accepted:
            if transaction.results[index] is None:
                recipient = transaction.message.recipients[index]
                passed = taken and bool(notify_words(recipient))
                transaction.results[index] = self._result(recipient.address, reply, passed)

    def _complete(self, transaction: _Transaction) -> list[RecipientResult]:
        """The results; one still undecided here would be our bug, reported as temporary."""
        bug = ours(LOCAL_ERROR, detail="no reply decided this recipient")
        return [
            result if result is not None else self._result(recipient.address, bug)
            for result, recipient in zip(
                transaction.results, transaction.message.recipients, strict=True
            )
        ]

    # -- helpers ------------------------------------------------------------------------

    @property
    def _current(self) -> _Transaction:
        assert self._transaction is not None
        return self._transaction

    def _command(
        self, command: Command, line: str, recipient: int | None = None
    ) -> list[ClientAction]:
        self._awaited.append(_Awaited(command, recipient))
        return [Send(line.encode("utf-8") + CRLF)]

    def _result(self, address: str, reply: ReplyInfo, dsn_passed: bool = False) -> RecipientResult:
        return RecipientResult(address, outcome_of(reply), reply, self.remote_host, dsn_passed)

    def _end(
        self,
        reply: ReplyInfo,
        close: bool = True,
        abort: bool = False,
        during_tls: bool = False,
    ) -> list[ClientAction]:
        """The connection is over: the set-up fails, or every undecided recipient of the
        transaction under way gets ``reply``."""
        setup = self.state in _SETUP
        self.state = State.CLOSED
        self._awaited.clear()
        actions: list[ClientAction] = []
        if setup:
            actions.append(SetupFailed(reply, permanent=False, during_tls=during_tls))
        elif self._transaction is not None:
            transaction = self._transaction
            self._transaction = None
            for index, recipient in enumerate(transaction.message.recipients):
                if transaction.results[index] is None:
                    transaction.results[index] = self._result(recipient.address, reply)
            actions.append(Finished(self._complete(transaction)))
        if close:
            actions.append(Close(abort))
        return actions

    _HANDLERS: dict[Command, Callable[[ClientSession, _Awaited, ReplyInfo], list[ClientAction]]] = {
        Command.GREETING: _greeting,
        Command.EHLO: _ehlo,
        Command.HELO: _helo,
        Command.STARTTLS: _starttls,
        Command.AUTH: _auth,
        Command.MAIL: _mail,
        Command.RCPT: _rcpt,
        Command.DATA: _data,
        Command.END_OF_DATA: _end_of_data,
        Command.RSET: _rset,
    }


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
