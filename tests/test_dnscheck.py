"""Tests for mailserver.dnscheck: published records judged against the expected ones, with a
fake DNS that answers from a dictionary."""

from __future__ import annotations

import ipaddress
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.names import dns
from twisted.python.failure import Failure

from mailserver.config import DKIMKey, parse_config
from mailserver.dkimkeys import generate, parse_key
from mailserver.dnscheck import Finding, Status, check_domain, check_key
from mailserver.dnsquery import LookupFailed, NoSuchName
from mailserver.dnsrecords import DomainRecords, plan, published_key
from tests.fake_dns import TextsFromRecords

DOMAIN = "example.org"
HOST = "mail.example.org"
V4 = "192.0.2.25"
V6 = "2001:db8::25"
KEY_FILE = "dkim/example.org.ed2026.pem"
DKIM_NAME = "ed2026._domainkey.example.org"
PEM = generate("ed25519")
KEY = parse_key(PEM)
OTHER_KEY = parse_key(generate("ed25519"))


def txt(text: str) -> dns.Record_TXT:
    return dns.Record_TXT(text.encode())


def reverse(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


class FakeDNS(TextsFromRecords):
    """Answers from ``zone`` (name -> twisted.names payloads): NXDOMAIN for names it does not
    hold, LookupFailed("timeout") for the names in ``failing``."""

    def __init__(self, zone: dict[str, list[Any]], failing: Iterable[str] = ()) -> None:
        self.zone = zone
        self.failing = set(failing)

    async def records(self, kind: int, name: str) -> list[Any]:
        if name in self.failing:
            raise LookupFailed("timeout")
        if name not in self.zone:
            raise NoSuchName(name)
        return [record for record in self.zone[name] if kind == record.TYPE]


def healthy() -> dict[str, list[Any]]:
    """Everything as dnsrecords says it should be."""
    return {
        DOMAIN: [dns.Record_MX(10, HOST.encode()), txt("v=spf1 mx -all")],
        HOST: [dns.Record_A(V4), dns.Record_AAAA(V6), txt("v=spf1 a -all")],
        reverse(V4): [dns.Record_PTR(HOST.encode())],
        reverse(V6): [dns.Record_PTR(HOST.encode())],
        DKIM_NAME: [txt(KEY.dns_record())],
        f"_dmarc.{DOMAIN}": [
            txt("v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@example.org")
        ],
    }


@pytest.fixture
def expected(tmp_path: Path) -> DomainRecords:
    """The records of example.org, served by mail.example.org, with one Ed25519 key."""
    (tmp_path / "dkim").mkdir()
    (tmp_path / KEY_FILE).write_bytes(PEM)
    text = (
        f'[server]\nhostname = "{HOST}"\n'
        f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "ed2026"\nprivate_key = "{KEY_FILE}"\n'
    )
    config = parse_config(text, str(tmp_path / "mailserver.toml"), tmp_path)
    return plan(config, DOMAIN)


def run(work: Coroutine[Any, Any, list[Finding]]) -> list[Finding]:
    """The result of a coroutine that never waits (the fake DNS answers at once)."""
    outcome: list[list[Finding] | Failure] = []
    Deferred.fromCoroutine(work).addBoth(outcome.append)
    assert outcome, "the check waited for something"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def check(
    expected: DomainRecords, zone: dict[str, list[Any]], failing: Iterable[str] = ()
) -> list[Finding]:
    return run(check_domain(FakeDNS(zone, failing), expected))


HELO_SPF_OK = (Status.OK, f'SPF: "v=spf1 a -all" allows {HOST} (a)')


def about(findings: list[Finding], prefix: str) -> list[tuple[Status, str]]:
    return [(f.status, f.text) for f in findings if f.text.startswith(prefix)]


def statuses(findings: list[Finding], prefix: str) -> list[Status]:
    return [status for status, _ in about(findings, prefix)]


# --- everything right, and look-ups that fail ----------------------------------------------------


def test_everything_right(expected: DomainRecords) -> None:
    """A zone as dnsrecords prints it (plus addresses and PTRs) gives only "ok" lines, one per
    record, in the order of the records."""
    findings = check(expected, healthy())
    assert [f.status for f in findings] == [Status.OK] * 8
    assert [f.text for f in findings] == [
        "MX: example.org -> mail.example.org (preference 10)",
        f"MX host mail.example.org has the addresses {V4}, {V6}",
        f"reverse DNS: {V4} -> {HOST} -> {V4}",
        f"reverse DNS: {V6} -> {HOST} -> {V6}",
        'SPF: "v=spf1 mx -all" allows mail.example.org (mx)',
        'SPF: "v=spf1 a -all" allows mail.example.org (a)',
        f"DKIM {DKIM_NAME}: publishes the key in {KEY_FILE}",
        "DMARC: p=quarantine at _dmarc.example.org",
    ]


def test_timeouts_are_not_wrong(expected: DomainRecords) -> None:
    """A look-up that times out is "could not check (timeout)", never missing or wrong."""
    findings = check(expected, healthy(), failing=[DOMAIN, DKIM_NAME, f"_dmarc.{DOMAIN}"])
    assert about(findings, "MX:") == [(Status.UNCHECKED, "MX: could not check (timeout)")]
    assert about(findings, "SPF") == [
        (Status.UNCHECKED, "SPF: could not check (timeout)"),
        HELO_SPF_OK,
    ]
    assert about(findings, "DKIM") == [
        (Status.UNCHECKED, f"DKIM {DKIM_NAME}: could not check (timeout)")
    ]
    assert about(findings, "DMARC") == [(Status.UNCHECKED, "DMARC: could not check (timeout)")]
    assert not any(f.status.failing for f in findings)


def test_host_lookup_timeout(expected: DomainRecords) -> None:
    """When the host's addresses cannot be looked up, that is not checked either, and neither
    reverse DNS nor SPF is called wrong for lack of addresses."""
    findings = check(expected, healthy(), failing=[HOST])
    assert about(findings, "MX host") == [
        (Status.UNCHECKED, "MX host mail.example.org: could not check (timeout)")
    ]
    assert statuses(findings, "SPF") == [Status.OK, Status.UNCHECKED]
    assert not any(f.status.failing for f in findings)


# --- MX, addresses, reverse DNS -------------------------------------------------------------------


def test_no_mx(expected: DomainRecords) -> None:
    """No MX record: missing, and what happens to mail meanwhile."""
    zone = healthy()
    zone[DOMAIN] = [txt("v=spf1 mx -all")]
    assert about(check(expected, zone), "MX:") == [
        (
            Status.MISSING,
            "MX: example.org has no MX record; mail to it will go to its A record, if any",
        )
    ]


def test_domain_does_not_exist(expected: DomainRecords, tmp_path: Path) -> None:
    """NXDOMAIN for the domain says so and points at dns-records, with the configuration."""
    zone = healthy()
    del zone[DOMAIN]
    (status, text), *_ = about(check(expected, zone), "MX:")
    assert status is Status.MISSING
    assert "example.org does not exist in DNS" in text
    assert text.endswith(f"mailserver --config {tmp_path}/mailserver.toml dns-records example.org")


def test_mx_elsewhere(expected: DomainRecords) -> None:
    """An MX that names other hosts only is wrong, and names them."""
    zone = healthy()
    zone[DOMAIN][0] = dns.Record_MX(10, b"mx.other.example")
    assert about(check(expected, zone), "MX:") == [
        (Status.WRONG, "MX: example.org's mail goes to mx.other.example, not to mail.example.org")
    ]


def test_null_mx(expected: DomainRecords) -> None:
    """A null MX (RFC 7505) says the domain takes no mail: wrong."""
    zone = healthy()
    zone[DOMAIN][0] = dns.Record_MX(0, b"")
    (status, text), *_ = about(check(expected, zone), "MX:")
    assert status is Status.WRONG and "null MX" in text


def test_other_mx_first(expected: DomainRecords) -> None:
    """Another host with a better preference: ours is right, with a note about the other."""
    zone = healthy()
    zone[DOMAIN].append(dns.Record_MX(5, b"backup.example.net"))
    assert statuses(check(expected, zone), "MX:") == [Status.OK, Status.NOTE]


def test_host_without_address(expected: DomainRecords) -> None:
    """The MX host without A or AAAA is missing its address record; SPF's "mx" still matches
    it by name."""
    zone = healthy()
    zone[HOST] = []
    findings = check(expected, zone)
    assert about(findings, "MX host") == [
        (
            Status.MISSING,
            "MX host mail.example.org has no address record (A or AAAA); no server can reach it",
        )
    ]
    assert statuses(findings, "SPF") == [Status.OK, Status.MISSING]  # the host's own is gone
    assert about(findings, "reverse") == []


def test_private_address(expected: DomainRecords) -> None:
    """A private address on the MX host is wrong: nobody outside can reach it. It gets that
    line only, not an "ok" one as well; the host's other addresses are still ok."""
    zone = healthy()
    zone[HOST] = [dns.Record_A("10.1.2.3")]
    zone[reverse("10.1.2.3")] = [dns.Record_PTR(HOST.encode())]
    private = (
        Status.WRONG,
        "MX host mail.example.org has the private address 10.1.2.3, which no server on the "
        "Internet can reach",
    )
    assert about(check(expected, zone), "MX host") == [private]
    zone[HOST].append(dns.Record_AAAA(V6))
    assert about(check(expected, zone), "MX host") == [
        (Status.OK, f"MX host mail.example.org has the address {V6}"),
        private,
    ]


def test_mx_host_is_an_alias(expected: DomainRecords) -> None:
    """An MX host that is a CNAME is wrong (RFC 2181 §10.3), even though its addresses are
    found through the alias."""
    zone = healthy()
    zone[HOST].insert(0, dns.Record_CNAME(b"server.example.net"))
    assert about(check(expected, zone), "MX host") == [
        (
            Status.WRONG,
            "MX host mail.example.org is a CNAME (for server.example.net); an MX record must "
            "name a host with its own A/AAAA records (RFC 2181 §10.3)",
        ),
        (Status.OK, f"MX host mail.example.org has the addresses {V4}, {V6}"),
    ]


def test_reverse_dns_missing_and_wrong(expected: DomainRecords) -> None:
    """No PTR is missing; a PTR naming another host is wrong."""
    zone = healthy()
    del zone[reverse(V4)]
    zone[reverse(V6)] = [dns.Record_PTR(b"host-25.provider.example")]
    findings = about(check(expected, zone), "reverse DNS")
    assert [status for status, _ in findings] == [Status.MISSING, Status.WRONG]
    assert f"{V4} has no PTR record" in findings[0][1]
    assert f"{V6} points at host-25.provider.example, not at {HOST}" in findings[1][1]


# --- SPF ----------------------------------------------------------------------------------------


def spf(expected: DomainRecords, *records: str) -> list[tuple[Status, str]]:
    """The SPF findings with ``records`` as the domain's TXT records."""
    zone = healthy()
    zone[DOMAIN] = [zone[DOMAIN][0], *(txt(record) for record in records)]
    return [
        finding
        for finding in about(check(expected, zone), "SPF")
        if finding != HELO_SPF_OK  # the server's own record, right in every zone here
    ]


def test_helo_spf_checked_like_the_domains(expected: DomainRecords) -> None:
    """The server's own name needs an SPF record too (bounces are checked against it)."""
    zone = healthy()
    assert HELO_SPF_OK in about(check(expected, zone), "SPF")
    zone[HOST] = zone[HOST][:2]
    assert (
        Status.MISSING,
        f'SPF: {HOST} has no SPF record; publish TXT "v=spf1 a -all"',
    ) in about(check(expected, zone), "SPF")


def test_spf_missing(expected: DomainRecords) -> None:
    """No v=spf1 record (other TXT records do not count): missing, with the record to add."""
    assert spf(expected, "google-site-verification=abc") == [
        (Status.MISSING, 'SPF: example.org has no SPF record; publish TXT "v=spf1 mx -all"')
    ]


def test_two_spf_records(expected: DomainRecords) -> None:
    """Two v=spf1 records are a permanent error for receivers."""
    assert spf(expected, "v=spf1 mx -all", "v=spf1 a -all") == [
        (
            Status.WRONG,
            "SPF: 2 v=spf1 records at example.org; receivers treat this as a permanent error "
            "(RFC 7208 §4.5): keep one",
        )
    ]


def test_spf_does_not_allow_us(expected: DomainRecords) -> None:
    """A record whose mechanisms all miss our host: wrong, in words."""
    ((status, text),) = spf(expected, "v=spf1 ip4:198.51.100.0/24 -all")
    assert status is Status.WRONG
    assert text.startswith(
        f"SPF: the record does not allow {HOST} at {V4} (it has no mx, a or ip that matches)"
    )


def test_spf_allows_only_one_family(expected: DomainRecords) -> None:
    """ip4 covering our IPv4 address but nothing for IPv6: wrong for the IPv6 address."""
    ((status, text),) = spf(expected, "v=spf1 ip4:192.0.2.0/24 ~all")
    assert status is Status.WRONG
    assert f"at {V6}" in text and "softfail" in text


def test_spf_mechanisms_that_pass(expected: DomainRecords) -> None:
    """a:HOST, ip4+ip6 networks and a domain whose A records hold our addresses all pass."""
    assert spf(expected, "v=spf1 a:mail.example.org -all")[0][0] is Status.OK
    assert spf(expected, "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all")[0][0] is Status.OK
    zone = healthy()
    zone[DOMAIN] = [zone[DOMAIN][0], txt("v=spf1 a/24 a//64 -all"), dns.Record_A("192.0.2.1")]
    zone[DOMAIN].append(dns.Record_AAAA("2001:db8::1"))
    assert statuses(check(expected, zone), "SPF") == [Status.OK, Status.OK]


def test_spf_include_and_redirect(expected: DomainRecords) -> None:
    """include: and redirect= are followed."""
    zone = healthy()
    zone["_spf.provider.example"] = [txt("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all")]
    zone[DOMAIN] = [zone[DOMAIN][0], txt("v=spf1 include:_spf.provider.example -all")]
    assert statuses(check(expected, zone), "SPF") == [Status.OK, Status.OK]
    zone[DOMAIN] = [zone[DOMAIN][0], txt("v=spf1 redirect=_spf.provider.example")]
    assert statuses(check(expected, zone), "SPF") == [Status.OK, Status.OK]


def test_spf_include_without_record(expected: DomainRecords) -> None:
    """An include: of a domain without SPF is a permanent error."""
    ((status, text),) = spf(expected, "v=spf1 include:nothing.example -all")
    assert status is Status.WRONG
    assert "permanent error" in text and "nothing.example has no SPF records" in text


def test_spf_too_many_lookups(expected: DomainRecords) -> None:
    """More than 10 look-ups (RFC 7208 §4.6.4) is a permanent error."""
    record = "v=spf1 " + " ".join(f"a:host{n}.example" for n in range(11)) + " mx -all"
    ((status, text),) = spf(expected, record)
    assert status is Status.WRONG and "more than 10 DNS look-ups" in text


def test_spf_plus_all(expected: DomainRecords) -> None:
    """+all lets anyone pass: wrong, even though our host passes."""
    assert spf(expected, "v=spf1 +all") == [
        (
            Status.WRONG,
            "SPF: +all lets every server on the Internet pass as example.org; end the record "
            "with -all",
        )
    ]


def test_spf_without_all(expected: DomainRecords) -> None:
    """A record that lets us through but does not end in -all gets a note: without an all,
    others get neutral; with ~all, receivers without DMARC only mark forgeries."""
    assert [status for status, _ in spf(expected, "v=spf1 mx")] == [Status.OK, Status.NOTE]
    assert spf(expected, "v=spf1 mx ~all")[1] == (
        Status.NOTE,
        "SPF: the record ends in ~all, so receivers without DMARC only mark mail forged in "
        "example.org's name (softfail) rather than refuse it; dns-records suggests -all",
    )
    assert [status for status, _ in spf(expected, "v=spf1 mx -all")] == [Status.OK]


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 a/40 -all",
        "v=spf1 a:host.example.org/99 -all",
        "v=spf1 mx:host.example.org/40 -all",
        "v=spf1 a//129 -all",
        "v=spf1 a:mail.example.org/99 -all",  # names our host: would match before the length
        "v=spf1 mx -all a/33",  # after the term that decides
    ],
)
def test_spf_cidr_length_out_of_range(expected: DomainRecords, record: str) -> None:
    """A CIDR length over 32 (IPv4) or 128 (IPv6) is a permanent error for receivers
    (RFC 7208 §5.6, §4.6), wherever it is in the record: wrong, never ok, never a crash."""
    ((status, text),) = spf(expected, record)
    assert status is Status.WRONG
    assert text.startswith(
        "SPF: receivers get a permanent error: the record of example.org is broken: bad CIDR "
        "length /"
    )


