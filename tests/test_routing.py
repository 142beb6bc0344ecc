"""Tests for mailserver.routing: static routes, the smarthost, MX and implicit MX (RFC 5321 §5.1),
null MX (RFC 7505), DNS failures, loop detection and the caps; then the real twisted.names client
against a DNS server on loopback."""

from __future__ import annotations

from random import Random
from typing import Any, cast

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.names import authority, dns, server
from twisted.names.error import DNSNameError, DNSQueryRefusedError, DNSServerError
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from mailserver.dnsquery import make_resolver
from mailserver.interfaces import ReplyInfo
from mailserver.routing import (
    MAX_HOPS,
    MAX_MX_HOSTS,
    Hop,
    Route,
    Router,
    RoutingError,
)

# --- an in-memory resolver ----------------------------------------------------------------------


class FakeResolver:
    """Stand-in for the three IResolver lookups the router uses: answers from a table, every
    query recorded. A name with no entry at all is NXDOMAIN; a known name without records of
    the asked type is NODATA (an empty answer)."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, int], list[dns.RRHeader]] = {}
        self.names: set[str] = set()
        self.failures: dict[tuple[str, int], Exception] = {}
        self.queries: list[tuple[str, int]] = []

    def add(self, name: str, payload: Any) -> FakeResolver:
        self.names.add(name)
        self.answers.setdefault((name, payload.TYPE), []).append(
            dns.RRHeader(name.encode("ascii"), payload.TYPE, payload=payload)
        )
        return self

    def mx(self, name: str, preference: int, exchange: str) -> FakeResolver:
        return self.add(name, dns.Record_MX(preference, exchange.encode("ascii")))

    def a(self, name: str, *addresses: str) -> FakeResolver:
        for address in addresses:
            self.add(name, dns.Record_A(address))
        return self

    def aaaa(self, name: str, *addresses: str) -> FakeResolver:
        for address in addresses:
            self.add(name, dns.Record_AAAA(address))
        return self

    def cname(self, name: str, target: str) -> FakeResolver:
        return self.add(name, dns.Record_CNAME(target.encode("ascii")))

    def exists(self, name: str) -> FakeResolver:
        """Make ``name`` exist with no records (NODATA for every type)."""
        self.names.add(name)
        return self

    def fail(self, name: str, kind: int, error: Exception) -> FakeResolver:
        self.failures[(name, kind)] = error
        return self

    def _lookup(self, name: str | bytes, kind: int) -> Deferred[Any]:
        text = name.decode("ascii") if isinstance(name, bytes) else name
        self.queries.append((text, kind))
        if (text, kind) in self.failures:
            return fail(self.failures[(text, kind)])
        if text not in self.names:
            return fail(DNSNameError(text))
        # A CNAME is in every answer for its name, as a recursive server gives it.
        records = self.answers.get((text, kind), []) + self.answers.get((text, dns.CNAME), [])
        return succeed((records, [], []))

    def lookupMailExchange(self, name: str, timeout: object = None) -> Deferred[Any]:
        return self._lookup(name, dns.MX)

    def lookupAddress(self, name: str, timeout: object = None) -> Deferred[Any]:
        return self._lookup(name, dns.A)

    def lookupIPV6Address(self, name: str, timeout: object = None) -> Deferred[Any]:
        return self._lookup(name, dns.AAAA)


def router(resolver: FakeResolver, **kwargs: Any) -> Router:
    kwargs.setdefault("random", Random(1))
    return Router(resolver, **kwargs)  # type: ignore[arg-type]


def hops_of(deferred: Deferred[list[Hop]]) -> list[Hop]:
    """The result of an already-fired Deferred (the fake resolver answers at once)."""
    results: list[list[Hop] | Failure] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, list)
    return result


def routing_error(deferred: Deferred[list[Hop]]) -> RoutingError:
    with pytest.raises(RoutingError) as caught:
        hops_of(deferred)
    return caught.value


def addresses(hops: list[Hop]) -> list[str]:
    return [hop.address for hop in hops]


# --- static routes and the smarthost ------------------------------------------------------------


def test_route_with_ip_literal_is_used_directly() -> None:
    """A route whose host is an IP literal gives that address and port, with no DNS query."""
    resolver = FakeResolver()
    routes = {"example.org": Route("192.0.2.5", 2525)}
    hops = hops_of(router(resolver, routes=routes).hops("example.org"))
    assert hops == [Hop("192.0.2.5", "192.0.2.5", 2525)]
    assert resolver.queries == []


@pytest.mark.parametrize("host", ["2001:db8::5", "[2001:db8::5]", "[IPv6:2001:db8::5]"])
def test_route_with_ipv6_literal(host: str) -> None:
    """An IPv6 route host may be bare or bracketed (with or without the RFC 5321 tag)."""
    hops = hops_of(
        router(FakeResolver(), routes={"example.org": Route(host, 25)}).hops("example.org")
    )
    assert hops == [Hop("2001:db8::5", "2001:db8::5", 25)]


def test_route_with_name_resolves_both_families() -> None:
    """A route host name is resolved with AAAA and A; its name is kept for TLS and logs, and
    the domain's own MX is never asked."""
    resolver = (
        FakeResolver().aaaa("relay.example.net", "2001:db8::1").a("relay.example.net", "192.0.2.1")
    )
    routes = {"example.org": Route("relay.example.net", 587)}
    hops = hops_of(router(resolver, routes=routes).hops("example.org"))
    assert hops == [
        Hop("relay.example.net", "2001:db8::1", 587),
        Hop("relay.example.net", "192.0.2.1", 587),
    ]
    assert ("example.org", dns.MX) not in resolver.queries


