"""Dot-stuffing shared by SMTP and POP3, and the SMTP DATA encoding with its line-ending
normalisation, whatever the chunking (mailserver.stuffing)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from hypothesis import given
from hypothesis import strategies as st

from mailserver.smtp.data import ContentInspector, DotDecoder
from mailserver.stuffing import DotStuffer, LineEndingNormaliser, SMTPDataEncoder


def chunked(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces = []
    start = 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def encode(data: bytes, cuts: Iterable[int] = ()) -> bytes:
    encoder = SMTPDataEncoder()
    return b"".join(encoder.feed(piece) for piece in chunked(data, cuts)) + encoder.finish()


def normalised(data: bytes) -> bytes:
    """Every line ending as CRLF, in one go (the reference for the chunked normaliser)."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def received_by_our_server(wire: bytes) -> tuple[bytes, bytes | None, bool]:
    """What the server's DATA decoder makes of ``wire``: the content, what followed the end
    marker (None if it found none), and whether it saw a bare CR or LF."""
    content = bytearray()
    inspector = ContentInspector(content.extend, max_size=10**9)
    rest = DotDecoder(inspector).feed(wire)
    return bytes(content), rest, inspector.summary().bare_line_ending


interesting = st.lists(
    st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"..", b".\r\n", b"a", b"\xff", b"\x00"]),
    max_size=60,
).map(b"".join)
contents = st.one_of(st.binary(max_size=300), interesting)
cuts = st.lists(st.integers(min_value=0, max_value=400), max_size=12)


@given(contents, cuts)
def test_server_decodes_exactly_the_message(data: bytes, cut_points: list[int]) -> None:
    """Any content, cut anywhere: our server's decoder gets back the content with CRLF line
    endings (and a final CRLF), ends exactly at the terminator, and sees no bare CR or LF."""
    content, rest, bare = received_by_our_server(encode(data, cut_points))
    expected = normalised(data)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert content == expected
    assert rest == b""
    assert not bare


@given(contents, cuts)
def test_encoding_independent_of_chunking(data: bytes, cut_points: list[int]) -> None:
    """The wire octets are the same however the file happens to be read."""
    assert encode(data, cut_points) == encode(data)


@given(contents, cuts)
def test_normaliser_matches_reference(data: bytes, cut_points: list[int]) -> None:
    """Chunk by chunk, bare CR, bare LF and CRLF all come out as CRLF, as done in one go."""
    normaliser = LineEndingNormaliser()
    out = b"".join(normaliser.feed(piece) for piece in chunked(data, cut_points))
    assert out + normaliser.finish() == normalised(data)


def test_dot_line_on_every_boundary() -> None:
    """A "." line whose dot starts a chunk, or whose CRLF before it is split, is stuffed."""
    assert encode(b"a\r\n.\r\nb\r\n", [3]) == b"a\r\n..\r\nb\r\n.\r\n"
    assert encode(b"a\r\n.\r\nb\r\n", [2]) == b"a\r\n..\r\nb\r\n.\r\n"
    assert encode(b".\r\n", [0, 1]) == b"..\r\n.\r\n"


def test_bare_line_endings_become_crlf() -> None:
    """A bare LF, a bare CR (also one at a chunk's end) and a CR before CRLF become line
    endings, each followed line stuffed if it starts with a dot."""
    assert encode(b"a\n.b\rc\r\r\nd") == b"a\r\n..b\r\nc\r\n\r\nd\r\n.\r\n"
    assert encode(b"a\r", [2]) == b"a\r\n.\r\n"
    assert encode(b"a\r\r", [2]) == b"a\r\n\r\n.\r\n"


def test_missing_final_crlf_and_empty_message() -> None:
    """RFC 5321 §4.1.1.4: the terminator stands on its own line; an empty message is the
    terminator alone."""
    assert encode(b"no newline") == b"no newline\r\n.\r\n"
    assert encode(b"") == b".\r\n"


def test_dot_stuffer_leaves_line_endings_alone() -> None:
    """The POP3 encoder sends stored octets unchanged apart from the stuffing."""
    stuffer = DotStuffer()
    assert stuffer.feed(b"a\n.b\r") + stuffer.finish() == b"a\n..b\r\r\n.\r\n"
