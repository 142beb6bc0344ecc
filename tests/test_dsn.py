"""Tests for mailserver.dsn: when a notice is wanted (RFC 3461) and the notice itself (RFC 3464,
RFC 6522, RFC 6533), parsed back with Python's email package."""

from __future__ import annotations

import email
import email.policy
import tracemalloc
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailserver.dsn import (
    DELAYED_SUBJECT,
    FAILED_SUBJECT,
    SUCCESS_SUBJECT,
    Action,
    RecipientReport,
    build_notification,
    status_for,
    wants_notice,
)
from mailserver.interfaces import OutboundMessage, OutboundRecipient, ReplyInfo

ORIGINAL = (
    b"Received: from client.example.com by mx.example.com\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: Hello\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"\r\n"
    b"Body line one\r\n"
    b"\r\n"
    b"Body after an empty line\r\n"
)
HEADERS = ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2]
ARRIVAL = 1_700_000_000.0
NOW = ARRIVAL + 7200.0
BOB = OutboundRecipient("bob@example.org")
CAROL = OutboundRecipient("carol@example.org")
UNKNOWN = ReplyInfo(550, "5.1.1", "User unknown")
LATER = ReplyInfo(451, "4.3.0", "Try again later")


def write_message(tmp_path: Path, content: bytes = ORIGINAL, **fields: Any) -> OutboundMessage:
    path = tmp_path / "message"
    path.write_bytes(content)
    values: dict[str, Any] = {
        "id": "Q1",
        "sender": "alice@example.com",
        "recipients": (BOB, CAROL),
        "path": path,
        "size": len(content),
    }
    values.update(fields)
    return OutboundMessage(**values)


def report(
    action: Action,
    recipient: OutboundRecipient = BOB,
    reply: ReplyInfo | None = None,
    **fields: Any,
) -> RecipientReport:
    if reply is None and action is not Action.DELIVERED:
        reply = UNKNOWN if action is Action.FAILED else LATER
    status = fields.pop("status", status_for(action, reply))
    return RecipientReport(recipient, action, status, reply, **fields)


def reports_for(actions: list[Action]) -> list[RecipientReport]:
    """One report per action, for Bob and then Carol."""
    recipients = [BOB, CAROL][: len(actions)]
    return [report(a, r) for a, r in zip(actions, recipients, strict=True)]


def pieces(
    message: OutboundMessage, reports: list[RecipientReport], chunk_size: int = 64 * 1024
) -> list[bytes]:
    out: list[bytes] = []
    build_notification(
        reporting_mta="mx.example.com",
        message=message,
        reports=reports,
        arrival_date=ARRIVAL,
        now=NOW,
        message_id="<dsn1@mx.example.com>",
        sink=out.append,
        chunk_size=chunk_size,
    )
    return out


def build(message: OutboundMessage, reports: list[RecipientReport], **kwargs: Any) -> bytes:
    return b"".join(pieces(message, reports, **kwargs))


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def parse_utf8(raw: bytes) -> EmailMessage:
    """Parse a notice with UTF-8 header fields (RFC 6532), which the bytes parser would
    leave as undecodable bytes."""
    text = raw.decode("utf-8")
    return email.message_from_string(text, policy=email.policy.default)


def part(notice: EmailMessage, index: int) -> EmailMessage:
    return cast(EmailMessage, list(notice.iter_parts())[index])


def boundary_of(raw: bytes) -> bytes:
    boundary = parse(raw).get_boundary()
    assert boundary is not None
    return boundary.encode("ascii")


