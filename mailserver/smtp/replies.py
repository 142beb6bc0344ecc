"""Every SMTP reply the server sends, by name, with its RFC 3463 enhanced status code.

Tests compare replies with these names: two replies are equal when their name, code and
enhanced code agree, whatever their text (which may carry an id or a detail).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str | None
    text: str = field(compare=False)
    name: str = ""

    def with_text(self, text: str) -> Reply:
        return replace(self, text=text)

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def to_bytes(self) -> bytes:
        """Wire form; multi-line text (lines joined by newlines) uses ``code-`` continuations."""
        lines = self.text.split("\n")
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = []
        for index, line in enumerate(lines):
            separator = " " if index == len(lines) - 1 else "-"
            out.append(f"{self.code}{separator}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8")


def _reply(name: str, code: int, enhanced: str | None, text: str) -> Reply:
    return Reply(code, enhanced, text, name)


# RFC 2034 §3: enhanced codes on every reply except the greeting and the EHLO/HELO replies.
GREETING = _reply("GREETING", 220, None, "ESMTP ready")
EHLO_OK = _reply("EHLO_OK", 250, None, "")
HELO_OK = _reply("HELO_OK", 250, None, "")
OK = _reply("OK", 250, "2.0.0", "OK")
RESET_OK = _reply("RESET_OK", 250, "2.0.0", "Reset state")
SENDER_OK = _reply("SENDER_OK", 250, "2.1.0", "Sender OK")
RECIPIENT_OK = _reply("RECIPIENT_OK", 250, "2.1.5", "Recipient OK")
START_DATA = _reply("START_DATA", 354, None, "End data with <CR><LF>.<CR><LF>")
CHUNK_OK = _reply("CHUNK_OK", 250, "2.0.0", "Chunk received")
MESSAGE_ACCEPTED = _reply("MESSAGE_ACCEPTED", 250, "2.0.0", "Message accepted")
VRFY_CANNOT_VERIFY = _reply(
    "VRFY_CANNOT_VERIFY", 252, "2.5.0", "Cannot verify the user, but will accept mail for it"
)
HELP = _reply(
    "HELP",
    214,
    "2.0.0",
    "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\n"
    "See RFC 5321 and https://www.rfc-editor.org/info/rfc5321",
)
CLOSING = _reply("CLOSING", 221, "2.0.0", "Bye")
READY_FOR_TLS = _reply("READY_FOR_TLS", 220, "2.0.0", "Ready to start TLS")  # RFC 3207 §4
AUTH_CHALLENGE = _reply("AUTH_CHALLENGE", 334, None, "")  # RFC 4954 §4: text is base64
AUTHENTICATED = _reply("AUTHENTICATED", 235, "2.7.0", "Authentication successful")

# The client broke the protocol.
LINE_TOO_LONG = _reply("LINE_TOO_LONG", 500, "5.5.2", "Line too long")
UNRECOGNIZED_COMMAND = _reply("UNRECOGNIZED_COMMAND", 500, "5.5.2", "Command not recognized")
BARE_LINE_ENDING_IN_COMMAND = _reply(
    "BARE_LINE_ENDING_IN_COMMAND", 500, "5.5.2", "Bare CR or LF in command line"
)
SYNTAX_ERROR = _reply("SYNTAX_ERROR", 501, "5.5.4", "Syntax error in parameters")
BAD_HELO = _reply("BAD_HELO", 501, "5.5.4", "Invalid domain or address literal")
BAD_SENDER_SYNTAX = _reply("BAD_SENDER_SYNTAX", 501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = _reply("BAD_RECIPIENT_SYNTAX", 501, "5.1.3", "Bad recipient address syntax")
NOT_IMPLEMENTED = _reply("NOT_IMPLEMENTED", 502, "5.5.1", "Command not implemented")
NEED_HELO = _reply("NEED_HELO", 503, "5.5.1", "Send EHLO or HELO first")
NEED_EHLO = _reply("NEED_EHLO", 503, "5.5.1", "Send EHLO first: HELO offers no extensions")
NEED_MAIL = _reply("NEED_MAIL", 503, "5.5.1", "Send MAIL first")
NESTED_MAIL = _reply("NESTED_MAIL", 503, "5.5.1", "Sender already given")
BDAT_IN_PROGRESS = _reply(
    "BDAT_IN_PROGRESS", 503, "5.5.1", "BDAT transaction in progress: send BDAT or RSET"
)
NO_VALID_RECIPIENTS = _reply("NO_VALID_RECIPIENTS", 554, "5.5.1", "No valid recipients")
UNKNOWN_PARAMETER = _reply(
    "UNKNOWN_PARAMETER", 555, "5.5.4", "MAIL or RCPT parameter not recognized"
)
BAD_BODY_PARAMETER = _reply("BAD_BODY_PARAMETER", 501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
BAD_SIZE_PARAMETER = _reply("BAD_SIZE_PARAMETER", 501, "5.5.4", "SIZE must be a number")
BAD_DSN_PARAMETER = _reply("BAD_DSN_PARAMETER", 501, "5.5.4", "Bad DSN parameter")
NEEDS_SMTPUTF8 = _reply(
    "NEEDS_SMTPUTF8", 553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter"
)
BARE_LINE_ENDING_IN_DATA = _reply(
    "BARE_LINE_ENDING_IN_DATA",
    550,
    "5.5.2",
    "Message refused: bare CR or LF; lines must end with CRLF (RFC 5321 section 2.3.8)",
)
TOO_MANY_ERRORS = _reply("TOO_MANY_ERRORS", 421, "4.7.0", "Too many errors, closing connection")
TLS_ALREADY_ACTIVE = _reply("TLS_ALREADY_ACTIVE", 503, "5.5.1", "TLS is already active")
IN_TRANSACTION = _reply(
    "IN_TRANSACTION", 503, "5.5.1", "Not allowed during a mail transaction: send RSET first"
)
# Authentication (RFC 4954 §4 and §6).
ALREADY_AUTHENTICATED = _reply("ALREADY_AUTHENTICATED", 503, "5.5.1", "Already authenticated")
AUTH_CANCELLED = _reply("AUTH_CANCELLED", 501, "5.0.0", "Authentication cancelled")
BAD_AUTH_RESPONSE = _reply("BAD_AUTH_RESPONSE", 501, "5.5.2", "Malformed authentication response")
AUTH_LINE_TOO_LONG = _reply(
    "AUTH_LINE_TOO_LONG", 500, "5.5.6", "Authentication exchange line is too long"
)
UNKNOWN_MECHANISM = _reply(
    "UNKNOWN_MECHANISM", 504, "5.5.4", "Unrecognized authentication mechanism"
)
ENCRYPTION_REQUIRED = _reply(
    "ENCRYPTION_REQUIRED",
    538,
    "5.7.11",
    "Encryption required for requested authentication mechanism: send STARTTLS first",
)
AUTH_FAILED = _reply("AUTH_FAILED", 535, "5.7.8", "Authentication credentials invalid")
TOO_MANY_AUTH_FAILURES = _reply(
    "TOO_MANY_AUTH_FAILURES", 421, "4.7.0", "Too many failed authentications, closing connection"
)
AUTH_REQUIRED = _reply("AUTH_REQUIRED", 530, "5.7.0", "Authentication required")

# Policy.
RELAY_DENIED = _reply("RELAY_DENIED", 554, "5.7.1", "Relay access denied")
SENDER_NOT_OWNED = _reply(
    "SENDER_NOT_OWNED", 553, "5.7.1", "Sender address is not one of the authenticated user's"
)
AUTHOR_NOT_OWNED = _reply(
    "AUTHOR_NOT_OWNED",
    550,
    "5.7.1",
    "Message refused: a From header address is not one of the authenticated user's",
)
UNCHECKABLE_AUTHOR = _reply(
    "UNCHECKABLE_AUTHOR",
    550,
    "5.6.0",
    "Message refused: its From header field cannot be checked (RFC 5322 section 3.6)",
)
# RFC 7489 §6.6.4 and RFC 7208 §8.4: a refusal at the end of the data, 550 with 5.7.1.
DMARC_REJECTED = _reply(
    "DMARC_REJECTED", 550, "5.7.1", "Message refused: it fails the DMARC policy of its From domain"
)
SPF_REJECTED = _reply(
    "SPF_REJECTED", 550, "5.7.1", "Message refused: the sender's SPF record does not allow it"
)
HEADER_TOO_LARGE = _reply(
    "HEADER_TOO_LARGE", 552, "5.3.4", "Message refused: its header section is too large"
)
# RFC 7208 §8.6: a DNS failure during the checks is answered 451 with 4.4.3.
CHECKS_DEFERRED = _reply(
    "CHECKS_DEFERRED", 451, "4.4.3", "Sender checks failed on a DNS error, try again later"
)
NO_SUCH_USER = _reply("NO_SUCH_USER", 550, "5.1.1", "No such user here")
ALIAS_LOOP = _reply("ALIAS_LOOP", 550, "5.4.6", "Alias loop for this recipient")
TOO_MANY_RECIPIENTS = _reply("TOO_MANY_RECIPIENTS", 452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = _reply("MESSAGE_TOO_BIG", 552, "5.3.4", "Message size exceeds fixed limit")
TOO_MANY_HOPS = _reply(
    "TOO_MANY_HOPS", 554, "5.4.0", "Too many Received headers: probable mail loop"
)
TOO_MANY_CONNECTIONS = _reply(
    "TOO_MANY_CONNECTIONS", 421, "4.7.0", "Too many connections from your address"
)
SERVER_BUSY = _reply("SERVER_BUSY", 421, "4.3.2", "Too many connections, try again later")
TIMEOUT = _reply("TIMEOUT", 421, "4.4.2", "Timeout, closing connection")

# Our own trouble: always temporary (never 5xx for a problem of ours).
INSUFFICIENT_STORAGE = _reply(
    "INSUFFICIENT_STORAGE", 452, "4.3.1", "Insufficient system storage, try again later"
)
LOCAL_ERROR = _reply("LOCAL_ERROR", 451, "4.3.0", "Local error in processing, try again later")
AUTH_UNAVAILABLE = _reply(
    "AUTH_UNAVAILABLE", 454, "4.7.0", "Temporary authentication failure, try again later"
)
