"""Comparing what a domain publishes in DNS with what it should publish (:mod:`dnsrecords`).

For ``mailserver dns-check``: each expected record is looked up and judged, in words an operator
can act on, as right, missing, wrong, worth a note, or impossible to check (a timeout or a
failing DNS server is never called wrong: :class:`~mailserver.dnsquery.LookupFailed`).

The SPF part is a static check, not a full evaluator (that is :mod:`mailserver.spf`'s job, for
incoming mail): it walks the record's terms in order for each address of our host and sees
whether the first that matches passes. It follows ``include:`` and ``redirect=`` and looks up
``a`` and ``mx`` targets, under the limit of 10 look-ups (RFC 7208 §4.6.4); ``ptr``, ``exists``
and macros are reported as not checked.

Reverse DNS starts from the host's own addresses, so a PTR record that names the host is also
confirmed forward (the host resolves back to that address).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.names import dns

from mailserver.dnsquery import LookupFailed, NoSuchName, name_text
from mailserver.dnsrecords import DomainRecords, PublishedKey, Record
from mailserver.spf import syntax_problem

__all__ = ["Finding", "Lookups", "Status", "check_domain", "check_key"]

SPF_LOOKUP_LIMIT = 10  # RFC 7208 §4.6.4: terms that cause DNS queries, per evaluation

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Status(Enum):
    """How a record stands; MISSING and WRONG make the check fail."""

    OK = "ok"
    NOTE = "note"
    MISSING = "MISSING"
    WRONG = "WRONG"
    UNCHECKED = "unknown"

    @property
    def failing(self) -> bool:
        return self in (Status.MISSING, Status.WRONG)


@dataclass(frozen=True)
class Finding:
    status: Status
    text: str  # one line, starting with what it is about ("SPF: ...")


class Lookups(Protocol):
    """What the check asks of DNS: :class:`~mailserver.dnsquery.DNSQuery`, or a fake."""

    async def records(self, kind: int, name: str) -> list[Any]: ...

    async def texts(self, name: str) -> list[bytes]: ...


@dataclass(frozen=True)
class _Answer:
    """One look-up's outcome: the records, or that the name does not exist, or why it failed."""

    items: list[Any]
    nxdomain: bool = False
    failure: str | None = None


async def _ask(lookups: Lookups, kind: int, name: str) -> _Answer:
    try:
        return _Answer(await lookups.records(kind, name))
    except NoSuchName:
        return _Answer([], nxdomain=True)
    except LookupFailed as error:
        return _Answer([], failure=error.reason)


async def _texts(lookups: Lookups, name: str) -> _Answer:
    """TXT records as text (each one's strings joined)."""
    try:
        texts = await lookups.texts(name)
    except LookupFailed as error:
        return _Answer([], failure=error.reason)
    return _Answer([text.decode("utf-8", errors="replace") for text in texts])


async def _gather(*work: Coroutine[Any, Any, _Answer]) -> list[_Answer]:
    """Run look-ups side by side: a check waits for the slowest, not for the sum. An
    exception in one is raised as itself, not wrapped in a FirstError."""
    try:
        answers: list[_Answer] = await gatherResults(
            [Deferred.fromCoroutine(item) for item in work], consumeErrors=True
        )
    except FirstError as error:
        error.subFailure.raiseException()
    return answers


def _unchecked(subject: str, failure: str) -> Finding:
    return Finding(Status.UNCHECKED, f"{subject}: could not check ({failure})")


def _address_text(record: Any) -> str:
    if isinstance(record, dns.Record_AAAA):
        return socket.inet_ntop(socket.AF_INET6, record.address)
    return str(record.dottedQuad())


async def check_domain(lookups: Lookups, expected: DomainRecords) -> list[Finding]:
    """Every finding for one domain, in the order of the records in ``expected``.

    A bug (an exception that is no DNS trouble) ends this domain's check with an "unknown"
    finding that names it: one broken record elsewhere must not cost the operator the report
    on the other domains, nor show them a traceback.
    """
    try:
        return await _check_domain(lookups, expected)
    except Exception as error:
        return [
            Finding(
                Status.UNCHECKED,
                f"{expected.domain}: the check stopped on an unexpected error, a bug in "
                f"dns-check: {type(error).__name__}: {error}",
            )
        ]


