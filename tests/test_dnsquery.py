"""DNS look-ups: TXT records joined, NXDOMAIN told apart from trouble that may pass, and names
that cannot be in DNS refused without a query (MX routing's look-ups are pinned through the
router in test_routing.py)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError
from twisted.python.failure import Failure

from mailserver.dnsquery import NEGATIVE_TTL, CachingResolver, DNSQuery, LookupFailed, NoSuchName
from tests.test_routing import FakeResolver


class TextResolver(FakeResolver):
    """The routing test's resolver, with TXT records."""

    def txt(self, name: str, *strings: bytes) -> TextResolver:
        self.add(name, dns.Record_TXT(*strings))
        return self

    def lookupText(self, name: str, timeout: object = None) -> Deferred[Any]:
        return self._lookup(name, dns.TXT)


def result_of(coroutine: Any) -> Any:
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    (result,) = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


def test_txt_strings_are_joined_per_record() -> None:
    """A TXT record's strings form one text (RFC 7208 §3.3); records stay apart."""
    resolver = TextResolver().txt("example.org", b"v=spf1 ", b"-all").txt("example.org", b"x")
    assert result_of(DNSQuery(resolver).texts("Example.ORG.")) == [b"v=spf1 -all", b"x"]


def test_texts_of_a_missing_name_are_none() -> None:
    """NXDOMAIN and NODATA both mean no records for TXT callers."""
    resolver = TextResolver().exists("example.org")
    query = DNSQuery(resolver)
    assert result_of(query.texts("example.org")) == []
    assert result_of(query.texts("nowhere.example")) == []


def test_trouble_is_lookup_failed() -> None:
    """SERVFAIL and timeouts raise LookupFailed with a short reason."""
    resolver = TextResolver().fail("a.example", dns.TXT, DNSServerError("x"))
    resolver.fail("b.example", dns.TXT, TimeoutError())
    query = DNSQuery(resolver)
    for name, reason in (("a.example", "SERVFAIL"), ("b.example", "timeout")):
        with pytest.raises(LookupFailed) as failed:
            result_of(query.texts(name))
        assert failed.value.reason == reason


@pytest.mark.parametrize(
    "name", ["bücher.example", "a..example", "x" * 64 + ".example", "a." * 127 + "example"]
)
def test_names_that_cannot_be_in_dns_are_not_asked(name: str) -> None:
    """U-labels (Twisted would encode them with IDNA 2003), empty or long labels and names
    over 253 octets do not exist, and nothing is sent."""
    resolver = TextResolver()
    with pytest.raises(NoSuchName):
        result_of(DNSQuery(resolver).records(dns.TXT, name))
    assert resolver.queries == []


class AliasResolver(TextResolver):
    """The text resolver, answering CNAME questions as a recursive server does: with the
    name's own alias record, unfollowed."""

    def lookupCanonicalName(self, name: str, timeout: object = None) -> Deferred[Any]:
        self.queries.append((name, dns.CNAME))
        if name not in self.names:
            return fail(DNSNameError(name))
        return succeed((self.answers.get((name, dns.CNAME), []), [], []))


def test_cname_asked_for_itself_is_not_followed() -> None:
    """Asked for CNAME, the answer is the alias record of the name itself (to tell an alias
    from a host), and none for a name that is no alias."""
    resolver = AliasResolver().cname("mail.example.org", "host.example.net")
    resolver.a("host.example.net", "192.0.2.1").a("plain.example.org", "192.0.2.2")
    query = DNSQuery(resolver)
    (alias,) = result_of(query.records(dns.CNAME, "mail.example.org"))
    assert alias.name.name == b"host.example.net"
    assert result_of(query.records(dns.CNAME, "plain.example.org")) == []
    assert resolver.queries == [("mail.example.org", dns.CNAME), ("plain.example.org", dns.CNAME)]


def test_cname_answers_are_kept_too() -> None:
    """The caching resolver answers CNAME questions, and keeps them like the others."""
    resolver = AliasResolver().exists("mail.example.org")
    alias = dns.Record_CNAME(b"host.example.net")
    resolver.answers[("mail.example.org", dns.CNAME)] = [
        dns.RRHeader(b"mail.example.org", dns.CNAME, ttl=300, payload=alias)
    ]
    query = DNSQuery(CachingResolver(resolver, MemoryReactorClock()))
    for _ in range(2):
        assert len(result_of(query.records(dns.CNAME, "mail.example.org"))) == 1
    assert resolver.queries == [("mail.example.org", dns.CNAME)]


class CountingResolver(TextResolver):
    """Answers TXT for example.org with a TTL of 300 s, and counts the questions."""

    def __init__(self, ttl: int = 300) -> None:
        super().__init__()
        self.ttl = ttl
        self.names.add("example.org")
        self.answers[("example.org", dns.TXT)] = [
            dns.RRHeader(b"example.org", dns.TXT, ttl=ttl, payload=dns.Record_TXT(b"v=spf1 -all"))
        ]


def test_answers_are_kept_for_their_ttl() -> None:
    """A second question within the TTL is answered from memory; after it, DNS is asked."""
    clock = MemoryReactorClock()
    resolver = CountingResolver(ttl=300)
    query = DNSQuery(CachingResolver(resolver, clock))
    for _ in range(3):
        assert result_of(query.texts("example.org")) == [b"v=spf1 -all"]
    assert len(resolver.queries) == 1
    clock.advance(301)
    assert result_of(query.texts("Example.org")) == [b"v=spf1 -all"]
    assert len(resolver.queries) == 2


def test_missing_names_are_kept_a_minute_and_failures_never() -> None:
    """NXDOMAIN is believed for a minute; a SERVFAIL is asked again at once."""
    clock = MemoryReactorClock()
    resolver = CountingResolver()
    resolver.fail("broken.example", dns.TXT, DNSServerError("x"))
    query = DNSQuery(CachingResolver(resolver, clock))
    for _ in range(2):
        assert result_of(query.texts("nowhere.example")) == []
        with pytest.raises(LookupFailed):
            result_of(query.texts("broken.example"))
    assert resolver.queries.count(("nowhere.example", dns.TXT)) == 1
    assert resolver.queries.count(("broken.example", dns.TXT)) == 2
    clock.advance(NEGATIVE_TTL + 1)
    result_of(query.texts("nowhere.example"))
    assert resolver.queries.count(("nowhere.example", dns.TXT)) == 2


def test_zero_ttl_is_not_kept() -> None:
    """An answer with TTL 0 is used once only (RFC 1035 §3.2.1)."""
    resolver = CountingResolver(ttl=0)
    query = DNSQuery(CachingResolver(resolver, MemoryReactorClock()))
    result_of(query.texts("example.org"))
    result_of(query.texts("example.org"))
    assert len(resolver.queries) == 2
