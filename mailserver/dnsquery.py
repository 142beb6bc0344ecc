"""DNS look-ups for everything that asks: MX routing, SPF, DKIM keys, DMARC policies.

One :class:`DNSQuery` wraps the configured twisted.names resolver and answers with the record
payloads of one type for one name, following CNAME chains. It distinguishes the two outcomes
that callers treat differently: a name that does not exist (:class:`NoSuchName`, for routing a
permanent error) and a failure that may pass (:class:`LookupFailed`: SERVFAIL, REFUSED, a
timeout, which callers must answer with a temporary result, never a permanent one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, TimeoutError, fail, maybeDeferred, succeed
from twisted.internet.error import CannotListenError, ConnectError
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.names import client, dns
from twisted.names.error import (
    DNSFormatError,
    DNSNameError,
    DNSNotImplementedError,
    DNSQueryRefusedError,
    DNSServerError,
    DomainError,
    ResolverError,
)
from twisted.python.failure import Failure

MAX_CNAME_CHAIN = 8  # queries spent following one CNAME chain before calling it broken

_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (DNSServerError, "SERVFAIL"),
    (DNSQueryRefusedError, "REFUSED"),
    (DNSFormatError, "FORMERR"),
    (DNSNotImplementedError, "NOTIMP"),
    (TimeoutError, "timeout"),
)

# DNS and network trouble; any other exception is a bug and is left to propagate.
_TRANSIENT = (DomainError, ResolverError, TimeoutError, OSError, ConnectError, CannotListenError)


_LOOKUPS = {
    dns.MX: "lookupMailExchange",
    dns.A: "lookupAddress",
    dns.AAAA: "lookupIPV6Address",
    dns.TXT: "lookupText",
    dns.PTR: "lookupPointer",
    dns.CNAME: "lookupCanonicalName",
}


class NoSuchName(Exception):
    """NXDOMAIN: the name does not exist."""


class LookupFailed(Exception):
    """A lookup failed in a way that may pass; ``reason`` says how, for replies and logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def name_text(name: dns.Name) -> str | None:
    """The name in our form (lower case, no trailing dot), or None if it is not ASCII, which no
    host name in DNS can be (A-labels and LDH labels only)."""
    try:
        return name.name.decode("ascii").lower().rstrip(".")
    except UnicodeDecodeError:
        return None


def _is_dns_name(name: str) -> bool:
    """ASCII, at most 253 octets, labels of 1 to 63 octets (RFC 1035 §2.3.4)."""
    if not name.isascii() or not 0 < len(name) <= 253:
        return False
    return all(0 < len(label) <= 63 for label in name.split("."))


def _reason(error: Exception) -> str:
    """A short name for a lookup failure (the exceptions carry whole DNS messages)."""
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return str(error) or type(error).__name__


class RecordLookups(Protocol):
    """The look-ups of a twisted.names resolver that DNSQuery uses."""

    def lookupMailExchange(self, name: str, timeout: Any = None) -> Deferred[Any]: ...
    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]: ...
    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]: ...
    def lookupText(self, name: str, timeout: Any = None) -> Deferred[Any]: ...
    def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]: ...
    def lookupCanonicalName(self, name: str, timeout: Any = None) -> Deferred[Any]: ...


class DNSQuery:
    """Record look-ups through one resolver; see the module docstring."""

    def __init__(self, resolver: RecordLookups | IResolver) -> None:
        self._resolver = resolver

    async def records(self, kind: int, name: str) -> list[Any]:
        """The record payloads of type ``kind`` for ``name``, following CNAMEs; an empty list
        when the name exists without such records. Raises :class:`NoSuchName` or
        :class:`LookupFailed`.

        RFC 5321 §5.1 (and RFC 7208 §4.4 for SPF): a CNAME is followed as if its target were the
        name asked for. A recursive server usually returns the whole chain in one answer; where
        it stops short, the rest is asked for. Asked for CNAME itself, the answer is the
        name's own alias record, if it has one (to tell an alias from a host: RFC 2181 §10.3).
        """
        name = name.lower().rstrip(".")
        if not _is_dns_name(name):
            # Not in DNS's form (a U-label, an empty or over-long label): it cannot exist,
            # and Twisted would encode it with IDNA 2003 (straße as strasse) or fail.
            raise NoSuchName(name)
        for _ in range(MAX_CNAME_CHAIN):
            try:
                lookup: Callable[..., Deferred[Any]] = getattr(self._resolver, _LOOKUPS[kind])
                answers, _authority, _additional = await maybeDeferred(lookup, name)
            except DNSNameError:
                raise NoSuchName(name) from None
            except _TRANSIENT as error:
                raise LookupFailed(_reason(error)) from None
            target, found = _follow(answers, name, kind)
            if found or target == name:
                return found
            name = target
        raise LookupFailed("CNAME chain too long")

    async def texts(self, name: str) -> list[bytes]:
        """The TXT records of ``name``, each one's strings joined (RFC 7208 §3.3, RFC 6376
        §3.6.2.2); none for a name that does not exist."""
        try:
            records = await self.records(dns.TXT, name)
        except NoSuchName:
            return []
        return [b"".join(record.data) for record in records]