async def _check_domain(lookups: Lookups, expected: DomainRecords) -> list[Finding]:
    domain, hostname = expected.domain, expected.hostname
    mx, alias, v4, v6, spf, helo_spf, dmarc, *dkim = await _gather(
        _ask(lookups, dns.MX, domain),
        _ask(lookups, dns.CNAME, hostname),
        _ask(lookups, dns.A, hostname),
        _ask(lookups, dns.AAAA, hostname),
        _texts(lookups, domain),
        _texts(lookups, hostname),
        _texts(lookups, expected.dmarc.name),
        *(_texts(lookups, published.record.name) for published in expected.dkim),
    )
    addresses = [_address_text(record) for record in v4.items + v6.items]
    findings = _check_mx(expected, mx)
    if not (alias.failure and (v4.failure or v6.failure)):  # that trouble is told once
        findings += _check_alias(hostname, alias)
    findings += _check_addresses(hostname, v4, v6, addresses)
    findings += await _check_reverse(lookups, hostname, addresses)
    findings += await _check_spf(lookups, expected.spf, hostname, spf, addresses)
    findings += await _check_spf(lookups, expected.helo_spf, hostname, helo_spf, addresses)
    for published, answer in zip(expected.dkim, dkim, strict=True):
        missing = (
            f"no key published, so every signature made with {published.file} fails; publish "
            f"the record of: {expected.command} dns-records {domain}"
        )
        findings += _check_dkim(published, answer, missing)
    if not expected.dkim:
        findings.append(
            Finding(
                Status.NOTE,
                f"DKIM: no key is configured for {domain}, so its mail goes out unsigned; make "
                f"one with: {expected.command} dkim keygen {domain}",
            )
        )
    findings += _check_dmarc(expected, dmarc)
    return findings


async def check_key(lookups: Lookups, published: PublishedKey) -> list[Finding]:
    """The record of a key that is not configured yet (``dns-check --key``): a new key is
    published first and configured only once DNS serves it, so that no mail is signed with a
    key that verifiers cannot find."""
    answer = await _texts(lookups, published.record.name)
    missing = (
        "no key published yet (a new record can take a while to be seen); publish the record "
        "that dkim keygen printed for it, then check again"
    )
    return _check_dkim(published, answer, missing)


# --- MX, addresses and reverse DNS --------------------------------------------------------


def _check_mx(expected: DomainRecords, answer: _Answer) -> list[Finding]:
    domain, hostname = expected.domain, expected.hostname
    if answer.failure:
        return [_unchecked("MX", answer.failure)]
    if answer.nxdomain:
        return [
            Finding(
                Status.MISSING,
                f"MX: {domain} does not exist in DNS; publish its zone with the records "
                f"of: {expected.command} dns-records {domain}",
            )
        ]
    hosts = sorted((record.preference, name_text(record.name) or "") for record in answer.items)
    if not hosts:
        return [
            Finding(
                Status.MISSING,
                f"MX: {domain} has no MX record; mail to it will go to its A record, if any",
            )
        ]
    if any(name == "" for _, name in hosts):
        return [
            Finding(
                Status.WRONG,
                f"MX: {domain} publishes a null MX (RFC 7505), which tells every sender that "
                "it takes no mail",
            )
        ]
    ours = [preference for preference, name in hosts if name == hostname]
    if not ours:
        names = ", ".join(name for _, name in hosts)
        return [Finding(Status.WRONG, f"MX: {domain}'s mail goes to {names}, not to {hostname}")]
    findings = [Finding(Status.OK, f"MX: {domain} -> {hostname} (preference {ours[0]})")]
    rivals = [name for preference, name in hosts if name != hostname and preference <= ours[0]]
    if rivals:
        findings.append(
            Finding(
                Status.NOTE,
                f"MX: {', '.join(rivals)} also {'gets' if len(rivals) == 1 else 'get'} "
                f"{domain}'s mail first or as often as {hostname}; that mail reaches this "
                "server only if passed on",
            )
        )
    return findings


