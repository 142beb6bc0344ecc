"""Encoding a stored message as the body of a POP3 multi-line response, chunk by chunk.

RFC 1939 §3: a multi-line response ends with a line holding a single ".", so every line of
the message that starts with "." gets one more "." in front ("byte-stuffing"), and the
response ends with CRLF "." CRLF. The stuffing itself, with the state that crosses chunk
boundaries, is :class:`mailserver.stuffing.DotStuffer`, shared with the SMTP client; this
module adds what only POP3 needs: TOP's cut after the header and some body lines.

Nothing is converted: the stored octets are CRLF already (the SMTP side refuses bare line
endings), and RFC 1939 §11 wants the size from LIST to be what RETR sends.

These classes are pure: bytes in, bytes out, no I/O.
"""

from __future__ import annotations

from mailserver.stuffing import DotStuffer, Encoder

__all__ = ["DotStuffer", "Encoder", "TopEncoder", "TopFilter", "encoder_for"]


class TopFilter:
    """Passes the header, the empty line after it, and then ``body_lines`` lines of the body.

    RFC 1939 §7 (TOP): "the headers of the message, the blank line separating the headers
    from the body, and then the number of lines of the indicated message's body"; a message
    with fewer lines is sent whole. A message with no empty line is all header.
    """

    def __init__(self, body_lines: int) -> None:
        if body_lines < 0:
            raise ValueError("body_lines must not be negative")
        self._remaining = body_lines
        self._in_header = True
        # The current header line so far: its length, and its first octet (an empty line is
        # "" or a lone CR before its LF).
        self._line_length = 0
        self._line_first = 0
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """The part of ``chunk`` to send; once :attr:`done`, always ``b""``."""
        if self.done:
            return b""
        position = 0
        end = len(chunk)
        while position < end:
            if self._in_header:
                newline = chunk.find(b"\n", position)
                stop = end if newline < 0 else newline
                if stop > position:
                    if self._line_length == 0:
                        self._line_first = chunk[position]
                    self._line_length += stop - position
                if newline < 0:
                    return chunk
                empty = self._line_length == 0 or (
                    self._line_length == 1 and self._line_first == 0x0D
                )
                self._line_length = 0
                position = newline + 1
                if empty:
                    self._in_header = False
            else:
                if self._remaining == 0:
                    self.done = True
                    return chunk[:position]
                newline = chunk.find(b"\n", position)
                if newline < 0:
                    return chunk
                self._remaining -= 1
                position = newline + 1
        if not self._in_header and self._remaining == 0:
            self.done = True
        return chunk


class TopEncoder:
    """TOP: :class:`TopFilter`, then byte-stuffing."""

    def __init__(self, body_lines: int) -> None:
        self._filter = TopFilter(body_lines)
        self._stuffer = DotStuffer()

    @property
    def done(self) -> bool:
        return self._filter.done

    def feed(self, chunk: bytes) -> bytes:
        return self._stuffer.feed(self._filter.feed(chunk))

    def finish(self) -> bytes:
        return self._stuffer.finish()


def encoder_for(top_lines: int | None) -> Encoder:
    """The encoder for RETR (``top_lines`` None) or for ``TOP msg top_lines``."""
    return DotStuffer() if top_lines is None else TopEncoder(top_lines)
