"""Authentication-Results: the field we write (RFC 8601 §2.2) and the removal of fields that
claim our authserv-id (§5), however the message is cut into chunks."""

from __future__ import annotations

import re
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from mailserver.authresults import (
    ForgedResultsFilter,
    MethodResult,
    authserv_id_of,
    header_field,
)


def test_header_field_lists_each_method() -> None:
    """One method per folded line, comments escaped, values quoted where they must be."""
    field = header_field(
        "mx.example.org",
        [
            MethodResult("spf", "pass", "192.0.2.1 is allowed", [("smtp.mailfrom", "a@b.example")]),
            MethodResult(
                "dkim",
                "fail",
                "body hash (mismatch)",
                [("header.d", "b.example"), ("header.b", "ab/cd+ef")],
            ),
        ],
    )
    assert field == (
        b"Authentication-Results: mx.example.org;\r\n"
        b"\tspf=pass (192.0.2.1 is allowed) smtp.mailfrom=a@b.example;\r\n"
        b'\tdkim=fail (body hash \\(mismatch\\)) header.d=b.example header.b="ab/cd+ef"\r\n'
    )


def test_no_results_is_none() -> None:
    """§2.2: "none" when no method applied."""
    assert header_field("mx", []) == b"Authentication-Results: mx;\r\n\tnone\r\n"


def test_authserv_id_ignores_comments_and_folding() -> None:
    """The authserv-id is the first word of the value, after comments and folding."""
    assert authserv_id_of(b" MX.Example.org; spf=pass") == "mx.example.org"
    assert authserv_id_of(b" (forged (nested)) mx.example.org\r\n ; none") == "mx.example.org"
    assert authserv_id_of(b"\r\n\tmx.example.org 1; none") == "mx.example.org"
    assert authserv_id_of(b"  ") == ""


def reference(message: bytes, ours: str) -> bytes:
    """The filter's result computed on the whole message at once."""
    if message.startswith(b"\r\n"):
        return message
    end = message.find(b"\r\n\r\n")
    header, rest = (message, b"") if end < 0 else (message[: end + 2], message[end + 2 :])
    fields = re.split(rb"\r\n(?![ \t])", header)
    kept = []
    for field in fields:
        match = re.match(rb"authentication-results[ \t]*:", field, re.IGNORECASE)
        if match and authserv_id_of(field[match.end() :]) == ours:
            continue
        kept.append(field)
    return b"\r\n".join(kept) + rest


def run(message: bytes, cuts: Sequence[int], ours: str = "mx.example.org") -> bytes:
    output: list[bytes] = []
    flt = ForgedResultsFilter(ours, output.append)
    points = sorted({min(c, len(message)) for c in cuts})
    start = 0
    for point in [*points, len(message)]:
        flt.feed(message[start:point])
        start = point
    flt.end()
    return b"".join(output)


FIELDS = [
    b"Authentication-Results: mx.example.org; spf=pass\r\n",
    b"authentication-results : MX.EXAMPLE.ORG;\r\n\tdkim=pass\r\n",
    b"Authentication-Results: (c) mx.example.org; none\r\n",
    b"Authentication-Results: other.example; dmarc=pass\r\n",
    b"Authentication-Results:\r\n mx.example.org; none\r\n",
    b"Subject: Authentication-Results: mx.example.org\r\n",
    b"X-Authentication-Results: mx.example.org; none\r\n",
    b"Received: from a\r\n\tby b\r\n",
    b"From: a@b.example\r\n",
    b"To: c@d.example\r\n",
]


@given(
    fields=st.lists(st.sampled_from(FIELDS), max_size=8),
    body=st.sampled_from(
        [b"", b"\r\n", b"\r\nbody\r\n", b"\r\nAuthentication-Results: mx.example.org; x\r\n"]
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_filter_matches_whole_message_reference(
    fields: list[bytes], body: bytes, cuts: list[int]
) -> None:
    """Cut anywhere, the filter removes exactly the header fields that claim our
    authserv-id, keeps everything else byte for byte, and never touches the body."""
    message = b"".join(fields) + body
    assert run(message, cuts) == reference(message, "mx.example.org")


def test_forged_field_is_removed_and_counted() -> None:
    """A forged field is gone, another server's stays, and the count says one was removed."""
    output: list[bytes] = []
    flt = ForgedResultsFilter("mx.example.org", output.append)
    flt.feed(
        b"Authentication-Results: mx.example.org; dmarc=pass\r\n"
        b"Authentication-Results: other.example; dmarc=fail\r\n"
        b"Subject: hi\r\n\r\nbody\r\n"
    )
    flt.end()
    assert b"".join(output) == (
        b"Authentication-Results: other.example; dmarc=fail\r\nSubject: hi\r\n\r\nbody\r\n"
    )
    assert flt.removed == 1


def test_huge_forged_field_is_dropped_without_holding_it() -> None:
    """A field over the limit is dropped as it streams, not kept in memory."""
    output: list[bytes] = []
    flt = ForgedResultsFilter("mx.example.org", output.append)
    flt.feed(b"Authentication-Results: other.example;\r\n")
    for _ in range(100):
        flt.feed(b"\tx=" + b"y" * 1000 + b"\r\n")
    flt.feed(b"Subject: kept\r\n\r\nbody\r\n")
    flt.end()
    assert b"".join(output) == b"Subject: kept\r\n\r\nbody\r\n"


def test_quoted_authserv_id_is_ours_too() -> None:
    """A quoted-string authserv-id is unquoted before the comparison, as readers do."""
    assert authserv_id_of(b' "MX.example.org"; dmarc=pass') == "mx.example.org"
    assert run(b'Authentication-Results: "mx.example.org"; dmarc=pass\r\n\r\nx', []) == b"\r\nx"


def test_short_last_line_without_crlf_is_classified() -> None:
    """A message that ends in a short, unterminated forged field (BDAT allows it) loses it."""
    message = b"From: a@b.example\r\nAuthentication-Results: mx.example.org; dmarc=pass"
    assert run(message, []) == b"From: a@b.example\r\n"
    assert run(b"From: a@b.example\r\nX-Short: 1", []) == b"From: a@b.example\r\nX-Short: 1"