def test_spf_cidr_length_in_an_include(expected: DomainRecords) -> None:
    """A third party's record with a bad CIDR length, reached through include:, is a
    permanent error too, named through the include."""
    zone = healthy()
    zone["_spf.provider.example"] = [txt("v=spf1 a/40 -all")]
    zone[DOMAIN] = [zone[DOMAIN][0], txt("v=spf1 include:_spf.provider.example mx -all")]
    assert about(check(expected, zone), "SPF")[0] == (
        Status.WRONG,
        "SPF: receivers get a permanent error: include:_spf.provider.example: the record of "
        "_spf.provider.example is broken: bad CIDR length /40",
    )


def test_spf_include_loop_named_once(expected: DomainRecords) -> None:
    """A record that includes itself is a permanent error; the include: term is named once,
    as are the terms of a loop through two domains."""
    assert spf(expected, "v=spf1 include:example.org -all") == [
        (
            Status.WRONG,
            "SPF: receivers get a permanent error: include:example.org includes a record that "
            "is being evaluated already, a loop that receivers end after 10 look-ups",
        )
    ]
    zone = healthy()
    zone["other.example"] = [txt("v=spf1 include:example.org -all")]
    zone[DOMAIN] = [zone[DOMAIN][0], txt("v=spf1 include:other.example -all")]
    ((status, text), _) = about(check(expected, zone), "SPF")
    assert status is Status.WRONG
    assert text.count("include:other.example") == 1 and text.count("include:example.org") == 1


