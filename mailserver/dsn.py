"""Delivery status notifications: when the sender asked for one, and the notice itself.

Pure apart from reading the queued message file: :func:`wants_notice` applies the sender's
NOTIFY choice (RFC 3461 §4.1); :func:`build_notification` writes an RFC 3464 report
(``multipart/report``, RFC 6522) to a sink in pieces, streaming the original message from its
file so that memory stays bounded whatever the message size. Who sends the notice, and when,
is the queue runner's business; it sends it from the null sender ``<>`` (RFC 5321 §4.5.5).

Everything taken from the remote server (reply text, enhanced code) or from the client that
sent the message (ORCPT, ENVID) is cleaned before it is written into a header field: control
characters never reach the output, so a hostile reply cannot add header fields or MIME parts.

A message sent with SMTPUTF8 (or, inconsistently, with non-ASCII addresses) gets an
internationalised notice (RFC 6533 §4): ``message/global-delivery-status`` with ``utf-8``
address types for non-ASCII addresses, and the original as ``message/global`` or
``message/global-headers``. Sending that notice needs SMTPUTF8 when the sender's address is
non-ASCII and 8BITMIME in any case; a notice for a BODY=8BITMIME message needs 8BITMIME.
"""

from __future__ import annotations

import enum
import re
import secrets
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import BinaryIO

from mailserver.address import AddressError, parse_mailbox, quote_local_part
from mailserver.interfaces import OutboundMessage, OutboundRecipient, ReplyInfo


class Action(enum.Enum):
    """What happened to one recipient (RFC 3464 §2.3.3)."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"  # handed to a server that sends no notices of its own
    EXPANDED = "expanded"  # delivered to an alias or list that sends it on


@dataclass(frozen=True)
class RecipientReport:
    """One recipient's block of a notice."""

    recipient: OutboundRecipient  # Final-Recipient from address; Original-Recipient from orcpt
    action: Action
    status: str  # RFC 3463 code, e.g. "5.1.1"; see status_for(); a malformed one is re-derived
    reply: ReplyInfo | None  # Diagnostic-Code; None when no server answered (our own success)
    remote_host: str | None = None  # Remote-MTA
    last_attempt: float | None = None  # Last-Attempt-Date, epoch seconds
    will_retry_until: float | None = None  # Will-Retry-Until, written for DELAYED only


# RFC 3461 §4.1: the NOTIFY keyword that asks for a notice of each action. "relayed"
# (§5.2.2) and "expanded" (§5.2.7) notices are successes as far as the sender is concerned.
_CONDITION = {
    Action.FAILED: "FAILURE",
    Action.DELAYED: "DELAY",
    Action.DELIVERED: "SUCCESS",
    Action.RELAYED: "SUCCESS",
    Action.EXPANDED: "SUCCESS",
}

FAILED_SUBJECT = "Undelivered Mail Returned to Sender"
DELAYED_SUBJECT = "Delayed Mail (still being retried)"
SUCCESS_SUBJECT = "Successful Mail Delivery Report"

# RFC 3463 §2: class "." subject "." detail, subject and detail of one to three digits.
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>")
_HOSTNAME = re.compile(r"[\x21-\x7e]+")

