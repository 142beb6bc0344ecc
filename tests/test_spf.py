"""Tests for mailserver.spf: check_host() of RFC 7208 over an in-memory DNSQuery, from record
selection through mechanisms, modifiers, macros and limits to DNS failures; the examples of the
RFC's Appendix A; and random records, which must always give a result."""

from __future__ import annotations

import ipaddress
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.names import dns
from twisted.python.failure import Failure

from mailserver.dnsquery import DNSQuery, LookupFailed, NoSuchName
from mailserver.spf import (
    MAX_DNS_TERMS,
    MAX_MX_NAMES,
    MAX_PTR_NAMES,
    MAX_VOID_LOOKUPS,
    SPFResult,
    SPFVerdict,
    check_spf,
    syntax_problem,
)
from tests.fake_dns import TextsFromRecords

PASS = SPFResult.PASS
FAIL = SPFResult.FAIL
SOFTFAIL = SPFResult.SOFTFAIL
NEUTRAL = SPFResult.NEUTRAL
NONE = SPFResult.NONE
TEMPERROR = SPFResult.TEMPERROR
PERMERROR = SPFResult.PERMERROR

# --- an in-memory DNSQuery ----------------------------------------------------------------------


class FakeDNS(TextsFromRecords):
    """Stand-in for DNSQuery: answers ``records`` and ``texts`` from a table at once, every
    query recorded. A name with no entry at all is NXDOMAIN (NoSuchName); a known name without
    records of the asked type answers nothing; a failure set for a name and type is raised, as
    DNSQuery raises LookupFailed for SERVFAIL and timeouts."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, int], list[Any]] = {}
        self.names: set[str] = set()
        self.failures: dict[tuple[str, int], Exception] = {}
        self.queries: list[tuple[str, int]] = []

    def add(self, name: str, payload: Any) -> FakeDNS:
        self.names.add(name)
        self.answers.setdefault((name, payload.TYPE), []).append(payload)
        return self

    def txt(self, name: str, *texts: str | bytes) -> FakeDNS:
        """One TXT record with one string for each of ``texts``."""
        for text in texts:
            data = text if isinstance(text, bytes) else text.encode("ascii")
            self.add(name, dns.Record_TXT(data))
        return self

    def a(self, name: str, *addresses: str) -> FakeDNS:
        for address in addresses:
            self.add(name, dns.Record_A(address))
        return self

    def aaaa(self, name: str, *addresses: str) -> FakeDNS:
        for address in addresses:
            self.add(name, dns.Record_AAAA(address))
        return self

    def mx(self, name: str, *hosts: str) -> FakeDNS:
        for preference, host in enumerate(hosts, start=1):
            self.add(name, dns.Record_MX(preference * 10, host.encode("ascii")))
        return self

    def ptr(self, address: str, *names: str) -> FakeDNS:
        reverse = ipaddress.ip_address(address).reverse_pointer
        for name in names:
            self.add(reverse, dns.Record_PTR(name.encode("ascii")))
        return self

    def exists(self, *names: str) -> FakeDNS:
        """Make ``names`` exist with no records (an empty answer for every type)."""
        self.names.update(names)
        return self

    def fail(self, name: str, kind: int, error: Exception | None = None) -> FakeDNS:
        self.failures[(name, kind)] = error if error is not None else LookupFailed("timeout")
        return self

    def asked(self, kind: int) -> list[str]:
        """The names queried for ``kind``, in order."""
        return [name for name, asked in self.queries if asked == kind]

    async def records(self, kind: int, name: str) -> list[Any]:
        self.queries.append((name, kind))
        failure = self.failures.get((name, kind))
        if failure is not None:
            raise failure
        if name not in self.names:
            raise NoSuchName(name)
        return list(self.answers.get((name, kind), []))


def fired(deferred: Deferred[SPFVerdict]) -> SPFVerdict:
    """The result of an already-fired Deferred (the fake answers at once)."""
    results: list[SPFVerdict | Failure] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, SPFVerdict)
    return result


def start(
    zone: FakeDNS,
    ip: str = "192.0.2.1",
    mail_from: str = "alice@example.org",
    helo: str = "mail.example.net",
) -> Deferred[SPFVerdict]:
    coroutine = check_spf(cast(DNSQuery, zone), ip, mail_from, helo, "mx.receiver.example")
    return Deferred.fromCoroutine(coroutine)


def check(
    zone: FakeDNS,
    ip: str = "192.0.2.1",
    mail_from: str = "alice@example.org",
    helo: str = "mail.example.net",
) -> SPFVerdict:
    return fired(start(zone, ip, mail_from, helo))


def zone(record: str) -> FakeDNS:
    """example.org publishing ``record``, with the hosts the tests below use."""
    return (
        FakeDNS()
        .txt("example.org", record)
        .a("example.org", "192.0.2.10")
        .aaaa("example.org", "2001:db8::10")
        .mx("example.org", "mx1.example.org", "mx2.example.org")
        .a("mx1.example.org", "192.0.2.20")
        .aaaa("mx1.example.org", "2001:db8::20")
        .a("mx2.example.org", "192.0.2.21")
        .a("mail.example.net", "198.51.100.5")
        .aaaa("mail.example.net", "2001:db8:5::5")
    )


def result(record: str, ip: str = "192.0.2.1") -> SPFResult:
    """The result for alice@example.org from ``ip`` when example.org publishes ``record``."""
    return check(zone(record), ip).result


# --- record selection (§4.5) and the initial domain (§4.3) --------------------------------------


@pytest.mark.parametrize(
    "texts",
    [
        [],
        ["google-site-verification=abc"],
        ["v=spf10 -all"],
        ["v=spf1-all"],
        ["spf1 -all"],
        [b"\x96 not ours, not ASCII"],
    ],
    ids=["no-txt", "other-txt", "spf10", "no-space", "no-v", "non-ascii-other"],
)
def test_no_spf_record_is_none(texts: list[str | bytes]) -> None:
    """A domain whose TXT records include none beginning "v=spf1" (followed by a space or
    the end) has no policy: NONE, whatever else it publishes."""
    verdict = check(FakeDNS().exists("example.org").txt("example.org", *texts))
    assert verdict.result is NONE
    assert verdict.reason == "no SPF record at example.org"


def test_nxdomain_is_none() -> None:
    """A MAIL FROM domain that does not exist gives NONE (§4.3)."""
    assert check(FakeDNS()).result is NONE


def test_the_spf_record_among_others_is_used_and_version_is_case_insensitive() -> None:
    """Other TXT records beside the SPF record are ignored; "v=spf1" matches in any case."""
    dns_zone = FakeDNS().txt("example.org", "site-verification=1", "V=SpF1 -all", "hello")
    assert check(dns_zone).result is FAIL


def test_two_spf_records_are_a_permerror() -> None:
    """More than one SPF record is PERMERROR (§4.5), even when they agree."""
    verdict = check(FakeDNS().txt("example.org", "v=spf1 -all", "v=spf1 -all"))
    assert verdict.result is PERMERROR
    assert verdict.reason == "example.org has 2 SPF records"


@pytest.mark.parametrize("record", ["v=spf1", "v=spf1   ", "v=spf1 ip4:198.51.100.1"])
def test_no_match_is_neutral(record: str) -> None:
    """A record with no mechanism that matches, and no redirect, is NEUTRAL (§4.7)."""
    verdict = check(FakeDNS().txt("example.org", record))
    assert verdict.result is NEUTRAL
    assert verdict.reason == "192.0.2.1 matches nothing at example.org"


def test_txt_lookup_failure_is_temperror() -> None:
    """A TXT look-up that may pass (timeout, SERVFAIL) is TEMPERROR (§4.4), saying which."""
    verdict = check(FakeDNS().fail("example.org", dns.TXT))
    assert verdict == SPFVerdict(
        TEMPERROR, "example.org", "mailfrom", "DNS timeout looking up TXT example.org"
    )


def test_non_ascii_spf_record_is_a_permerror() -> None:
    """An SPF record with octets beyond ASCII breaks the grammar: PERMERROR."""
    assert check(
        FakeDNS().txt("example.org", b"v=spf1 a:\xef\xbb\xbfx.example.org -all")
    ).result is (PERMERROR)


def test_verdict_names_the_mail_from_domain() -> None:
    """For a non-null sender the MAIL FROM domain is checked, lower case, without its final
    dot, as identity "mailfrom"; the reason names the deciding term."""
    verdict = check(zone("v=spf1 ip4:192.0.2.0/24 -all"), mail_from="Alice@Example.ORG.")
    assert verdict == SPFVerdict(
        PASS, "example.org", "mailfrom", "192.0.2.1 is permitted by ip4:192.0.2.0/24"
    )
    verdict = check(zone("v=spf1 -all"))
    assert verdict.reason == "192.0.2.1 is not permitted by -all"


def test_null_sender_checks_the_helo_name() -> None:
    """With the null reverse-path the HELO name is checked (§2.4), as identity "helo", with
    "postmaster@<helo>" as the sender for macros."""
    dns_zone = FakeDNS().txt(
        "mail.example.net", "v=spf1 exists:%{l}._l.%{o}._o.%{h}._h.check.example -all"
    )
    verdict = check(dns_zone, mail_from="", helo="Mail.Example.NET")
    assert (verdict.result, verdict.domain, verdict.identity) == (FAIL, "mail.example.net", "helo")
    assert dns_zone.asked(dns.A) == [
        "postmaster._l.mail.example.net._o.mail.example.net._h.check.example"
    ]


def test_missing_local_part_is_postmaster() -> None:
    """A sender with an empty local part gets "postmaster" for macros (§4.3)."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 exists:%{l}.check.example -all")
    check(dns_zone, mail_from="@example.org")
    assert dns_zone.asked(dns.A) == ["postmaster.check.example"]