def test_route_matches_the_exact_domain_only() -> None:
    """Routes match the exact domain (keys compared in lower case); a subdomain takes the MX."""
    resolver = (
        FakeResolver().mx("sub.example.org", 10, "mx.example.org").a("mx.example.org", "192.0.2.9")
    )
    r = router(resolver, routes={"Example.ORG": Route("192.0.2.5", 25)})
    assert addresses(hops_of(r.hops("example.org"))) == ["192.0.2.5"]
    assert addresses(hops_of(r.hops("sub.example.org"))) == ["192.0.2.9"]


def test_route_host_without_address_is_transient() -> None:
    """A route host that does not resolve is our configuration's fault: mail waits (451 4.4.3)
    for it to be fixed rather than bouncing."""
    r = router(FakeResolver(), routes={"example.org": Route("relay.invalid", 25)})
    error = routing_error(r.hops("example.org"))
    assert not error.permanent
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")
    assert "relay.invalid" in error.reply.text


def test_smarthost_takes_all_mail_without_mx_lookups() -> None:
    """With a smarthost every domain goes there and no MX is looked up."""
    resolver = FakeResolver().a("smart.example.net", "192.0.2.2")
    r = router(resolver, smarthost=Route("smart.example.net", 587))
    assert hops_of(r.hops("example.com")) == [Hop("smart.example.net", "192.0.2.2", 587)]
    assert hops_of(r.hops("example.org")) == [Hop("smart.example.net", "192.0.2.2", 587)]
    assert all(kind != dns.MX for _, kind in resolver.queries)


def test_smarthost_with_ip_literal() -> None:
    """A smarthost given as an IP literal needs no DNS at all."""
    resolver = FakeResolver()
    r = router(resolver, smarthost=Route("192.0.2.2", 25))
    assert hops_of(r.hops("example.com")) == [Hop("192.0.2.2", "192.0.2.2", 25)]
    assert resolver.queries == []


def test_route_wins_over_smarthost() -> None:
    """A per-domain route is used before the smarthost."""
    r = router(
        FakeResolver(),
        routes={"example.org": Route("192.0.2.5", 25)},
        smarthost=Route("192.0.2.2", 25),
    )
    assert addresses(hops_of(r.hops("example.org"))) == ["192.0.2.5"]
    assert addresses(hops_of(r.hops("example.com"))) == ["192.0.2.2"]