def raw_parts(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(header, body) of each part, cut from the bytes at the delimiters (RFC 2046 §5.1.1)."""
    delimiter = b"\r\n--" + boundary_of(raw)
    chunks = raw.split(delimiter)
    assert chunks[-1] == b"--\r\n"
    parts = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n")
        header, _, body = chunk[2:].partition(b"\r\n\r\n")
        parts.append((header, body))
    return parts


def status_blocks(raw: bytes) -> list[Message]:
    """The second part's field blocks: per-message first, then one per recipient."""
    _, body = raw_parts(raw)[1]
    parser = HeaderParser(policy=email.policy.default)
    return [parser.parsestr(block.decode("utf-8")) for block in body.split(b"\r\n\r\n")]


def returned(raw: bytes) -> tuple[str, bytes]:
    """The third part's media type and its exact bytes."""
    return part(parse(raw), 2).get_content_type(), raw_parts(raw)[2][1]


def timestamp(value: str) -> float:
    return parsedate_to_datetime(value).timestamp()


# -- wants_notice -----------------------------------------------------------------------

EVERY = set(Action)
SUCCESSES = {Action.DELIVERED, Action.RELAYED, Action.EXPANDED}


@pytest.mark.parametrize(
    "notify, wanted",
    [
        (None, {Action.FAILED, Action.DELAYED}),
        (frozenset(), {Action.FAILED, Action.DELAYED}),
        (frozenset({"NEVER"}), set()),
        (frozenset({"SUCCESS"}), SUCCESSES),
        (frozenset({"FAILURE"}), {Action.FAILED}),
        (frozenset({"DELAY"}), {Action.DELAYED}),
        (frozenset({"SUCCESS", "FAILURE"}), SUCCESSES | {Action.FAILED}),
        (frozenset({"FAILURE", "DELAY"}), {Action.FAILED, Action.DELAYED}),
        (frozenset({"SUCCESS", "DELAY"}), SUCCESSES | {Action.DELAYED}),
        (frozenset({"SUCCESS", "FAILURE", "DELAY"}), EVERY),
        (frozenset({"success", "Delay"}), SUCCESSES | {Action.DELAYED}),
    ],
)
def test_wants_notice(notify: frozenset[str] | None, wanted: set[Action]) -> None:
    """RFC 3461 §4.1: no NOTIFY means failures and delays; NEVER means nothing; otherwise
    exactly the listed conditions, SUCCESS covering delivered, relayed and expanded.
    Keywords are case-insensitive, and an empty set counts as no NOTIFY."""
    recipient = OutboundRecipient("bob@example.org", notify)
    assert {action for action in Action if wants_notice(recipient, action)} == wanted


# -- status_for -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action, reply, status",
    [
        (Action.FAILED, ReplyInfo(550, "5.1.1", "User unknown"), "5.1.1"),
        (Action.FAILED, ReplyInfo(550, None, "User unknown"), "5.0.0"),
        (Action.FAILED, ReplyInfo(554, "4.1.1", "class disagrees"), "5.0.0"),
        (Action.FAILED, ReplyInfo(550, "5.1.1.1", "malformed"), "5.0.0"),
        (Action.FAILED, ReplyInfo(550, "5.1.1\r\nX: y", "malformed"), "5.0.0"),
        (Action.FAILED, ReplyInfo(451, "4.4.7", "Delivery time expired"), "4.4.7"),
        (Action.DELAYED, ReplyInfo(421, "4.7.0", "Greylisted"), "4.7.0"),
        (Action.DELAYED, ReplyInfo(421, None, "Busy"), "4.0.0"),
        (Action.RELAYED, ReplyInfo(250, "2.6.0", "Queued as X"), "2.6.0"),
        (Action.FAILED, ReplyInfo(999, None, "nonsense"), "5.0.0"),
        (Action.FAILED, None, "5.0.0"),
        (Action.DELAYED, None, "4.0.0"),
        (Action.DELIVERED, None, "2.0.0"),
        (Action.EXPANDED, None, "2.0.0"),
    ],
)
def test_status_for(action: Action, reply: ReplyInfo | None, status: str) -> None:
    """The reply's enhanced code when well formed and of the reply code's class, else the
    class of the reply code with .0.0, else a code for the action; an expiry keeps its 4.4.7
    (RFC 3463: X.4.7 is the code of a message that was tried for too long)."""
    assert status_for(action, reply) == status


# -- structure --------------------------------------------------------------------------