@pytest.mark.parametrize(
    "mail_from, helo",
    [
        ("alice@[192.0.2.1]", "mail.example.net"),
        ("alice@192.0.2.1", "mail.example.net"),
        ("alice@localhost", "mail.example.net"),
        ("alice@a..example.org", "mail.example.net"),
        ("alice@" + "a" * 64 + ".example.org", "mail.example.net"),
        ("alice@example.123", "mail.example.net"),
        ("alice", "mail.example.net"),
        ("", "[192.0.2.1]"),
        ("", "[IPv6:2001:db8::1]"),
        ("", "mailhost"),
        ("", ""),
    ],
)
def test_malformed_domain_is_none_without_dns(mail_from: str, helo: str) -> None:
    """A domain to check that is no multi-label domain name (an address literal, a bare
    address, one label, an empty or over-long label) gives NONE at once (§4.3)."""
    dns_zone = FakeDNS()
    verdict = check(dns_zone, mail_from=mail_from, helo=helo)
    assert verdict.result is NONE
    assert verdict.identity == ("mailfrom" if mail_from else "helo")
    assert "is not a domain name" in verdict.reason
    assert dns_zone.queries == []


def test_internationalised_domain_is_checked_in_a_labels() -> None:
    """A U-label sender domain (SMTPUTF8) is looked up in its A-label form."""
    dns_zone = FakeDNS().txt("xn--bcher-kva.example", "v=spf1 +all")
    verdict = check(dns_zone, mail_from="alice@bücher.example")
    assert (verdict.result, verdict.domain) == (PASS, "xn--bcher-kva.example")


# --- mechanisms (§5) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, expected",
    [
        ("v=spf1 all", PASS),
        ("v=spf1 +all", PASS),
        ("v=spf1 -all", FAIL),
        ("v=spf1 ~all", SOFTFAIL),
        ("v=spf1 ?all", NEUTRAL),
        ("v=spf1 -ALL", FAIL),
    ],
)
def test_all_with_each_qualifier(record: str, expected: SPFResult) -> None:
    """ "all" always matches and gives its qualifier's result (§4.6.2, §5.1); no qualifier is +."""
    assert result(record) is expected


@pytest.mark.parametrize(
    "record, ip, expected",
    [
        ("ip4:192.0.2.1", "192.0.2.1", PASS),
        ("ip4:192.0.2.1", "192.0.2.2", FAIL),
        ("ip4:192.0.2.1/32", "192.0.2.1", PASS),
        ("ip4:192.0.2.0/24", "192.0.2.200", PASS),
        ("ip4:192.0.2.77/24", "192.0.2.1", PASS),
        ("ip4:192.0.2.0/25", "192.0.2.200", FAIL),
        ("ip4:0.0.0.0/0", "203.0.113.9", PASS),
        ("ip4:192.0.2.1", "::ffff:192.0.2.1", PASS),
        ("ip4:0.0.0.0/0", "2001:db8::1", FAIL),
        ("ip6:2001:db8::/32", "2001:db8:1::1", PASS),
        ("ip6:2001:db8::1", "2001:db8::1", PASS),
        ("ip6:2001:db8::1", "2001:db8::2", FAIL),
        ("ip6:2001:DB8::/32", "2001:db8:ffff::1", PASS),
        ("ip6:::/0", "192.0.2.1", FAIL),
        ("ip6:::ffff:192.0.2.1", "192.0.2.1", FAIL),
    ],
)
def test_ip4_and_ip6(record: str, ip: str, expected: SPFResult) -> None:
    """ip4 and ip6 match the client in their network (/32 and /128 when no length is given,
    host bits ignored), never across address families; an IPv4-mapped IPv6 client is IPv4."""
    assert result(f"v=spf1 {record} -all", ip) is expected