# Addresses that other servers on the Internet can never reach.
_UNREACHABLE = [
    (ipaddress.ip_network(network), kind)
    for network, kind in (
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("0.0.0.0/8", "unspecified"),
        ("fc00::/7", "private"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("::/128", "unspecified"),
    )
]


def _unreachable(address: str) -> str | None:
    """What kind of address ``address`` is, if no server on the Internet can reach it."""
    ip = ipaddress.ip_address(address)
    for network, kind in _UNREACHABLE:
        if ip.version == network.version and ip in network:
            return kind
    return None


def _check_alias(hostname: str, answer: _Answer) -> list[Finding]:
    """The MX host is no alias: RFC 2181 §10.3 (and RFC 5321 §5.1) forbid an MX record to
    name a CNAME, which our resolver and most others would follow without a word."""
    if answer.failure:
        return [_unchecked(f"MX host {hostname} (CNAME)", answer.failure)]
    targets = [
        (name_text(record.name) if record.name is not None else None) or "?"
        for record in answer.items
        if isinstance(record, dns.Record_CNAME)
    ]
    if not targets:
        return []
    return [
        Finding(
            Status.WRONG,
            f"MX host {hostname} is a CNAME (for {targets[0]}); an MX record must name a host "
            "with its own A/AAAA records (RFC 2181 §10.3)",
        )
    ]


def _check_addresses(
    hostname: str, v4: _Answer, v6: _Answer, addresses: Sequence[str]
) -> list[Finding]:
    failures = [answer.failure for answer in (v4, v6) if answer.failure]
    subject = f"MX host {hostname}"
    if not addresses:
        if failures:
            return [_unchecked(subject, failures[0])]
        return [
            Finding(
                Status.MISSING,
                f"{subject} has no address record (A or AAAA); no server can reach it",
            )
        ]
    # An address no one can reach gets its WRONG line only, not an "ok" one too.
    reachable = [address for address in addresses if not _unreachable(address)]
    plural = "es" if len(reachable) > 1 else ""
    findings = []
    if reachable:
        findings.append(
            Finding(Status.OK, f"{subject} has the address{plural} {', '.join(reachable)}")
        )
    for address in addresses:
        if kind := _unreachable(address):
            findings.append(
                Finding(
                    Status.WRONG,
                    f"{subject} has the {kind} address {address}, which no server on the "
                    "Internet can reach",
                )
            )
    for family, answer in (("IPv4", v4), ("IPv6", v6)):
        if answer.failure:
            findings.append(_unchecked(f"{subject} ({family})", answer.failure))
    return findings


async def _check_reverse(
    lookups: Lookups, hostname: str, addresses: Sequence[str]
) -> list[Finding]:
    answers = await _gather(
        *(
            _ask(lookups, dns.PTR, ipaddress.ip_address(address).reverse_pointer)
            for address in addresses
        )
    )
    findings = []
    for address, answer in zip(addresses, answers, strict=True):
        if answer.failure:
            findings.append(_unchecked(f"reverse DNS of {address}", answer.failure))
            continue
        names = [name_text(record.name) or "." for record in answer.items]
        if hostname in names:
            findings.append(
                Finding(Status.OK, f"reverse DNS: {address} -> {hostname} -> {address}")
            )
        elif not names:
            findings.append(
                Finding(
                    Status.MISSING,
                    f"reverse DNS: {address} has no PTR record; ask whoever gives out the "
                    f"address to point it at {hostname} (many receivers refuse mail from "
                    "addresses without one)",
                )
            )
        else:
            findings.append(
                Finding(
                    Status.WRONG,
                    f"reverse DNS: {address} points at {', '.join(names)}, not at {hostname}; "
                    "receivers compare it with the name the server greets them with",
                )
            )
    return findings


# --- SPF (RFC 7208) ---------------------------------------------------------------------------

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_TERM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9]*)(.*)", re.DOTALL)
_DUAL_CIDR = re.compile(r"(?:/(\d{1,2}))?(?://(\d{1,3}))?")


def _spf_records(texts: Sequence[str]) -> list[str]:
    """The SPF records among TXT records: "v=spf1" then a space or the end (RFC 7208 §4.5)."""
    return [text for text in texts if text.lower() == "v=spf1" or text[:7].lower() == "v=spf1 "]


