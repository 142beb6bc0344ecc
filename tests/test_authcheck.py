"""The checks of one inbound message: how SPF, DKIM and DMARC outcomes become the
Authentication-Results field and the refusal, and what happens when DNS is slow or broken."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns

from mailserver.authcheck import SPF_TIME_LIMIT, CheckPolicy, InboundCheck, Verdict
from mailserver.smtp import replies
from tests.fake_dns import FakeDNS, txt
from tests.test_smtp_checks import SENDER_ZONE

Zone = Mapping[tuple[int, str], Sequence[Any] | Exception]


class SlowDNS(FakeDNS):
    """Answers TXT queries for ``slow`` never."""

    def __init__(self, zone: Zone, slow: str) -> None:
        super().__init__(zone)
        self.slow = slow

    async def records(self, kind: int, name: str) -> list[Any]:
        if name == self.slow:
            never: Deferred[list[Any]] = Deferred()
            return await never
        return await super().records(kind, name)


def check(
    content: bytes,
    dns_fake: FakeDNS | None = None,
    sender: str = "alice@client.example",
    clock: MemoryReactorClock | None = None,
    **policy: bool,
) -> Verdict:
    clock = clock or MemoryReactorClock()
    inbound = InboundCheck(
        dns_fake or FakeDNS(SENDER_ZONE),  # type: ignore[arg-type]
        CheckPolicy(authserv_id="mx.ours.example", **policy),
        clock,
        "192.0.2.1",
        "client.example",
        sender,
        draw=lambda: 0.0,
    )
    inbound.feed(content)
    verdicts: list[Verdict] = []
    Deferred.fromCoroutine(inbound.verdict()).addCallback(verdicts.append)
    if not verdicts:
        clock.advance(SPF_TIME_LIMIT)
    (verdict,) = verdicts
    return verdict


def test_summary_names_each_result() -> None:
    """The log line lists each method's result."""
    verdict = check(b"From: alice@client.example\r\n\r\nhi\r\n")
    assert verdict.summary() == "spf=pass dkim=none dmarc=pass"
    assert verdict.refusal is None


def test_slow_spf_is_temperror_after_the_time_limit() -> None:
    """An SPF evaluation still waiting after the time limit is cut short as temperror
    (RFC 7208 §4.6.4), and the message is not refused for it by default."""
    verdict = check(
        b"From: alice@client.example\r\n\r\nhi\r\n", SlowDNS(SENDER_ZONE, "client.example")
    )
    assert verdict.spf.result.value == "temperror"
    assert verdict.spf.reason == "SPF check took too long"
    assert verdict.refusal is None
    assert b"spf=temperror (SPF check took too long)" in verdict.header


def test_null_sender_is_checked_by_helo() -> None:
    """A bounce (null sender) is checked against its HELO name, recorded as smtp.helo."""
    zone = dict(SENDER_ZONE)
    zone[(dns.TXT, "client.example")] = txt("v=spf1 ip4:192.0.2.1 -all")
    verdict = check(b"From: MAILER-DAEMON@client.example\r\n\r\nbounce\r\n", FakeDNS(zone), "")
    assert verdict.spf.identity == "helo"
    assert b"smtp.helo=client.example" in verdict.header


def test_every_author_domain_is_judged_and_the_strictest_applies() -> None:
    """RFC 7489 §6.6.1: with two From domains each is evaluated; bank.example's p=reject
    failure wins over client.example's pass."""
    verdict = check(b"From: a@client.example, b@bank.example\r\n\r\nhi\r\n")
    assert verdict.dmarc is not None
    assert (verdict.dmarc.result, verdict.dmarc.author_domain) == ("fail", "bank.example")
    assert verdict.refusal == replies.DMARC_REJECTED


def test_from_that_a_strict_parser_refuses_is_still_judged() -> None:
    """Two From fields, an unclosed comment, a line that is no field: the domains are found
    all the same, and forged mail from a p=reject domain is refused."""
    for header in (
        b"From: Bank <ceo@bank.example>\r\nFrom: Bank <ceo@bank.example>\r\n",
        b"From: Bank <ceo@bank.example> (x\r\n",
        b'From: "alice@client.example" <ceo@BANK.example.>\r\n',
    ):
        verdict = check(header + b"\r\npay\r\n")
        assert verdict.refusal == replies.DMARC_REJECTED, header


def test_u_label_from_is_looked_up_as_a_label() -> None:
    """RFC 7489 §6.6.1: a U-label domain is converted to its A-label (IDNA 2008) first."""
    zone = dict(SENDER_ZONE)
    zone[(dns.TXT, "_dmarc.xn--bcher-kva.example")] = txt("v=DMARC1; p=reject")
    verdict = check(b"From: ceo@b\xc3\xbccher.example\r\n\r\nhi\r\n", FakeDNS(zone))
    assert verdict.dmarc is not None
    assert verdict.dmarc.author_domain == "xn--bcher-kva.example"
    assert verdict.refusal == replies.DMARC_REJECTED


def test_missing_from_is_a_dmarc_permerror() -> None:
    """A message without From cannot be aligned: permerror, recorded with the reason."""
    verdict = check(b"Subject: no author\r\n\r\nhi\r\n")
    assert verdict.dmarc is not None
    assert verdict.dmarc.result == "permerror"
    assert b"dmarc=permerror (no From domain to check)" in verdict.header


def test_dmarc_refusal_names_the_domain() -> None:
    """The 550 5.7.1 says whose policy refused the message."""
    verdict = check(b"From: ceo@bank.example\r\n\r\npay\r\n")
    assert verdict.refusal == replies.DMARC_REJECTED
    assert verdict.refusal is not None and "bank.example" in verdict.refusal.text