def test_routes_are_not_loop_checked() -> None:
    """A route to one of our own addresses is kept: it may be a filter on another port."""
    r = router(
        FakeResolver(),
        routes={"example.org": Route("127.0.0.1", 10025)},
        our_addresses=["127.0.0.1"],
    )
    assert hops_of(r.hops("example.org")) == [Hop("127.0.0.1", "127.0.0.1", 10025)]


# --- MX records -----------------------------------------------------------------------------


def test_mx_sorted_by_preference() -> None:
    """MX hosts are tried lowest preference first whatever order DNS gives them in, every one of
    them, on the MX port."""
    resolver = (
        FakeResolver()
        .mx("example.org", 30, "mx3.example.org")
        .mx("example.org", 10, "mx1.example.org")
        .mx("example.org", 20, "mx2.example.org")
        .a("mx1.example.org", "192.0.2.1")
        .a("mx2.example.org", "192.0.2.2")
        .a("mx3.example.org", "192.0.2.3")
    )
    hops = hops_of(router(resolver, mx_port=2525).hops("example.org"))
    assert hops == [
        Hop("mx1.example.org", "192.0.2.1", 2525),
        Hop("mx2.example.org", "192.0.2.2", 2525),
        Hop("mx3.example.org", "192.0.2.3", 2525),
    ]


def equal_preferences() -> FakeResolver:
    resolver = FakeResolver().mx("example.org", 20, "backup.example.org")
    resolver.a("backup.example.org", "192.0.2.99")
    for n in range(1, 4):
        resolver.mx("example.org", 10, f"mx{n}.example.org").a(f"mx{n}.example.org", f"192.0.2.{n}")
    return resolver


def test_equal_preferences_shuffled_with_the_given_random() -> None:
    """MX hosts of equal preference are randomised (RFC 5321 §5.1) with the injected Random:
    the same seed gives the same order, different seeds spread the first choice, and the
    worse preference always comes last."""
    orders = {
        tuple(
            addresses(hops_of(router(equal_preferences(), random=Random(seed)).hops("example.org")))
        )
        for seed in range(30)
    }
    assert {order[0] for order in orders} == {"192.0.2.1", "192.0.2.2", "192.0.2.3"}
    assert all(order[-1] == "192.0.2.99" and len(order) == 4 for order in orders)
    first = hops_of(router(equal_preferences(), random=Random(7)).hops("example.org"))
    again = hops_of(router(equal_preferences(), random=Random(7)).hops("example.org"))
    assert first == again


def test_ipv6_and_ipv4_interleaved_within_a_host() -> None:
    """Each host gives both families, interleaved IPv6 first (RFC 8305 §4), hosts kept in MX
    order."""
    resolver = (
        FakeResolver()
        .mx("example.org", 10, "mx1.example.org")
        .mx("example.org", 20, "mx2.example.org")
        .aaaa("mx1.example.org", "2001:db8::1", "2001:db8::2", "2001:db8::3")
        .a("mx1.example.org", "192.0.2.1", "192.0.2.2")
        .a("mx2.example.org", "192.0.2.20")
    )
    hops = hops_of(router(resolver).hops("example.org"))
    assert addresses(hops) == [
        "2001:db8::1",
        "192.0.2.1",
        "2001:db8::2",
        "192.0.2.2",
        "2001:db8::3",
        "192.0.2.20",
    ]
    assert [hop.name for hop in hops] == ["mx1.example.org"] * 5 + ["mx2.example.org"]


def test_mx_names_normalised() -> None:
    """Exchange names from DNS lose their trailing dot and case."""
    resolver = (
        FakeResolver().mx("example.org", 10, "MX.Example.ORG.").a("mx.example.org", "192.0.2.1")
    )
    assert hops_of(router(resolver).hops("example.org")) == [Hop("mx.example.org", "192.0.2.1", 25)]