@dataclass(frozen=True)
class _Verdict:
    """What a receiver would conclude: pass, fail, softfail, neutral, permerror, or unknown
    (we cannot tell); ``why`` is the term that decided, or what went wrong, and ``via`` the
    include: and redirect= terms that led there, outermost first."""

    result: str
    why: str
    via: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        return "".join(f"{term}: " for term in self.via) + self.why

    def through(self, term: str) -> _Verdict:
        """The verdict as the record whose ``term`` led to it sees it. Each term is named
        once: an include: loop would otherwise repeat its term ten times."""
        via = self.via if term in self.via else (term, *self.via)
        return _Verdict(self.result, self.why, via)


class _StaticSPF:
    """Whether SPF lets ``hostname``, sending from ``address``, through (see the module
    docstring). ``address`` is None when the host has none; then only names can match."""

    def __init__(self, lookups: Lookups, hostname: str, address: IPAddress | None) -> None:
        self._lookups = lookups
        self._hostname = hostname
        self._address = address
        self._lookups_left = SPF_LOOKUP_LIMIT
        self._evaluating: list[str] = []  # the domains whose records are being walked

    async def check(self, domain: str, record: str | None = None) -> _Verdict:
        """The verdict of ``domain``'s record (looked up unless given)."""
        if record is None:
            answer = await _texts(self._lookups, domain)
            if answer.failure:
                return _Verdict("unknown", f"could not look up {domain} ({answer.failure})")
            records = _spf_records(answer.items)
            if len(records) != 1:
                count = "no" if not records else str(len(records))
                return _Verdict("permerror", f"{domain} has {count} SPF records")
            record = records[0]
        # RFC 7208 §4.6: receivers parse the whole record first; a syntax error anywhere (a
        # CIDR length over 32 or 128, §5.6) is a permerror even after a term that matches.
        if problem := syntax_problem(record):
            return _Verdict("permerror", f"the record of {domain} is broken: {problem}")
        self._evaluating.append(domain)
        try:
            return await self._walk(domain, record)
        finally:
            self._evaluating.pop()

    async def _walk(self, domain: str, record: str) -> _Verdict:
        """The terms of a well-formed record in order (RFC 7208 §4.6.2), then redirect=."""
        redirect = None
        for term in record.split()[1:]:
            name, equals, value = term.partition("=")
            if equals and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name):
                if name.lower() == "redirect":  # other modifiers do not decide (RFC 7208 §6)
                    redirect = value
                continue
            match = _TERM.fullmatch(term)
            if match is None:
                return _Verdict("permerror", f'"{term}" is not an SPF term')
            matched = await self._matches(domain, match[2].lower(), match[3], term)
            if isinstance(matched, _Verdict):
                return matched
            if matched:
                return _Verdict(_QUALIFIERS[match[1] or "+"], term)
        if redirect is not None:  # RFC 7208 §6.1: only when no term matched
            if not self._spend():
                return _Verdict("permerror", "more than 10 DNS look-ups (RFC 7208 §4.6.4)")
            if "%" in redirect:
                return _Verdict("unknown", f"redirect={redirect} uses macros")
            verdict = await self.check(redirect.lower().rstrip("."))
            return verdict.through(f"redirect={redirect}")
        return _Verdict("neutral", "no term matches")

    def _spend(self) -> bool:
        self._lookups_left -= 1
        return self._lookups_left >= 0

    async def _matches(self, domain: str, name: str, rest: str, term: str) -> bool | _Verdict:
        """Whether the mechanism matches us, or the verdict it forces (an error, unknown)."""
        if name == "all":
            return True if not rest else _Verdict("permerror", f'"{term}" is not an SPF term')
        if name in ("ip4", "ip6"):
            return self._in_network(rest, term)
        if name not in ("a", "mx", "include", "exists", "ptr"):
            return _Verdict("permerror", f'"{term}": unknown mechanism')
        if not self._spend():
            return _Verdict("permerror", "more than 10 DNS look-ups (RFC 7208 §4.6.4)")
        target, slash, cidr = rest.partition("/")
        target = target[1:].lower().rstrip(".") if target.startswith(":") else domain
        if "%" in target:
            return _Verdict("unknown", f"{term} uses macros, which this check does not expand")
        if name in ("exists", "ptr"):
            return _Verdict("unknown", f"this check does not evaluate {name} ({term})")
        if name == "include":
            if target in self._evaluating:
                return _Verdict(
                    "permerror",
                    f"{term} includes a record that is being evaluated already, a loop that "
                    "receivers end after 10 look-ups",
                )
            verdict = await self.check(target)
            if verdict.result in ("permerror", "unknown"):
                return verdict.through(term)
            return verdict.result == "pass"
        hosts = [target]
        if name == "mx":
            answer = await _ask(self._lookups, dns.MX, target)
            if answer.failure:
                return _Verdict("unknown", f"could not look up the MX of {target}")
            hosts = [name_text(record.name) or "" for record in answer.items][:10]
        if self._hostname in hosts:
            return True
        return await self._address_in(hosts, slash + cidr, term)

    def _in_network(self, rest: str, term: str) -> bool | _Verdict:
        try:
            network = ipaddress.ip_network(rest[1:], strict=False)
        except ValueError:
            return _Verdict("permerror", f'"{term}" does not name a network')
        if self._address is None:
            return _Verdict("unknown", f"{self._hostname} has no address to compare with {term}")
        return network.version == self._address.version and self._address in network

    async def _address_in(self, hosts: Sequence[str], cidr: str, term: str) -> bool | _Verdict:
        """Whether our address is among the addresses of ``hosts`` (with the term's prefix
        lengths: ``/24//64``)."""
        if self._address is None:
            return _Verdict("unknown", f"{self._hostname} has no address to compare with {term}")
        lengths = _DUAL_CIDR.fullmatch(cidr)
        if lengths is None:
            return _Verdict("permerror", f'"{term}" has a bad prefix length')
        v6 = self._address.version == 6
        length = int((lengths[2] if v6 else lengths[1]) or (128 if v6 else 32))
        kind = dns.AAAA if v6 else dns.A
        answers = await _gather(*(_ask(self._lookups, kind, host) for host in hosts if host))
        for answer in answers:
            if answer.failure:
                return _Verdict("unknown", f"could not look up the addresses for {term}")
            for record in answer.items:
                network = ipaddress.ip_network(f"{_address_text(record)}/{length}", strict=False)
                if self._address in network:
                    return True
        return False