# Anything a parser might take for the end of a line becomes a space; the other control
# characters become "?". Python's str.splitlines() alone splits on \x1c-\x1e, \x85, \u2028.
_LINE_BREAKING = re.compile(r"[\t\n\v\f\r\x1c-\x1f\x85\u2028\u2029 ]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_FOLD_AT = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters...
_LONGEST_WORD = 900  # ...and MUST be at most 998 octets, so longer words are cut
_TEXT_WIDTH = 76

# RFC 5322 §2.1: an empty line ends the header section; the start of the file counts as the
# start of a line, so a file that begins with an empty line has an empty header section.
_BLANK_LINE = re.compile(rb"\n\r?\n")


def wants_notice(recipient: OutboundRecipient, action: Action) -> bool:
    """Whether the sender asked to hear about ``action`` for this recipient (RFC 3461 §4.1).

    Without NOTIFY we behave as if NOTIFY=FAILURE,DELAY had been given (the RFC leaves the
    delay notice to the MTA; the sender learns that mail is late before it bounces days
    later). NEVER means nothing at all; otherwise exactly the listed conditions. An empty
    set cannot come from the protocol and is treated like no NOTIFY, so that a damaged
    record never silences a bounce.
    """
    if not recipient.notify:
        return action in (Action.FAILED, Action.DELAYED)
    keywords = {keyword.upper() for keyword in recipient.notify}
    if "NEVER" in keywords:
        return False
    return _CONDITION[action] in keywords


def status_for(action: Action, reply: ReplyInfo | None) -> str:
    """The Status of a recipient block (RFC 3464 §2.3.4): the reply's enhanced code when it
    is well formed (RFC 3463 §2) and of the reply code's class (RFC 2034 §4), else the class of
    the reply code with ".0.0", else a code for the action alone."""
    if reply is not None:
        first = str(reply.code)[:1]
        if reply.enhanced and _STATUS.fullmatch(reply.enhanced) and reply.enhanced[0] == first:
            return reply.enhanced
        if first in ("2", "4", "5"):
            return f"{first}.0.0"
    if action is Action.FAILED:
        return "5.0.0"
    if action is Action.DELAYED:
        return "4.0.0"
    return "2.0.0"


def build_notification(
    *,
    reporting_mta: str,
    message: OutboundMessage,
    reports: Sequence[RecipientReport],
    arrival_date: float,
    now: float,
    message_id: str,
    sink: Callable[[bytes], None],
    chunk_size: int = 64 * 1024,
) -> None:
    """Write an RFC 3464 notice about ``message`` for ``reports`` to ``sink``.

    The notice goes to the message's sender; the caller sends it from ``<>``. ``sink``
    receives pieces of at most ``chunk_size`` bytes with CRLF line endings; the original
    is read from ``message.path`` ``chunk_size`` bytes at a time, never whole. Raises
    ``ValueError`` for a null sender (RFC 5321 §4.5.5: a message from ``<>`` is never
    answered with a notice), for no reports, and for a malformed ``reporting_mta`` or
    ``message_id`` (those are ours: a bad one is a bug). ``OSError`` from reading the
    message file propagates after some pieces may have been written.
    """
    if message.sender == "":
        raise ValueError("no notice is ever sent to the null sender (RFC 5321 §4.5.5)")
    if not reports:
        raise ValueError("a notice needs at least one recipient (RFC 3464 §2.1)")
    if not _HOSTNAME.fullmatch(reporting_mta):
        raise ValueError(f"invalid reporting MTA name: {reporting_mta!r}")
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"invalid Message-ID: {message_id!r}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")

    international = _is_international(message, reports)
    actions = {report.action for report in reports}
    # RFC 3461 §4.3: RET applies only to a notice that reports a failure; without RET we
    # return the whole message with a failure. Any other notice carries the headers only.
    failed = Action.FAILED in actions
    full = failed and (message.ret or "").upper() != "HDRS"
    eight_bit = international or message.body_8bit
    encoding = "8bit" if eight_bit else "7bit"
    boundary = _boundary()

    out = _Writer(sink, chunk_size)
    out.write(
        _top_header(reporting_mta, message, actions, now, message_id, boundary, encoding)
        + "\r\nThis is a MIME-formatted message. Its second part is a machine-readable\r\n"
        "delivery report (RFC 3464).\r\n"
    )
    out.write(
        _part_header(
            boundary,
            "Notification",
            f"text/plain; charset={'utf-8' if international else 'us-ascii'}",
            "8bit" if international else "7bit",
        )
        + _human_text(reporting_mta, message, reports, full, international)
    )
    out.write(
        _part_header(
            boundary,
            "Delivery report",
            # RFC 6533 §4: the report of an internationalised message may carry UTF-8.
            "message/global-delivery-status" if international else "message/delivery-status",
            "8bit" if international else "7bit",
        )
        + _status_fields(reporting_mta, message, reports, arrival_date, international)
    )
    if full:
        # RFC 6522 §3 (part 3 is optional, its type ours to choose) and RFC 6533 §4.
        content_type = "message/global" if international else "message/rfc822"
        description = "Undelivered message"
    else:
        # RFC 6522 §4: text/rfc822-headers holds the header section alone.
        content_type = "message/global-headers" if international else "text/rfc822-headers"
        description = "Undelivered message headers" if failed else "Message headers"
    out.write(_part_header(boundary, description, content_type, encoding))
    with message.path.open("rb") as original:
        original.seek(message.offset)  # past the headers of our local copies
        pieces = _read(original, chunk_size) if full else _header_section(original, chunk_size)
        for piece in pieces:
            out.write_bytes(piece)
    # RFC 2046 §5.1.1: the CRLF before the delimiter belongs to it, so the original's own
    # bytes are returned unchanged, with or without a final line ending.
    out.write(f"\r\n--{boundary}--\r\n")
    out.flush()


