"""Every POP3 reply the server sends, by name, with its RFC 2449 response code.

Tests compare replies with these names: two replies are equal when their name, status and
response code agree, whatever their text (which may carry counts) or multi-line body.

Response codes (RFC 2449 §8, announced by the RESP-CODES capability): ``IN-USE`` (§8.1.1),
``AUTH`` for failures caused by the credentials (RFC 3206 §4, capability AUTH-RESP-CODE),
``SYS/TEMP`` and ``SYS/PERM`` for our own trouble, temporary or not (RFC 3206 §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

OK = "+OK"
ERR = "-ERR"
CONTINUE = "+"  # RFC 5034 §4: a SASL server challenge


@dataclass(frozen=True)
class Reply:
    status: str  # "+OK", "-ERR", or "+" for a SASL challenge
    code: str | None  # RFC 2449 §8 response code, without its brackets
    text: str = field(compare=False)
    name: str = ""
    lines: tuple[str, ...] | None = field(default=None, compare=False)  # multi-line body

    def with_text(self, text: str) -> Reply:
        # Not dataclasses.replace: this runs for every RETR, and replace() is slow.
        return Reply(self.status, self.code, text, self.name, self.lines)

    def with_lines(self, lines: Sequence[str]) -> Reply:
        return replace(self, lines=tuple(lines))

    @property
    def is_error(self) -> bool:
        return self.status == ERR

    def first_line(self) -> bytes:
        """The status line with its CRLF."""
        parts = [self.status]
        if self.code:
            parts.append(f"[{self.code}]")
        if self.text or self.status == CONTINUE:
            parts.append(self.text)  # a challenge is "+ " even when empty (RFC 5034 §4)
        return (" ".join(parts) + "\r\n").encode("utf-8")

    def to_bytes(self) -> bytes:
        """Wire form, all of it in one piece: a multi-line body is byte-stuffed and ends with
        a "." line (RFC 1939 §3)."""
        if self.lines is None:
            return self.first_line()
        body = "".join(
            f".{line}\r\n" if line.startswith(".") else f"{line}\r\n" for line in self.lines
        )
        return self.first_line() + body.encode("utf-8") + b".\r\n"


def _reply(name: str, status: str, code: str | None, text: str) -> Reply:
    return Reply(status, code, text, name)


# Greeting, RFC 1939 §4. No timestamp banner: APOP is not offered (its MD5 challenge is broken).
GREETING = _reply("GREETING", OK, None, "POP3 server ready")
CAPABILITIES = _reply("CAPABILITIES", OK, None, "Capability list follows")
MECHANISMS = _reply("MECHANISMS", OK, None, "SASL mechanisms follow")
SASL_CHALLENGE = _reply("SASL_CHALLENGE", CONTINUE, None, "")
USER_OK = _reply("USER_OK", OK, None, "Send your password")
LOGGED_IN = _reply("LOGGED_IN", OK, None, "Logged in")
STATUS = _reply("STATUS", OK, None, "0 0")
SCAN_LISTING = _reply("SCAN_LISTING", OK, None, "Scan listing follows")
SCAN_LINE = _reply("SCAN_LINE", OK, None, "")
UID_LISTING = _reply("UID_LISTING", OK, None, "Unique-ID listing follows")
UID_LINE = _reply("UID_LINE", OK, None, "")
MESSAGE_FOLLOWS = _reply("MESSAGE_FOLLOWS", OK, None, "Message follows")
TOP_FOLLOWS = _reply("TOP_FOLLOWS", OK, None, "Top of message follows")
DELETED = _reply("DELETED", OK, None, "Message deleted")
RESET = _reply("RESET", OK, None, "Deletions undone")
NOOP = _reply("NOOP", OK, None, "")
BYE = _reply("BYE", OK, None, "Bye")
# RFC 2595 §4: the handshake starts right after this line's CRLF.
TLS_READY = _reply("TLS_READY", OK, None, "Begin TLS negotiation")

# The client broke the protocol.
UNKNOWN_COMMAND = _reply("UNKNOWN_COMMAND", ERR, None, "Unknown command")
LINE_TOO_LONG = _reply("LINE_TOO_LONG", ERR, None, "Command line too long")
SYNTAX_ERROR = _reply("SYNTAX_ERROR", ERR, None, "Syntax error")
NOT_LOGGED_IN = _reply("NOT_LOGGED_IN", ERR, None, "Log in first")
ALREADY_LOGGED_IN = _reply("ALREADY_LOGGED_IN", ERR, None, "Already logged in")
USER_FIRST = _reply("USER_FIRST", ERR, None, "Send USER first")
NO_SUCH_MESSAGE = _reply("NO_SUCH_MESSAGE", ERR, None, "No such message")
ALREADY_DELETED = _reply("ALREADY_DELETED", ERR, None, "Message already deleted")
TOO_MANY_ERRORS = _reply("TOO_MANY_ERRORS", ERR, None, "Too many errors, closing connection")

# STLS (RFC 2595 §4): the wording of the RFC's own example when TLS is already on; a listener
# without a certificate says so rather than "unknown command", to help whoever set it up.
TLS_ACTIVE = _reply("TLS_ACTIVE", ERR, None, "Command not permitted when TLS active")
TLS_UNAVAILABLE = _reply("TLS_UNAVAILABLE", ERR, None, "TLS is not available here")

# Authentication (RFC 5034, RFC 3206).
AUTH_FAILED = _reply("AUTH_FAILED", ERR, "AUTH", "Authentication failed")
TOO_MANY_FAILURES = _reply(
    "TOO_MANY_FAILURES", ERR, "AUTH", "Too many failed logins, closing connection"
)
PLAINTEXT_DISALLOWED = _reply(
    "PLAINTEXT_DISALLOWED",
    ERR,
    "AUTH",
    "Plaintext authentication is not allowed on this connection",
)
UNKNOWN_MECHANISM = _reply("UNKNOWN_MECHANISM", ERR, None, "Unsupported authentication mechanism")
AUTH_CANCELLED = _reply("AUTH_CANCELLED", ERR, None, "Authentication cancelled")
BAD_SASL_RESPONSE = _reply("BAD_SASL_RESPONSE", ERR, None, "Malformed authentication response")

# The mailbox.
IN_USE = _reply("IN_USE", ERR, "IN-USE", "Mailbox is in use by another POP3 session")
MESSAGE_GONE = _reply("MESSAGE_GONE", ERR, None, "Message was removed by another program")
NOT_ALL_DELETED = _reply(
    "NOT_ALL_DELETED", ERR, "SYS/TEMP", "Some deleted messages were not removed"
)

# Limits and timers.
TOO_MANY_CONNECTIONS = _reply(
    "TOO_MANY_CONNECTIONS", ERR, "SYS/TEMP", "Too many connections from your address"
)
SERVER_BUSY = _reply("SERVER_BUSY", ERR, "SYS/TEMP", "Too many connections, try again later")
TIMEOUT = _reply("TIMEOUT", ERR, None, "Autologout: idle for too long")

# Our own trouble.
TEMPORARY_FAILURE = _reply(
    "TEMPORARY_FAILURE", ERR, "SYS/TEMP", "Temporary problem on the server, try again later"
)
MAILBOX_UNAVAILABLE = _reply(
    "MAILBOX_UNAVAILABLE",
    ERR,
    "SYS/PERM",
    "Your mailbox cannot be opened; please tell the administrator",
)
LOCAL_ERROR = _reply("LOCAL_ERROR", ERR, "SYS/TEMP", "Internal error, try again later")