async def _check_spf(
    lookups: Lookups, expected: Record, hostname: str, answer: _Answer, addresses: Sequence[str]
) -> list[Finding]:
    """The SPF record at ``expected.name`` (the domain, or the server's own name) exists once
    and lets ``hostname`` send."""
    domain = expected.name
    if answer.failure:
        return [_unchecked("SPF", answer.failure)]
    records = _spf_records(answer.items)
    if not records:
        return [
            Finding(
                Status.MISSING,
                f'SPF: {domain} has no SPF record; publish TXT "{expected.value}"',
            )
        ]
    if len(records) > 1:
        return [
            Finding(
                Status.WRONG,
                f"SPF: {len(records)} v=spf1 records at {domain}; receivers treat this as a "
                "permanent error (RFC 7208 §4.5): keep one",
            )
        ]
    record = records[0]
    senders: list[IPAddress | None] = [ipaddress.ip_address(a) for a in addresses] or [None]
    for sender in senders:
        verdict = await _StaticSPF(lookups, hostname, sender).check(domain, record)
        if verdict.result != "pass":
            break
    who = hostname if len(senders) == 1 else f"{hostname} at {sender}"
    if verdict.result == "unknown":
        return [
            Finding(
                Status.UNCHECKED,
                f"SPF: could not check whether the record allows {who}: {verdict.reason}",
            )
        ]
    if verdict.result == "permerror":
        return [Finding(Status.WRONG, f"SPF: receivers get a permanent error: {verdict.reason}")]
    findings = _check_spf_all(domain, record)
    if verdict.result == "pass":
        if not any(finding.status is Status.WRONG for finding in findings):
            findings.insert(
                0, Finding(Status.OK, f'SPF: "{record}" allows {hostname} ({verdict.why})')
            )
        return findings
    reason = _why_not(record, verdict)
    return [
        Finding(
            Status.WRONG,
            f"SPF: the record does not allow {who} ({reason}); receivers get "
            f"{verdict.result} for our mail",
        )
    ]