def _is_international(message: OutboundMessage, reports: Sequence[RecipientReport]) -> bool:
    """RFC 6531 §3.4: non-ASCII addresses travel only with SMTPUTF8, so they imply it."""
    texts = [message.sender]
    for report in reports:
        texts.append(report.recipient.address)
        texts.append(report.recipient.orcpt or "")
    return message.smtputf8 or not all(text.isascii() for text in texts)


def _boundary() -> str:
    """RFC 2046 §5.1.1: the delimiter must not occur in any part. 160 random bits make a
    collision with the content (remote text included: it cannot be guessed) negligible;
    "=_" cannot occur in quoted-printable or base64 text either."""
    return f"=_dsn_{secrets.token_hex(20)}"


def _top_header(
    reporting_mta: str,
    message: OutboundMessage,
    actions: set[Action],
    now: float,
    message_id: str,
    boundary: str,
    encoding: str,
) -> str:
    # The worst news names the notice: a failure, else a delay, else success.
    if Action.FAILED in actions:
        subject = FAILED_SUBJECT
    elif Action.DELAYED in actions:
        subject = DELAYED_SUBJECT
    else:
        subject = SUCCESS_SUBJECT
    fields = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{_clean(_addr_spec(message.sender), unicode_ok=True)}>",  # RFC 6532 §3.2
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: automatic, so no responder answers
        "MIME-Version: 1.0",
        # RFC 6522 §3: report-type names the report; "delivery-status" for the global
        # variant too, as deployed servers write it and readers expect it.
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
        f"Content-Transfer-Encoding: {encoding}",  # RFC 2045 §6.4: 7bit or 8bit only
    ]
    return "".join(field + "\r\n" for field in fields)


def _part_header(boundary: str, description: str, content_type: str, encoding: str) -> str:
    return (
        f"\r\n--{boundary}\r\n"
        f"Content-Description: {description}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n"
        "\r\n"
    )


