"""Outbound delivery scenarios: the real ``twistd mailserver`` sends alice's mail to other
domains through its queue, and tells her what became of it.

Everything stays on loopback. One DNS server for the module (:mod:`tests.integration.dns`)
serves the ``test`` zone: ``elsewhere.test`` has an MX host with an IPv6 and an IPv4 loopback
address, ``unreachable.test`` one on 127.0.0.2 where nothing listens, ``nullmx.test`` a null MX
(RFC 7505), and every other name in the zone is NXDOMAIN. Each test has its own receiving
server (:mod:`tests.integration.sink`, on 127.0.0.1 only, so the IPv6 address of the MX host
is refused and the IPv4 one is tried next) and its own mail server, configured with
``dns.resolver`` pointing at the DNS server, ``outbound.mx_port`` at the sink's port and
retry times of seconds. Alice submits over the submission port (AUTH without TLS, which
``plaintext_auth = "loopback"`` allows) and reads her notices over POP3.
"""

from __future__ import annotations

import email
import email.message
import json
import poplib
import re
import shutil
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from twisted.names import dns as names

from tests.integration.conftest import PASSWORD
from tests.integration.dns import AAAA, MX, A, LoopbackDNS, Record
from tests.integration.server import RunningServer, free_port
from tests.integration.sink import SMTPSink

pytestmark = pytest.mark.integration

HOSTNAME = "mx.example.org"  # the mail server's name
ALICE = "alice@example.org"
BOB = "bob@elsewhere.test"  # behind the sink
CAROL = "carol@unreachable.test"  # behind an MX host nobody answers on

RECORDS: dict[str, list[Record]] = {
    "elsewhere.test": [MX(10, "mx.elsewhere.test")],
    "mx.elsewhere.test": [AAAA("::1"), A("127.0.0.1")],
    "unreachable.test": [MX(10, "mx.unreachable.test")],
    "mx.unreachable.test": [A("127.0.0.2")],
    "nullmx.test": [MX(0, ".")],
}

FAILED_SUBJECT = "Undelivered Mail Returned to Sender"
DELAYED_SUBJECT = "Delayed Mail (still being retried)"


def message(subject: str, to: str = BOB, body: bytes = b"Hello.\r\n") -> bytes:
    """A message from alice, with the header fields msmtp would otherwise add itself."""
    return (
        b"From: Alice <alice@example.org>\r\n"
        b"To: <%s>\r\n"
        b"Date: Mon, 1 Jan 2024 12:00:00 +0000\r\n"
        b"Message-ID: <%d@example.org>\r\n"
        b"Subject: %s\r\n"
        b"\r\n" % (to.encode(), time.monotonic_ns(), subject.encode())
    ) + body


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dns_server() -> Iterator[LoopbackDNS]:
    server = LoopbackDNS(RECORDS, zones=["test"])
    server.start()
    yield server
    server.stop()


StartServer = Callable[..., RunningServer]


@pytest.fixture
def start_server(server_factory, dns_server: LoopbackDNS) -> StartServer:  # type: ignore[no-untyped-def]
    """Start a server that delivers to MX hosts on ``mx_port``, with user alice; keyword
    arguments override the [outbound] settings."""

    def start(mx_port: int, **outbound: object) -> RunningServer:
        settings: dict[str, object] = {
            "mx_port": mx_port,
            "tls": "opportunistic",
            "retry_initial": "1s",
            "retry_max": "2s",
            "delay_notice": "1h",
            "lifetime": "2h",
            "connect_timeout": "5s",
        }
        settings.update(outbound)
        server: RunningServer = server_factory(
            {"outbound": settings, "dns": {"resolver": [dns_server.address]}}
        )
        server.admin("user", "add", ALICE, password=PASSWORD)
        server.start()
        return server

    return start


# -- submitting ------------------------------------------------------------------------------------


def submit(server: RunningServer, data: bytes, recipients: list[str]) -> None:
    """Alice submits ``data`` with smtplib (AUTH PLAIN on loopback, no TLS)."""
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30) as client:
        client.ehlo("client.example.org")
        client.login(ALICE, PASSWORD)
        assert client.sendmail(ALICE, recipients, data) == {}


