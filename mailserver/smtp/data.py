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

from collections.abc import Callable
from dataclasses import dataclass
from email.headerregistry import AddressHeader
from email.parser import HeaderParser
from email.policy import SMTPUTF8

from mailserver.address import AddressError, Mailbox, parse_path

END_MARKER = b"\r\n.\r\n"
# Tails that may be the start of END_MARKER, longest first.
_MARKER_PREFIXES = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
_RECEIVED = b"\r\nreceived:"
_HEADER_END = b"\r\n\r\n"
_HEADER_TAIL = len(_RECEIVED) - 1
MAX_KEPT_HEADER = 256 * 1024


@dataclass(frozen=True)
class ContentSummary:
    """What the server needs to know about a message once all of it has arrived."""

    size: int
    too_big: bool
    bare_line_ending: bool
    received_headers: int
    header: bytes | None = None  # the header section, when it was asked for


class ContentInspector:
    """Passes content to ``sink`` while measuring it; see the module docstring."""

    def __init__(
        self, sink: Callable[[bytes], None], max_size: int, keep_header: bool = False
    ) -> None:
        self._sink = sink
        self._header = bytearray() if keep_header else None
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


def authors_of(header: bytes | None) -> tuple[Mailbox, ...] | None:
    """The addresses of the From header fields (RFC 5322 §3.6.2) in a header section, or
    None when there is none that can be read."""
    if not header:
        return None
    end = header.find(_HEADER_END)
    if end >= 0:
        header = header[: end + 2]
    text = header.decode("utf-8", "replace")  # RFC 6532: header fields may be UTF-8
    authors = []
    try:
        fields = HeaderParser(policy=SMTPUTF8).parsestr(text).get_all("From") or []
        for value in fields:
            if not isinstance(value, AddressHeader):
                return None
            for address in value.addresses:
                mailbox = parse_path(f"<{address.addr_spec}>", allow_null=False)
                if mailbox is not None:
                    authors.append(mailbox)
    except AddressError:
        return None
    except Exception:  # the email package raises assorted errors on hostile input
        return None
    return tuple(authors) or None
