"""Tests for mailserver.smtp.data: the DATA decoder and the content inspector."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailserver.address import Mailbox
from mailserver.smtp.data import (
    MAX_KEPT_HEADER,
    AuthorError,
    ContentInspector,
    ContentSummary,
    DotDecoder,
    authors_of,
)

MESSAGE = (
    b"Subject: test\r\n"
    b"\r\n"
    b"..leading dot\r\n"
    b"middle\r\n"
    b"...two dots\r\n"
    b".\r\n"
    b"MAIL FROM:<next@example.com>\r\n"
)
MESSAGE_CONTENT = b"Subject: test\r\n\r\n.leading dot\r\nmiddle\r\n..two dots\r\n"
MESSAGE_REST = b"MAIL FROM:<next@example.com>\r\n"


class Decoded:
    """What came out of a DotDecoder fed some chunks."""

    def __init__(self, chunks: Iterable[bytes], max_size: int = 10**9) -> None:
        sunk: list[bytes] = []
        self.inspector = ContentInspector(sunk.append, max_size)
        decoder = DotDecoder(self.inspector)
        self.rest: bytes | None = None
        for chunk in chunks:
            if self.rest is not None:
                self.rest += chunk  # after the end marker the glue reads commands again
            else:
                self.rest = decoder.feed(chunk)
        self.finished = decoder.finished
        self.content = b"".join(sunk)
        self.summary = self.inspector.summary()


def split_at(data: bytes, *points: int) -> list[bytes]:
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def stuff(content: bytes) -> bytes:
    """Dot-stuff CRLF-terminated content and add the end marker, as a client does."""
    lines = content.split(b"\r\n")
    assert lines[-1] == b""
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines[:-1]]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


# -- DotDecoder -------------------------------------------------------------------------------


def test_whole_message_at_once() -> None:
    """Content is unstuffed, ends at CRLF.CRLF, and the pipelined rest is returned exactly."""
    decoded = Decoded([MESSAGE])
    assert decoded.finished
    assert decoded.content == MESSAGE_CONTENT
    assert decoded.rest == MESSAGE_REST
    assert not decoded.summary.bare_line_ending


@pytest.mark.parametrize("point", range(len(MESSAGE) + 1))
def test_every_split_point(point: int) -> None:
    """Wherever the message is cut in two, the content and the rest are the same."""
    decoded = Decoded(split_at(MESSAGE, point))
    assert decoded.content == MESSAGE_CONTENT
    assert decoded.rest == MESSAGE_REST
    assert not decoded.summary.bare_line_ending


def test_every_pair_of_split_points() -> None:
    """Cutting a short message in three anywhere (the marker across three chunks) works."""
    message = b".a\r\n..\r\n.\r\nX"
    for first in range(len(message) + 1):
        for second in range(first, len(message) + 1):
            decoded = Decoded(split_at(message, first, second))
            assert (decoded.content, decoded.rest) == (b"a\r\n.\r\n", b"X"), (first, second)


def test_byte_at_a_time() -> None:
    """Fed one byte at a time, the decoder finds the same content, end and rest."""
    decoded = Decoded(MESSAGE[i : i + 1] for i in range(len(MESSAGE)))
    assert decoded.content == MESSAGE_CONTENT
    assert decoded.rest == MESSAGE_REST


def test_not_finished_without_end_marker() -> None:
    """Until CRLF.CRLF arrives, feed returns None and the decoder is not finished."""
    sunk: list[bytes] = []
    decoder = DotDecoder(ContentInspector(sunk.append, 10**6))
    assert decoder.feed(b"hello\r\n.") is None
    assert decoder.feed(b"\r") is None
    assert not decoder.finished
    assert decoder.feed(b"\n") == b""
    assert decoder.finished
    assert b"".join(sunk) == b"hello\r\n"


def test_dot_unstuffed_at_very_start() -> None:
    """A stuffed dot on the first line of content is removed."""
    assert Decoded([b"..first\r\n.\r\n"]).content == b".first\r\n"


def test_leading_dot_line_alone_is_content() -> None:
    """A first line ``..`` is a single-dot content line, not the end."""
    decoded = Decoded([b"..\r\nmore\r\n.\r\n"])
    assert decoded.content == b".\r\nmore\r\n"


@pytest.mark.parametrize("point", range(len(b"a\r\n..b\r\n.\r\n") + 1))
def test_dot_unstuffed_across_chunk_boundary(point: int) -> None:
    """A stuffed dot after CRLF is removed even when the CRLF and dot are in different chunks."""
    decoded = Decoded(split_at(b"a\r\n..b\r\n.\r\n", point))
    assert decoded.content == b"a\r\n.b\r\n"


def test_empty_message() -> None:
    """``.\\r\\n`` at once is an empty message."""
    decoded = Decoded([b".\r\nQUIT\r\n"])
    assert decoded.finished
    assert decoded.content == b""
    assert decoded.rest == b"QUIT\r\n"
    assert decoded.summary.size == 0


def test_empty_message_in_pieces() -> None:
    """The empty message split into ``.``, ``\\r``, ``\\n`` is still empty and finished."""
    decoded = Decoded([b".", b"\r", b"\n"])
    assert decoded.finished
    assert decoded.content == b""
    assert decoded.rest == b""


def test_dot_in_middle_of_line_kept() -> None:
    """Only a dot at the start of a line is stuffing; others are content."""
    assert Decoded([b"a.b\r\nc..\r\n.\r\n"]).content == b"a.b\r\nc..\r\n"


@pytest.mark.parametrize("ending", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n"])
def test_bare_line_endings_never_end_data(ending: bytes) -> None:
    """Smuggling (CVE-2023-51764 class): only CRLF.CRLF ends data; others are flagged bare."""
    smuggled = b"MAIL FROM:<evil@example.com>\r\n"
    message = b"Subject: x\r\n\r\nfirst" + ending + smuggled + b".\r\n"
    for point in range(len(message) + 1):
        decoded = Decoded(split_at(message, point))
        assert decoded.rest == b"", point
        assert smuggled in decoded.content
        assert decoded.summary.bare_line_ending, point


def test_long_line_kept_as_sent() -> None:
    """A 5000-octet line does not end data or get cut: it is content, kept exactly."""
    line = b"x" * 2500 + b"." + b"y" * 2499
    decoded = Decoded([line[:1000], line[1000:] + b"\r\n.\r\n"])
    assert decoded.content == line + b"\r\n"
    assert decoded.rest == b""


_lines = st.lists(
    st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"r").replace(b"\n", b"n"))
    | st.sampled_from([b".", b"..", b".x", b""]),
    max_size=15,
)


@given(_lines, st.data())
def test_stuffed_content_round_trip(lines: list[bytes], data: st.DataObject) -> None:
    """Stuffed content plus ``.\\r\\n`` fed in random chunks decodes to the original exactly."""
    content = b"".join(line + b"\r\n" for line in lines)
    wire = stuff(content)
    points = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(wire)), max_size=6)))
    decoded = Decoded(split_at(wire, *points))
    assert decoded.finished
    assert decoded.content == content
    assert decoded.rest == b""
    assert not decoded.summary.bare_line_ending
    assert decoded.summary.size == len(content)


# -- ContentInspector -------------------------------------------------------------------------


def inspect(chunks: Iterable[bytes], max_size: int = 10**6) -> tuple[ContentSummary, bytes]:
    sunk: list[bytes] = []
    inspector = ContentInspector(sunk.append, max_size)
    for chunk in chunks:
        inspector.feed(chunk)
    return inspector.summary(), b"".join(sunk)


def test_size_counted() -> None:
    """The size is the total of every octet fed."""
    summary, sunk = inspect([b"abc", b"", b"defg\r\n"])
    assert summary.size == 9
    assert sunk == b"abcdefg\r\n"


def test_size_at_limit_is_not_too_big() -> None:
    """Content of exactly the limit is accepted and written to the sink."""
    summary, sunk = inspect([b"12345", b"67890"], max_size=10)
    assert not summary.too_big
    assert sunk == b"1234567890"


def test_too_big_past_the_limit_and_sink_stops() -> None:
    """One octet past the limit sets too_big and the sink receives nothing more."""
    sunk: list[bytes] = []
    inspector = ContentInspector(sunk.append, 10)
    inspector.feed(b"1234567890")
    assert not inspector.too_big
    inspector.feed(b"1")
    assert inspector.too_big
    inspector.feed(b"more")
    assert b"".join(sunk) == b"1234567890"
    summary = inspector.summary()
    assert summary.too_big
    assert summary.size == 15


HEADERS = (
    b"Received: from a\r\n"
    b"RECEIVED: from b\r\n"
    b"received:from c\r\n"
    b"X-Received: not counted\r\n"
    b"Subject: Received: not counted either\r\n"
    b"\r\n"
    b"Received: in the body, not counted\r\n"
)


def test_received_headers_counted_case_insensitively() -> None:
    """Received headers count in any case; X-Received and non-header uses do not."""
    summary, _ = inspect([HEADERS])
    assert summary.received_headers == 3


@pytest.mark.parametrize("point", range(len(HEADERS) + 1))
def test_received_headers_across_chunks(point: int) -> None:
    """The count does not change wherever the content is cut."""
    summary, _ = inspect(split_at(HEADERS, point))
    assert summary.received_headers == 3


def test_received_headers_byte_at_a_time() -> None:
    """Fed byte by byte, each Received header is counted once."""
    summary, _ = inspect(HEADERS[i : i + 1] for i in range(len(HEADERS)))
    assert summary.received_headers == 3


def test_received_after_empty_header_section_is_body() -> None:
    """Content starting with a blank line has no headers: a Received line after it is body."""
    summary, _ = inspect([b"\r\nReceived: x\r\n"])
    assert summary.received_headers == 0


def test_received_as_first_line_counted() -> None:
    """The very first line of the content is a header line."""
    summary, _ = inspect([b"Received: x\r\n\r\n"])
    assert summary.received_headers == 1


def test_clean_content_not_bare() -> None:
    """CRLF-only content is not flagged."""
    summary, _ = inspect([b"a\r\nb\r\n\r\nc\r\n"])
    assert not summary.bare_line_ending


@pytest.mark.parametrize(
    "content", [b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\n", b"a\r\n\n", b"\n", b"a\r"]
)
def test_bare_cr_or_lf_detected(content: bytes) -> None:
    """A CR not followed by LF or an LF not preceded by CR is flagged, even at the end."""
    summary, _ = inspect([content])
    assert summary.bare_line_ending


def test_crlf_split_across_chunks_is_not_bare() -> None:
    """A CR ending one chunk and the LF starting the next make one proper CRLF."""
    summary, _ = inspect([b"a\r", b"\nb\r", b"\n"])
    assert not summary.bare_line_ending


@pytest.mark.parametrize("chunks", [[b"a\r", b"b\r\n"], [b"a\r", b"\rb\r\n"], [b"a", b"\nb\r\n"]])
def test_bare_line_ending_across_chunks(chunks: list[bytes]) -> None:
    """A CR at a chunk end with no LF next, or an LF at a chunk start with no CR, is bare."""
    summary, _ = inspect(chunks)
    assert summary.bare_line_ending


@pytest.mark.parametrize("content", [b"a\r\nb\nc\r\n", b"x\rb\r\n"])
def test_bare_line_ending_at_every_split(content: bytes) -> None:
    """Bare endings are found wherever the content is cut."""
    for point in range(len(content) + 1):
        summary, _ = inspect(split_at(content, point))
        assert summary.bare_line_ending, point


# -- authors_of: the From addresses submission checks ------------------------------------------


def test_authors_of_a_plain_from() -> None:
    """Display names, comments, encoded words and groups of addresses are understood; the
    same address twice counts once."""
    header = b"Subject: x\r\nFrom: =?utf-8?q?Al=C3=AFce?= <alice@Example.org>,\r\n bob@x.example,"
    header += b" alice@example.org (again)\r\n\r\nbody"
    assert authors_of(header, whole_message=False) == (
        Mailbox("alice", "Example.org"),
        Mailbox("bob", "x.example"),
    )


def test_authors_of_utf8_header() -> None:
    """RFC 6532: an internationalised address in a UTF-8 header field."""
    header = "From: Jörg <jörg@bücher.example>\r\n\r\n".encode()
    assert authors_of(header, whole_message=False) == (Mailbox("jörg", "bücher.example"),)


def test_headers_only_message() -> None:
    """A message that is all header (no blank line) is checked when it was kept whole."""
    assert authors_of(b"From: a@b.example\r\n", whole_message=True) == (Mailbox("a", "b.example"),)
    with pytest.raises(AuthorError):
        authors_of(b"From: a@b.example\r\n", whole_message=False)


@pytest.mark.parametrize(
    "header, reason",
    [
        (None, "no header section"),
        (b"Subject: x\r\n\r\n", "no From"),
        (b"From: a@b.example\r\nfrom: c@d.example\r\n\r\n", "more than one"),
        (b"From: a@b.example <c@d.example>\r\n\r\n", "malformed"),
        (b"From: a@b.example;c@d.example\r\n\r\n", "malformed"),
        (b"From\t: c@d.example\r\nFrom: a@b.example\r\n\r\n", "not a header field"),
        (b"From\0: c@d.example\r\nFrom: a@b.example\r\n\r\n", "not a header field"),
        (b" folded first\r\nFrom: a@b.example\r\n\r\n", "not a header field"),
        (b"From: " + b"a@b.example, " * 100 + b"\r\n\r\n", "too long"),
        (b"From: " + b", ".join(b"u%d@b.example" % n for n in range(30)) + b"\r\n\r\n", "too many"),
        (b"From: \xff@b.example\r\n\r\n", "not UTF-8"),
        (b"From: undisclosed:;\r\n\r\n", "names no address"),
    ],
)
def test_authors_of_refuses_what_cannot_be_checked(header: bytes | None, reason: str) -> None:
    """Anything a lenient reader might read differently is refused, with its reason."""
    with pytest.raises(AuthorError, match=reason):
        authors_of(header, whole_message=False)


def test_inspector_keeps_the_header_when_asked() -> None:
    """The kept header section is bounded, and says whether it is the whole message."""
    inspector = ContentInspector(lambda data: None, 10 * MAX_KEPT_HEADER, keep_header=True)
    inspector.feed(b"From: a@b.example\r\n")
    assert inspector.summary().whole_message_kept
    inspector.feed(b"\r\n" + b"x" * MAX_KEPT_HEADER)
    summary = inspector.summary()
    assert summary.header is not None and len(summary.header) == MAX_KEPT_HEADER
    assert not summary.whole_message_kept
    assert ContentInspector(lambda data: None, 100).summary().header is None


@pytest.mark.parametrize(
    "value",
    [
        "Alice <alice@example.org>",
        "alice@example.org",
        '"Bob @ work" <bob@example.org>',
        "=?utf-8?q?J=C3=A9?= <j@x.example>",
        "Dr. A. B-C <a.b-c+tag@sub.example.org>",
    ],
)
def test_everyday_from_fields_read_like_the_full_parser(value: str) -> None:
    """The quick reading of everyday From fields gives what the full parser gives."""
    from email.policy import SMTPUTF8

    expected = [a.addr_spec for a in SMTPUTF8.header_factory("From", value).addresses]
    authors = authors_of(f"From: {value}\r\n\r\n".encode(), whole_message=False)
    assert [str(author) for author in authors] == expected


@pytest.mark.parametrize("split", range(1, 20))
def test_header_8bit_wherever_the_feeds_split(split: int) -> None:
    """UTF-8 only in the body never marks the header as 8-bit, wherever a feed ends (the
    blank line split across two feeds included); UTF-8 in the header always does."""
    for content, expected in (
        ("Subject: x\r\n\r\nHéllo\r\n".encode(), False),
        ("Subject: é\r\n\r\nHello\r\n".encode(), True),
        ("\r\nHéllo\r\n".encode(), False),
    ):
        inspector = ContentInspector(lambda data: None, 10_000)
        inspector.feed(content[:split])
        inspector.feed(content[split:])
        assert inspector.header_8bit is expected, content


@pytest.mark.parametrize(
    "value", ["..  <alice@ours.example", " :.<alice@ours.example> ", '"\x1b[2J" <a@b.example>']
)
def test_from_values_that_trip_the_parser_are_refused(value: str) -> None:
    """Values on which the email package fails, or that hide control characters, are refused
    as malformed, never an exception escaping to the connection."""
    with pytest.raises(AuthorError):
        authors_of(f"From: {value}\r\n\r\n".encode(), whole_message=False)
