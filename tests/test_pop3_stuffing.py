"""Byte-stuffing of RETR and TOP responses, whatever the chunking (mailserver.pop3.stuffing,
with the shared DotStuffer of mailserver.stuffing)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from hypothesis import given
from hypothesis import strategies as st

from mailserver.pop3.stuffing import TopEncoder, TopFilter, encoder_for
from mailserver.stuffing import DotStuffer


def chunked(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces = []
    start = 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def encode(data: bytes, cuts: Iterable[int] = (), top_lines: int | None = None) -> bytes:
    encoder = encoder_for(top_lines)
    wire = b"".join(encoder.feed(piece) for piece in chunked(data, cuts))
    return wire + encoder.finish()


def lf_lines(data: bytes) -> list[bytes]:
    """Lines ending at each LF, endings kept (bytes.splitlines would split at CR too)."""
    return [line for line in re.split(b"(?<=\n)", data) if line]


def client_unstuff(wire: bytes) -> tuple[bytes, bytes]:
    """What a POP3 client such as poplib does: split at LF, stop at ".CRLF", drop one leading
    dot. Returns the message and whatever followed the terminator."""
    lines = lf_lines(wire)
    out = []
    for number, line in enumerate(lines):
        if line == b".\r\n":
            return b"".join(out), b"".join(lines[number + 1 :])
        out.append(line[1:] if line.startswith(b".") else line)
    raise AssertionError("no terminator")


def crlf_client_unstuff(wire: bytes) -> bytes:
    """A client that splits lines at CRLF only (the status line's CRLF comes first)."""
    body, terminator, rest = (b"\r\n" + wire).partition(b"\r\n.\r\n")
    assert terminator and not rest
    lines = body[2:].split(b"\r\n") if body else []
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


def expected(data: bytes) -> bytes:
    return data if not data or data.endswith(b"\r\n") else data + b"\r\n"


# Content rich in the octets that matter: dots, CR, LF.
interesting = st.lists(
    st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"..", b".\r\n", b"a", b"\xff", b"\x00"]),
    max_size=60,
).map(b"".join)
contents = st.one_of(st.binary(max_size=300), interesting)
cuts = st.lists(st.integers(min_value=0, max_value=400), max_size=12)


@given(contents, cuts)
def test_any_content_any_chunking_round_trips(data: bytes, cut_points: list[int]) -> None:
    """A client splitting at LF un-stuffs the wire back to the message, terminator last."""
    message, rest = client_unstuff(encode(data, cut_points))
    assert message == expected(data)
    assert rest == b""


crlf_lines = st.lists(
    st.lists(st.sampled_from([b".", b"a", b" ", b"..", b"\xc3\xa9"]), max_size=8).map(b"".join),
    max_size=20,
).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


@given(crlf_lines, cuts)
def test_crlf_content_round_trips_for_crlf_clients(data: bytes, cut_points: list[int]) -> None:
    """For CRLF mail (all our store holds), a client splitting at CRLF only agrees too."""
    assert crlf_client_unstuff(encode(data, cut_points)) == data


@given(crlf_lines, cuts)
def test_stuffing_independent_of_chunking(data: bytes, cut_points: list[int]) -> None:
    """The wire octets are the same however the file happens to be read."""
    assert encode(data, cut_points) == encode(data)


def test_dot_line_on_a_chunk_boundary_is_stuffed() -> None:
    """A "." line that starts a chunk (the smuggling case) is doubled, not a terminator."""
    stuffer = DotStuffer()
    wire = stuffer.feed(b"Subject: x\r\n\r\nfirst\r\n") + stuffer.feed(b".\r\nsecond\r\n")
    assert wire + stuffer.finish() == b"Subject: x\r\n\r\nfirst\r\n..\r\nsecond\r\n.\r\n"


def test_boundary_between_cr_and_lf() -> None:
    """A boundary inside CRLF still stuffs the dot after it."""
    stuffer = DotStuffer()
    assert stuffer.feed(b"a\r") + stuffer.feed(b"\n.b\r\n") == b"a\r\n..b\r\n"


def test_first_octet_dot_and_empty_message() -> None:
    """A message starting with "." is stuffed; an empty message is just the terminator."""
    assert encode(b".hidden\r\n") == b"..hidden\r\n.\r\n"
    assert encode(b"") == b".\r\n"


def test_missing_final_crlf_is_added() -> None:
    """RFC 1939 §3: the terminator is on a line of its own even if the message lacks a CRLF."""
    assert encode(b"no newline") == b"no newline\r\n.\r\n"
    assert encode(b"cr\r") == b"cr\r\r\n.\r\n"


def top_reference(data: bytes, lines: int) -> bytes:
    parts = lf_lines(data)
    for number, line in enumerate(parts):
        if line in (b"\n", b"\r\n"):
            return b"".join(parts[: number + 1 + lines])
    return data


@given(contents, st.integers(min_value=0, max_value=6), cuts)
def test_top_matches_reference(data: bytes, lines: int, cut_points: list[int]) -> None:
    """TOP sends the header, the empty line and n body lines, whatever the chunking."""
    top = TopFilter(lines)
    sent = b"".join(top.feed(piece) for piece in chunked(data, cut_points))
    assert sent == top_reference(data, lines)


def test_top_examples() -> None:
    """Header only for n=0, n lines, the whole message when it is shorter, and no header
    boundary at all means the whole message."""
    message = b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n"
    assert encode(message, top_lines=0) == b"A: 1\r\nB: 2\r\n\r\n.\r\n"
    assert encode(message, top_lines=2) == b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n"
    assert encode(message, top_lines=99) == encode(message)
    assert encode(b"A: 1\r\nB: 2\r\n", top_lines=0) == b"A: 1\r\nB: 2\r\n.\r\n"


def test_top_is_done_early_so_big_bodies_are_not_read() -> None:
    """Once the lines are out, the encoder says so and ignores the rest."""
    encoder = TopEncoder(1)
    assert encoder.feed(b"A: 1\r\n\r\nbody 1\r\nbody 2\r\n") == b"A: 1\r\n\r\nbody 1\r\n"
    assert encoder.done
    assert encoder.feed(b"more\r\n") == b""
    assert encoder.finish() == b".\r\n"