def test_spf_include_without_domain(expected: DomainRecords) -> None:
    """include: with nothing after the colon says it needs a domain."""
    assert spf(expected, "v=spf1 include: mx -all") == [
        (
            Status.WRONG,
            "SPF: receivers get a permanent error: the record of example.org is broken: "
            "include: needs a domain",
        )
    ]


def test_spf_all_before_other_terms(expected: DomainRecords) -> None:
    """-all before mx: the terms after it never count, and the finding says so."""
    ((status, text),) = spf(expected, "v=spf1 -all mx")
    assert status is Status.WRONG
    assert text == (
        f"SPF: the record does not allow {HOST} at {V4} (-all comes before mx, and terms "
        "after all are never evaluated); receivers get fail for our mail"
    )


def test_unexpected_error_is_unknown(expected: DomainRecords) -> None:
    """A bug in a check (an exception that is no DNS trouble) gives one "unknown" finding
    naming it, not a traceback."""

    class Broken(FakeDNS):
        async def records(self, kind: int, name: str) -> list[Any]:
            if kind == dns.PTR:
                raise RuntimeError("something broke")
            return await super().records(kind, name)

    findings = run(check_domain(Broken(healthy()), expected))
    assert [(f.status, f.text) for f in findings] == [
        (
            Status.UNCHECKED,
            "example.org: the check stopped on an unexpected error, a bug in dns-check: "
            "RuntimeError: something broke",
        )
    ]