def _human_text(
    reporting_mta: str,
    message: OutboundMessage,
    reports: Sequence[RecipientReport],
    full: bool,
    international: bool,
) -> str:
    """The first part (RFC 6522 §3): what happened, in words, for a person to read."""
    actions = {report.action for report in reports}
    attached = "it is attached below" if full else "its header section is attached below"
    if Action.FAILED in actions:
        intro = (
            "Your message could not be delivered to one or more recipients. The mail system "
            f"has given up on them; {attached}."
        )
    elif Action.DELAYED in actions:
        intro = (
            "Your message has not yet been delivered to one or more recipients. This is only "
            "a warning: the mail system keeps trying, and you need not send the message again."
        )
    else:
        intro = "This is a delivery report that you asked for when you sent the message."
    paragraphs = [f"This is the mail system at {reporting_mta}.", intro]
    for report in reports:
        paragraphs.append(_human_recipient(report, international))
    paragraphs.append(f"Queue ID: {_clean(message.id, international)}")
    lines: list[str] = []
    for paragraph in paragraphs:
        for line in paragraph.split("\n"):
            if line.startswith("    "):
                indent = "        "  # a detail of a recipient
            elif line.startswith("<"):
                indent = "    "  # a recipient
            else:
                indent = ""
            wrapped = textwrap.wrap(
                _limit_words(line),
                width=_TEXT_WIDTH,
                subsequent_indent=indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
            lines.extend(wrapped or [""])
        lines.append("")
    lines.pop()  # no empty line before the delimiter
    return "".join(line + "\r\n" for line in lines)


_WHAT_HAPPENED = {
    Action.FAILED: "delivery failed",
    Action.DELAYED: "not delivered yet, still trying",
    Action.DELIVERED: "delivered",
    Action.RELAYED: (
        "handed to the destination server, which sends no delivery reports of its own"
    ),
    Action.EXPANDED: "delivered to an alias or list, which sends it on",
}


def _human_recipient(report: RecipientReport, international: bool) -> str:
    address = _clean(_addr_spec(report.recipient.address), international)
    lines = [f"<{address}>: {_WHAT_HAPPENED[report.action]}"]
    if report.reply is not None:
        diagnostic = _diagnostic(report.reply, international)
        if report.remote_host:
            host = _clean(report.remote_host, international)
            lines.append(f"    The server {host} answered: {diagnostic}")
        else:  # a reply we wrote ourselves: no server reached, or our own verdict
            lines.append(f"    Reason: {diagnostic}")
    if report.last_attempt is not None:
        lines.append(f"    Last attempt: {_date(report.last_attempt)}")
    if report.action is Action.DELAYED and report.will_retry_until is not None:
        lines.append(f"    Will keep trying until: {_date(report.will_retry_until)}")
    return "\n".join(lines)


def _status_fields(
    reporting_mta: str,
    message: OutboundMessage,
    reports: Sequence[RecipientReport],
    arrival_date: float,
    international: bool,
) -> str:
    """The second part (RFC 3464 §2.1): the per-message fields, a blank line, then one block
    of per-recipient fields for each recipient, each in the order of the §2.1 grammar."""
    fields: list[tuple[str, str]] = []
    if message.envid:
        fields.append(("Original-Envelope-Id", _clean(message.envid, international)))  # §2.2.1
    fields.append(("Reporting-MTA", f"dns; {reporting_mta}"))  # §2.2.2
    fields.append(("Arrival-Date", _date(arrival_date)))  # §2.2.5
    blocks = [fields]
    for report in reports:
        fields = []
        recipient = report.recipient
        if recipient.orcpt:  # RFC 3461 §6.3: present exactly when ORCPT was given
            fields.append(("Original-Recipient", _original_recipient(recipient.orcpt)))  # §2.3.1
        fields.append(("Final-Recipient", _typed_address(recipient.address)))  # §2.3.2
        fields.append(("Action", report.action.value))  # §2.3.3
        status = report.status if _STATUS.fullmatch(report.status) else ""
        fields.append(("Status", status or status_for(report.action, report.reply)))  # §2.3.4
        if report.remote_host:
            fields.append(("Remote-MTA", f"dns; {_clean(report.remote_host, international)}"))
        if report.reply is not None:  # §2.3.6; RFC 6533 §6.2 allows UTF-8 in the global form
            fields.append(("Diagnostic-Code", f"smtp; {_diagnostic(report.reply, international)}"))
        if report.last_attempt is not None:
            fields.append(("Last-Attempt-Date", _date(report.last_attempt)))  # §2.3.7
        if report.action is Action.DELAYED and report.will_retry_until is not None:
            fields.append(("Will-Retry-Until", _date(report.will_retry_until)))  # §2.3.9
        blocks.append(fields)
    # Addresses are ASCII unless the notice is international (see _is_international).
    return "\r\n".join("".join(_fold(name, value) for name, value in block) for block in blocks)


def _original_recipient(orcpt: str) -> str:
    """ORCPT as given, xtext already decoded (RFC 3461 §4.2): ``address-type;address``."""
    kind, separator, address = orcpt.partition(";")
    if not separator:  # not what the SMTP server accepts; keep the address anyway
        kind, address = ("rfc822" if orcpt.isascii() else "utf-8"), orcpt
    return f"{_clean(kind, unicode_ok=True)};{_clean(address, unicode_ok=True)}"


def _typed_address(address: str) -> str:
    """RFC 3464 §2.3.2 ``rfc822;addr``, or RFC 6533 §3 ``utf-8;addr`` (the utf-8-address
    form, raw UTF-8) for a non-ASCII address, which only an internationalised notice has."""
    kind = "rfc822" if address.isascii() else "utf-8"
    return f"{kind};{_clean(_addr_spec(address), unicode_ok=True)}"


def _addr_spec(address: str) -> str:
    """The address written as RFC 5322 wants it: a local part that needs it is quoted
    (the queue may hold the normalised, unquoted form)."""
    try:
        return str(parse_mailbox(address))
    except AddressError:
        local, at, domain = address.rpartition("@")
        return f"{quote_local_part(local)}@{domain}" if at else address


def _diagnostic(reply: ReplyInfo, unicode_ok: bool) -> str:
    """``code enhanced text`` on one line (RFC 3464 §2.3.6), the reply's lines joined."""
    enhanced = reply.enhanced if reply.enhanced and _STATUS.fullmatch(reply.enhanced) else None
    words = [str(reply.code), *([enhanced] if enhanced else []), reply.text]
    return _clean(" ".join(words), unicode_ok)


def _clean(text: str, unicode_ok: bool) -> str:
    """One line of text that is safe in a header field: runs of whitespace and line breaks
    become one space, other control characters "?", and, unless the part may carry UTF-8,
    non-ASCII characters "?" too (lone surrogates from undecodable bytes always)."""
    text = _CONTROL.sub("?", _LINE_BREAKING.sub(" ", text)).strip(" ")
    if unicode_ok:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text.encode("ascii", "replace").decode("ascii")


def _limit_words(text: str) -> str:
    """Cut words longer than the line limit allows (RFC 5322 §2.1.1: 998 octets)."""
    words = []
    for word in text.split(" "):
        while len(encoded := word.encode("utf-8")) > _LONGEST_WORD:
            # "ignore" drops a character cut in two, which then starts the next piece.
            piece = encoded[:_LONGEST_WORD].decode("utf-8", "ignore")
            words.append(piece)
            word = word[len(piece) :]
        words.append(word)
    return " ".join(words)


def _fold(name: str, value: str) -> str:
    """``Name: value`` CRLF, folded at spaces (RFC 5322 §2.2.3) into lines of at most 78
    characters where the words allow; ``value`` has no control characters."""
    lines: list[str] = []
    line = f"{name}:"
    for word in _limit_words(value).split(" "):
        if not word:
            continue
        if len(line) + 1 + len(word) > _FOLD_AT and line.strip() != f"{name}:":
            lines.append(line)
            line = f" {word}"
        else:
            line = f"{line} {word}"
    lines.append(line)
    return "".join(line + "\r\n" for line in lines)


def _date(timestamp: float) -> str:
    """RFC 5322 §3.3 date-time in UTC: the form of every date field of RFC 3464 (§2.2.5)."""
    return format_datetime(datetime.fromtimestamp(timestamp, UTC))


def _read(original: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    while chunk := original.read(chunk_size):
        yield chunk


def _header_section(original: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    """The header section of the message, streamed: every line before the first empty one
    (the whole file when it has none). A line end that may begin the empty line (LF, or LF
    CR) is held back until the next chunk tells; nothing else is kept."""
    window = b"\n"  # stands for the start of the file, which starts a line
    skip = 1  # leading bytes of window that are not the file's
    for chunk in _read(original, chunk_size):
        window += chunk
        match = _BLANK_LINE.search(window)
        if match is not None:
            end = match.start() + 1  # just after the last header line's LF
            if end > skip:
                yield window[skip:end]
            return
        keep = 2 if window.endswith(b"\n\r") else 1 if window.endswith(b"\n") else 0
        cut = len(window) - keep
        if cut > skip:
            yield window[skip:cut]
        window = window[cut:]
        skip = max(skip - cut, 0)
    if len(window) > skip:
        yield window[skip:]


class _Writer:
    """Gathers the notice into pieces of exactly ``chunk_size`` bytes (the last one
    shorter), so the sink sees few, bounded writes."""

    def __init__(self, sink: Callable[[bytes], None], chunk_size: int) -> None:
        self._sink = sink
        self._chunk_size = chunk_size
        self._buffer = bytearray()

    def write(self, text: str) -> None:
        # Every text from outside went through _clean(), so this cannot fail.
        self.write_bytes(text.encode("utf-8"))

    def write_bytes(self, data: bytes) -> None:
        self._buffer += data
        full = len(self._buffer) - len(self._buffer) % self._chunk_size
        with memoryview(self._buffer) as view:
            for start in range(0, full, self._chunk_size):
                self._sink(bytes(view[start : start + self._chunk_size]))
        del self._buffer[:full]

    def flush(self) -> None:
        if self._buffer:
            self._sink(bytes(self._buffer))
            self._buffer.clear()