def msmtp(server: RunningServer, data: bytes, recipient: str) -> None:
    """Alice submits ``data`` with msmtp (AUTH on loopback, no TLS)."""
    if shutil.which("msmtp") is None:
        pytest.fail("msmtp is not installed (.ci/run installs it)")
    rc = server.directory / f"msmtprc-{time.monotonic_ns()}"
    rc.write_text(
        "account default\n"
        "host 127.0.0.1\n"
        f"port {server.submission_port}\n"
        "tls off\n"
        # Named: "auth on" would choose only methods that keep the password secret without TLS.
        "auth plain\n"
        f"user {ALICE}\n"
        f"password {PASSWORD}\n"
        f"from {ALICE}\n"
        "domain client.example.org\n"
    )
    rc.chmod(0o600)  # msmtp refuses a password in a file others can read
    result = subprocess.run(
        ["msmtp", "-C", str(rc), recipient], input=data, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()


# -- the queue -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """One message as ``mailserver queue list`` shows it."""

    id: str
    line: str  # the message's line
    recipients: list[str]  # the lines of its pending recipients


def queue_list(server: RunningServer) -> tuple[list[Listed], str]:
    """The messages ``mailserver queue list`` shows, and its last line."""
    lines = server.admin("queue", "list").stdout.splitlines()
    listed: list[Listed] = []
    for line in lines[:-1]:
        if line.startswith("    "):
            listed[-1].recipients.append(line.strip())
        else:
            listed.append(Listed(line.split()[0], line, []))
    return listed, lines[-1]


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def wait_for_queue_empty(server: RunningServer, timeout: float = 10.0) -> None:
    """Until the queue directory holds no message or record, and ``mailserver queue list``
    then says so too."""
    wait_until("the queue empties", lambda: not queue_files(server), timeout)
    assert queue_list(server) == ([], "0 messages queued")


def queue_files(server: RunningServer) -> list[Path]:
    queue = server.data_dir / "queue"
    return sorted(queue.glob("*.msg")) + sorted(queue.glob("*.json"))


def attempted_records(server: RunningServer) -> list[str]:
    """The ids of the queue records that show an attempt (records are replaced atomically,
    so each read sees a whole one)."""
    ids = []
    for path in (server.data_dir / "queue").glob("*.json"):
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # removed meanwhile
        if any(recipient.get("attempts") for recipient in record.get("recipients", ())):
            ids.append(path.stem)
    return ids


def wait_for_attempt(server: RunningServer, timeout: float = 10.0) -> Listed:
    """The one queued message as ``mailserver queue list`` shows it, once an attempt has
    failed and been recorded."""
    wait_until("a failed attempt is recorded", lambda: bool(attempted_records(server)), timeout)
    listed, summary = queue_list(server)
    assert summary == "1 message queued", (listed, summary)
    return listed[0]


# -- alice's mailbox -------------------------------------------------------------------------------


def mailbox_count(server: RunningServer, address: str = ALICE) -> int:
    maildir = server.maildir(address)
    return sum(len(list((maildir / sub).iterdir())) for sub in ("new", "cur") if maildir.exists())


def wait_for_mail(server: RunningServer, count: int, timeout: float) -> float:
    """Until alice's Maildir holds ``count`` messages; when that was (time.monotonic())."""
    wait_until(f"{count} messages for alice", lambda: mailbox_count(server) >= count, timeout)
    return time.monotonic()


def pop3_messages(server: RunningServer, address: str = ALICE) -> list[bytes]:
    """Every message in the mailbox, oldest first, fetched over POP3 (and left there)."""
    client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    try:
        client.user(address)
        client.pass_(PASSWORD)
        count, _ = client.stat()
        return [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
    finally:
        client.quit()


@dataclass
class Notice:
    """A delivery status notification (RFC 3464), parsed with the ``email`` package."""

    message: email.message.Message
    per_message: email.message.Message
    recipients: list[email.message.Message]
    original: email.message.Message  # the returned message or its header

    def recipient(self, address: str) -> email.message.Message:
        found = [r for r in self.recipients if typed(r["Final-Recipient"]) == ("rfc822", address)]
        assert len(found) == 1, [str(r) for r in self.recipients]
        return found[0]


def parse_notice(data: bytes) -> Notice:
    parsed = email.message_from_bytes(data)
    assert parsed.get_content_type() == "multipart/report", data[:2000]
    assert parsed.get_param("report-type") == "delivery-status"
    parts = _parts(parsed)
    [status] = [part for part in parts if part.get_content_type() == "message/delivery-status"]
    blocks = _parts(status)  # the per-message block, then one per recipient
    assert len(blocks) >= 2
    [original] = [
        part
        for part in parts
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers")
    ]
    return Notice(parsed, blocks[0], blocks[1:], original)


def _parts(message: email.message.Message) -> list[email.message.Message]:
    payload = message.get_payload()
    assert isinstance(payload, list), message.get_content_type()
    return [part for part in payload if isinstance(part, email.message.Message)]


def typed(value: str | None) -> tuple[str, str]:
    """A typed field of a delivery status ("rfc822; alice@example.org", RFC 3464 §2.1.2):
    its type (lower case) and its value."""
    kind, semicolon, rest = unfolded(value).partition(";")
    assert semicolon, value
    return kind.strip().lower(), rest.strip()


def unfolded(value: str | None) -> str:
    assert value is not None
    return re.sub(r"\s+", " ", value).strip()


def header_fields(data: bytes) -> list[tuple[str, bytes]]:
    """The header fields in ``data`` (CRLF lines, folded ones included): (lower-case name,
    the field's octets)."""
    fields: list[tuple[str, bytes]] = []
    for line in data.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            assert fields, data
            name, field = fields[-1]
            fields[-1] = (name, field + b"\r\n" + line)
        else:
            raw_name, colon, _ = line.partition(b":")
            assert colon, data
            fields.append((raw_name.decode().lower(), line))
    return fields


def log_of(server: RunningServer) -> str:
    return server.log.read_text(errors="replace") if server.log.exists() else ""


# -- 1. success ------------------------------------------------------------------------------------


def test_msmtp_submission_is_delivered_once_byte_identical(
    start_server: StartServer, sink: SMTPSink
) -> None:
    """msmtp (AUTH on the submission port) sends to bob@elsewhere.test; the MX found through
    DNS is the sink (its IPv6 address tried first and refused, the IPv4 one taken). The sink
    receives the message once, from alice's envelope sender to bob, after our EHLO: the
    octets msmtp sent, byte for byte, after one Received header of ours (``by mx.example.org
    with ESMTPA``). The queue is empty afterwards and alice gets no notice (she asked for
    none)."""
    server = start_server(sink.port)
    data = message(
        "outbound",
        body=b"First line.\r\n.A line that starts with a dot.\r\n..Two.\r\nCaf\xc3\xa9 8-bit.\r\n",
    )
    msmtp(server, data, BOB)
    [received] = sink.wait_for_messages(1, timeout=20)
    assert received.sender == ALICE
    assert received.recipients == (BOB,)
    assert received.helo == HOSTNAME
    assert received.data.endswith(data)
    added = header_fields(received.data[: -len(data)])
    # (A Return-Path is also there, wrongly: see test_relayed_copy_has_no_delivery_headers.)
    [received_field] = [field for name, field in added if name != "return-path"]
    assert received_field.startswith(
        b"Received: from client.example.org ([127.0.0.1])\r\n\tby mx.example.org with ESMTPA id "
    ), received_field
    # The MX host's IPv6 address came first (RFC 6724) and was refused; IPv4 took the mail.
    assert f"mx.elsewhere.test [::1]:{sink.port} passed over" in log_of(server)
    wait_for_queue_empty(server)
    assert len(sink.messages) == 1
    assert mailbox_count(server) == 0


def test_relayed_copy_has_no_delivery_headers(start_server: StartServer, sink: SMTPSink) -> None:
    """Alice writes to herself and to bob@elsewhere.test. Her own copy starts with the
    Return-Path and Delivered-To of final delivery, as local mail should; the copy relayed to
    bob's MX carries neither (RFC 5321 §4.4: Return-Path is added at final delivery, and a
    message sent on SHOULD NOT contain one; Delivered-To: alice would tell bob's side which
    other mailbox got the message): it starts with our Received header."""
    server = start_server(sink.port)
    data = message("to herself and to bob")
    submit(server, data, [ALICE, BOB])
    [received] = sink.wait_for_messages(1, timeout=20)
    [local] = server.new_messages(ALICE)
    local_fields = dict(header_fields(local.read_bytes()[: -len(data)]))
    assert local_fields["return-path"] == b"Return-Path: <alice@example.org>"
    assert local_fields["delivered-to"] == b"Delivered-To: alice@example.org"
    assert received.data.endswith(data)
    relayed = [name for name, _ in header_fields(received.data[: -len(data)])]
    assert relayed == ["received"], relayed


# -- 2. "." lines on chunk boundaries --------------------------------------------------------------

CHUNK = 64 * 1024  # what the SMTP client reads from the queue file at a time


def dotted_message() -> bytes:
    """A message of about 290 KiB with runs of "." lines around each 64 KiB multiple.

    The queue file holds our Received header (a few hundred octets, length unknown here)
    before these octets, so each run covers the 3 KiB before a multiple; the runs start at
    offsets of different residues modulo 3 (a "." line is 3 octets), so that whatever the
    header's length, at one of the first three multiples a chunk starts exactly with a
    ".CRLF" line, and at the others it splits one between "." and CR or CR and LF.
    """
    out = bytearray(message("dots on chunk boundaries"))
    for k in range(1, 5):
        run_start = k * CHUNK - 3000
        run_start += (k * CHUNK - k - run_start) % 3  # run_start = k*CHUNK - k (mod 3)
        number = 0
        while run_start - len(out) > 100:
            number += 1
            line = b".dot-started filler %06d " % number if number % 7 == 0 else b"filler "
            out += line + b"x" * (78 - len(line)) + b"\r\n"
        out += b"y" * (run_start - len(out) - 2) + b"\r\n"
        assert len(out) == run_start
        out += b".\r\n" * 1100  # 3300 octets: past the multiple
    out += b"..\r\nThe end.\r\n"
    return bytes(out)


def test_dot_lines_on_chunk_boundaries_arrive_byte_identical(
    start_server: StartServer, sink: SMTPSink
) -> None:
    """A 290 KiB message whose "." lines fall on the 64 KiB boundaries of the queue file
    (where the client reads and stuffs a new chunk) arrives byte-identical: no line is
    left unstuffed at a boundary (which would end the message early) or stuffed twice."""
    server = start_server(sink.port)
    data = dotted_message()
    assert len(data) > 200 * 1024
    submit(server, data, [BOB])
    [received] = sink.wait_for_messages(1, timeout=30)
    assert received.data.endswith(data), "the message arrived changed"
    header = len(received.data) - len(data)
    assert "received" in dict(header_fields(received.data[:header]))
    # The test did what it says: some chunk of the file starts with a whole "." line.
    starts = [k * CHUNK - header for k in range(1, 5)]
    assert any(data[s - 2 : s + 3] == b"\r\n.\r\n" for s in starts), (header, starts)
    wait_for_queue_empty(server)
    assert len(sink.messages) == 1


# -- 3. greylisting --------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["rcpt", "data"])
def test_greylisted_message_is_delivered_once_on_retry(
    start_server: StartServer, sink: SMTPSink, stage: str
) -> None:
    """The sink answers the first attempt with 451 4.7.1 (to RCPT, or after the content);
    the server tries again after retry_initial (1 s, give or take 10 % jitter), and the
    message is delivered exactly once, with no notice to alice."""
    if stage == "rcpt":
        sink.script.greylist_rcpt = 1
    else:
        sink.script.greylist_data = 1
    server = start_server(sink.port)
    data = message(f"greylisted at {stage}")
    submit(server, data, [BOB])
    [received] = sink.wait_for_messages(1, timeout=20)
    assert received.data.endswith(data)
    events = sink.events
    [refusal] = [e for e in events if e.reply.startswith("451 4.7.1")]
    assert refusal.command == ("RCPT" if stage == "rcpt" else ".")
    mails = [e for e in events if e.command == "MAIL"]
    assert len(mails) == 2, events
    assert mails[1].when - refusal.when >= 0.9 - 0.05, "retried before retry_initial"
    wait_for_queue_empty(server)
    assert len(sink.messages) == 1
    assert mailbox_count(server) == 0


# -- 4. one recipient refused for good -------------------------------------------------------------


def test_permanent_refusal_of_one_recipient_bounces_only_that_one(
    start_server: StartServer, sink: SMTPSink
) -> None:
    """The sink refuses nobody@elsewhere.test with 550 5.1.1 and takes bob: bob's copy is
    delivered (to bob alone), and alice finds one notice in her mailbox over POP3: a
    multipart/report of report-type delivery-status from the null sender, with one recipient
    block for nobody: Action failed, Status 5.1.1, the sink's reply as Diagnostic-Code and
    the MX host as Remote-MTA; the original comes back with it."""
    refused = "nobody@elsewhere.test"
    reply = f"550 5.1.1 <{refused}>: Recipient address rejected: no such user"
    sink.script.reject[refused] = reply
    server = start_server(sink.port)
    data = message("one good, one bad")
    submit(server, data, [refused, BOB])
    [received] = sink.wait_for_messages(1, timeout=20)
    assert received.recipients == (BOB,)
    assert received.data.endswith(data)
    wait_for_mail(server, 1, timeout=10)
    wait_for_queue_empty(server)
    [raw] = pop3_messages(server)
    notice = parse_notice(raw)
    assert notice.message["Subject"] == FAILED_SUBJECT
    assert notice.message["To"] is not None and ALICE in notice.message["To"]
    assert notice.message.get("Return-Path") in (None, "<>")
    assert typed(notice.per_message["Reporting-MTA"]) == ("dns", HOSTNAME)
    assert notice.per_message["Arrival-Date"] is not None
    [block] = notice.recipients
    assert block is notice.recipient(refused)
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert typed(block["Diagnostic-Code"]) == ("smtp", reply)
    assert typed(block["Remote-MTA"]) == ("dns", "mx.elsewhere.test")
    assert b"Subject: one good, one bad" in notice.original.as_bytes()
    assert len(sink.messages) == 1


# -- 5. nobody answers -----------------------------------------------------------------------------


def test_unreachable_mx_gives_delay_notice_then_bounce_at_lifetime(
    start_server: StartServer, sink: SMTPSink
) -> None:
    """Mail for carol@unreachable.test, whose MX host refuses connections, is retried every
    second; alice gets a delay notice (Action delayed, a 4.x.x Status, Will-Retry-Until) once
    delay_notice (2 s) has passed, and a failure notice (Action failed, Status 4.4.7, delivery
    time expired, with the last reply) once lifetime (4 s) has; then the queue is empty."""
    server = start_server(
        sink.port, retry_initial="1s", retry_max="1s", delay_notice="2s", lifetime="4s"
    )
    started = time.monotonic()
    submit(server, message("to nowhere", to=CAROL), [CAROL])
    delayed_at = wait_for_mail(server, 1, timeout=15)
    failed_at = wait_for_mail(server, 2, timeout=15)
    wait_for_queue_empty(server)
    assert delayed_at - started >= 2.0 - 0.05
    assert failed_at - started >= 4.0 - 0.05
    delayed, failed = (parse_notice(raw) for raw in pop3_messages(server))

    assert delayed.message["Subject"] == DELAYED_SUBJECT
    block = delayed.recipient(CAROL)
    assert block["Action"] == "delayed"
    assert block["Status"] is not None and block["Status"].startswith("4."), block["Status"]
    assert block["Will-Retry-Until"] is not None
    assert "refused" in unfolded(block["Diagnostic-Code"]).lower(), str(block)

    assert failed.message["Subject"] == FAILED_SUBJECT
    block = failed.recipient(CAROL)
    assert block["Action"] == "failed"
    assert block["Status"] == "4.4.7"
    diagnostic = unfolded(block["Diagnostic-Code"])
    assert "expired" in diagnostic and "refused" in diagnostic.lower(), diagnostic
    assert sink.connections == 0
    assert mailbox_count(server) == 2


# -- 6. no such domain, null MX --------------------------------------------------------------------


def test_null_mx_and_nxdomain_bounce_at_once(
    start_server: StartServer, sink: SMTPSink, dns_server: LoopbackDNS
) -> None:
    """Mail for a domain with a null MX bounces at once (Status 5.1.10, RFC 7505), and so does
    mail for a domain that does not exist (NXDOMAIN: Status 5.1.2): with retry_initial an
    hour, each notice arrives within seconds, nobody is connected to and the queue empties."""
    assert dns_server.query("nosuch.test", names.MX).rCode == names.ENAME
    server = start_server(
        sink.port, retry_initial="1h", retry_max="1h", delay_notice="2h", lifetime="3h"
    )
    expected = {"dave@nullmx.test": "5.1.10", "erin@nosuch.test": "5.1.2"}
    for count, address in enumerate(expected, start=1):
        submit(server, message(f"to {address}", to=address), [address])
        wait_for_mail(server, count, timeout=10)
    wait_for_queue_empty(server)
    notices = [parse_notice(raw) for raw in pop3_messages(server)]
    for notice, (address, status) in zip(notices, expected.items(), strict=True):
        block = notice.recipient(address)
        assert block["Action"] == "failed"
        assert block["Status"] == status
        assert status in unfolded(block["Diagnostic-Code"])
        assert block["Remote-MTA"] is None
    assert sink.connections == 0


# -- 7. a crash with mail queued -------------------------------------------------------------------


def test_queued_message_survives_sigkill_and_is_delivered_once(
    start_server: StartServer,
) -> None:
    """With the MX down, a submitted message stays queued after a failed attempt; the server
    is killed with SIGKILL, the MX comes up and the server is started again: the message is
    delivered, once, byte-identical, and the queue empties."""
    port = free_port()  # the sink's, once it runs
    server = start_server(port)
    data = message("survives a crash")
    submit(server, data, [BOB])
    wait_for_attempt(server)
    server.kill()
    with SMTPSink(port=port) as sink:
        server.start()
        [received] = sink.wait_for_messages(1, timeout=20)
        assert received.data.endswith(data)
        wait_for_queue_empty(server)
        assert len(sink.messages) == 1


# -- 8. mailserver queue ---------------------------------------------------------------------------


def test_queue_list_show_bounce_and_delete(start_server: StartServer, sink: SMTPSink) -> None:
    """A message stuck behind an unreachable MX: ``queue list`` shows it, from alice, with its
    recipient's attempts and last reply; ``queue show`` the recipient pending with its last
    reply and remote host. ``queue bounce`` makes the running server return it to alice
    (Status 5.0.0) within a couple of seconds. Another stuck message, ``queue delete``d,
    leaves the queue with no notice to anyone."""
    server = start_server(
        sink.port, retry_initial="1h", retry_max="1h", delay_notice="2h", lifetime="3h"
    )
    submit(server, message("stuck", to=CAROL), [CAROL])
    listed = wait_for_attempt(server)
    assert f"from <{ALICE}>" in listed.line and "1 of 1 pending" in listed.line, listed
    [recipient] = listed.recipients
    assert recipient.startswith(f"<{CAROL}>  1 attempts: 451 4.4.1 "), recipient

    shown = server.admin("queue", "show", listed.id).stdout
    assert re.search(rf"^id: +{listed.id}$", shown, re.M), shown
    assert re.search(rf"^sender: +<{ALICE}>$", shown, re.M), shown
    assert f"recipient <{CAROL}>" in shown
    assert re.search(r"^ +state: +pending$", shown, re.M), shown
    assert re.search(r"^ +attempts: +1$", shown, re.M), shown
    assert re.search(r"^ +last reply: +451 4\.4\.1 ", shown, re.M), shown
    assert re.search(r"^ +remote host: +mx\.unreachable\.test$", shown, re.M), shown

    server.admin("queue", "bounce", listed.id)
    asked = time.monotonic()
    returned = wait_for_mail(server, 1, timeout=5)
    assert returned - asked < 3.0
    wait_for_queue_empty(server)
    [raw] = pop3_messages(server)
    notice = parse_notice(raw)
    block = notice.recipient(CAROL)
    assert block["Action"] == "failed"
    assert block["Status"] == "5.0.0"
    assert "Returned to sender" in unfolded(block["Diagnostic-Code"])

    other = "dan@unreachable.test"
    submit(server, message("deleted", to=other), [other])
    listed = wait_for_attempt(server)
    assert listed.recipients[0].startswith(f"<{other}>  1 attempts: ")
    server.admin("queue", "delete", listed.id)
    wait_for_queue_empty(server, timeout=5)
    time.sleep(1.0)  # a notice, if the server wrote one, would have come by now
    assert mailbox_count(server) == 1
    assert f"deleted {listed.id} without notice" in log_of(server)
    assert sink.connections == 0


def test_queue_delete_during_an_attempt_is_not_lost(
    start_server: StartServer, sink: SMTPSink
) -> None:
    """``queue delete`` given while the server is talking to the MX (which takes 3 s to greet,
    then greylists the recipient) is not lost: once that attempt has ended, the message leaves
    the queue, with no notice and no further attempt."""
    sink.script.greeting_delay = 3.0
    sink.script.greylist_rcpt = 1
    server = start_server(
        sink.port, retry_initial="1h", retry_max="1h", delay_notice="2h", lifetime="3h"
    )
    submit(server, message("deleted while being delivered"), [BOB])
    wait_until("the server connects to the MX", lambda: sink.connections == 1, timeout=10)
    [queued] = {path.stem for path in queue_files(server)}
    server.admin("queue", "delete", queued)
    handed_over = time.monotonic()

    def greylisted() -> bool:
        return any(event.reply.startswith("451 4.7.1") for event in sink.events)

    wait_until("the attempt ends", greylisted, timeout=10)
    [refusal] = [event for event in sink.events if event.reply.startswith("451 4.7.1")]
    # The runner looks for commands every second: it had the delete during the attempt.
    assert refusal.when - handed_over > 1.0
    wait_for_queue_empty(server, timeout=3)
    assert mailbox_count(server) == 0
    assert sink.messages == []