@pytest.mark.parametrize(
    "record, ip, expected",
    [
        ("a", "192.0.2.10", PASS),
        ("a", "192.0.2.11", FAIL),
        ("a/24", "192.0.2.99", PASS),
        ("a:mail.example.net", "198.51.100.5", PASS),
        ("a:mail.example.net/24", "198.51.100.99", PASS),
        ("a:mail.example.net", "192.0.2.10", FAIL),
        ("a", "2001:db8::10", PASS),
        ("a", "2001:db8::11", FAIL),
        ("a//64", "2001:db8::ffff", PASS),
        ("a/24//64", "2001:db8::ffff", PASS),
        ("a/24//64", "192.0.2.99", PASS),
        ("a/0", "2001:db8:ff::1", FAIL),
        ("a//0", "192.0.2.11", FAIL),
        ("a", "::ffff:192.0.2.10", PASS),
    ],
)
def test_a(record: str, ip: str, expected: SPFResult) -> None:
    """a matches the addresses of the domain (or of its domain-spec) within the CIDR length
    for the client's family (dual-cidr-length, §5.3)."""
    assert result(f"v=spf1 {record} -all", ip) is expected


def test_a_asks_for_the_client_address_family_only() -> None:
    """A records for an IPv4 client, AAAA records for an IPv6 one (§5)."""
    v4 = zone("v=spf1 a -all")
    check(v4, "192.0.2.1")
    v6 = zone("v=spf1 a -all")
    check(v6, "2001:db8::1")
    assert (v4.asked(dns.A), v4.asked(dns.AAAA)) == (["example.org"], [])
    assert (v6.asked(dns.A), v6.asked(dns.AAAA)) == ([], ["example.org"])


@pytest.mark.parametrize(
    "record, ip, expected",
    [
        ("mx", "192.0.2.20", PASS),
        ("mx", "192.0.2.21", PASS),
        ("mx", "192.0.2.10", FAIL),
        ("mx/24", "192.0.2.99", PASS),
        ("mx", "2001:db8::20", PASS),
        ("mx//120", "2001:db8::ff", PASS),
        ("mx:example.net", "192.0.2.20", FAIL),
    ],
)
def test_mx(record: str, ip: str, expected: SPFResult) -> None:
    """mx matches the addresses of the MX hosts of the domain, within the CIDR length (§5.4)."""
    assert result(f"v=spf1 {record} -all", ip) is expected


def test_mx_has_no_implicit_mx() -> None:
    """A domain without MX records does not stand in as its own MX (§5.4)."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 mx -all").a("example.org", "192.0.2.1")
    assert check(dns_zone).result is FAIL


def ptr_zone(record: str) -> FakeDNS:
    return (
        zone(record)
        .ptr("192.0.2.30", "host.example.org")
        .a("host.example.org", "192.0.2.30")
        .ptr("192.0.2.31", "liar.example.org")
        .a("liar.example.org", "192.0.2.99")
        .ptr("192.0.2.32", "badexample.org")
        .a("badexample.org", "192.0.2.32")
        .ptr("2001:db8::30", "host6.example.org")
        .aaaa("host6.example.org", "2001:db8::30")
    )


@pytest.mark.parametrize(
    "record, ip, expected",
    [
        ("ptr", "192.0.2.30", PASS),
        ("ptr:host.example.org", "192.0.2.30", PASS),
        ("ptr:example.net", "192.0.2.30", FAIL),
        ("ptr:other.host.example.org", "192.0.2.30", FAIL),
        ("ptr", "192.0.2.31", FAIL),
        ("ptr", "192.0.2.32", FAIL),
        ("ptr", "192.0.2.33", FAIL),
        ("ptr", "2001:db8::30", PASS),
    ],
)
def test_ptr(record: str, ip: str, expected: SPFResult) -> None:
    """ptr matches when a PTR name of the client is validated (it has the client's address)
    and is the target or a name below it (§5.5); a name that only ends in the same text, or a
    PTR name whose addresses are others, does not."""
    assert check(ptr_zone(f"v=spf1 {record} -all"), ip).result is expected


def test_ptr_dns_errors_do_not_match() -> None:
    """§5.5: a failed PTR look-up makes ptr not match (no TEMPERROR); a failed address
    look-up skips that name and the next one is tried."""
    failing_ptr = ptr_zone("v=spf1 ptr -all").fail("30.2.0.192.in-addr.arpa", dns.PTR)
    assert check(failing_ptr, "192.0.2.30").result is FAIL
    failing_a = (
        zone("v=spf1 ptr -all")
        .ptr("192.0.2.30", "broken.example.org", "host.example.org")
        .fail("broken.example.org", dns.A)
        .a("host.example.org", "192.0.2.30")
    )
    assert check(failing_a, "192.0.2.30").result is PASS


@pytest.mark.parametrize("ip", ["192.0.2.1", "2001:db8::1"])
def test_exists(ip: str) -> None:
    """exists matches when its name has an A record, asked for A whatever the client's
    family (§5.7)."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 exists:%{l}.ok.example -all")
    dns_zone.a("alice.ok.example", "127.0.0.2")
    assert check(dns_zone, ip).result is PASS
    assert check(dns_zone, ip, mail_from="bob@example.org").result is FAIL
    assert dns_zone.asked(dns.AAAA) == []


def test_first_match_decides_and_later_terms_are_not_evaluated() -> None:
    """Mechanisms are tried left to right and the first match decides (§4.6.2): nothing after
    it is looked up."""
    dns_zone = zone("v=spf1 ip4:192.0.2.1 a:never.example.org include:never.example.org -all")
    assert check(dns_zone).result is PASS
    assert all(name != "never.example.org" for name, _ in dns_zone.queries)