def test_same_address_listed_once() -> None:
    """An address reached through two MX names is tried once, at its best preference."""
    resolver = (
        FakeResolver()
        .mx("example.org", 10, "mx1.example.org")
        .mx("example.org", 20, "mx2.example.org")
        .a("mx1.example.org", "192.0.2.1")
        .a("mx2.example.org", "192.0.2.1", "192.0.2.2")
    )
    hops = hops_of(router(resolver).hops("example.org"))
    assert hops == [
        Hop("mx1.example.org", "192.0.2.1", 25),
        Hop("mx2.example.org", "192.0.2.2", 25),
    ]


def test_mx_host_that_does_not_resolve_is_skipped() -> None:
    """An MX host with no address (NXDOMAIN) or a failing lookup is skipped; the others stay."""
    resolver = (
        FakeResolver()
        .mx("example.org", 10, "gone.example.org")
        .mx("example.org", 20, "broken.example.org")
        .mx("example.org", 30, "mx.example.org")
        .fail("broken.example.org", dns.A, DNSServerError())
        .fail("broken.example.org", dns.AAAA, TimeoutError())
        .a("mx.example.org", "192.0.2.3")
    )
    assert addresses(hops_of(router(resolver).hops("example.org"))) == ["192.0.2.3"]


def test_one_family_failing_keeps_the_other() -> None:
    """A failed AAAA lookup does not hide the host's IPv4 addresses."""
    resolver = (
        FakeResolver()
        .mx("example.org", 10, "mx.example.org")
        .fail("mx.example.org", dns.AAAA, DNSServerError())
        .a("mx.example.org", "192.0.2.1")
    )
    assert addresses(hops_of(router(resolver).hops("example.org"))) == ["192.0.2.1"]


def test_all_mx_hosts_without_address_is_permanent() -> None:
    """MX records whose hosts all lack an address are unusable: permanent 550 5.4.4."""
    resolver = (
        FakeResolver()
        .mx("example.org", 10, "gone.example.org")
        .mx("example.org", 20, "empty.example.org")
        .exists("empty.example.org")
    )
    error = routing_error(router(resolver).hops("example.org"))
    assert error.permanent
    assert (error.reply.code, error.reply.enhanced) == (550, "5.4.4")


def test_all_mx_hosts_failing_is_transient() -> None:
    """When some MX host could not be resolved for a reason that may pass, and none gave an
    address, the answer is transient (451 4.4.3) even if the others are NXDOMAIN."""
    resolver = (
        FakeResolver()
        .mx("example.org", 10, "gone.example.org")
        .mx("example.org", 20, "broken.example.org")
        .fail("broken.example.org", dns.A, TimeoutError())
        .fail("broken.example.org", dns.AAAA, TimeoutError())
    )
    error = routing_error(router(resolver).hops("example.org"))
    assert not error.permanent
    assert error.reply == ReplyInfo(
        451, "4.4.3", "DNS lookup of addresses for broken.example.org failed: timeout"
    )


def test_mx_pointing_at_cname_resolves_the_target() -> None:
    """An MX host that is an alias is resolved as given, the chain followed to the address."""
    resolver = (
        FakeResolver()
        .mx("example.org", 10, "mx.example.org")
        .cname("mx.example.org", "real.example.net")
        .a("real.example.net", "192.0.2.1")
    )
    assert hops_of(router(resolver).hops("example.org")) == [Hop("mx.example.org", "192.0.2.1", 25)]


def test_domain_that_is_an_alias_uses_the_target_mx() -> None:
    """RFC 5321 §5.1: a CNAME for the domain is processed as if its target were the domain."""
    resolver = (
        FakeResolver()
        .cname("example.org", "example.net")
        .mx("example.net", 10, "mx.example.net")
        .a("mx.example.net", "192.0.2.1")
    )
    assert addresses(hops_of(router(resolver).hops("example.org"))) == ["192.0.2.1"]


