"""Where to deliver mail for a domain: the list of servers (hops) the SMTP courier tries in order.

A static route for the domain wins, then the smarthost, then DNS: MX records (RFC 5321 §5.1),
the implicit MX when there are none, and the null MX that says the domain takes no mail
(RFC 7505). The answer is either the hops or a :class:`RoutingError` that says whether waiting
could change it, so the queue can decide between retrying and bouncing from that alone.

The address order within one host interleaves the families, IPv6 first (RFC 8305 §4, RFC 6724
§6): a host whose IPv6 path is broken then costs one failed attempt before IPv4 is tried, not
one per AAAA record, while hosts with working IPv6 use it. RFC 5321 §5.1 leaves this order to
"the domain name resolver interface", which is this module.

Static routes and the smarthost are the operator's explicit choice and are not checked for
loops: a route may well point at a filter on this host on another port, and a route that does
point back at us ends in our relay refusal rather than in a loop. Failures to resolve their
host names are transient for the same reason: a configuration mistake should hold mail until
it is fixed, not bounce it.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from random import Random
from types import MappingProxyType

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IResolver
from twisted.names import dns

from mailserver.dnsquery import DNSQuery, LookupFailed, NoSuchName, RecordLookups, name_text
from mailserver.interfaces import ReplyInfo

MAX_MX_HOSTS = 10  # RFC 5321 §5.1 allows a limit: a hostile zone must not make us resolve hundreds
MAX_HOPS = 20  # RFC 5321 §5.1: "a configurable limit on the number of alternate addresses"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Hop:
    """One server to try: its name (for TLS verification, logs and DSN Remote-MTA), address
    and port."""

    name: str  # the MX host name (or the route/smarthost host name, or the IP literal)
    address: str  # an IPv4 or IPv6 address literal, as a string
    port: int


class RoutingError(Exception):
    """No hop can be found. ``permanent`` is True for answers that will not change (no such
    domain, null MX, no MX host with an address, a loop), False for DNS trouble that may pass
    (SERVFAIL, timeouts, refused queries); ``reply`` is what the queue records and reports."""

    def __init__(self, reply: ReplyInfo, permanent: bool) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.permanent = permanent


@dataclass(frozen=True)
class Route:
    """A static route (per domain, or the smarthost): host (name or IP literal) and port."""

    host: str
    port: int


def _null_mx() -> RoutingError:
    # RFC 7505 §4: a null MX makes delivery fail at once, without trying: 556 with 5.1.10.
    return RoutingError(ReplyInfo(556, "5.1.10", "Recipient address has null MX"), True)


def _no_such_domain(domain: str) -> RoutingError:
    # RFC 5321 §5.1: "If a non-existent domain error is returned, this situation MUST be
    # reported as an error." RFC 3463 X.1.2: the destination system does not exist.
    return RoutingError(ReplyInfo(550, "5.1.2", f"Domain {domain} does not exist"), True)


def _no_address(domain: str) -> RoutingError:
    # RFC 5321 §5.1: the implicit MX "is unusable", which "MUST be reported as an error".
    # RFC 3463 X.1.2 (not X.4.4): the destination system named by the address is "incapable of
    # accepting mail"; nothing about our routing is missing.
    return RoutingError(ReplyInfo(550, "5.1.2", f"Domain {domain} has no MX and no address"), True)


def _unroutable(domain: str) -> RoutingError:
    # RFC 5321 §5.1: "If MX records are present, but none of them are usable ... this situation
    # MUST be reported as an error." RFC 3463 X.4.4: unable to route.
    text = f"Unable to route: no MX host of {domain} has an address"
    return RoutingError(ReplyInfo(550, "5.4.4", text), True)


def _mail_loop(domain: str) -> RoutingError:
    # RFC 5321 §5.1: "If there are no records left at that point, it is an error condition, and
    # the message MUST be returned as undeliverable." RFC 3463 X.4.6: routing loop detected.
    return RoutingError(ReplyInfo(554, "5.4.6", f"Mail for {domain} loops back to myself"), True)


def _dns_failure(what: str, name: str, reason: str) -> RoutingError:
    # RFC 5321 §5.1: "If a temporary error is returned, the message MUST be queued and retried
    # later." RFC 3463 X.4.3: directory server failure.
    text = f"DNS lookup of {what} for {name} failed: {reason}"
    return RoutingError(ReplyInfo(451, "4.4.3", text), False)


@dataclass(frozen=True)
class _Host:
    """The addresses found for one host name, or why none were, when it may pass."""

    name: str
    addresses: tuple[IPAddress, ...]
    failure: str | None  # the transient failure that hid its addresses, if any


def _literal(text: str) -> IPAddress | None:
    """The address of an IP literal: bare, or in brackets as in RFC 5321 §4.1.3 (with the
    ``IPv6:`` tag or without); None for a host name."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if text[:5].lower() == "ipv6:":
            text = text[5:]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _key(address: IPAddress) -> IPAddress:
    """The address to compare: an IPv4-mapped IPv6 address is the IPv4 address it maps."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _interleave(first: Sequence[IPAddress], second: Sequence[IPAddress]) -> list[IPAddress]:
    """first[0], second[0], first[1], second[1], ... then the rest of the longer one."""
    pairs = itertools.zip_longest(first, second)
    return [address for pair in pairs for address in pair if address is not None]


_NO_ROUTES: Mapping[str, Route] = MappingProxyType({})


class Router:
    """Finds the hops for a domain through an injected resolver.

    ``our_names`` and ``our_addresses`` are the names and addresses by which this server takes
    mail at ``mx_port`` (ValueError if one is no IP address); an unspecified address
    (``0.0.0.0`` or ``::``) among them means "every local address", so loopback addresses count
    as ours too. ``random`` orders MX records of
    equal preference; tests pass a seeded one.
    """

    def __init__(
        self,
        resolver: RecordLookups | IResolver,
        mx_port: int = 25,
        routes: Mapping[str, Route] = _NO_ROUTES,
        smarthost: Route | None = None,
        our_names: Collection[str] = (),
        our_addresses: Collection[str] = (),
        random: Random | None = None,
    ) -> None:
        self._query = DNSQuery(resolver)
        self._mx_port = mx_port
        self._routes = {domain.lower().rstrip("."): route for domain, route in routes.items()}
        self._smarthost = smarthost
        self._our_names = frozenset(name.lower().rstrip(".") for name in our_names)
        ours = {address: _literal(address) for address in our_addresses}
        wrong = [address for address, literal in ours.items() if literal is None]
        if wrong:
            raise ValueError(f"not IP addresses: {', '.join(wrong)}")
        self._our_addresses = frozenset(_key(a) for a in ours.values() if a is not None)
        self._wildcard = any(address.is_unspecified for address in self._our_addresses)
        self._random = random if random is not None else Random()

    def hops(self, domain: str) -> Deferred[list[Hop]]:
        """The servers to try for `domain`, in order; fails with RoutingError."""
        return Deferred.fromCoroutine(self._hops(domain.lower()))

    async def _hops(self, domain: str) -> list[Hop]:
        route = self._routes.get(domain, self._smarthost)
        if route is not None:
            return await self._route_hops(route)
        literal = _literal(domain) if domain.startswith("[") else None
        if literal is not None:
            # RFC 5321 §4.1.3: an address literal names the host itself; nothing to look up.
            if self._is_ours(literal):
                raise _mail_loop(domain)
            return [Hop(str(literal), str(literal), self._mx_port)]
        return await self._mx_hops(domain)

    async def _route_hops(self, route: Route) -> list[Hop]:
        literal = _literal(route.host)
        if literal is not None:
            return [Hop(str(literal), str(literal), route.port)]
        name = route.host.lower().rstrip(".")
        host = await self._resolve(name)
        if not host.addresses:
            raise _dns_failure("addresses", name, host.failure or "no address")
        return [Hop(name, str(address), route.port) for address in host.addresses[:MAX_HOPS]]

    async def _mx_hops(self, domain: str) -> list[Hop]:
        try:
            records = await self._query.records(dns.MX, domain)
        except NoSuchName:
            raise _no_such_domain(domain) from None
        except LookupFailed as failure:
            raise _dns_failure("MX", domain, failure.reason) from None
        if not records:
            # RFC 5321 §5.1: "If an empty list of MXs is returned, the address is treated as if
            # it was associated with an implicit MX RR, with a preference of 0, pointing to that
            # host."
            return await self._implicit_mx_hops(domain)
        exchanges: list[tuple[int, str]] = []
        for record in records:
            name = name_text(record.name)
            # RFC 7505 §3: an exchange of "." is no host; a zone must not mix it with other MX
            # records, and where one does, the real ones are still usable.
            if name:
                exchanges.append((record.preference, name))
        if not exchanges:
            raise _null_mx()
        exchanges = self._in_order(exchanges)
        # RFC 5321 §5.1: if we are among the MX hosts, "all records at that preference level and
        # higher-numbered ones MUST be discarded". Names first, before the cap can hide us ...
        exchanges = exchanges[: _keep(exchanges, [n in self._our_names for _, n in exchanges])]
        if not exchanges:
            raise _mail_loop(domain)
        exchanges = exchanges[:MAX_MX_HOSTS]
        hosts = await gatherResults([self._resolve_soon(name) for _, name in exchanges])
        # ... then addresses, which are known only now.
        is_ours = [any(self._is_ours(a) for a in host.addresses) for host in hosts]
        hosts = hosts[: _keep(exchanges, is_ours)]
        if not hosts:
            raise _mail_loop(domain)
        hops = self._hops_of(hosts)
        if hops:
            return hops
        failed = next((host for host in hosts if host.failure is not None), None)
        if failed is not None:
            raise _dns_failure("addresses", failed.name, failed.failure or "")
        raise _unroutable(domain)

    async def _implicit_mx_hops(self, domain: str) -> list[Hop]:
        host = await self._resolve(domain)
        if domain in self._our_names or any(self._is_ours(a) for a in host.addresses):
            raise _mail_loop(domain)  # RFC 5321 §5.1: we are the implicit MX, preference 0
        if host.addresses:
            return self._hops_of([host])
        if host.failure is not None:
            raise _dns_failure("addresses", domain, host.failure)
        raise _no_address(domain)

    def _in_order(self, exchanges: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """MX records sorted by preference, ties shuffled, each name once (its best)."""
        # RFC 5321 §5.1: preference "MUST be used in sorting"; of equal preferences "the
        # sender-SMTP MUST randomize them to spread the load".
        ordered: list[tuple[int, str]] = []
        exchanges = sorted(exchanges)
        for _, group in itertools.groupby(exchanges, key=lambda exchange: exchange[0]):
            tied = list(group)
            self._random.shuffle(tied)
            ordered.extend(tied)
        seen: set[str] = set()
        unique = []
        for preference, name in ordered:
            if name not in seen:
                seen.add(name)
                unique.append((preference, name))
        return unique

    def _hops_of(self, hosts: Sequence[_Host]) -> list[Hop]:
        """The hosts' addresses as hops, in order, each address once, at most MAX_HOPS."""
        hops: list[Hop] = []
        seen: set[IPAddress] = set()
        for host in hosts:
            for address in host.addresses:
                if _key(address) not in seen:
                    seen.add(_key(address))
                    hops.append(Hop(host.name, str(address), self._mx_port))
        return hops[:MAX_HOPS]

    def _is_ours(self, address: IPAddress) -> bool:
        address = _key(address)
        if address in self._our_addresses:
            return True
        # A wildcard listener also answers on loopback (and on the unspecified address itself).
        return self._wildcard and (address.is_loopback or address.is_unspecified)

    def _resolve_soon(self, name: str) -> Deferred[_Host]:
        return Deferred.fromCoroutine(self._resolve(name))

    async def _resolve(self, name: str) -> _Host:
        """Both address families of a host at once; never fails."""
        v6, v4 = await gatherResults(
            [
                Deferred.fromCoroutine(self._family(dns.AAAA, name)),
                Deferred.fromCoroutine(self._family(dns.A, name)),
            ]
        )
        addresses = _interleave(v6[0], v4[0])
        failure = None if addresses else (v6[1] or v4[1])
        return _Host(name, tuple(addresses), failure)

    async def _family(self, kind: int, name: str) -> tuple[list[IPAddress], str | None]:
        """One family's addresses, or none and the transient failure that hid them."""
        try:
            records = await self._query.records(kind, name)
        except NoSuchName:
            return [], None
        except LookupFailed as failure:
            return [], failure.reason
        return [ipaddress.ip_address(record.address) for record in records], None


def _keep(exchanges: Sequence[tuple[int, str]], ours: Sequence[bool]) -> int:
    """How many of the MX entries (sorted by preference) come strictly before our best one."""
    mine = [exchange[0] for exchange, is_ours in zip(exchanges, ours, strict=True) if is_ours]
    if not mine:
        return len(exchanges)
    return sum(1 for preference, _ in exchanges if preference < min(mine))