def test_failure_notice_is_a_multipart_report(tmp_path: Path) -> None:
    """A failure notice is multipart/report; report-type=delivery-status (RFC 6522 §3) with
    three parts: the explanation, message/delivery-status and the original message; it comes
    from MAILER-DAEMON at our host, goes to the sender and is marked auto-replied."""
    message = write_message(tmp_path)
    notice = parse(build(message, [report(Action.FAILED)]))
    assert notice["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.com>"
    assert [address.addr_spec for address in notice["To"].addresses] == ["alice@example.com"]
    assert notice["Subject"] == FAILED_SUBJECT
    assert notice["Message-ID"] == "<dsn1@mx.example.com>"
    assert notice["Auto-Submitted"] == "auto-replied"
    assert notice["MIME-Version"] == "1.0"
    assert notice["Date"].datetime.timestamp() == NOW
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    assert [part.get_content_type() for part in notice.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert notice.defects == []


def test_python_reads_the_delivery_status_blocks(tmp_path: Path) -> None:
    """The email package splits message/delivery-status into the same field blocks: one
    per message, then one per recipient."""
    message = write_message(tmp_path)
    raw = build(message, [report(Action.FAILED), report(Action.FAILED, CAROL)])
    blocks = cast(list[Message], part(parse(raw), 1).get_payload())
    assert [block["Final-Recipient"] for block in blocks[1:]] == [
        "rfc822;bob@example.org",
        "rfc822;carol@example.org",
    ]
    assert blocks[0]["Reporting-MTA"] == "dns; mx.example.com"


def test_delivery_status_fields(tmp_path: Path) -> None:
    """RFC 3464 §2.2 per-message fields (Original-Envelope-Id, Reporting-MTA, Arrival-Date)
    and §2.3 per-recipient fields, in the grammar's order, one block per recipient."""
    message = write_message(tmp_path, envid="QQ314159")
    bob = OutboundRecipient("bob@example.org", None, "rfc822;Bob@Example.org")
    reports = [
        report(
            Action.FAILED,
            bob,
            UNKNOWN,
            remote_host="mx1.example.org",
            last_attempt=NOW - 60,
        ),
        report(Action.FAILED, CAROL, ReplyInfo(552, None, "Mailbox full")),
    ]
    per_message, first, second = status_blocks(build(message, reports))
    assert per_message.keys() == ["Original-Envelope-Id", "Reporting-MTA", "Arrival-Date"]
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["Reporting-MTA"] == "dns; mx.example.com"
    assert timestamp(per_message["Arrival-Date"]) == ARRIVAL
    assert first.keys() == [
        "Original-Recipient",
        "Final-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Diagnostic-Code",
        "Last-Attempt-Date",
    ]
    assert first["Original-Recipient"] == "rfc822;Bob@Example.org"
    assert first["Final-Recipient"] == "rfc822;bob@example.org"
    assert first["Action"] == "failed"
    assert first["Status"] == "5.1.1"
    assert first["Remote-MTA"] == "dns; mx1.example.org"
    assert first["Diagnostic-Code"] == "smtp; 550 5.1.1 User unknown"
    assert timestamp(first["Last-Attempt-Date"]) == NOW - 60
    assert second.keys() == ["Final-Recipient", "Action", "Status", "Diagnostic-Code"]
    assert second["Status"] == "5.0.0"
    assert second["Diagnostic-Code"] == "smtp; 552 Mailbox full"


def test_delay_fields(tmp_path: Path) -> None:
    """A delayed recipient gets Will-Retry-Until (RFC 3464 §2.3.9); the field is left out of
    any other action even when the report carries a date."""
    message = write_message(tmp_path)
    reports = [
        report(Action.DELAYED, BOB, LATER, last_attempt=NOW, will_retry_until=NOW + 86400),
        report(Action.FAILED, CAROL, UNKNOWN, will_retry_until=NOW + 86400),
    ]
    _, bob, carol = status_blocks(build(message, reports))
    assert bob["Action"] == "delayed"
    assert bob["Status"] == "4.3.0"
    assert timestamp(bob["Will-Retry-Until"]) == NOW + 86400
    assert "Will-Retry-Until" not in carol


def test_success_without_reply(tmp_path: Path) -> None:
    """A success with no reply (our own delivery) has no Diagnostic-Code and status 2.0.0."""
    message = write_message(tmp_path)
    notice = build(message, [RecipientReport(BOB, Action.DELIVERED, "", None)])
    _, bob = status_blocks(notice)
    assert bob.keys() == ["Final-Recipient", "Action", "Status"]
    assert bob["Action"] == "delivered"
    assert bob["Status"] == "2.0.0"


def test_malformed_status_is_derived_again(tmp_path: Path) -> None:
    """A Status that is not an RFC 3463 code (say, copied from a broken reply) is replaced
    by one derived from the reply and the action."""
    message = write_message(tmp_path)
    broken = RecipientReport(BOB, Action.FAILED, "5.1.1\r\nX-Injected: 1", UNKNOWN)
    _, bob = status_blocks(build(message, [broken]))
    assert bob["Status"] == "5.1.1"
    assert "X-Injected" not in bob


@pytest.mark.parametrize(
    "actions, subject",
    [
        ([Action.FAILED], FAILED_SUBJECT),
        ([Action.DELAYED], DELAYED_SUBJECT),
        ([Action.DELIVERED], SUCCESS_SUBJECT),
        ([Action.RELAYED], SUCCESS_SUBJECT),
        ([Action.EXPANDED], SUCCESS_SUBJECT),
        ([Action.DELAYED, Action.FAILED], FAILED_SUBJECT),
        ([Action.RELAYED, Action.DELAYED], DELAYED_SUBJECT),
    ],
)
def test_subject_names_the_worst_news(tmp_path: Path, actions: list[Action], subject: str) -> None:
    """The subject says failure if any recipient failed, else delay, else success."""
    message = write_message(tmp_path)
    notice = parse(build(message, reports_for(actions)))
    assert notice["Subject"] == subject


def test_human_readable_part(tmp_path: Path) -> None:
    """The first part tells a person, per recipient, what happened, what the server said,
    and until when we keep trying."""
    message = write_message(tmp_path)
    reports = [
        report(Action.FAILED, BOB, UNKNOWN, remote_host="mx1.example.org"),
        report(Action.DELAYED, CAROL, LATER, will_retry_until=NOW + 86400),
    ]
    text = part(parse(build(message, reports)), 0)
    assert text.get_content_type() == "text/plain"
    assert text.get_content_charset() == "us-ascii"
    content = text.get_content()
    assert "<bob@example.org>: delivery failed" in content
    assert "mx1.example.org answered: 550 5.1.1 User unknown" in content
    assert "Reason: 451 4.3.0 Try again later" in content
    assert "<carol@example.org>: not delivered yet" in content
    assert "Will keep trying until: " + status_blocks(build(message, reports))[2][
        "Will-Retry-Until"
    ] in " ".join(content.split())
    assert "Queue ID: Q1" in content
    assert max(len(line) for line in content.splitlines()) <= 76


# -- what is returned -------------------------------------------------------------------


@pytest.mark.parametrize(
    "ret, actions, full",
    [
        (None, [Action.FAILED], True),
        ("FULL", [Action.FAILED], True),
        ("HDRS", [Action.FAILED], False),
        ("hdrs", [Action.FAILED], False),
        (None, [Action.DELAYED], False),
        ("FULL", [Action.DELAYED], False),
        (None, [Action.DELIVERED], False),
        ("FULL", [Action.DELIVERED], False),
        ("FULL", [Action.RELAYED], False),
        (None, [Action.DELAYED, Action.FAILED], True),
        ("HDRS", [Action.DELAYED, Action.FAILED], False),
        ("FULL", [Action.DELAYED, Action.RELAYED], False),
    ],
)
def test_ret_decides_what_is_returned(
    tmp_path: Path, ret: str | None, actions: list[Action], full: bool
) -> None:
    """RFC 3461 §4.3: RET=HDRS returns the header section, RET=FULL the whole message, but
    only in a notice that reports a failure; a delay or success notice returns the headers
    only. Without RET a failure returns the whole message. Either is returned byte for
    byte."""
    message = write_message(tmp_path, ret=ret)
    raw = build(message, reports_for(actions))
    if full:
        assert returned(raw) == ("message/rfc822", ORIGINAL)
    else:
        assert returned(raw) == ("text/rfc822-headers", HEADERS)


def test_full_message_is_parsed_as_the_original(tmp_path: Path) -> None:
    """The returned message/rfc822 part reads back as the original message."""
    message = write_message(tmp_path)
    inner = part(parse(build(message, [report(Action.FAILED)])), 2).get_content()
    assert inner["Subject"] == "Hello"
    assert inner["Message-ID"] == "<m1@example.com>"
    assert inner.get_content() == "Body line one\r\n\r\nBody after an empty line\r\n"


@pytest.mark.parametrize(
    "content",
    [
        b"Subject: no final line ending",
        b"Subject: body only\r\n\r\nno final line ending",
        b"",
        b"\r\n.\r\n..\r\n--\r\n",
    ],
)
def test_full_message_exact_at_its_edges(tmp_path: Path, content: bytes) -> None:
    """The whole message comes back unchanged whether or not it ends with a line ending:
    the CRLF before the closing delimiter belongs to the delimiter (RFC 2046 §5.1.1)."""
    message = write_message(tmp_path, content)
    assert returned(build(message, [report(Action.FAILED)])) == ("message/rfc822", content)


HEADER_CASES = [
    (ORIGINAL, HEADERS),
    (b"A: 1\r\nB: 2\r\n", b"A: 1\r\nB: 2\r\n"),  # no body
    (b"A: 1\r\nB: 2", b"A: 1\r\nB: 2"),  # no body, no final line ending
    (b"\r\nbody only\r\n\r\nmore\r\n", b""),  # empty header section
    (b"", b""),
    (b"A: 1\r\n folded\r\n\r\n\r\nbody\r\n", b"A: 1\r\n folded\r\n"),
    (b"A: 1\nB: 2\n\nbody\n", b"A: 1\nB: 2\n"),  # bare line feeds
    (b"A: 1\r\n\r\n", b"A: 1\r\n"),
]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 5, 7, 64 * 1024])
@pytest.mark.parametrize("content, headers", HEADER_CASES)
def test_header_section_found_while_streaming(
    tmp_path: Path, content: bytes, headers: bytes, chunk_size: int
) -> None:
    """The header section (every line before the first empty one, RFC 5322 §2.1) is found
    whichever way the chunks cut the empty line."""
    message = write_message(tmp_path, content, ret="HDRS")
    raw = build(message, [report(Action.FAILED)], chunk_size=chunk_size)
    assert returned(raw) == ("text/rfc822-headers", headers)