def test_cname_loop_is_transient() -> None:
    """A CNAME chain that never ends is given up after a few queries, as a DNS failure."""
    resolver = (
        FakeResolver()
        .cname("a.example.org", "b.example.org")
        .cname("b.example.org", "a.example.org")
    )
    error = routing_error(router(resolver).hops("a.example.org"))
    assert not error.permanent
    assert "CNAME" in error.reply.text
    assert len(resolver.queries) < 20


# --- implicit MX and null MX --------------------------------------------------------------------


def test_no_mx_uses_the_domain_itself() -> None:
    """NODATA for MX makes the domain its own MX with both families (RFC 5321 §5.1)."""
    resolver = FakeResolver().a("example.org", "192.0.2.1").aaaa("example.org", "2001:db8::1")
    hops = hops_of(router(resolver).hops("example.org"))
    assert hops == [Hop("example.org", "2001:db8::1", 25), Hop("example.org", "192.0.2.1", 25)]


def test_no_mx_and_no_address_is_permanent() -> None:
    """A domain that exists with neither MX nor address takes no mail: 550 5.1.2."""
    error = routing_error(router(FakeResolver().exists("example.org")).hops("example.org"))
    assert error.permanent
    assert error.reply == ReplyInfo(550, "5.1.2", "Domain example.org has no MX and no address")


def test_no_mx_and_address_lookup_failing_is_transient() -> None:
    """No MX, and the address lookup fails for now: transient 451 4.4.3."""
    resolver = FakeResolver().exists("example.org").fail("example.org", dns.A, DNSServerError())
    error = routing_error(router(resolver).hops("example.org"))
    assert not error.permanent
    assert error.reply == ReplyInfo(
        451, "4.4.3", "DNS lookup of addresses for example.org failed: SERVFAIL"
    )


@pytest.mark.parametrize("exchange", [".", ""])
def test_null_mx(exchange: str) -> None:
    """A null MX (RFC 7505) fails at once, for good, with 556 5.1.10, and nothing is resolved."""
    resolver = FakeResolver().mx("example.org", 0, exchange)
    error = routing_error(router(resolver).hops("example.org"))
    assert error.permanent
    assert error.reply == ReplyInfo(556, "5.1.10", "Recipient address has null MX")
    assert resolver.queries == [("example.org", dns.MX)]


def test_null_mx_beside_real_mx_is_ignored() -> None:
    """A zone that wrongly mixes a null MX with real ones still gets mail at the real ones."""
    resolver = (
        FakeResolver()
        .mx("example.org", 0, ".")
        .mx("example.org", 10, "mx.example.org")
        .a("mx.example.org", "192.0.2.1")
    )
    assert addresses(hops_of(router(resolver).hops("example.org"))) == ["192.0.2.1"]


# --- DNS failures for the domain ----------------------------------------------------------------


def test_nxdomain_is_permanent() -> None:
    """A domain that does not exist is a permanent failure, 550 5.1.2."""
    error = routing_error(router(FakeResolver()).hops("nowhere.example"))
    assert error.permanent
    assert error.reply == ReplyInfo(550, "5.1.2", "Domain nowhere.example does not exist")


@pytest.mark.parametrize(
    "failure, reason",
    [
        (DNSServerError(), "SERVFAIL"),
        (TimeoutError(), "timeout"),
        (DNSQueryRefusedError(), "REFUSED"),
        (OSError("No domain name servers available"), "No domain name servers available"),
    ],
)
def test_mx_lookup_failure_is_transient(failure: Exception, reason: str) -> None:
    """SERVFAIL, a timeout, a refused query or a network error is transient, 451 4.4.3, with
    the reason in the text."""
    resolver = FakeResolver().fail("example.org", dns.MX, failure)
    error = routing_error(router(resolver).hops("example.org"))
    assert not error.permanent
    assert error.reply == ReplyInfo(
        451, "4.4.3", f"DNS lookup of MX for example.org failed: {reason}"
    )


def test_unexpected_error_is_not_disguised() -> None:
    """An exception that is no DNS or network trouble (a bug) propagates as itself."""
    resolver = FakeResolver().fail("example.org", dns.MX, ZeroDivisionError())
    with pytest.raises(ZeroDivisionError):
        hops_of(router(resolver).hops("example.org"))