# --- include (§5.2) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inner, expected",
    [
        ("v=spf1 +all", PASS),
        ("v=spf1 -all", NEUTRAL),
        ("v=spf1 ~all", NEUTRAL),
        ("v=spf1 ?all", NEUTRAL),
        ("v=spf1", NEUTRAL),
        ("v=spf1 bogus", PERMERROR),
        ("v=spf1 include:example.com", PERMERROR),
        (None, PERMERROR),
    ],
    ids=["pass", "fail", "softfail", "neutral", "default", "permerror", "inner-none", "none"],
)
def test_include_results(inner: str | None, expected: SPFResult) -> None:
    """§5.2: an included pass is a match; fail, softfail and neutral are no match (the outer
    record goes on, here to ?all); an included permerror, or a domain without a record, is
    PERMERROR."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 include:inc.example.net ?all")
    if inner is not None:
        dns_zone.txt("inc.example.net", inner)
    assert check(dns_zone).result is expected


def test_include_temperror_is_temperror() -> None:
    """A DNS failure inside an included policy is TEMPERROR for the whole check (§5.2)."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 include:inc.example.net +all")
    dns_zone.txt("inc.example.net", "v=spf1 a:down.example.net -all").fail(
        "down.example.net", dns.A
    )
    verdict = check(dns_zone)
    assert verdict.result is TEMPERROR
    assert verdict.reason == "DNS timeout looking up A down.example.net"


def test_include_takes_the_qualifier_of_the_include() -> None:
    """A match through include gives the include's own qualifier: -include of a pass fails."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 -include:inc.example.net +all")
    dns_zone.txt("inc.example.net", "v=spf1 ip4:192.0.2.1 -all")
    assert check(dns_zone).result is FAIL
    assert check(dns_zone, "192.0.2.2").result is PASS


def test_included_record_sees_its_own_domain() -> None:
    """In an included record %{d} and a bare "a" mean the included domain, while %{o} is
    still the sender's (§4.8, §7.3)."""
    dns_zone = (
        FakeDNS()
        .txt("example.org", "v=spf1 include:inc.example.net -all")
        .txt("inc.example.net", "v=spf1 exists:%{d}.%{o}.check.example a")
        .a("inc.example.net", "192.0.2.1")
    )
    assert check(dns_zone).result is PASS
    assert dns_zone.asked(dns.A) == ["inc.example.net.example.org.check.example", "inc.example.net"]


# --- redirect and exp (§6) ----------------------------------------------------------------------


def test_redirect_when_nothing_matches() -> None:
    """redirect= hands the decision to the other domain's policy when no mechanism matched
    (§6.1); the reason says where the deciding term is."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 ip4:198.51.100.1 redirect=_spf.example.net")
    dns_zone.txt("_spf.example.net", "v=spf1 ip4:192.0.2.1 -all")
    assert check(dns_zone, "198.51.100.1").result is PASS
    assert check(dns_zone, "192.0.2.1").result is PASS
    verdict = check(dns_zone, "192.0.2.2")
    assert verdict.result is FAIL
    assert verdict.domain == "example.org"
    assert verdict.reason == "192.0.2.2 is not permitted by -all at _spf.example.net"


def test_redirect_is_ignored_with_all() -> None:
    """A record with "all" never redirects, wherever the modifier stands (§4.6.3)."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 redirect=_spf.example.net ~all")
    dns_zone.txt("_spf.example.net", "v=spf1 +all")
    assert check(dns_zone).result is SOFTFAIL
    assert dns_zone.asked(dns.TXT) == ["example.org"]


@pytest.mark.parametrize("target", [None, "", "v=spf10 +all"], ids=["nxdomain", "empty", "other"])
def test_redirect_to_a_domain_without_record_is_permerror(target: str | None) -> None:
    """A redirect to a domain with no SPF record is PERMERROR, not NONE (§6.1)."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 redirect=_spf.example.net")
    if target is not None:
        dns_zone.exists("_spf.example.net").txt("_spf.example.net", *([target] if target else []))
    verdict = check(dns_zone)
    assert verdict.result is PERMERROR
    assert verdict.reason == "example.org redirects to _spf.example.net, which has no SPF record"


def test_redirect_to_a_malformed_name_is_permerror() -> None:
    """A redirect whose expanded target is no domain name is PERMERROR (§6.1)."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 redirect=%{l}.example.net")
    assert check(dns_zone, mail_from="a..b@example.org").result is PERMERROR