def reference_header_section(content: bytes) -> bytes:
    """The header section found the slow way: line by line."""
    start = 0
    while (end := content.find(b"\n", start)) != -1:
        if content[start : end + 1] in (b"\n", b"\r\n"):
            return content[:start]
        start = end + 1
    return content


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)
@given(
    content=st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"A: 1", b" x", b"\r\n\r\n"])).map(
        b"".join
    ),
    chunk_size=st.integers(1, 9),
)
def test_header_section_property(tmp_path: Path, content: bytes, chunk_size: int) -> None:
    """For any mix of line endings and any chunk size, the streamed header section is the
    one found by reading the whole message line by line."""
    message = write_message(tmp_path, content, ret="HDRS")
    raw = build(message, [report(Action.FAILED)], chunk_size=chunk_size)
    assert returned(raw)[1] == reference_header_section(content)


# -- streaming --------------------------------------------------------------------------


def fixed_boundary(raw: bytes) -> bytes:
    return raw.replace(boundary_of(raw), b"BOUNDARY")


@pytest.mark.parametrize("ret", ["FULL", "HDRS"])
@pytest.mark.parametrize("chunk_size", [1, 2, 7, 100, 4096])
def test_small_chunks_make_the_same_notice(tmp_path: Path, chunk_size: int, ret: str) -> None:
    """Any chunk size gives the same bytes (up to the random boundary); every piece but the
    last has exactly chunk_size bytes, so the sink's writes are bounded."""
    body = b"".join(b"line %d of the body\r\n" % i for i in range(500))
    message = write_message(tmp_path, HEADERS + b"\r\n" + body, ret=ret)
    reports = [report(Action.FAILED), report(Action.DELAYED, CAROL)]
    reference = fixed_boundary(build(message, reports, chunk_size=1 << 20))
    out = pieces(message, reports, chunk_size=chunk_size)
    assert fixed_boundary(b"".join(out)) == reference
    assert all(len(piece) == chunk_size for piece in out[:-1])
    assert 0 < len(out[-1]) <= chunk_size


