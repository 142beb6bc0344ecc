"""Dot-stuffing a message chunk by chunk: the transparency rule that SMTP DATA (RFC 5321
§4.5.2) and POP3 multi-line responses (RFC 1939 §3) share.

Both protocols end a message with a line holding a single ".", so every line of the message
that starts with "." gets one more "." in front, and the message ends with CRLF "." CRLF.
The message arrives in chunks of any size; a line may start anywhere in a chunk, at a chunk's
first octet, or right after a chunk that ended with LF, so the encoders here carry the little
state that crosses chunk boundaries. Doing it per chunk without that state is how a "." line
on a chunk boundary ends a message early and lets the rest run as commands.

A line starts after every LF, bare or not: readers split lines at LF (Python's ``poplib``
does), so stuffing after a bare LF too keeps such a reader from mistaking a "." line for the
end. POP3 sends the stored octets unchanged (:class:`DotStuffer`); SMTP must never send a bare
CR or LF (RFC 5321 §2.3.8), so :class:`SMTPDataEncoder` turns them into CRLF first.

These classes are pure: bytes in, bytes out, no I/O.
"""

from __future__ import annotations

import re
from typing import Protocol

CRLF = b"\r\n"
TERMINATOR = b".\r\n"
# A "." that starts a line after the chunk's first octet. Most chunks hold none, and on
# CPython 3.11 a search with this expression finds that out in about half the time that
# bytes.find or bytes.replace take to scan for the two octets.
_DOT_AFTER_LF = re.compile(rb"\n\.")


class Encoder(Protocol):
    """What the streaming glue needs from an encoder."""

    @property
    def done(self) -> bool:
        """True once no further input can change the output (POP3 TOP has all it needs)."""

    def feed(self, chunk: bytes) -> bytes:
        """The wire octets for the next chunk of the stored message."""

    def finish(self) -> bytes:
        """The octets that end the message: a CRLF if the message lacked one, then ".CRLF"."""


class DotStuffer:
    """Doubles the "." that starts a line, and ends the message with ".CRLF" on its own line."""

    def __init__(self) -> None:
        self._at_line_start = True
        self._tail = b""  # the last two octets seen, to know whether the message ended in CRLF

    @property
    def done(self) -> bool:
        return False

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        # RFC 5321 §4.5.2, RFC 1939 §3: a line beginning with "." gets another in front.
        out = chunk.replace(b"\n.", b"\n..") if _DOT_AFTER_LF.search(chunk) else chunk
        if self._at_line_start and chunk[0] == 0x2E:  # "." right after a boundary at line start
            out = b"." + out
        self._at_line_start = chunk[-1] == 0x0A
        self._tail = chunk[-2:] if len(chunk) > 1 else (self._tail + chunk)[-2:]
        return out

    def finish(self) -> bytes:
        # The terminating "." must be on a line of its own (RFC 5321 §4.1.1.4, RFC 1939 §3).
        if self._tail and self._tail != CRLF:
            return CRLF + TERMINATOR
        return TERMINATOR


class LineEndingNormaliser:
    """Turns every bare CR and bare LF into CRLF, whatever the chunking.

    A CR at the end of a chunk is held back until the next chunk (or the end) says whether an
    LF follows it, so a CRLF split between two chunks stays one line ending.
    """

    def __init__(self) -> None:
        self._held_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._held_cr = True
        if b"\r" not in chunk:
            if b"\n" not in chunk:
                return chunk
            return chunk.replace(b"\n", CRLF)
        # Every ending (CRLF, bare CR, bare LF) to LF first, then each LF to CRLF.
        return chunk.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)

    def finish(self) -> bytes:
        """A CR held back at the very end is a bare CR: it becomes a line ending."""
        if self._held_cr:
            self._held_cr = False
            return CRLF
        return b""


class SMTPDataEncoder:
    """The message as it goes after DATA: line endings made CRLF (RFC 5321 §2.3.8: "bare" CR
    or LF must not be sent), then dot-stuffed, then CRLF "." CRLF (RFC 5321 §4.1.1.4), with a
    CRLF added first when the message does not end with one."""

    def __init__(self) -> None:
        self._normaliser = LineEndingNormaliser()
        self._stuffer = DotStuffer()

    @property
    def done(self) -> bool:
        return False

    def feed(self, chunk: bytes) -> bytes:
        return self._stuffer.feed(self._normaliser.feed(chunk))

    def finish(self) -> bytes:
        return self._stuffer.feed(self._normaliser.finish()) + self._stuffer.finish()