def test_exp_is_checked_but_not_fetched() -> None:
    """exp= is parsed with the record but its explanation is not looked up."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 -all exp=explain.%{d}")
    assert check(dns_zone).result is FAIL
    assert dns_zone.asked(dns.TXT) == ["example.org"]


def test_unknown_modifiers_are_ignored() -> None:
    """Modifiers we do not know are ignored (§6), whatever name and macro-string they have."""
    record = "v=spf1 moo.cow-far_out=man:dog/cat foo= x_1=%{r}%{c}%{t}%% +all"
    assert result(record) is PASS


# --- syntax errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "term",
    [
        "foo",
        "foo:example.org",
        "all:example.org",
        "all/24",
        "all.",
        "all\t",
        "=all",
        "+",
        "!all",
        "ip4:192.0.2.1/33",
        "ip4:192.0.2.1/024",
        "ip4:192.0.2",
        "ip4:192.0.2.256",
        "ip4:192.0.2.01",
        "ip4:",
        "ip4",
        "ip4:2001:db8::1",
        "ip6:2001:db8::1/129",
        "ip6:192.0.2.1",
        "ip6:2001:db8::1//64",
        "ip6:fe80::1%eth0",
        "a:",
        "a/",
        "a/33",
        "a//129",
        "a:example",
        "a:example.",
        "a:example.org.123",
        "a:example.-org",
        "a:example.org:8080",
        "a:example.org/24/",
        "a-b",
        "mx:",
        "mx/",
        "ptr:",
        "ptr/24",
        "include",
        "include:",
        "exists",
        "exists:",
        "redirect:example.net",
        "-redirect=example.net",
        "redirect=",
        "exp=",
        "redirect=a.example redirect=b.example",
        "exp=a.example exp=b.example",
        "a:%{x}.example.org",
        "a:%{d0}.example.org",
        "a:%{d@}.example.org",
        "a:%{dr2}.example.org",
        "a:%{d00}.example.org",
        "a:%.example.org",
        "a:%{d.example.org",
        "a:%{d}example",
        "a:%{d}.%%x",
        "a:%{c}.example.org",
        "exists:%{r}.example.org",
        "exists:%{t}.example.org",
        "exp=%{r}.example.org",
        "x=%{x}",
        "x=%",
    ],
)
def test_syntax_errors_are_permerror(term: str) -> None:
    """Any term that breaks the grammar (§12, §7.1) makes the record PERMERROR, even after a
    term that matches (the whole record is parsed first, §4.6): unknown mechanisms, bad
    networks and CIDR lengths, a domain-spec that ends neither in a top label nor a macro,
    bad macros, c/r/t outside explanation text (§7.2), repeated redirect or exp (§6)."""
    verdict = check(zone(f"v=spf1 +all {term}"))
    assert verdict.result is PERMERROR
    assert verdict.reason.startswith("syntax error in the SPF record of example.org: ")


def test_syntax_problem_without_evaluating() -> None:
    """syntax_problem judges a record as check_host would before running any of it: CIDR
    lengths out of range (§5.6), a mechanism with an empty domain, non-ASCII text; None for a
    good record."""
    assert syntax_problem("v=spf1 a:mail.example.org/99 -all") == "bad CIDR length /99"
    assert syntax_problem("v=spf1 mx//129 -all") == "bad CIDR length /129"
    assert syntax_problem("v=spf1 include: -all") == "include: needs a domain"
    assert syntax_problem("v=spf1 a: -all") == "a: needs a domain"
    assert syntax_problem("v=spf1 a:bücher.example -all") == "the record is not ASCII"
    assert syntax_problem("v=spf1 a/24//64 mx:example.org ip6:2001:db8::/32 -all") is None


# --- limits (§4.6.4) ---------------------------------------------------------------------------


def hosts_zone(record: str, count: int) -> FakeDNS:
    dns_zone = FakeDNS().txt("example.org", record)
    for n in range(count):
        dns_zone.a(f"h{n}.example.org", f"198.51.100.{n}")
    return dns_zone


@pytest.mark.parametrize("count, expected", [(MAX_DNS_TERMS, PASS), (MAX_DNS_TERMS + 1, PERMERROR)])
def test_dns_term_limit(count: int, expected: SPFResult) -> None:
    """Ten DNS-querying terms are allowed; the eleventh is PERMERROR."""
    terms = " ".join(f"a:h{n}.example.org" for n in range(count))
    assert check(hosts_zone(f"v=spf1 {terms} +all", count)).result is expected


@pytest.mark.parametrize("count, expected", [(MAX_DNS_TERMS, PASS), (MAX_DNS_TERMS + 1, PERMERROR)])
def test_dns_term_limit_spans_redirects_and_includes(count: int, expected: SPFResult) -> None:
    """The limit counts over the whole evaluation, through redirects and includes alike."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 redirect=r1.example.org")
    for n in range(1, count):
        term = "include:" if n % 2 else "redirect="
        dns_zone.txt(f"r{n}.example.org", f"v=spf1 {term}r{n + 1}.example.org")
    dns_zone.txt(f"r{count}.example.org", "v=spf1 +all")
    assert check(dns_zone).result is expected


def test_include_loop_is_permerror() -> None:
    """A policy that includes itself ends at the term limit, not in endless recursion."""
    verdict = check(FakeDNS().txt("example.org", "v=spf1 include:example.org -all"))
    assert verdict.result is PERMERROR
    assert verdict.reason.startswith(f"more than {MAX_DNS_TERMS} DNS-querying terms")


def test_terms_without_dns_are_not_counted() -> None:
    """all, ip4, ip6 and exp do not count toward the limit."""
    terms = " ".join(f"ip4:198.51.100.{n} ip6:2001:db8::{n}" for n in range(30))
    assert result(f"v=spf1 {terms} exp=x.example.org mx +all") is PASS


@pytest.mark.parametrize("count, expected", [(MAX_MX_NAMES, PASS), (MAX_MX_NAMES + 1, PERMERROR)])
def test_mx_name_limit(count: int, expected: SPFResult) -> None:
    """An mx mechanism may find ten MX records; more is PERMERROR."""
    names = [f"h{n}.example.org" for n in range(count)]
    dns_zone = hosts_zone("v=spf1 mx -all", count).mx("example.org", *names)
    assert check(dns_zone, f"198.51.100.{count - 1}").result is expected


@pytest.mark.parametrize("position, expected", [(MAX_PTR_NAMES - 1, PASS), (MAX_PTR_NAMES, FAIL)])
def test_ptr_names_beyond_ten_are_ignored(position: int, expected: SPFResult) -> None:
    """Only the first ten PTR names are validated; the rest are ignored, not an error."""
    names = [f"h{n}.example.org" for n in range(MAX_PTR_NAMES + 1)]
    dns_zone = FakeDNS().txt("example.org", "v=spf1 ptr -all").ptr("192.0.2.1", *names)
    dns_zone.a(names[position], "192.0.2.1")
    assert check(dns_zone).result is expected


@pytest.mark.parametrize(
    "count, expected", [(MAX_VOID_LOOKUPS, PASS), (MAX_VOID_LOOKUPS + 1, PERMERROR)]
)
def test_void_lookup_limit(count: int, expected: SPFResult) -> None:
    """Two terms answered by NXDOMAIN or by nothing are allowed; a third is PERMERROR."""
    terms = ["a:gone.example.org", "exists:empty.example.org", "mx:gone2.example.org"][:count]
    dns_zone = FakeDNS().txt("example.org", f"v=spf1 {' '.join(terms)} +all")
    dns_zone.exists("empty.example.org")
    verdict = check(dns_zone)
    assert verdict.result is expected
    if expected is PERMERROR:
        assert verdict.reason.startswith(f"more than {MAX_VOID_LOOKUPS} void DNS lookups")


# --- macros (§7) ----------------------------------------------------------------------------------


def rfc_macro_zone(record: str) -> FakeDNS:
    """The setting of §7.4: sender strong-bad@email.example.com, PTR name mx.example.org."""
    return (
        FakeDNS()
        .txt("email.example.com", record)
        .ptr("192.0.2.3", "mx.example.org")
        .a("mx.example.org", "192.0.2.3")
        .ptr("2001:db8::cb01", "mx.example.org")
        .aaaa("mx.example.org", "2001:db8::cb01")
    )


