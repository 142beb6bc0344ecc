"""Deliverability scenarios against the real ``twistd mailserver``: DKIM signatures on the mail
our users send, checked by two verifiers that are not ours (Perl's Mail::DKIM, through
``dkim_verify.pl``, and dkimpy's whole-message verifier), and SPF, DKIM and DMARC checks on
the mail other servers send us.

A loopback DNS server (:mod:`tests.integration.dns`) serves ``example.org`` (our domain: its
DKIM keys, made for this module, and a p=reject DMARC policy) and the ``test`` zone:
``elsewhere.test`` has its MX on the sink, ``good.test`` lists 127.0.0.1 in its SPF record,
``bank.test`` lists another address, and both publish p=reject.
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from twisted.names import dns as names

from mailserver.dkimkeys import SigningKey, write_new_key
from tests.integration.conftest import PASSWORD
from tests.integration.dns import MX, TXT, A, LoopbackDNS, Record
from tests.integration.server import RunningServer
from tests.integration.sink import SMTPSink

pytestmark = pytest.mark.integration

ALICE = "alice@example.org"
BOB = "bob@example.org"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, SigningKey]]:
    directory = tmp_path_factory.mktemp("dkim")
    return {
        "rsa2026": (directory / "rsa.pem", write_new_key(directory / "rsa.pem", "rsa")),
        "ed2026": (directory / "ed.pem", write_new_key(directory / "ed.pem", "ed25519")),
    }


@pytest.fixture(scope="module")
def dns_server(keys: dict[str, tuple[Path, SigningKey]]) -> Iterator[LoopbackDNS]:
    records: dict[str, list[Record]] = {
        "example.org": [MX(10, "mx.example.org"), TXT("v=spf1 mx -all")],
        "mx.example.org": [A("127.0.0.1")],
        "_dmarc.example.org": [TXT("v=DMARC1; p=reject")],
        "elsewhere.test": [MX(10, "mx.elsewhere.test")],
        "mx.elsewhere.test": [A("127.0.0.1")],
        "good.test": [TXT("v=spf1 ip4:127.0.0.1 -all")],
        "_dmarc.good.test": [TXT("v=DMARC1; p=reject")],
        "bank.test": [TXT("v=spf1 ip4:192.0.2.1 -all")],
        "_dmarc.bank.test": [TXT("v=DMARC1; p=reject")],
    }
    for selector, (_, key) in keys.items():
        records[f"{selector}._domainkey.example.org"] = [TXT(key.dns_record())]
    server = LoopbackDNS(records, zones=["test", "example.org"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mail_server(
    server_factory,  # type: ignore[no-untyped-def]
    dns_server: LoopbackDNS,
    sink: SMTPSink,
    keys: dict[str, tuple[Path, SigningKey]],
) -> RunningServer:
    server: RunningServer = server_factory(
        {
            "dns": {"resolver": [dns_server.address], "timeout": "5s"},
            "outbound": {"mx_port": sink.port},
            "checks": {"enabled": True},
            "dkim": {
                "keys": [
                    {"domain": "example.org", "selector": selector, "private_key": str(path)}
                    for selector, (path, _) in keys.items()
                ]
            },
        }
    )
    server.admin("user", "add", ALICE, password=PASSWORD)
    server.admin("user", "add", BOB, password=PASSWORD)
    server.start()
    return server


def published(dns_server: LoopbackDNS) -> object:
    """A dnsfunc for dkimpy that asks the loopback DNS server."""

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        answer = dns_server.query(name.decode().rstrip("."), names.TXT)
        return b"".join(b"".join(rr.payload.data) for rr in answer.answers)

    return lookup


def test_sent_mail_carries_signatures_that_verify(
    mail_server: RunningServer, sink: SMTPSink, dns_server: LoopbackDNS
) -> None:
    """Alice's message to another domain arrives with an RSA and an Ed25519 signature for
    example.org. Mail::DKIM verifies the RSA one and, like many receivers today, sets the
    Ed25519 one aside as an algorithm it does not know (which is why RFC 8463 has both);
    dkimpy verifies both against the published keys."""
    content = (
        b"From: Alice <alice@example.org>\r\n"
        b"To: <friend@elsewhere.test>\r\n"
        b"Subject: signed\r\n"
        b"Date: Tue, 1 Dec 2026 06:00:00 +0000\r\n"
        b"Message-ID: <%d@example.org>\r\n"
        b"\r\n"
        b"Hello   there, \r\n.dot line\r\n\r\n\r\n" % time.monotonic_ns()
    )
    with smtplib.SMTP("127.0.0.1", mail_server.submission_port, timeout=30) as client:
        client.login(ALICE, PASSWORD)
        client.sendmail(ALICE, ["friend@elsewhere.test"], content)
    (received,) = sink.wait_for_messages(1, timeout=20)
    assert sorted(mail_dkim(received.data, dns_server)) == [
        "invalid example.org ed2026 ed25519-sha256"
        " (invalid (unsupported algorithm ed25519-sha256))",
        "pass example.org rsa2026 rsa-sha256 (pass)",
    ]
    signed = dkim.DKIM(received.data)
    dnsfunc = published(dns_server)
    assert [signed.verify(index, dnsfunc=dnsfunc) for index in (0, 1)] == [True, True]


def test_changed_signed_mail_fails_the_independent_verifier(
    mail_server: RunningServer, sink: SMTPSink, dns_server: LoopbackDNS
) -> None:
    """The same verifier fails the RSA signature once the body is changed on the way: the
    test above cannot pass by accident."""
    content = b"From: alice@example.org\r\nSubject: tamper\r\n\r\nPay 10 EUR.\r\n"
    with smtplib.SMTP("127.0.0.1", mail_server.submission_port, timeout=30) as client:
        client.login(ALICE, PASSWORD)
        client.sendmail(ALICE, ["friend@elsewhere.test"], content)
    (received,) = sink.wait_for_messages(1, timeout=20)
    tampered = received.data.replace(b"Pay 10 EUR.", b"Pay 99 EUR.")
    results = mail_dkim(tampered, dns_server)
    assert "fail example.org rsa2026 rsa-sha256 (fail (body has been altered))" in results


def mail_dkim(message: bytes, dns_server: LoopbackDNS) -> list[str]:
    """Mail::DKIM's verdict on each signature: "RESULT DOMAIN SELECTOR ALGORITHM (DETAIL)"."""
    if shutil.which("perl") is None:
        pytest.fail("perl is not installed (.ci/run installs it with Mail::DKIM)")
    port = dns_server.address.rsplit(":", 1)[1]
    script = Path(__file__).with_name("dkim_verify.pl")
    result = subprocess.run(
        ["perl", str(script), port], input=message, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


def test_forged_sender_of_a_reject_domain_is_refused(mail_server: RunningServer) -> None:
    """Mail claiming to be from bank.test, sent from an address bank.test's SPF does not
    list and without its signature, is refused 550 5.7.1 at the end of the data."""
    content = b"From: The Bank <ceo@bank.test>\r\nSubject: Urgent\r\n\r\nPay now.\r\n"
    with (
        smtplib.SMTP("127.0.0.1", mail_server.smtp_port, timeout=30) as client,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        client.sendmail("ceo@bank.test", [BOB], content)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 ")
    assert b"bank.test" in refused.value.smtp_error
    assert mail_server.new_messages(BOB) == []


def test_incoming_mail_gets_authentication_results(mail_server: RunningServer) -> None:
    """Mail from good.test, sent from an address its SPF record lists, is delivered with our
    Authentication-Results field; the one the sender forged in our name is gone."""
    content = (
        b"Authentication-Results: mx.example.org; dkim=pass header.d=bank.test\r\n"
        b"From: News <news@good.test>\r\nSubject: Weekly\r\n\r\nNews.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", mail_server.smtp_port, timeout=30) as client:
        client.sendmail("news@good.test", [BOB], content)
    (path,) = mail_server.new_messages(BOB)
    stored = path.read_bytes()
    assert b"header.d=bank.test" not in stored
    start = stored.index(b"Authentication-Results: mx.example.org;")
    field = stored[start : stored.index(b"Received:", start)]
    assert b"spf=pass" in field
    assert b"smtp.mailfrom=news@good.test" in field
    assert b"dkim=none" in field
    assert b"dmarc=pass (p=reject dis=none) header.from=good.test" in field