# --- loops ----------------------------------------------------------------------------------


def three_levels() -> FakeResolver:
    return (
        FakeResolver()
        .mx("example.org", 10, "primary.example.org")
        .mx("example.org", 20, "us.example.net")
        .mx("example.org", 20, "peer.example.org")
        .mx("example.org", 30, "last.example.org")
        .a("primary.example.org", "192.0.2.1")
        .a("us.example.net", "198.51.100.1")
        .a("peer.example.org", "192.0.2.20")
        .a("last.example.org", "192.0.2.30")
    )


def test_our_name_as_mx_keeps_only_better_preferences() -> None:
    """RFC 5321 §5.1: when we are an MX, only hosts with a lower preference number remain;
    our equals and those after are discarded."""
    r = router(three_levels(), our_names=["US.example.net."])
    assert hops_of(r.hops("example.org")) == [Hop("primary.example.org", "192.0.2.1", 25)]


def test_our_address_as_mx_keeps_only_better_preferences() -> None:
    """The same rule applies when an MX host has one of our addresses under another name."""
    r = router(three_levels(), our_addresses=["198.51.100.1"])
    assert hops_of(r.hops("example.org")) == [Hop("primary.example.org", "192.0.2.1", 25)]


def test_we_are_the_best_mx() -> None:
    """If we are the best MX nothing remains: permanent 554 5.4.6."""
    resolver = (
        three_levels()
        .mx("example.org", 5, "mail.ourhost.example")
        .a("mail.ourhost.example", "203.0.113.1")
    )
    for kwargs in ({"our_names": ["mail.ourhost.example"]}, {"our_addresses": ["203.0.113.1"]}):
        error = routing_error(router(resolver, **kwargs).hops("example.org"))
        assert error.permanent
        assert error.reply == ReplyInfo(554, "5.4.6", "Mail for example.org loops back to myself")


def test_implicit_mx_to_ourselves_is_a_loop() -> None:
    """A domain without MX whose own name or address is ours loops: 554 5.4.6."""
    resolver = FakeResolver().a("ourhost.example", "203.0.113.1")
    for kwargs in ({"our_names": ["ourhost.example"]}, {"our_addresses": ["203.0.113.1"]}):
        error = routing_error(router(resolver, **kwargs).hops("ourhost.example"))
        assert error.permanent
        assert error.reply.code == 554


def test_wildcard_listener_owns_loopback() -> None:
    """Listening on the unspecified address makes loopback ours: an MX pointing at 127.0.0.1
    is a loop. Without that, loopback is an address like any other (handy for tests)."""
    resolver = (
        FakeResolver()
        .mx("example.org", 10, "localhost.example.org")
        .a("localhost.example.org", "127.0.0.1")
    )
    error = routing_error(router(resolver, our_addresses=["0.0.0.0"]).hops("example.org"))
    assert error.reply.enhanced == "5.4.6"
    assert addresses(hops_of(router(resolver).hops("example.org"))) == ["127.0.0.1"]


def test_ipv4_mapped_address_is_recognised() -> None:
    """An AAAA record holding an IPv4-mapped form of our address is still us."""
    resolver = (
        FakeResolver()
        .mx("example.org", 10, "mx.example.org")
        .aaaa("mx.example.org", "::ffff:203.0.113.1")
    )
    error = routing_error(router(resolver, our_addresses=["203.0.113.1"]).hops("example.org"))
    assert error.reply.code == 554


def test_our_addresses_must_be_ip_addresses() -> None:
    """A host name among our addresses is refused at once rather than silently never matching;
    bracketed literals are accepted."""
    with pytest.raises(ValueError, match=r"mail\.example\.net"):
        Router(FakeResolver(), our_addresses=["192.0.2.1", "mail.example.net"])  # type: ignore[arg-type]
    Router(FakeResolver(), our_addresses=["[::1]", "[IPv6:2001:db8::1]"])  # type: ignore[arg-type]