@pytest.mark.parametrize(
    "spec, ip, expansion",
    [
        # The examples of §7.4.
        ("%{s}", "192.0.2.3", "strong-bad@email.example.com"),
        ("%{o}", "192.0.2.3", "email.example.com"),
        ("%{d}", "192.0.2.3", "email.example.com"),
        ("%{d4}", "192.0.2.3", "email.example.com"),
        ("%{d3}", "192.0.2.3", "email.example.com"),
        ("%{d2}", "192.0.2.3", "example.com"),
        ("%{d1}", "192.0.2.3", "com"),
        ("%{dr}", "192.0.2.3", "com.example.email"),
        ("%{d2r}", "192.0.2.3", "example.email"),
        ("%{l}", "192.0.2.3", "strong-bad"),
        ("%{l-}", "192.0.2.3", "strong.bad"),
        ("%{lr}", "192.0.2.3", "strong-bad"),
        ("%{lr-}", "192.0.2.3", "bad.strong"),
        ("%{l1r-}", "192.0.2.3", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "192.0.2.3", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "192.0.2.3", "bad.strong.lp._spf.example.com"),
        (
            "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
            "192.0.2.3",
            "bad.strong.lp.3.2.0.192.in-addr._spf.example.com",
        ),
        (
            "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
            "192.0.2.3",
            "3.2.0.192.in-addr.strong.lp._spf.example.com",
        ),
        (
            "%{d2}.trusted-domains.example.net",
            "192.0.2.3",
            "example.com.trusted-domains.example.net",
        ),
        (
            "%{ir}.%{v}._spf.%{d2}",
            "2001:db8::cb01",
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com",
        ),
        # The other letters, transformers and delimiters.
        ("%{i}", "192.0.2.3", "192.0.2.3"),
        (
            "%{i}",
            "2001:db8::cb01",
            "2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.b.0.1",
        ),
        ("%{v}", "2001:db8::cb01", "ip6"),
        ("%{h}", "192.0.2.3", "helo.example.net"),
        ("%{p}", "192.0.2.3", "mx.example.org"),
        ("%{p}", "2001:db8::cb01", "mx.example.org"),
        ("%{p}", "192.0.2.4", "unknown"),
        ("%{i2}", "192.0.2.3", "2.3"),
        ("%{d99}", "192.0.2.3", "email.example.com"),
        ("%{d12345678901234567890}", "192.0.2.3", "email.example.com"),
        ("%{d01}", "192.0.2.3", "com"),
        ("%{l-.}x.%{dR}", "192.0.2.3", "strong.badx.com.example.email"),
        ("%{s-}", "192.0.2.3", "strong.bad@email.example.com"),
        ("%{s1r-}", "192.0.2.3", "strong"),
        ("%{l+,/_=-}", "192.0.2.3", "strong.bad"),
        ("a%%b%_c%-d.example.org", "192.0.2.3", "a%b c%20d.example.org"),
        ("%{L}.%{S}", "192.0.2.3", "strong-bad.strong-bad%40email.example.com"),
    ],
)
def test_macro_expansion(spec: str, ip: str, expansion: str) -> None:
    """Macros in a domain-spec expand as §7.3 says: the letters, the digit and r transformers,
    delimiters, %% %_ %-, the dotted nibbles of an IPv6 "i", and URL escaping for upper case.
    The expansion is what exists asks DNS for."""
    dns_zone = rfc_macro_zone(f"v=spf1 exists:{spec} -all")
    check(dns_zone, ip, mail_from="strong-bad@email.example.com", helo="helo.example.net")
    assert dns_zone.asked(dns.A)[-1] == expansion  # after %{p}'s own address look-up


def test_upper_case_macro_is_url_escaped() -> None:
    """An upper-case macro letter URL-escapes its expansion (§7.3)."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 exists:%{L}.%{l}.check.example -all")
    check(dns_zone, mail_from="jack&jill=up@example.org")
    assert dns_zone.asked(dns.A) == ["jack%26jill%3dup.jack&jill=up.check.example"]


@pytest.mark.parametrize(
    "names, expected",
    [
        (["other.example.net", "host.example.org", "example.org"], "example.org"),
        (["other.example.net", "host.example.org"], "host.example.org"),
        (["other.example.net"], "other.example.net"),
        (["unvalidated.example.org"], "unknown"),
        ([], "unknown"),
    ],
)
def test_p_macro_prefers_the_domain_then_names_below_it(names: list[str], expected: str) -> None:
    """%{p} is a validated name of the client: <domain> itself if it is one, else a name below
    it, else any; "unknown" without one (§7.3)."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 exists:%{p}.check.example -all")
    dns_zone.ptr("192.0.2.1", *names).exists("unvalidated.example.org")
    for name in names[:3]:
        if name != "unvalidated.example.org":
            dns_zone.a(name, "192.0.2.1")
    check(dns_zone)
    assert dns_zone.asked(dns.A)[-1] == f"{expected}.check.example"


def test_p_macro_with_dns_failure_is_unknown() -> None:
    """A failing PTR look-up makes %{p} "unknown", not TEMPERROR (§7.3)."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 exists:%{p}.check.example -all")
    dns_zone.fail(ipaddress.ip_address("192.0.2.1").reverse_pointer, dns.PTR)
    assert check(dns_zone).result is FAIL
    assert dns_zone.asked(dns.A) == ["unknown.check.example"]


def test_long_expansion_is_truncated_from_the_left() -> None:
    """An expansion over 253 characters loses whole labels from the left until it fits
    (§7.3)."""
    local = "x" * 60
    dns_zone = FakeDNS().txt(
        "example.org", "v=spf1 exists:%{l}.%{l}.%{l}.%{l}.%{l}.example.org -all"
    )
    check(dns_zone, mail_from=f"{local}@example.org")
    [asked] = dns_zone.asked(dns.A)
    assert asked == ".".join([local] * 3 + ["example", "org"])
    assert len(asked) <= 253


@pytest.mark.parametrize("local", ["a..b", "x" * 64])
def test_expansion_no_query_can_carry_does_not_match(local: str) -> None:
    """A target with an empty or over-long label after expansion is asked for nothing and
    treated as a name that does not exist: no match (§4.8 allows this or permerror)."""
    dns_zone = FakeDNS().txt("example.org", "v=spf1 a:%{l}.example.org -all")
    assert check(dns_zone, mail_from=f"{local}@example.org").result is FAIL
    assert dns_zone.asked(dns.A) == []


# --- DNS failures and bugs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, name, kind",
    [
        ("v=spf1 a:host.example.net -all", "host.example.net", dns.A),
        ("v=spf1 mx -all", "example.org", dns.MX),
        ("v=spf1 mx -all", "mx1.example.org", dns.A),
        ("v=spf1 exists:x.example.net -all", "x.example.net", dns.A),
        ("v=spf1 include:inc.example.net -all", "inc.example.net", dns.TXT),
        ("v=spf1 redirect=red.example.net", "red.example.net", dns.TXT),
    ],
)
def test_dns_failures_are_temperror(record: str, name: str, kind: int) -> None:
    """A look-up that may pass gives TEMPERROR wherever it happens, with a reason that says
    what was being asked."""
    verdict = check(zone(record).fail(name, kind), "203.0.113.1")
    assert verdict.result is TEMPERROR
    assert verdict.reason == f"DNS timeout looking up {dns.QUERY_TYPES[kind]} {name}"


def test_programming_errors_propagate() -> None:
    """An exception that is no DNS trouble (a bug) is not turned into a result."""
    dns_zone = zone("v=spf1 a:host.example.net -all").fail("host.example.net", dns.A, KeyError("x"))
    with pytest.raises(KeyError):
        check(dns_zone)


class HangingDNS(FakeDNS):
    """A DNSQuery whose look-ups never answer until cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Deferred[list[Any]]] = []

    async def records(self, kind: int, name: str) -> list[Any]:
        deferred: Deferred[list[Any]] = Deferred()
        self.pending.append(deferred)
        return await deferred