def _follow(answers: Sequence[dns.RRHeader], name: str, kind: int) -> tuple[str, list[Any]]:
    """Follow CNAMEs from ``name`` within one answer section: the last name reached and its
    records of type ``kind`` (none if the chain leaves the answer)."""
    aliases = {name_text(rr.name): rr.payload for rr in answers if rr.type == dns.CNAME}
    for _ in range(MAX_CNAME_CHAIN):
        found = [rr.payload for rr in answers if rr.type == kind and name_text(rr.name) == name]
        if found:
            return name, found
        alias = aliases.get(name)
        target = name_text(alias.name) if isinstance(alias, dns.Record_CNAME) else None
        if not target:
            return name, []
        name = target
    return name, []


MAX_CACHED = 4096  # answers kept; the oldest go first
MAX_TTL = 3600.0  # seconds an answer is kept at most, whatever its TTL says
NEGATIVE_TTL = 60.0  # seconds a name that does not exist is believed not to


class CachingResolver:
    """The look-ups of :class:`DNSQuery` through ``resolver``, each answer kept for the
    shortest TTL of its records (RFC 1035 §3.2.1), a name that does not exist for a minute
    (RFC 2308 allows up to the zone's own negative TTL). Failures that may pass are never
    kept. SPF, DKIM and DMARC ask the same few names for every message of a sender, and MX
    routing the same hosts for every batch: without this each would be a round trip, and a
    UDP socket opened and closed."""

    def __init__(self, resolver: RecordLookups | IResolver, clock: IReactorTime) -> None:
        self._resolver = resolver
        self._clock = clock
        self._answers: OrderedDict[tuple[int, str], tuple[float, Any]] = OrderedDict()

    def lookupMailExchange(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._lookup(dns.MX, name)

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._lookup(dns.A, name)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._lookup(dns.AAAA, name)

    def lookupText(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._lookup(dns.TXT, name)

    def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._lookup(dns.PTR, name)

    def lookupCanonicalName(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._lookup(dns.CNAME, name)

    def _lookup(self, kind: int, name: str) -> Deferred[Any]:
        key = (kind, name.lower())
        now = self._clock.seconds()
        kept = self._answers.get(key)
        if kept is not None and kept[0] > now:
            answer = kept[1]
            if isinstance(answer, DNSNameError):
                return fail(answer)
            return succeed(answer)
        lookup: Deferred[Any] = maybeDeferred(getattr(self._resolver, _LOOKUPS[kind]), name)

        def answered(answer: Any) -> Any:
            answers = answer[0]
            ttl = min((rr.ttl for rr in answers), default=NEGATIVE_TTL)
            self._keep(key, now + min(ttl, MAX_TTL), answer)
            return answer

        def no_such_name(failure: Failure) -> Failure:
            if failure.check(DNSNameError):
                self._keep(key, now + NEGATIVE_TTL, failure.value)
            return failure

        return lookup.addCallbacks(answered, no_such_name)

    def _keep(self, key: tuple[int, str], expiry: float, answer: Any) -> None:
        self._answers[key] = (expiry, answer)
        self._answers.move_to_end(key)
        while len(self._answers) > MAX_CACHED:
            self._answers.popitem(last=False)


def make_resolver(
    reactor: IReactorTime, servers: Sequence[tuple[str, int]] | None, timeout: float = 10.0
) -> IResolver:
    """A twisted.names resolver asking ``servers`` (address, port), or the system's
    ``/etc/resolv.conf`` servers when None. ``reactor`` must also provide IReactorUDP and
    IReactorTCP (queries go over UDP, truncated answers are asked again over TCP).

    Only the servers themselves: no hosts file and no cache, so what tests serve and what the
    operator's resolver says is what the server sees. One query gives up after about ``timeout``
    seconds in all: Twisted sends it to each server in turn for each step of the timeout
    sequence, so the steps (a tenth, three tenths, six tenths) are shared out between servers.
    """
    if servers is not None:
        resolver = client.Resolver(servers=list(servers), reactor=reactor)
    else:
        resolver = client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)
    count = max(1, len(resolver.servers) + len(resolver.dynServers))
    share = timeout / count
    resolver.timeout = (share * 0.1, share * 0.3, share * 0.6)
    return resolver