def _why_not(record: str, verdict: _Verdict) -> str:
    """Why a record that does not let us through decides as it does, in words."""
    if verdict.via or (
        verdict.why != "no term matches" and verdict.why.lstrip("+-~?").lower() != "all"
    ):
        return f"{verdict.reason} matches it"
    terms = record.split()[1:]
    alls = [n for n, term in enumerate(terms) if term.lstrip("+-~?").lower() == "all"]
    # RFC 7208 §4.6.2: the first match decides, and "all" always matches.
    later = [term for term in terms[alls[0] + 1 :] if "=" not in term] if alls else []
    if later:
        return (
            f"{terms[alls[0]]} comes before {' '.join(later)}, and terms after all are never "
            "evaluated"
        )
    return "it has no mx, a or ip that matches"


def _check_spf_all(domain: str, record: str) -> list[Finding]:
    """What the record says about everyone else: its final ``all``."""
    terms = [term.lower() for term in record.split()[1:]]
    alls = [term for term in terms if term.lstrip("+-~?") == "all"]
    if not alls:
        if any(term.startswith("redirect=") for term in terms):
            return []  # the redirected record decides
        qualifier = "?"
    else:
        qualifier = alls[0][0] if alls[0][0] in _QUALIFIERS else "+"
    if qualifier == "+":
        return [
            Finding(
                Status.WRONG,
                f"SPF: {alls[0]} lets every server on the Internet pass as {domain}; end the "
                "record with -all",
            )
        ]
    if qualifier == "?":
        return [
            Finding(
                Status.NOTE,
                "SPF: the record does not end in -all, so servers it does not list get "
                "neutral rather than fail",
            )
        ]
    if qualifier == "~":
        return [
            Finding(
                Status.NOTE,
                f"SPF: the record ends in ~all, so receivers without DMARC only mark mail "
                f"forged in {domain}'s name (softfail) rather than refuse it; dns-records "
                "suggests -all",
            )
        ]
    return []


# --- DKIM (RFC 6376) and DMARC (RFC 7489) -----------------------------------------------------


def _tags(text: str) -> dict[str, str] | None:
    """A tag=value list (RFC 6376 §3.2); None when it is not one (or repeats a tag)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, equals, value = part.partition("=")
        name = name.strip()
        if not equals or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or name in tags:
            return None
        tags[name] = value.strip()
    return tags


def _check_dkim(published: PublishedKey, answer: _Answer, missing: str) -> list[Finding]:
    """The key's record is published once and holds that key; ``missing`` says, after the
    record's name, what no record at all means and what to do."""
    subject = f"DKIM {published.record.name}"
    if answer.failure:
        return [_unchecked(subject, answer.failure)]
    if not answer.items:
        return [Finding(Status.MISSING, f"{subject}: {missing}")]
    if len(answer.items) > 1:
        return [
            Finding(
                Status.WRONG,
                f"{subject}: {len(answer.items)} TXT records, and verifiers may use any of "
                "them (RFC 6376 §3.6.2.2): keep one",
            )
        ]
    tags = _tags(answer.items[0])
    if tags is None:
        return [Finding(Status.WRONG, f"{subject}: the record is not a list of tag=value")]
    signing = published.signing
    if tags.get("v", "DKIM1") != "DKIM1":
        return [Finding(Status.WRONG, f"{subject}: v={tags['v']}, where only DKIM1 is valid")]
    if "v" in tags and next(iter(tags)) != "v":
        return [
            Finding(
                Status.WRONG,
                f"{subject}: v=DKIM1 must be the first tag (RFC 6376 §3.6.1), and verifiers "
                "may discard a record where it is not",
            )
        ]
    key_type = tags.get("k", "rsa").lower()
    public = "".join(tags.get("p", "").split())  # base64 may be folded with spaces
    problem = None
    if "p" not in tags:
        problem = "the record has no p= tag, so it holds no key"
    elif not public:
        problem = f"the key is revoked (empty p=); publish the one in {published.file}"
    elif key_type != signing.key_type:
        problem = f"the record says k={key_type}, but {published.file} holds an "
        problem += f"{signing.key_type} key"
    elif public != signing.public.decode("ascii"):
        problem = f"the published key is not the one in {published.file}"
    elif "h" in tags and "sha256" not in _colon_list(tags["h"]):
        problem = f"h={tags['h']} leaves out sha256, the hash we sign with"
    elif "s" in tags and not {"*", "email"} & set(_colon_list(tags["s"])):
        problem = f"s={tags['s']} says the key is not for email"
    if problem:
        return [Finding(Status.WRONG, f"{subject}: {problem}")]
    findings = [Finding(Status.OK, f"{subject}: publishes the key in {published.file}")]
    if "y" in _colon_list(tags.get("t", "")):
        findings.append(
            Finding(
                Status.NOTE,
                f"{subject}: t=y says the domain is testing DKIM; verifiers may ignore the "
                "signatures",
            )
        )
    return findings