def test_large_message_is_streamed(tmp_path: Path) -> None:
    """An 8 MiB message is returned whole without ever being held in memory whole."""
    body = b"x" * 998 + b"\r\n"
    content = HEADERS + b"\r\n" + body * (8 * 1024 * 1024 // len(body))
    message = write_message(tmp_path, content)
    size = 0

    def sink(piece: bytes) -> None:
        nonlocal size
        size += len(piece)

    tracemalloc.start()
    try:
        build_notification(
            reporting_mta="mx.example.com",
            message=message,
            reports=[report(Action.FAILED)],
            arrival_date=ARRIVAL,
            now=NOW,
            message_id="<dsn1@mx.example.com>",
            sink=sink,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > len(content)
    assert peak < 1024 * 1024


def test_boundary_is_random_long_and_absent_from_the_content(tmp_path: Path) -> None:
    """Each notice has its own long random boundary (RFC 2046 §5.1.1), found only at the
    delimiters and in the Content-Type parameter."""
    message = write_message(tmp_path)
    first = build(message, [report(Action.FAILED)])
    second = build(message, [report(Action.FAILED)])
    boundary = boundary_of(first)
    assert boundary != boundary_of(second)
    assert len(boundary) >= 40
    assert boundary not in ORIGINAL
    assert first.count(boundary) == 1 + 4  # the parameter, three delimiters, the close


# -- internationalised mail (RFC 6533) --------------------------------------------------

UTF8_ORIGINAL = (
    "From: Jürgen <jürgen@bücher.example>\r\n"
    "To: 用户@example.net\r\n"
    "Subject: Grüße\r\n"
    "\r\n"
    "Hallo, Welt\r\n"
).encode()
USER = OutboundRecipient("用户@example.net", None, "utf-8;用户@example.net")


def test_international_failure(tmp_path: Path) -> None:
    """An SMTPUTF8 message gets message/global-delivery-status with the utf-8 address type
    for non-ASCII addresses (rfc822 for the others) and the original as message/global
    (RFC 6533 §3, §4); the text is UTF-8 and the sender's address is written as it is."""
    message = write_message(tmp_path, UTF8_ORIGINAL, sender="jürgen@bücher.example", smtputf8=True)
    reply = ReplyInfo(550, "5.1.1", "Benutzer unbekannt: 用户")
    raw = build(message, [report(Action.FAILED, USER, reply), report(Action.FAILED, BOB)])
    notice = parse_utf8(raw)
    assert [address.addr_spec for address in notice["To"].addresses] == ["jürgen@bücher.example"]
    assert notice.get_param("report-type") == "delivery-status"
    assert notice["Content-Transfer-Encoding"] == "8bit"
    text, status, _ = notice.iter_parts()
    assert text.get_content_charset() == "utf-8"
    assert "<用户@example.net>: delivery failed" in raw_parts(raw)[0][1].decode("utf-8")
    assert status.get_content_type() == "message/global-delivery-status"
    _, user, bob = status_blocks(raw)
    assert user["Original-Recipient"] == "utf-8;用户@example.net"
    assert user["Final-Recipient"] == "utf-8;用户@example.net"
    assert user["Diagnostic-Code"] == "smtp; 550 5.1.1 Benutzer unbekannt: 用户"
    assert bob["Final-Recipient"] == "rfc822;bob@example.org"
    assert returned(raw) == ("message/global", UTF8_ORIGINAL)


def test_international_delay_returns_global_headers(tmp_path: Path) -> None:
    """A delay notice for an SMTPUTF8 message returns message/global-headers."""
    message = write_message(tmp_path, UTF8_ORIGINAL, smtputf8=True)
    raw = build(message, [report(Action.DELAYED, USER)])
    assert returned(raw) == (
        "message/global-headers",
        UTF8_ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n",
    )


def test_non_ascii_address_makes_the_notice_international(tmp_path: Path) -> None:
    """A non-ASCII address implies SMTPUTF8 (RFC 6531 §3.4), so even a record that lacks the
    flag gets the global types rather than raw UTF-8 in an ASCII-only part."""
    message = write_message(tmp_path, smtputf8=False)
    raw = build(message, [report(Action.FAILED, OutboundRecipient("用户@example.net"))])
    assert part(parse(raw), 1).get_content_type() == "message/global-delivery-status"
    assert returned(raw)[0] == "message/global"


def test_ascii_notice_masks_non_ascii_reply_text(tmp_path: Path) -> None:
    """In a notice that must stay ASCII, non-ASCII characters of the remote reply become "?"
    (RFC 3464 §2.1: message/delivery-status is US-ASCII)."""
    message = write_message(tmp_path)
    raw = build(message, [report(Action.FAILED, BOB, ReplyInfo(550, "5.1.1", "Unbekannt: ü"))])
    assert raw.isascii()
    assert status_blocks(raw)[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 Unbekannt: ?"


def test_eight_bit_body_is_labelled(tmp_path: Path) -> None:
    """A BODY=8BITMIME message is returned with Content-Transfer-Encoding 8bit, on the part
    and on the multipart (RFC 2045 §6.4); a 7-bit one says 7bit."""
    message = write_message(tmp_path, HEADERS + b"\r\ncaf\xc3\xa9\r\n", body_8bit=True)
    notice = parse(build(message, [report(Action.FAILED)]))
    assert notice["Content-Transfer-Encoding"] == "8bit"
    assert part(notice, 2)["Content-Transfer-Encoding"] == "8bit"
    plain = parse(build(write_message(tmp_path), [report(Action.FAILED)]))
    assert plain["Content-Transfer-Encoding"] == "7bit"


# -- addresses and identifiers ----------------------------------------------------------


def test_orcpt_and_envid_are_written_decoded(tmp_path: Path) -> None:
    """ORCPT and ENVID arrive xtext-decoded and are written as they are, not encoded again
    (RFC 3461 §4.2, §4.4); without ORCPT there is no Original-Recipient (RFC 3461 §6.3)."""
    message = write_message(tmp_path, envid="id+1=2")
    tagged = OutboundRecipient("bob@example.org", None, "rfc822;a+tag=x@example.org")
    per_message, bob, carol = status_blocks(
        build(message, [report(Action.FAILED, tagged), report(Action.FAILED, CAROL)])
    )
    assert per_message["Original-Envelope-Id"] == "id+1=2"
    assert bob["Original-Recipient"] == "rfc822;a+tag=x@example.org"
    assert "Original-Recipient" not in carol


def test_orcpt_without_address_type(tmp_path: Path) -> None:
    """An ORCPT missing its address type still yields a well-formed field (rfc822)."""
    message = write_message(tmp_path)
    odd = OutboundRecipient("bob@example.org", None, "old@example.org")
    assert (
        status_blocks(build(message, [report(Action.FAILED, odd)]))[1]["Original-Recipient"]
        == "rfc822;old@example.org"
    )


def test_local_parts_are_quoted_where_needed(tmp_path: Path) -> None:
    """Addresses held in normalised, unquoted form are written with the quoting RFC 5322
    needs, in To and Final-Recipient; already quoted ones are not quoted twice."""
    message = write_message(tmp_path, sender='"alice smith"@example.com')
    spaced = OutboundRecipient("john smith@example.org")
    raw = build(message, [report(Action.FAILED, spaced)])
    assert [a.addr_spec for a in parse(raw)["To"].addresses] == ['"alice smith"@example.com']
    assert status_blocks(raw)[1]["Final-Recipient"] == 'rfc822;"john smith"@example.org'


# -- hostile input ----------------------------------------------------------------------

HOSTILE_TEXT = (
    "User unknown\r\nX-Injected: yes\nBcc: victim@example.org\r\n\r\n--fake-boundary\r\n"
    "\x00\x1b[31m\x7f\x85Y-Injected: 1\u2028Z-Injected: 2\x0bW-Injected: 3\udcff"
)


def test_hostile_reply_cannot_add_header_fields(tmp_path: Path) -> None:
    """Line breaks and control characters in a reply, an enhanced code or a host name are
    flattened into the one field they belong to: no field, part or line is added, and every
    line of the notice ends in CRLF."""
    message = write_message(tmp_path)
    reply = ReplyInfo(450, "4.2.1\r\nV-Injected: 4", HOSTILE_TEXT)
    hostile = report(
        Action.DELAYED,
        BOB,
        reply,
        status=reply.enhanced,
        remote_host="mx.example.org\r\nU-Injected: 5",
    )
    raw = build(message, [hostile])
    notice = parse(raw)
    blocks = status_blocks(raw)
    every_field = [name for block in [notice, *blocks] for name in block]
    every_field += [name for part in notice.iter_parts() for name in part]
    assert not [name for name in every_field if "Injected" in name or name == "Bcc"]
    assert len(list(notice.iter_parts())) == 3
    bob = blocks[1]
    assert bob["Status"] == "4.0.0"
    assert bob["Remote-MTA"] == "dns; mx.example.org U-Injected: 5"
    assert bob["Diagnostic-Code"] == (
        "smtp; 450 User unknown X-Injected: yes Bcc: victim@example.org --fake-boundary "
        "??[31m? Y-Injected: 1 Z-Injected: 2 W-Injected: 3?"
    )
    generated = raw.replace(HEADERS, b"")
    assert b"\r" not in generated.replace(b"\r\n", b"")
    assert b"\n" not in generated.replace(b"\r\n", b"")
    assert not any(byte < 0x20 and byte not in b"\r\n" for byte in generated)
    assert b"\r\n--fake-boundary" not in raw


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(text=st.text(), host=st.text(), enhanced=st.text(max_size=12), code=st.integers(0, 999))
def test_any_reply_stays_in_its_fields(
    tmp_path: Path, text: str, host: str, enhanced: str, code: int
) -> None:
    """Whatever a remote server answers, the recipient block has exactly its own fields,
    the notice has three parts, and its lines all end in CRLF."""
    message = write_message(tmp_path, smtputf8=True)
    reply = ReplyInfo(code, enhanced, text)
    hostile = RecipientReport(BOB, Action.DELAYED, enhanced, reply, remote_host=host or None)
    raw = build(message, [hostile])
    assert len(list(parse(raw).iter_parts())) == 3
    fields = ["Final-Recipient", "Action", "Status"]
    fields += ["Remote-MTA"] if host else []
    fields += ["Diagnostic-Code"]
    assert status_blocks(raw)[1].keys() == fields
    generated = raw.replace(HEADERS, b"")
    assert b"\r" not in generated.replace(b"\r\n", b"")
    assert b"\n" not in generated.replace(b"\r\n", b"")


def test_long_reply_is_folded(tmp_path: Path) -> None:
    """A long reply is folded at spaces into lines of at most 78 characters (RFC 5322
    §2.1.1, §2.2.3) and unfolds to the same text."""
    message = write_message(tmp_path)
    text = " ".join(f"word{i}" for i in range(400))
    raw = build(message, [report(Action.FAILED, BOB, ReplyInfo(550, "5.7.1", text))])
    assert status_blocks(raw)[1]["Diagnostic-Code"] == f"smtp; 550 5.7.1 {text}"
    _, body = raw_parts(raw)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 78


def test_overlong_word_is_cut_below_the_line_limit(tmp_path: Path) -> None:
    """A word longer than a line may be (998 octets, RFC 5322 §2.1.1) is cut into pieces,
    so no line of the notice exceeds the limit, in UTF-8 octets too."""
    message = write_message(tmp_path, UTF8_ORIGINAL, smtputf8=True)
    reply = ReplyInfo(550, "5.7.1", "a" * 3000 + " " + "ü" * 3000)
    raw = build(message, [report(Action.FAILED, USER, reply)])
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    diagnostic = status_blocks(raw)[1]["Diagnostic-Code"]
    assert "a" * 900 in diagnostic
    assert "".join(diagnostic.split()) == "smtp;5505.7.1" + "a" * 3000 + "ü" * 3000


# -- refusals ---------------------------------------------------------------------------


def test_null_sender_is_refused(tmp_path: Path) -> None:
    """A message from <> is never answered with a notice (RFC 5321 §4.5.5)."""
    message = write_message(tmp_path, sender="")
    with pytest.raises(ValueError, match="null sender"):
        build(message, [report(Action.FAILED)])


def test_no_reports_is_refused(tmp_path: Path) -> None:
    """A notice without a recipient block is not a valid report (RFC 3464 §2.1)."""
    with pytest.raises(ValueError):
        build(write_message(tmp_path), [])


@pytest.mark.parametrize("message_id", ["dsn1@mx.example.com", "<no-at-sign>", "<a@b>\r\nX: y"])
def test_malformed_message_id_is_refused(tmp_path: Path, message_id: str) -> None:
    """Our own Message-ID must be an RFC 5322 msg-id: a bad one is our bug, not a field."""
    with pytest.raises(ValueError, match="Message-ID"):
        build_notification(
            reporting_mta="mx.example.com",
            message=write_message(tmp_path),
            reports=[report(Action.FAILED)],
            arrival_date=ARRIVAL,
            now=NOW,
            message_id=message_id,
            sink=lambda piece: None,
        )


@pytest.mark.parametrize("host", ["", "mx example.com", "mx.example.com\r\nX: y"])
def test_malformed_reporting_mta_is_refused(tmp_path: Path, host: str) -> None:
    """Our own host name goes into From and Reporting-MTA unchanged, so it must be clean."""
    with pytest.raises(ValueError, match="reporting MTA"):
        build_notification(
            reporting_mta=host,
            message=write_message(tmp_path),
            reports=[report(Action.FAILED)],
            arrival_date=ARRIVAL,
            now=NOW,
            message_id="<dsn1@mx.example.com>",
            sink=lambda piece: None,
        )