def test_check_can_be_cancelled() -> None:
    """Cancelling the check (as addTimeout does) cancels the DNS look-up it waits for and
    fails with CancelledError rather than giving a verdict."""
    dns_zone = HangingDNS()
    deferred = start(dns_zone)
    outcomes: list[Any] = []
    deferred.addBoth(outcomes.append)
    assert outcomes == [] and len(dns_zone.pending) == 1
    deferred.cancel()
    assert len(outcomes) == 1 and isinstance(outcomes[0], Failure)
    assert outcomes[0].check(CancelledError)
    assert dns_zone.pending[0].called


# --- RFC 7208 Appendix A ------------------------------------------------------------------------

A3_RECORD = "v=spf1 mx include:mobile-users._spf.%{d} include:remote-users._spf.%{d} -all"
A4_RECORD = "v=spf1 -include:ip4._spf.%{d} -include:ptr._spf.%{d} +all"
A4_PTR_FIXED = {"ptr._spf.example.com": "v=spf1 -ptr:example.com +all"}  # erratum 6216


def appendix_a(records: dict[str, str]) -> FakeDNS:
    """The zone of Appendix A (A.2 to A.4 records included), with ``records`` for the names
    whose policy an example chooses."""
    policies = {
        "example.com": "v=spf1 mx -all",
        "example.org": "v=spf1 include:example.com include:example.net -all",
        "la.example.org": "v=spf1 redirect=example.org",
        "ny.example.org": "v=spf1 redirect=example.org",
        "sf.example.org": "v=spf1 redirect=example.org",
        "mobile-users._spf.example.com": "v=spf1 exists:%{l1r+}.%{d}",
        "remote-users._spf.example.com": "v=spf1 exists:%{ir}.%{l1r+}.%{d}",
        "ip4._spf.example.com": "v=spf1 -ip4:192.0.2.0/24 +all",
        "ptr._spf.example.com": "v=spf1 -ptr +all",
        **records,
    }
    dns_zone = (
        FakeDNS()
        .mx("example.com", "mail-a.example.com", "mail-b.example.com")
        .a("example.com", "192.0.2.10", "192.0.2.11")
        .a("amy.example.com", "192.0.2.65")
        .a("bob.example.com", "192.0.2.66")
        .a("mail-a.example.com", "192.0.2.129")
        .a("mail-b.example.com", "192.0.2.130")
        .mx("example.org", "mail-c.example.org")
        .a("mail-c.example.org", "192.0.2.140")
        .ptr("192.0.2.10", "example.com")
        .ptr("192.0.2.11", "example.com")
        .ptr("192.0.2.65", "amy.example.com")
        .ptr("192.0.2.66", "bob.example.com")
        .ptr("192.0.2.129", "mail-a.example.com")
        .ptr("192.0.2.130", "mail-b.example.com")
        .ptr("192.0.2.140", "mail-c.example.org")
        .ptr("10.0.0.4", "bob.example.com")
        .a("mary.mobile-users._spf.example.com", "127.0.0.2")
        .a("fred.mobile-users._spf.example.com", "127.0.0.2")
        .a("15.15.168.192.joel.remote-users._spf.example.com", "127.0.0.2")
        .a("16.15.168.192.joel.remote-users._spf.example.com", "127.0.0.2")
    )
    for name, record in policies.items():
        dns_zone.txt(name, record)
    return dns_zone