def test_spf_beyond_a_static_check(expected: DomainRecords) -> None:
    """exists, ptr and macros are not evaluated: "could not check", not wrong."""
    for record in ("v=spf1 exists:%{i}.spf.example -all", "v=spf1 ptr -all"):
        ((status, text),) = spf(expected, record)
        assert status is Status.UNCHECKED
        assert text.startswith("SPF: could not check whether the record allows")


# --- DKIM ---------------------------------------------------------------------------------------


def dkim(expected: DomainRecords, *records: str) -> list[tuple[Status, str]]:
    zone = healthy()
    zone[DKIM_NAME] = [txt(record) for record in records]
    return about(check(expected, zone), "DKIM")


def test_dkim_missing(expected: DomainRecords, tmp_path: Path) -> None:
    """No record at the selector: missing, and the command that prints the record, with the
    configuration file."""
    ((status, text),) = dkim(expected)
    assert status is Status.MISSING
    assert text == (
        f"DKIM {DKIM_NAME}: no key published, so every signature made with {KEY_FILE} fails; "
        f"publish the record of: mailserver --config {tmp_path}/mailserver.toml dns-records "
        "example.org"
    )


def test_dkim_other_key(expected: DomainRecords) -> None:
    """A record with another key names the key file the server signs with."""
    assert dkim(expected, OTHER_KEY.dns_record()) == [
        (Status.WRONG, f"DKIM {DKIM_NAME}: the published key is not the one in {KEY_FILE}")
    ]