# --- address literals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "domain, address", [("[192.0.2.7]", "192.0.2.7"), ("[ipv6:2001:db8::7]", "2001:db8::7")]
)
def test_address_literal_domain(domain: str, address: str) -> None:
    """An address-literal domain (RFC 5321 §4.1.3) is the host itself, at the MX port."""
    resolver = FakeResolver()
    assert hops_of(router(resolver).hops(domain)) == [Hop(address, address, 25)]
    assert resolver.queries == []


def test_address_literal_of_ours_is_a_loop() -> None:
    """Mail to one of our own addresses as a literal would come straight back: 554 5.4.6."""
    error = routing_error(router(FakeResolver(), our_addresses=["192.0.2.7"]).hops("[192.0.2.7]"))
    assert error.reply.code == 554


# --- caps -------------------------------------------------------------------------------------


def test_mx_hosts_capped() -> None:
    """Only the first MAX_MX_HOSTS MX hosts are resolved, however many the zone lists."""
    resolver = FakeResolver()
    for n in range(50):
        resolver.mx("example.org", n, f"mx{n}.example.org").a(f"mx{n}.example.org", f"192.0.2.{n}")
    hops = hops_of(router(resolver).hops("example.org"))
    assert addresses(hops) == [f"192.0.2.{n}" for n in range(MAX_MX_HOSTS)]
    assert sum(1 for _, kind in resolver.queries if kind == dns.A) == MAX_MX_HOSTS


def test_our_name_beyond_the_cap_still_counts() -> None:
    """Our own name is found among all the MX records, not only those within the cap, so our
    equals shuffled past the cap are still discarded."""
    resolver = FakeResolver()
    for n in range(15):
        resolver.mx("example.org", 10, f"mx{n}.example.org").a(f"mx{n}.example.org", f"192.0.2.{n}")
    resolver.mx("example.org", 5, "better.example.org").a("better.example.org", "192.0.2.200")
    resolver.mx("example.org", 10, "ourhost.example")
    for seed in range(20):  # wherever the shuffle puts us among our equals
        r = router(resolver, our_names=["ourhost.example"], random=Random(seed))
        assert addresses(hops_of(r.hops("example.org"))) == ["192.0.2.200"]


def test_hops_capped() -> None:
    """No more than MAX_HOPS hops are returned, even from one host with many addresses."""
    resolver = FakeResolver().mx("example.org", 10, "mx.example.org")
    resolver.a("mx.example.org", *(f"192.0.2.{n}" for n in range(1, 60)))
    hops = hops_of(router(resolver).hops("example.org"))
    assert len(hops) == MAX_HOPS
    assert hops[0].address == "192.0.2.1"


# --- make_resolver ------------------------------------------------------------------------------


def test_make_resolver_with_servers() -> None:
    """Given servers are used as they are; one query's timeout steps, over all servers, add up
    to the timeout."""
    resolver: Any = make_resolver(MemoryReactorClock(), [("127.0.0.1", 5353), ("::1", 5353)], 10.0)
    assert resolver.servers == [("127.0.0.1", 5353), ("::1", 5353)]
    assert sum(resolver.timeout) * 2 == pytest.approx(10.0)
    assert list(resolver.timeout) == sorted(resolver.timeout)


def test_make_resolver_from_resolv_conf() -> None:
    """Without servers the system's resolv.conf decides (127.0.0.1 when it has none)."""
    resolver: Any = make_resolver(MemoryReactorClock(), None, 6.0)
    assert resolver.servers == []
    assert resolver.dynServers
    assert sum(resolver.timeout) * len(resolver.dynServers) == pytest.approx(6.0)


# --- the real client against a DNS server on loopback -------------------------------------------


class Zone(authority.FileAuthority):
    """An authoritative zone given as a mapping instead of a file."""

    def loadFile(self, records: dict[bytes, list[Any]]) -> None:
        soa = dns.Record_SOA(b"ns.example.test", b"hostmaster.example.test", serial=1, ttl=60)
        self.soa = (b"example.test", soa)  # type: ignore[assignment]
        self.records = {b"example.test": [soa], **records}  # type: ignore[assignment]