def _colon_list(text: str) -> list[str]:
    return [item.strip().lower() for item in text.split(":")]


_DMARC_VERSION = re.compile(r"\s*v\s*=\s*DMARC1\s*(?:;|$)")  # RFC 7489 §6.4: first, exact
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # RFC 3986 §3.1


def _dmarc_version_later(text: str) -> bool:
    """Whether a TXT record has v=DMARC1, only not first: meant as DMARC, read as nothing."""
    tags = _tags(text)
    return tags is not None and tags.get("v") == "DMARC1"


def _check_report_addresses(tags: dict[str, str]) -> list[Finding]:
    """rua= and ruf= hold URIs (RFC 7489 §6.4), mailto: ones in practice; a bare address is
    none, and receivers send it no reports."""
    findings = []
    for tag in ("rua", "ruf"):
        for entry in (item.strip() for item in tags.get(tag, "").split(",")):
            if entry and not _URI_SCHEME.match(entry):
                findings.append(
                    Finding(
                        Status.WRONG,
                        f"DMARC: {tag}={entry} is not a URI, so receivers send no reports "
                        f"there; write {tag}=mailto:{entry}",
                    )
                )
    return findings


def _check_dmarc(expected: DomainRecords, answer: _Answer) -> list[Finding]:
    name, domain = expected.dmarc.name, expected.domain
    if answer.failure:
        return [_unchecked("DMARC", answer.failure)]
    records = [text for text in answer.items if _DMARC_VERSION.match(text)]
    if not records and any(_dmarc_version_later(text) for text in answer.items):
        return [
            Finding(
                Status.WRONG,
                f"DMARC: the record at {name} does not start with v=DMARC1, so receivers "
                "ignore it: v=DMARC1 must come first (RFC 7489 §6.4)",
            )
        ]
    if not records:
        return [
            Finding(
                Status.MISSING,
                f"DMARC: {name} has no DMARC record, so receivers apply no policy to mail "
                f'forged in {domain}\'s name; publish TXT "{expected.dmarc.value}"',
            )
        ]
    if len(records) > 1:
        return [
            Finding(
                Status.WRONG,
                f"DMARC: {len(records)} DMARC records at {name}; receivers ignore them all "
                "(RFC 7489 §6.6.3): keep one",
            )
        ]
    tags = _tags(records[0])
    if tags is None:
        return [Finding(Status.WRONG, f"DMARC: the record at {name} is not a list of tag=value")]
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        found = f"p={tags['p']}" if "p" in tags else "no p="
        return [
            Finding(
                Status.WRONG,
                f"DMARC: the record has {found}; it needs p=none, p=quarantine or p=reject",
            )
        ]
    findings = []
    if policy == "none":
        findings.append(
            Finding(
                Status.NOTE,
                "DMARC: p=none only monitors: receivers deliver mail that fails DMARC as if "
                "it passed; once the reports show your own mail passing, change to "
                "p=quarantine or p=reject",
            )
        )
    else:
        findings.append(Finding(Status.OK, f"DMARC: p={policy} at {name}"))
    if tags.get("pct", "100") != "100":
        findings.append(
            Finding(
                Status.NOTE,
                f"DMARC: pct={tags['pct']}: the policy applies to only part of the mail that fails",
            )
        )
    findings += _check_report_addresses(tags)
    if "rua" not in tags:
        findings.append(
            Finding(
                Status.NOTE,
                "DMARC: no rua= address, so nobody gets the aggregate reports that show who "
                f"sends mail in {domain}'s name",
            )
        )
    return findings
