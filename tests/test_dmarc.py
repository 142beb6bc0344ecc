"""DMARC: record parsing, policy discovery at the domain and its organizational domain,
alignment in both modes, and what a failure asks for (RFC 7489)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from twisted.internet.defer import Deferred

from mailserver.dmarc import (
    Authenticated,
    DMARCVerdict,
    Policy,
    RecordError,
    aligned,
    evaluate,
    organizational_domain,
    parse_record,
)
from mailserver.dnsquery import LookupFailed
from tests.fake_dns import FakeTexts


def run(
    records: Mapping[str, list[bytes] | Exception],
    author: str,
    spf: str | None = None,
    dkim: tuple[str, ...] = (),
    draw: float = 0.0,
) -> DMARCVerdict:
    verdicts: list[DMARCVerdict] = []
    Deferred.fromCoroutine(
        evaluate(FakeTexts(records), author, Authenticated(spf, dkim), lambda: draw)
    ).addCallback(verdicts.append)
    return verdicts[0]


def test_organizational_domain_uses_the_public_suffix_list() -> None:
    """The organizational domain is one label under the public suffix (§3.2)."""
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.Example.ORG.") == "example.org"
    assert organizational_domain("co.uk") == "co.uk"


def test_alignment_modes() -> None:
    """Relaxed alignment accepts any domain of the same organization; strict only the same
    domain (§3.1.1, §3.1.2)."""
    assert aligned("mail.example.org", "example.org", strict=False)
    assert not aligned("mail.example.org", "example.org", strict=True)
    assert aligned("Example.org", "example.org", strict=True)
    assert not aligned("example.net", "example.org", strict=False)
    assert not aligned("other.co.uk", "example.co.uk", strict=False)


def test_parse_record() -> None:
    """Tags in any case of spacing; sp defaults to p, modes to relaxed, pct to 100."""
    assert parse_record("v=DMARC1; p=reject") == Policy("reject", "reject", False, False, 100)
    assert parse_record("v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s;pct=20;") == Policy(
        "quarantine", "none", True, True, 20
    )


@pytest.mark.parametrize(
    "text",
    ["p=reject; v=DMARC1", "v=DMARC2; p=reject", "v=DMARC1; p=bounce", "v=DMARC1; junk"],
)
def test_unusable_records(text: str) -> None:
    """v=DMARC1 must come first (§6.4); p= must be a known policy unless rua= is given."""
    with pytest.raises(RecordError):
        parse_record(text)


def test_bad_policy_with_rua_is_none() -> None:
    """§6.6.3 step 6: a bad p= with a valid rua= is read as p=none."""
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:d@example.org").p == "none"


REJECT = {"_dmarc.example.org": [b"v=DMARC1; p=reject"]}


def test_aligned_spf_passes() -> None:
    """SPF pass for a domain of the same organization passes in relaxed mode."""
    verdict = run(REJECT, "example.org", spf="bounces.example.org")
    assert (verdict.result, verdict.policy) == ("pass", "reject")


def test_aligned_dkim_passes() -> None:
    """A DKIM pass for the From domain passes even when SPF vouched for another domain."""
    verdict = run(REJECT, "example.org", spf="esp.example.net", dkim=("example.org",))
    assert verdict.result == "pass"


def test_unaligned_fails_with_the_policy() -> None:
    """Authenticated but unaligned domains fail; disposition is the record's policy."""
    verdict = run(REJECT, "example.org", spf="example.net", dkim=("example.com",))
    assert (verdict.result, verdict.policy, verdict.disposition) == ("fail", "reject", "reject")


def test_strict_mode_needs_the_same_domain() -> None:
    """With aspf=s and adkim=s, a subdomain's pass does not align."""
    records = {"_dmarc.example.org": [b"v=DMARC1; p=reject; aspf=s; adkim=s"]}
    verdict = run(records, "example.org", spf="mail.example.org", dkim=("mail.example.org",))
    assert verdict.result == "fail"


def test_subdomain_uses_the_organizational_record_and_sp() -> None:
    """A From subdomain without its own record takes the organization's, with its sp=."""
    records = {"_dmarc.example.org": [b"v=DMARC1; p=reject; sp=quarantine"]}
    fake = FakeTexts(records)
    verdicts: list[DMARCVerdict] = []
    Deferred.fromCoroutine(
        evaluate(fake, "news.example.org", Authenticated(None, ()), lambda: 0.0)
    ).addCallback(verdicts.append)
    assert (verdicts[0].result, verdicts[0].policy) == ("fail", "quarantine")
    assert fake.asked == ["_dmarc.news.example.org", "_dmarc.example.org"]


def test_no_record_is_none() -> None:
    """Without a record anywhere the result is none, and nothing is asked."""
    verdict = run({}, "example.org", spf=None)
    assert (verdict.result, verdict.disposition) == ("none", "none")


def test_two_records_are_no_policy() -> None:
    """§6.6.3 step 5: two DMARC records at one name mean no policy (permerror)."""
    records = {"_dmarc.example.org": [b"v=DMARC1; p=reject", b"v=DMARC1; p=none"]}
    assert run(records, "example.org").result == "permerror"


def test_other_txt_records_are_ignored() -> None:
    """TXT records that are not DMARC records do not count."""
    records = {"_dmarc.example.org": [b"some-verification=abc", b"v=DMARC1; p=reject"]}
    assert run(records, "example.org").disposition == "reject"


def test_dns_failure_is_temperror() -> None:
    """A failed look-up is temperror: never a reason to refuse for good."""
    records: dict[str, list[bytes] | Exception] = {"_dmarc.example.org": LookupFailed("timeout")}
    verdict = run(records, "example.org")
    assert (verdict.result, verdict.disposition) == ("temperror", "none")


def test_pct_sampling_downgrades_outside_the_sample() -> None:
    """§6.6.4: with pct=25, a message drawn outside the sample gets the next policy down."""
    records = {"_dmarc.example.org": [b"v=DMARC1; p=reject; pct=25"]}
    assert run(records, "example.org", draw=0.1).disposition == "reject"
    assert run(records, "example.org", draw=0.5).disposition == "quarantine"


def test_unaligned_with_a_check_that_could_not_run_is_temperror() -> None:
    """Without an aligned pass, but with SPF or DKIM cut short by DNS, the result is
    temperror, not fail: the missing check might have passed."""
    verdicts: list[DMARCVerdict] = []
    Deferred.fromCoroutine(
        evaluate(FakeTexts(REJECT), "example.org", Authenticated(None, (), incomplete=True))
    ).addCallback(verdicts.append)
    assert (verdicts[0].result, verdicts[0].disposition) == ("temperror", "none")