def test_dkim_record_problems(expected: DomainRecords) -> None:
    """Revoked keys, a wrong k=, a hash list without sha256, two records and bad syntax are
    each wrong, each with its own reason."""
    public = KEY.public.decode()
    cases = {
        "v=DKIM1; k=ed25519; p=": "the key is revoked (empty p=)",
        f"v=DKIM1; k=rsa; p={public}": "the record says k=rsa",
        f"v=DKIM1; k=ed25519; h=sha1; p={public}": "leaves out sha256",
        "v=DKIM1; k": "not a list of tag=value",
    }
    for record, reason in cases.items():
        ((status, text),) = dkim(expected, record)
        assert status is Status.WRONG and reason in text, record
    ((status, text),) = dkim(expected, KEY.dns_record(), KEY.dns_record())
    assert status is Status.WRONG and "2 TXT records" in text


def test_dkim_folded_key_and_testing_flag(expected: DomainRecords) -> None:
    """A key folded with spaces is still ours; t=y adds a note."""
    public = KEY.public.decode()
    folded = f"v=DKIM1; k=ed25519; t=y; p={public[:20]} {public[20:]}"
    assert [status for status, _ in dkim(expected, folded)] == [Status.OK, Status.NOTE]


def test_no_dkim_key_configured(tmp_path: Path) -> None:
    """A domain without any configured key gets a note with the command that makes one."""
    config = parse_config(f'[server]\nhostname = "{HOST}"\n', str(tmp_path / "t.toml"), tmp_path)
    findings = check(plan(config, DOMAIN), healthy())
    assert about(findings, "DKIM") == [
        (
            Status.NOTE,
            "DKIM: no key is configured for example.org, so its mail goes out unsigned; make "
            f"one with: mailserver --config {tmp_path}/t.toml dkim keygen example.org",
        )
    ]