ZONE: dict[bytes, list[Any]] = {
    b"example.test": [
        dns.Record_MX(20, b"mx2.example.test"),
        dns.Record_MX(10, b"mx1.example.test"),
    ],
    b"mx1.example.test": [dns.Record_A("192.0.2.10"), dns.Record_AAAA("2001:db8::10")],
    b"mx2.example.test": [dns.Record_A("192.0.2.20")],
    b"implicit.example.test": [dns.Record_A("192.0.2.30")],
    b"nullmx.example.test": [dns.Record_MX(0, b"")],  # the root name, as RFC 7505 §3 puts it
}


class Silent(DatagramProtocol):
    """A name server that never answers."""

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        pass


class LoopbackDNSTests(TestCase):
    """The router through twisted.names' real client, over UDP on 127.0.0.1, against a
    twisted.names authoritative server started here. Nothing leaves the machine."""

    def serve(self, protocol: DatagramProtocol) -> int:
        port = global_reactor.listenUDP(0, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def router(self, timeout: float = 5.0) -> Router:
        factory = server.DNSServerFactory(authorities=[Zone(ZONE)])
        port = self.serve(dns.DNSDatagramProtocol(factory))
        resolver = make_resolver(global_reactor, [("127.0.0.1", port)], timeout=timeout)
        return Router(resolver, random=Random(1))

    def routing_failure(self, deferred: Deferred[list[Hop]]) -> Deferred[RoutingError]:
        """Fires with the RoutingError that ``deferred`` fails with; fails the test otherwise."""
        return cast(Deferred[RoutingError], self.assertFailure(deferred, RoutingError))

    def test_mx_over_the_wire(self) -> Deferred[None]:
        """MX and both address families come back over the wire and are put in order."""

        def check(hops: list[Hop]) -> None:
            self.assertEqual(
                hops,
                [
                    Hop("mx1.example.test", "2001:db8::10", 25),
                    Hop("mx1.example.test", "192.0.2.10", 25),
                    Hop("mx2.example.test", "192.0.2.20", 25),
                ],
            )

        return self.router().hops("example.test").addCallback(check)

    def test_implicit_mx_over_the_wire(self) -> Deferred[None]:
        """A name with an address and no MX gets the implicit MX (NODATA over the wire)."""

        def check(hops: list[Hop]) -> None:
            self.assertEqual(hops, [Hop("implicit.example.test", "192.0.2.30", 25)])

        return self.router().hops("implicit.example.test").addCallback(check)

    def test_null_mx_over_the_wire(self) -> Deferred[None]:
        """A null MX as it arrives on the wire (an empty exchange name) is recognised."""

        def check(error: RoutingError) -> None:
            self.assertEqual(error.reply, ReplyInfo(556, "5.1.10", "Recipient address has null MX"))

        return self.routing_failure(self.router().hops("nullmx.example.test")).addCallback(check)

    def test_nxdomain_over_the_wire(self) -> Deferred[None]:
        """NXDOMAIN from the server is a permanent failure."""

        def check(error: RoutingError) -> None:
            self.assertTrue(error.permanent)
            self.assertEqual(error.reply.enhanced, "5.1.2")

        return self.routing_failure(self.router().hops("missing.example.test")).addCallback(check)

    def test_timeout_over_the_wire(self) -> Deferred[None]:
        """A server that never answers makes a transient failure once the timeout has passed."""
        port = self.serve(Silent())
        resolver = make_resolver(global_reactor, [("127.0.0.1", port)], timeout=0.3)

        def check(error: RoutingError) -> None:
            self.assertFalse(error.permanent)
            self.assertEqual(
                error.reply,
                ReplyInfo(451, "4.4.3", "DNS lookup of MX for example.test failed: timeout"),
            )

        return self.routing_failure(Router(resolver).hops("example.test")).addCallback(check)
