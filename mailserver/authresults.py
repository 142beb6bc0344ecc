"""The Authentication-Results header field (RFC 8601): writing ours, removing forgeries.

Readers trust an Authentication-Results field by its authserv-id, so a message must not reach
them carrying one that claims to be ours but was written by the sender (§5). The filter here
drops such fields from the header section as the message streams past, holding back only the
field under decision (bounded); every other octet goes straight through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FIELD_NAME = "Authentication-Results"
MAX_HELD = 64 * 1024  # a longer field claiming to be ours is dropped without being read to its end
_NAME_LINE = re.compile(rb"authentication-results[ \t]*:", re.IGNORECASE)
_CLASSIFY = len(b"authentication-results") + 64  # octets that always show whether it is one
# RFC 2045 §5.1 tspecials, space and controls may not appear in a token.
_TOKEN = re.compile(r"[^\x00-\x20()<>@,;:\\\"/\[\]?=\x7f]+")
# §2.2 pvalue: also "[ [ local-part ] "@" ] domain-name" as it is.
_ADDRESS = re.compile(r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]*@)?[A-Za-z0-9.-]+")
QUOTED_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")


@dataclass(frozen=True)
class MethodResult:
    """One ``method=result (comment) ptype.property=value ...`` entry (§2.2)."""

    method: str
    result: str
    comment: str = ""
    properties: Sequence[tuple[str, str]] = ()


def _value(text: str) -> str:
    """A property value: a token or an address as it is, else a quoted string (§2.2)."""
    if _TOKEN.fullmatch(text) or _ADDRESS.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f" ({escaped})" if text else ""


def header_field(authserv_id: str, results: Sequence[MethodResult]) -> bytes:
    """The whole field, folded one method per line, ending in CRLF; ``none`` when no method
    applied (§2.2)."""
    entries = [
        f"{r.method}={r.result}{_comment(r.comment)}"
        + "".join(f" {name}={_value(value)}" for name, value in r.properties)
        for r in results
    ] or ["none"]
    text = f"{FIELD_NAME}: {authserv_id};\r\n\t" + ";\r\n\t".join(entries) + "\r\n"
    return text.encode("utf-8")


def without_comments(text: str) -> str:
    """``text`` with its RFC 5322 §3.2.2 comments (which may nest) replaced by spaces."""
    previous = None
    while previous != text:
        previous, text = text, _COMMENT.sub(" ", text)
    return text


def without_quoted_strings(text: str) -> str:
    """``text`` with its RFC 5322 §3.2.4 quoted strings replaced by spaces."""
    return QUOTED_STRING.sub(" ", text)


def authserv_id_of(value: bytes) -> str:
    """The authserv-id of a field value (§2.2): the first word, comments and folding aside,
    unquoted if it is a quoted string (a reader unquotes it too)."""
    text = without_comments(value.decode("utf-8", "replace").replace("\r\n", "")).strip()
    if text.startswith('"'):
        quoted = QUOTED_STRING.match(text)
        if quoted is not None:
            return re.sub(r"\\(.)", r"\1", quoted[1]).strip().lower()
    return text.split(";", 1)[0].split(None, 1)[0].lower() if text else ""


class ForgedResultsFilter:
    """Passes content to ``sink``, leaving out header fields named Authentication-Results
    whose authserv-id is ``authserv_id`` (compared without case)."""

    def __init__(self, authserv_id: str, sink: Callable[[bytes], None]) -> None:
        self._ours = authserv_id.lower()
        self._sink = sink
        self._in_header = True
        self._at_line_start = True
        self._pending = b""  # the start of a line, too short to classify
        self._held: bytearray | None = None  # an Authentication-Results field being read
        self._dropping = False  # inside a field already judged a forgery
        self.removed = 0

    def feed(self, data: bytes) -> None:
        if not self._in_header:
            self._sink(data)
            return
        data = self._pending + data
        self._pending = b""
        out = bytearray()
        position = 0
        while position < len(data) and self._in_header:
            if self._at_line_start:
                line_start = data[position : position + _CLASSIFY]
                if self._held is not None or self._dropping:
                    if line_start[:1] in (b" ", b"\t"):
                        pass  # the field goes on
                    elif not line_start or line_start == b"\r":
                        self._pending = data[position:]
                        break
                    else:
                        self._field_ended(out)
                if line_start.startswith(b"\r\n"):
                    self._in_header = False
                    break
                if not (self._held is not None or self._dropping):
                    if len(line_start) < _CLASSIFY and b"\n" not in line_start:
                        self._pending = data[position:]  # too little yet to tell
                        break
                    if _NAME_LINE.match(line_start):
                        self._held = bytearray()
            end = data.find(b"\r\n", position)
            if end < 0:
                piece = data[position:]
                if piece.endswith(b"\r"):
                    piece = piece[:-1]
                    self._pending = b"\r"
                position = len(data)
                self._at_line_start = False
            else:
                piece = data[position : end + 2]
                position = end + 2
                self._at_line_start = True
            self._route(piece, out)
        if not self._in_header:
            out += data[position:]
        if out:
            self._sink(bytes(out))

    def end(self) -> None:
        """The message is complete: decide on a field still held (a message without body),
        and on a last line too short to classify until now."""
        out = bytearray()
        pending, self._pending = self._pending, b""
        if self._in_header and self._at_line_start and pending[:1] not in (b" ", b"\t"):
            self._field_ended(out)
            if _NAME_LINE.match(pending):
                self._held = bytearray()
        if pending:
            self._route(pending, out)
        self._field_ended(out)
        if out:
            self._sink(bytes(out))

    def _route(self, piece: bytes, out: bytearray) -> None:
        if self._dropping:
            return
        if self._held is None:
            out += piece
            return
        self._held += piece
        if len(self._held) > MAX_HELD:
            self._held = None
            self._dropping = True
            self.removed += 1

    def _field_ended(self, out: bytearray) -> None:
        held, self._held = self._held, None
        self._dropping = False
        if held is None:
            return
        value = bytes(held).split(b":", 1)[1]
        if authserv_id_of(value) == self._ours:
            self.removed += 1
        else:
            out += held