def test_key_not_configured_yet(tmp_path: Path) -> None:
    """check_key looks at one key's record only (dns-check --key): ok once published, and
    missing before, with what to do meanwhile."""
    (tmp_path / "dkim").mkdir()
    (tmp_path / KEY_FILE).write_bytes(PEM)
    config = parse_config(f'[server]\nhostname = "{HOST}"\n', str(tmp_path / "m.toml"), tmp_path)
    published = published_key(config, DKIMKey(DOMAIN, "ed2026", tmp_path / KEY_FILE), KEY)
    findings = run(check_key(FakeDNS(healthy()), published))
    assert [(f.status, f.text) for f in findings] == [
        (Status.OK, f"DKIM {DKIM_NAME}: publishes the key in {KEY_FILE}")
    ]
    zone = healthy()
    del zone[DKIM_NAME]
    assert [(f.status, f.text) for f in run(check_key(FakeDNS(zone), published))] == [
        (
            Status.MISSING,
            f"DKIM {DKIM_NAME}: no key published yet (a new record can take a while to be "
            "seen); publish the record that dkim keygen printed for it, then check again",
        )
    ]


# --- DMARC --------------------------------------------------------------------------------------


def dmarc(expected: DomainRecords, *records: str) -> list[tuple[Status, str]]:
    zone = healthy()
    zone[f"_dmarc.{DOMAIN}"] = [txt(record) for record in records]
    return about(check(expected, zone), "DMARC")


