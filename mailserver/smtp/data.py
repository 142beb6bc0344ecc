"""Message content as it arrives after DATA or in BDAT chunks: pure decoding, no I/O.

:class:`DotDecoder` undoes RFC 5321 §4.5.2 dot-stuffing and finds the end of data. It works on
whole chunks with ``bytes.find``/``replace`` rather than line by line, holding back at most four
bytes that might begin the end marker. Only ``CRLF . CRLF`` ends the data (§4.1.1.4): a bare LF
or CR never does, so a ``LF . LF`` or ``LF . CRLF`` sequence cannot smuggle a second message.

:class:`ContentInspector` sees the decoded content on its way to the sink: it counts the size
against the limit (and stops writing once it is passed, RFC 1870 §6.3), notes any bare CR or LF
(§2.3.8: the message is then refused), and counts Received headers for loop detection (§6.3).
Asked to, it keeps the header section (up to :data:`MAX_KEPT_HEADER` octets), from which
:func:`authors_of` reads the From addresses that submission checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from email.errors import NonASCIILocalPartDefect
from email.headerregistry import AddressHeader
from email.policy import SMTPUTF8

from mailserver.address import AddressError, Mailbox, parse_path

END_MARKER = b"\r\n.\r\n"
# Tails that may be the start of END_MARKER, longest first.
_MARKER_PREFIXES = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
_RECEIVED = b"\r\nreceived:"
_HEADER_END = b"\r\n\r\n"
_HEADER_TAIL = len(_RECEIVED) - 1
MAX_KEPT_HEADER = 256 * 1024
MAX_AUTHOR_FIELD = 1000  # octets of the From field's value, unfolded; real ones are far shorter
MAX_AUTHORS = 20
# RFC 5322 §2.2: a field name is printable ASCII except the colon, right before it.
_FIELD = re.compile(rb"[!-9;-~]+:")
# RFC 5322 §3.4 in its plainest form: a dot-atom address alone, or after a display name of
# plain words (no "@", "<", ">", ",", ";", ":" or quotes in it) or one simple quoted string.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_SIMPLE_FROM = re.compile(
    rf"[ \t]*(?:(?P<bare>{_DOT_ATOM}@{_DOT_ATOM})"
    rf'|(?:[A-Za-z0-9!#$%&\'*+/=?^_`{{|}}~ \t.-]*|"[^"\\\x00-\x1f\x7f]*")[ \t]*'
    rf"<(?P<angle>{_DOT_ATOM}@{_DOT_ATOM})>)[ \t]*"
)


@dataclass(frozen=True)
class ContentSummary:
    """What the server needs to know about a message once all of it has arrived."""

    size: int
    too_big: bool
    bare_line_ending: bool
    received_headers: int
    header: bytes | None = None  # the header section, when it was asked for
    whole_message_kept: bool = False  # ``header`` holds the whole message, not a beginning


class ContentInspector:
    """Passes content to ``sink`` while measuring it; see the module docstring."""

    def __init__(
        self, sink: Callable[[bytes], None], max_size: int, keep_header: bool = False
    ) -> None:
        self._sink = sink
        self._header = bytearray() if keep_header else None
        # UTF-8 in the header section (RFC 6532): the message needs SMTPUTF8 to travel on.
        self.header_8bit = False
        self._max_size = max_size
        self.size = 0
        self._too_big = False
        self._bare = False
        self._pending_cr = False
        self._in_headers = True
        self._header_tail = b"\r\n"  # the content starts at the beginning of a line
        self._received = 0

    @property
    def too_big(self) -> bool:
        return self._too_big

    def feed(self, content: bytes) -> None:
        if not content:
            return
        self.size += len(content)
        if self._in_headers:
            if self._header is not None and len(self._header) < MAX_KEPT_HEADER:
                self._header += content[: MAX_KEPT_HEADER - len(self._header)]
            self._scan_headers(content)
        if not self._bare:
            self._check_line_endings(content)
        if self.size > self._max_size:
            self._too_big = True
        if not self._too_big:
            self._sink(content)

    def summary(self) -> ContentSummary:
        return ContentSummary(
            size=self.size,
            too_big=self._too_big,
            bare_line_ending=self._bare or self._pending_cr,
            received_headers=self._received,
            header=bytes(self._header) if self._header is not None else None,
            whole_message_kept=self._header is not None and len(self._header) == self.size,
        )

    def _check_line_endings(self, content: bytes) -> None:
        if self._pending_cr:
            self._pending_cr = False
            if content.startswith(b"\n"):
                content = content[1:]
            else:
                self._bare = True
                return
        if content.endswith(b"\r"):
            self._pending_cr = True
            content = content[:-1]
        pairs = content.count(b"\r\n")
        if content.count(b"\r") != pairs or content.count(b"\n") != pairs:
            self._bare = True

    def _scan_headers(self, content: bytes) -> None:
        text = self._header_tail + content.lower()
        end = text.find(_HEADER_END)
        if end >= 0:
            self._in_headers = False
            text = text[: end + 2]
        if not self.header_8bit and not text.isascii():
            self.header_8bit = True
        self._received += text.count(_RECEIVED)
        self._header_tail = text[-_HEADER_TAIL:]


class DotDecoder:
    """Turns the bytes after ``354`` into message content, until ``CRLF . CRLF``."""

    def __init__(self, inspector: ContentInspector) -> None:
        self._inspector = inspector
        # Data begins at the start of a line: pretend a CRLF came first and drop it on output,
        # so a leading "." line and a leading stuffed dot need no special case.
        self._pending = b"\r\n"
        self._strip_leading_crlf = True
        self.finished = False

    def feed(self, data: bytes) -> bytes | None:
        """Consume ``data``; returns None while in data, else the bytes after the end marker."""
        data = self._pending + data
        end = data.find(END_MARKER)
        if end >= 0:
            body, rest = data[: end + 2], data[end + len(END_MARKER) :]
            self._pending = b""
        else:
            keep = next((len(p) for p in _MARKER_PREFIXES if data.endswith(p)), 0)
            body, rest = data[: len(data) - keep], None
            self._pending = data[len(data) - keep :]
        self._emit(body.replace(b"\r\n.", b"\r\n"))
        if rest is not None:
            self.finished = True
        return rest

    def _emit(self, content: bytes) -> None:
        if self._strip_leading_crlf and content:
            content = content[2:]
            self._strip_leading_crlf = False
        self._inspector.feed(content)


class AuthorError(ValueError):
    """The From header cannot be checked: missing, repeated, malformed or too long."""


def authors_of(header: bytes | None, whole_message: bool) -> tuple[Mailbox, ...]:
    """The addresses of the From header field (RFC 5322 §3.6.2), for a policy that must not
    be fooled: every header line must be a field or a continuation (no line that one mail
    reader would skip and another would read), exactly one From field (§3.6), short enough
    to parse quickly, and parsed without a single defect. ``whole_message`` says whether
    ``header`` holds the whole message (it has no blank line after its header section).
    Raises :class:`AuthorError`.
    """
    if not header:
        raise AuthorError("it has no header section")
    end = header.find(_HEADER_END)
    if end < 0 and not whole_message:
        raise AuthorError("its header section is too large to check")
    section = header[:end] if end >= 0 else header.removesuffix(b"\r\n")
    lines = section.split(b"\r\n")
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif _FIELD.match(line):
            fields.append([line])
        else:
            raise AuthorError("its header section has a line that is not a header field")
    author_fields = [field for field in fields if field[0][:5].lower() == b"from:"]
    if not author_fields:
        raise AuthorError("it has no From header field")
    if len(author_fields) > 1:
        raise AuthorError("it has more than one From header field")
    value = b"".join(author_fields[0])[5:]
    if len(value) > MAX_AUTHOR_FIELD:
        raise AuthorError("its From header field is too long")
    try:
        text = value.decode("utf-8")  # RFC 6532: header fields may be UTF-8
    except UnicodeDecodeError as error:
        raise AuthorError("its From header field is not UTF-8") from error
    simple = _SIMPLE_FROM.fullmatch(text.replace("\r\n", ""))
    if simple is not None:
        # The everyday form, "Name <user@example.org>" or "user@example.org": read directly,
        # since the email package's parser costs a millisecond per message.
        address = simple["bare"] or simple["angle"]
        try:
            mailbox = parse_path(f"<{address}>", allow_null=False)
        except AddressError as error:
            raise AuthorError(f"its From header field holds a bad address: {error}") from error
        assert mailbox is not None
        return (mailbox,)
    try:
        parsed = SMTPUTF8.header_factory("From", text)
    except Exception as error:  # the email package fails in assorted ways on hostile input
        raise AuthorError("its From header field is malformed") from error
    # typeshed leaves out BaseHeader.defects, which every parsed header has. A non-ASCII
    # local part is no defect here: SMTPUTF8 and RFC 6532 allow it.
    defects = [
        defect
        for defect in getattr(parsed, "defects", ())
        if not isinstance(defect, NonASCIILocalPartDefect)
    ]
    if not isinstance(parsed, AddressHeader) or defects:
        raise AuthorError("its From header field is malformed")
    authors: dict[str, Mailbox] = {}
    for address in parsed.addresses:
        try:
            mailbox = parse_path(f"<{address.addr_spec}>", allow_null=False)
        except AddressError as error:
            raise AuthorError(f"its From header field holds a bad address: {error}") from error
        if mailbox is not None:
            authors.setdefault(mailbox.normalized(), mailbox)
    if not authors:
        raise AuthorError("its From header field names no address")
    if len(authors) > MAX_AUTHORS:
        raise AuthorError("its From header field names too many addresses")
    return tuple(authors.values())