@pytest.mark.parametrize(
    "records, ip, mail_from, expected",
    [
        # A.1: "any <ip> passes"
        ({"example.com": "v=spf1 +all"}, "198.51.100.1", "x@example.com", PASS),
        # A.1: "hosts 192.0.2.10 and 192.0.2.11 pass"
        ({"example.com": "v=spf1 a -all"}, "192.0.2.10", "x@example.com", PASS),
        ({"example.com": "v=spf1 a -all"}, "192.0.2.11", "x@example.com", PASS),
        ({"example.com": "v=spf1 a -all"}, "192.0.2.65", "x@example.com", FAIL),
        # A.1: "no sending hosts pass since example.org has no A records"
        ({"example.com": "v=spf1 a:example.org -all"}, "192.0.2.140", "x@example.com", FAIL),
        ({"example.com": "v=spf1 a:example.org -all"}, "192.0.2.10", "x@example.com", FAIL),
        # A.1: "sending hosts 192.0.2.129 and 192.0.2.130 pass"
        ({"example.com": "v=spf1 mx -all"}, "192.0.2.129", "x@example.com", PASS),
        ({"example.com": "v=spf1 mx -all"}, "192.0.2.130", "x@example.com", PASS),
        ({"example.com": "v=spf1 mx -all"}, "192.0.2.10", "x@example.com", FAIL),
        # A.1: "sending host 192.0.2.140 passes"
        ({"example.com": "v=spf1 mx:example.org -all"}, "192.0.2.140", "x@example.com", PASS),
        ({"example.com": "v=spf1 mx:example.org -all"}, "192.0.2.129", "x@example.com", FAIL),
        # A.1: "sending hosts 192.0.2.129, 192.0.2.130, and 192.0.2.140 pass"
        ({"example.com": "v=spf1 mx mx:example.org -all"}, "192.0.2.129", "x@example.com", PASS),
        ({"example.com": "v=spf1 mx mx:example.org -all"}, "192.0.2.130", "x@example.com", PASS),
        ({"example.com": "v=spf1 mx mx:example.org -all"}, "192.0.2.140", "x@example.com", PASS),
        ({"example.com": "v=spf1 mx mx:example.org -all"}, "192.0.2.65", "x@example.com", FAIL),
        # A.1: "any sending host in 192.0.2.128/30 or 192.0.2.140/30 passes"
        (
            {"example.com": "v=spf1 mx/30 mx:example.org/30 -all"},
            "192.0.2.128",
            "x@example.com",
            PASS,
        ),
        (
            {"example.com": "v=spf1 mx/30 mx:example.org/30 -all"},
            "192.0.2.131",
            "x@example.com",
            PASS,
        ),
        (
            {"example.com": "v=spf1 mx/30 mx:example.org/30 -all"},
            "192.0.2.143",
            "x@example.com",
            PASS,
        ),
        (
            {"example.com": "v=spf1 mx/30 mx:example.org/30 -all"},
            "192.0.2.132",
            "x@example.com",
            FAIL,
        ),
        (
            {"example.com": "v=spf1 mx/30 mx:example.org/30 -all"},
            "192.0.2.144",
            "x@example.com",
            FAIL,
        ),
        # A.1: 192.0.2.65 passes (valid reverse DNS in example.com); 192.0.2.140 fails (valid,
        # but not in example.com); 10.0.0.4 fails (its reverse name does not validate)
        ({"example.com": "v=spf1 ptr -all"}, "192.0.2.65", "x@example.com", PASS),
        ({"example.com": "v=spf1 ptr -all"}, "192.0.2.140", "x@example.com", FAIL),
        ({"example.com": "v=spf1 ptr -all"}, "10.0.0.4", "x@example.com", FAIL),
        # A.1: "sending host 192.0.2.65 fails", "sending host 192.0.2.129 passes"
        ({"example.com": "v=spf1 ip4:192.0.2.128/28 -all"}, "192.0.2.65", "x@example.com", FAIL),
        ({"example.com": "v=spf1 ip4:192.0.2.128/28 -all"}, "192.0.2.129", "x@example.com", PASS),
        # A.2: la.example.org redirects to example.org, which includes example.com's servers.
        # Appendix A gives example.net no record, so a host example.com does not permit
        # reaches include:example.net, which is PERMERROR (§5.2).
        ({}, "192.0.2.129", "lyme.eater@la.example.org", PASS),
        ({}, "192.0.2.130", "x@ny.example.org", PASS),
        ({}, "192.0.2.140", "x@sf.example.org", PERMERROR),
        # A.3: mobile users mail from anywhere, joel from his own two servers.
        ({"example.com": A3_RECORD}, "198.51.100.9", "mary@example.com", PASS),
        ({"example.com": A3_RECORD}, "198.51.100.9", "fred+lists@example.com", PASS),
        ({"example.com": A3_RECORD}, "198.51.100.9", "joel@example.com", FAIL),
        ({"example.com": A3_RECORD}, "192.168.15.15", "joel@example.com", PASS),
        ({"example.com": A3_RECORD}, "192.168.15.16", "joel@example.com", PASS),
        ({"example.com": A3_RECORD}, "192.168.15.17", "joel@example.com", FAIL),
        ({"example.com": A3_RECORD}, "192.168.15.15", "mary@example.com", PASS),
        ({"example.com": A3_RECORD}, "192.0.2.129", "bob@example.com", PASS),
        # A.4 as printed: "-ptr" in ptr._spf.example.com looks below that name, so no host
        # passes (erratum 6216) ...
        ({"example.com": A4_RECORD}, "192.0.2.65", "x@example.com", FAIL),
        # ... and with the erratum's "-ptr:example.com": in range and named in example.com.
        ({"example.com": A4_RECORD, **A4_PTR_FIXED}, "192.0.2.65", "x@example.com", PASS),
        ({"example.com": A4_RECORD, **A4_PTR_FIXED}, "192.0.2.140", "x@example.com", FAIL),
        ({"example.com": A4_RECORD, **A4_PTR_FIXED}, "10.0.0.4", "x@example.com", FAIL),
    ],
)
def test_rfc7208_appendix_a(
    records: dict[str, str], ip: str, mail_from: str, expected: SPFResult
) -> None:
    """The examples of RFC 7208 Appendix A give the results the RFC states for them."""
    verdict = check(appendix_a(records), ip, mail_from=mail_from, helo="mail.example.net")
    assert verdict.result is expected, verdict.reason


# --- random records -----------------------------------------------------------------------------

FRAGMENTS = [
    "all",
    "-all",
    "~all",
    "?all",
    "a",
    "a/24",
    "a//64",
    "a:host.example.org",
    "a:%{d}/16//48",
    "mx",
    "mx:example.net/24",
    "ptr",
    "ptr:example.org",
    "ip4:192.0.2.0/24",
    "-ip6:2001:db8::/32",
    "exists:%{i}.%{v}.bl.example",
    "exists:%{p}.%{l}.%{o}.%{h}._spf.%{d2}",
    "exists:%{ir}.%{l1r+-}._spf.%{d}",
    "include:example.org",
    "include:other.example.org",
    "include:error.example.org",
    "include:%{l}.example.org",
    "redirect=other.example.org",
    "redirect=example.org",
    "redirect=%{d}",
    "exp=explain.%{d}",
    "x-mod=%{c}",
    "%{",
    "%%",
    ":",
    "/",
    "=",
    "\t",
]
SPFISH = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=16),
    ),
    max_size=14,
)


def random_zone(record: bytes) -> FakeDNS:
    return (
        FakeDNS()
        .add("example.org", dns.Record_TXT(record))
        .txt("other.example.org", "v=spf1 include:example.org a mx ptr ?all")
        .fail("error.example.org", dns.TXT)
        .mx("example.org", "host.example.org")
        .a("host.example.org", "192.0.2.1")
        .aaaa("host.example.org", "2001:db8::1")
        .ptr("192.0.2.1", "host.example.org", "other.example.org")
        .ptr("2001:db8::1", "host.example.org")
        .a("1.2.0.192.in-addr.bl.example", "127.0.0.2")
    )


@given(
    terms=SPFISH,
    raw=st.one_of(st.none(), st.binary(max_size=40)),
    ip=st.sampled_from(["192.0.2.1", "192.0.2.77", "2001:db8::1", "::ffff:192.0.2.1"]),
    local=st.text(max_size=20),
    helo=st.text(max_size=20),
)
@settings(max_examples=300, deadline=None)
def test_any_record_gives_a_result(
    terms: list[str], raw: bytes | None, ip: str, local: str, helo: str
) -> None:
    """Whatever the record says and whoever the sender and HELO name claim to be, the check
    ends with one of the results and a one-line reason, never with an exception."""
    record = ("v=spf1 " + " ".join(terms)).encode("ascii")
    if raw is not None:
        record += b" " + raw
    verdict = check(random_zone(record), ip, mail_from=f"{local}@example.org", helo=helo)
    assert isinstance(verdict.result, SPFResult)
    assert verdict.identity == "mailfrom"
    assert verdict.reason and "\n" not in verdict.reason