def test_dmarc_missing(expected: DomainRecords) -> None:
    """No DMARC record (an SPF record there does not count): missing, with the record."""
    ((status, text),) = dmarc(expected, "v=spf1 -all")
    assert status is Status.MISSING
    assert "_dmarc.example.org has no DMARC record" in text and "p=quarantine" in text


def test_dmarc_monitoring_only(expected: DomainRecords) -> None:
    """p=none is a note (it only monitors), as are a partial pct= and no rua=."""
    assert dmarc(expected, "v=DMARC1; p=none; pct=50") == [
        (
            Status.NOTE,
            "DMARC: p=none only monitors: receivers deliver mail that fails DMARC as if it "
            "passed; once the reports show your own mail passing, change to p=quarantine or "
            "p=reject",
        ),
        (
            Status.NOTE,
            "DMARC: pct=50: the policy applies to only part of the mail that fails",
        ),
        (
            Status.NOTE,
            "DMARC: no rua= address, so nobody gets the aggregate reports that show who sends "
            "mail in example.org's name",
        ),
    ]


def test_dmarc_wrong(expected: DomainRecords) -> None:
    """Two records, a missing or unknown policy are wrong."""
    ((status, text),) = dmarc(expected, "v=DMARC1; p=reject", "v=DMARC1; p=none")
    assert status is Status.WRONG and "ignore them all" in text
    ((status, text),) = dmarc(expected, "v=DMARC1; rua=mailto:a@example.org")
    assert status is Status.WRONG and "no p=" in text
    ((status, text),) = dmarc(expected, "v=DMARC1; p=block")
    assert status is Status.WRONG and "p=block" in text


def test_dmarc_version_not_first(expected: DomainRecords) -> None:
    """A record with v=DMARC1 later than first is meant as DMARC but ignored by receivers:
    wrong, saying why, rather than missing."""
    assert dmarc(expected, "p=reject; v=DMARC1") == [
        (
            Status.WRONG,
            "DMARC: the record at _dmarc.example.org does not start with v=DMARC1, so receivers "
            "ignore it: v=DMARC1 must come first (RFC 7489 §6.4)",
        )
    ]


def test_dmarc_report_address_without_mailto(expected: DomainRecords) -> None:
    """rua= and ruf= take URIs: a bare address gets no reports, and the fix is named."""
    findings = dmarc(expected, "v=DMARC1; p=reject; rua=x@example.org,mailto:y@example.org")
    assert findings == [
        (Status.OK, "DMARC: p=reject at _dmarc.example.org"),
        (
            Status.WRONG,
            "DMARC: rua=x@example.org is not a URI, so receivers send no reports there; "
            "write rua=mailto:x@example.org",
        ),
    ]


def test_dkim_version_not_first(expected: DomainRecords) -> None:
    """A key record whose v= is not the first tag is wrong (RFC 6376 §3.6.1)."""
    record = f"k=ed25519; v=DKIM1; p={KEY.public.decode()}"
    assert dkim(expected, record) == [
        (
            Status.WRONG,
            f"DKIM {DKIM_NAME}: v=DKIM1 must be the first tag (RFC 6376 §3.6.1), and verifiers "
            "may discard a record where it is not",
        )
    ]
