"""Sender Policy Framework (RFC 7208): may this client send mail for the sender's domain?

:func:`check_spf` runs check_host() (§4) for the MAIL FROM identity, or for the HELO identity
when the reverse-path is null (§2.4), and answers with an :class:`SPFVerdict` for the
Authentication-Results header and the logs. We write our own because pyspf does blocking DNS
through dnspython's global resolver, cannot use our configured resolver or the reactor, and has
had no release since 2020.

Every look-up goes through :class:`~mailserver.dnsquery.DNSQuery` and is awaited, so the whole
check is one coroutine that the caller wraps in a Deferred, bounds with ``addTimeout`` (the time
limit of §4.6.4 is the caller's) and may cancel. DNS trouble that may pass is TEMPERROR, a
broken or over-long policy PERMERROR (§2.6); any other exception is a bug and propagates.

Where the RFC leaves a choice, we take these:

- A target name that no DNS query can carry (an empty label, a label over 63 octets after
  macro expansion) is a name that does not exist: its mechanism does not match (§4.8 allows
  this or permerror; the RFC 7208 test suite accepts both).
- The c, r and t macros belong to explanation text (§7.2); in any domain-spec, exp= included,
  they are a syntax error, as the test suite has it. exp= is parsed but never fetched: the
  verdict has no place for an explanation, whose text is the remote domain's to choose.
- Void lookups (§4.6.4) are counted per term: the query that a, mx, ptr or exists makes for
  its target, not the address look-ups of MX hosts or PTR names that follow it.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from twisted.names import dns

from mailserver.address import AddressError, normalize_domain
from mailserver.dnsquery import DNSQuery, LookupFailed, NoSuchName, name_text

MAX_DNS_TERMS = 10  # §4.6.4: include, a, mx, ptr, exists and redirect in one whole evaluation
MAX_MX_NAMES = 10  # §4.6.4: an mx mechanism finding more MX records is a permerror
MAX_PTR_NAMES = 10  # §4.6.4: PTR records beyond the first ten are ignored
MAX_VOID_LOOKUPS = 2  # §4.6.4: terms answered by NXDOMAIN or nothing, before a permerror
MAX_NAME = 253  # §7.3 (RFC 1035 §2.3.4 in text form without the final dot)
MAX_LABEL = 63  # RFC 1035 §2.3.4

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SPFResult(enum.Enum):
    """The results of check_host() (§2.6), valued as Authentication-Results writes them."""

    NONE = "none"
    NEUTRAL = "neutral"
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True)
class SPFVerdict:
    """What :func:`check_spf` found, for Authentication-Results (RFC 8601 §2.7.2) and logs."""

    result: SPFResult
    domain: str  # the domain whose policy was checked: MAIL FROM's, or the HELO name for <>
    identity: str  # "mailfrom" or "helo" (§2.4, §2.3): smtp.mailfrom or smtp.helo
    reason: str  # one line for logs and header comments; may quote the policy's own text


async def check_spf(
    query: DNSQuery, client_ip: str, mail_from: str, helo: str, receiver: str
) -> SPFVerdict:
    """check_host() for one message. ``client_ip`` is the SMTP client's address (IPv4 or IPv6;
    ValueError if it is no address); ``mail_from`` is the reverse-path as "local@domain", or ""
    for the null sender, when the HELO name is checked instead; ``receiver`` is our own host
    name, which only explanation text may use (%{r}, §7.2) and so is not needed for the result.

    Whatever DNS answers or the policy says gives a verdict, never an exception.
    """
    ip = _client_address(client_ip)
    if mail_from:
        local, _, domain_text = mail_from.rpartition("@")
        identity = "mailfrom"
    else:
        # §2.4: for the null reverse-path the HELO identity is checked, "postmaster" the local part.
        local, domain_text, identity = "", helo, "helo"
    domain = _identity_domain(domain_text)
    if domain is None:
        # §4.3: a malformed or single-label <domain> gives "none" at once.
        return SPFVerdict(
            SPFResult.NONE, domain_text, identity, f"{domain_text!r} is not a domain name"
        )
    sender = f"{local or 'postmaster'}@{domain}"  # §4.3: "postmaster" for a missing local part
    evaluation = _Evaluation(query, ip, sender, helo, domain)
    try:
        outcome = await evaluation.check_host(domain)
    except _Abort as abort:
        outcome = abort.outcome
    return SPFVerdict(outcome.result, domain, identity, outcome.reason)


# --- names and addresses -------------------------------------------------------------------------

_NAME = re.compile(r"[\x20-\x7e]+")  # RFC 2181 §11 allows any octet; we take printable ASCII
_TOPLABEL = r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])"  # §7.1
_TOPLABEL_ONLY = re.compile(_TOPLABEL)


def _client_address(text: str) -> IPAddress:
    """The client's address to match: an IPv4-mapped IPv6 address is the IPv4 address it
    maps (so A records and ip4 apply to it, as to any IPv4 client), and a zone is dropped."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return ipaddress.IPv6Address(address.packed)
    return address


def _dns_name(text: str) -> str | None:
    """``text`` as a name a DNS query can carry (lower case, no final dot), or None."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > MAX_NAME or not _NAME.fullmatch(name):
        return None
    if any(not label or len(label) > MAX_LABEL for label in name.split(".")):
        return None
    return name.lower()


def _target_name(expanded: str) -> str | None:
    """The name to look up for an expanded domain-spec, or None if no query can carry it."""
    name = expanded[:-1] if expanded.endswith(".") else expanded
    # §7.3: "if the expanded domain name exceeds 253 characters ..., the left side is truncated
    # to fit, by removing successive domain labels (and their following dots)".
    while len(name) > MAX_NAME and "." in name:
        name = name.split(".", 1)[1]
    return _dns_name(name)


def _policy_domain(name: str | None) -> str | None:
    """``name`` if it can be check_host()'s <domain>: §4.3 wants a well-formed multi-label name;
    its top label must be one (§7.1 toplabel), which keeps addresses and literals out."""
    if name is None:
        return None
    labels = name.split(".")
    if len(labels) < 2 or not _TOPLABEL_ONLY.fullmatch(labels[-1]):
        return None
    return name


def _identity_domain(text: str) -> str | None:
    """The MAIL FROM domain or HELO name as a <domain> (A-labels, RFC 5891), or None."""
    try:
        return _policy_domain(_dns_name(normalize_domain(text)))
    except AddressError:
        return None


def _dotted(address: IPAddress) -> str:
    """The "i" macro (§7.3): dotted quad, or for IPv6 the 32 nibbles joined with dots."""
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    return ".".join(address.exploded.replace(":", ""))


# --- records ------------------------------------------------------------------------------------


class _SyntaxError(Exception):
    """The record breaks the grammar of §12; the message says where."""


class _Abort(Exception):
    """The evaluation ends at once with ``outcome``, a PERMERROR or TEMPERROR (§4.6.2: an
    exception in a mechanism is the result of check_host(), and of every include above it)."""

    def __init__(self, result: SPFResult, reason: str) -> None:
        super().__init__(reason)
        self.outcome = _Outcome(result, reason)


def _permerror(reason: str) -> _Abort:
    return _Abort(SPFResult.PERMERROR, reason)


@dataclass(frozen=True)
class _Outcome:
    result: SPFResult
    reason: str


_DOMAIN_LETTERS = frozenset("slodiphv")  # §7.2: the macros a domain-spec may use
_LETTERS = _DOMAIN_LETTERS | frozenset("crt")  # §7.2: c, r and t are for explanation text only
_ESCAPES = {"%": "%", "_": " ", "-": "%20"}  # §7.1: "%%", "%_" and "%-"
_MACRO = re.compile(
    r"%(?:\{(?P<letter>[A-Za-z])(?P<digits>[0-9]*)(?P<reverse>[rR]?)"
    r"(?P<delimiters>[.\-+,/_=]*)\}|(?P<escape>[%_-]))"
)
_LITERAL = re.compile(r"[\x21-\x24\x26-\x7e]+")  # §7.1 macro-literal: visible, but not "%"
_DOMAIN_END = re.compile(rf"\.{_TOPLABEL}\.?\Z")  # §7.1 domain-end, when no macro ends it


@dataclass(frozen=True)
class _Macro:
    """One %{...} (§7.1), ready to expand."""

    letter: str  # lower case
    keep: int | None  # the digit transformer: how many parts to keep from the right
    reverse: bool
    delimiters: str  # "." when none are given
    escape: bool  # an upper-case letter: the expansion is URL-escaped (§7.3)

    def expand(self, values: Mapping[str, str]) -> str:
        # §7.3: split on the delimiters, reverse if asked, keep the rightmost parts, join with dots.
        parts = re.split(f"[{re.escape(self.delimiters)}]", values[self.letter])
        if self.reverse:
            parts.reverse()
        if self.keep is not None:
            parts = parts[-self.keep :]
        text = ".".join(parts)
        return quote(text, safe="") if self.escape else text


@dataclass(frozen=True)
class _MacroString:
    """A parsed macro-string (§7.1): literal text and macros, in order."""

    parts: tuple[str | _Macro, ...]

    def uses(self, letter: str) -> bool:
        return any(isinstance(part, _Macro) and part.letter == letter for part in self.parts)

    def expand(self, values: Mapping[str, str]) -> str:
        return "".join(p if isinstance(p, str) else p.expand(values) for p in self.parts)


def _macro_string(text: str, letters: frozenset[str]) -> tuple[_MacroString, bool]:
    """Parse a macro-string whose macros may use ``letters``; also say whether it ends with a
    macro-expand (which makes a domain-end, §7.1)."""
    parts: list[str | _Macro] = []
    position = 0
    ends_with_macro = False
    while position < len(text):
        literal = _LITERAL.match(text, position)
        if literal is not None:
            parts.append(literal.group())
            position = literal.end()
            ends_with_macro = False
            continue
        match = _MACRO.match(text, position)
        if match is None:
            # §7.1: a "%" that starts no macro-expand, or a character no macro-string has.
            raise _SyntaxError(f"bad macro or character at {text[position:]!r}")
        position = match.end()
        ends_with_macro = True
        if match["escape"]:
            parts.append(_ESCAPES[match["escape"]])
            continue
        letter = match["letter"].lower()
        if letter not in _LETTERS:
            raise _SyntaxError(f"unknown macro {match.group()}")
        if letter not in letters:
            raise _SyntaxError(f"{match.group()} is only for explanation text")  # §7.2
        digits = match["digits"].lstrip("0")
        if match["digits"] and not digits:
            raise _SyntaxError(f"zero parts in {match.group()}")  # §7.3: "MUST be nonzero"
        keep = int(digits) if 0 < len(digits) <= 6 else None  # more parts than any name has
        reverse = bool(match["reverse"])
        delimiters = match["delimiters"] or "."
        escape = match["letter"].isupper()
        parts.append(_Macro(letter, keep, reverse, delimiters, escape))
    return _MacroString(tuple(parts)), ends_with_macro


def _domain_spec(text: str) -> _MacroString:
    """§7.1: domain-spec = macro-string domain-end."""
    spec, ends_with_macro = _macro_string(text, _DOMAIN_LETTERS)
    last = spec.parts[-1] if spec.parts else ""
    if not ends_with_macro and not (isinstance(last, str) and _DOMAIN_END.search(last)):
        raise _SyntaxError(f"{text!r} ends in neither a top-level label nor a macro")
    return spec


@dataclass(frozen=True)
class _Directive:
    """A mechanism with its qualifier (§4.6.1)."""

    text: str  # as written, for reasons
    result: SPFResult  # what a match gives (§4.6.2)
    mechanism: str  # lower case
    target: _MacroString | None = None  # the domain-spec; None for the current domain
    network: IPNetwork | None = None  # ip4 and ip6
    cidr4: int = 32  # a and mx (§5.3, §5.4)
    cidr6: int = 128


@dataclass(frozen=True)
class _Record:
    directives: tuple[_Directive, ...]
    redirect: _MacroString | None


_VERSION = re.compile(rb"v=spf1(?: |\Z)", re.IGNORECASE)  # §4.5
_QUALIFIERS = {
    "": SPFResult.PASS,  # §4.6.2: the qualifier defaults to "+"
    "+": SPFResult.PASS,
    "-": SPFResult.FAIL,
    "~": SPFResult.SOFTFAIL,
    "?": SPFResult.NEUTRAL,
}
_TERM = re.compile(r"(?P<qualifier>[+\-~?]?)(?P<name>[A-Za-z][A-Za-z0-9_.\-]*)(?P<rest>.*)", re.S)
_DUAL_CIDR = re.compile(r"(?:/(?P<v4>[0-9]+))?(?://(?P<v6>[0-9]+))?\Z")
_CIDR = re.compile(r"0|[1-9][0-9]{0,2}")
_IP4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_IP6 = re.compile(r"[0-9A-Fa-f:.]+")


def _parse_record(text: str) -> _Record:
    """The whole record, checked before any of it runs (§4.6: a syntax error anywhere is a
    permerror, even after a mechanism that would match)."""
    directives: list[_Directive] = []
    modifiers: dict[str, _MacroString] = {}
    for term in text.split(" ")[1:]:  # §4.6.1: terms are separated by spaces, and only those
        if not term:
            continue
        match = _TERM.fullmatch(term)
        if match is None:
            raise _SyntaxError(f"bad term {term!r}")
        name, rest = match["name"].lower(), match["rest"]
        if not rest.startswith("="):
            directives.append(_directive(term, _QUALIFIERS[match["qualifier"]], name, rest))
        elif match["qualifier"]:
            raise _SyntaxError(f"a modifier takes no qualifier: {term!r}")
        elif name in ("redirect", "exp"):
            if name in modifiers:  # §6: these two "MUST NOT appear ... more than once"
                raise _SyntaxError(f"{name}= given twice")
            modifiers[name] = _domain_spec(rest[1:])
        else:
            _macro_string(rest[1:], _LETTERS)  # §6: unknown modifiers are ignored, but must parse
    return _Record(tuple(directives), modifiers.get("redirect"))


def _directive(term: str, result: SPFResult, name: str, rest: str) -> _Directive:
    """One mechanism (§5); ``rest`` is what follows its name."""
    if name == "all":
        if rest:
            raise _SyntaxError(f"all takes no argument: {term!r}")
        return _Directive(term, result, name)
    if name in ("include", "exists"):
        if not rest.startswith(":") or rest == ":":
            raise _SyntaxError(f"{name}: needs a domain")
        return _Directive(term, result, name, _domain_spec(rest[1:]))
    if name == "ptr":
        if rest and not rest.startswith(":"):
            raise _SyntaxError(f"bad ptr mechanism {term!r}")
        if rest == ":":
            raise _SyntaxError(f"{name}: needs a domain")
        return _Directive(term, result, name, _domain_spec(rest[1:]) if rest else None)
    if name in ("a", "mx"):
        cidr = _DUAL_CIDR.search(rest)
        assert cidr is not None  # it matches the empty string at the end at worst
        spec = rest[: cidr.start()]
        if spec and not spec.startswith(":"):
            raise _SyntaxError(f"bad {name} mechanism {term!r}")
        if spec == ":":
            raise _SyntaxError(f"{name}: needs a domain")
        target = _domain_spec(spec[1:]) if spec else None
        cidr4 = _prefix(cidr["v4"], 32)
        cidr6 = _prefix(cidr["v6"], 128)
        return _Directive(term, result, name, target, cidr4=cidr4, cidr6=cidr6)
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise _SyntaxError(f"{name} needs a network: {term!r}")
        address, slash, length = rest[1:].partition("/")
        return _Directive(term, result, name, network=_network(name, address, slash, length))
    raise _SyntaxError(f"unknown mechanism {term!r}")


def syntax_problem(record: str) -> str | None:
    """Why receivers give ``record`` (one "v=spf1" record) a permerror before evaluating any
    of it (§4.6: a syntax error anywhere, even after a term that would match), or None. For
    ``dns-check``, whose static walk must judge a record as receivers do."""
    if not record.isascii():
        return "the record is not ASCII"  # §12
    try:
        _parse_record(record)
    except _SyntaxError as error:
        return str(error)
    return None


def _prefix(text: str | None, bits: int) -> int:
    """A CIDR length (§5.6: no leading zeros, at most the address size); absent, all bits."""
    if text is None:
        return bits
    if not _CIDR.fullmatch(text) or int(text) > bits:
        raise _SyntaxError(f"bad CIDR length /{text}")
    return int(text)


def _network(name: str, address: str, slash: str, length: str) -> IPNetwork:
    """The network of an ip4 or ip6 mechanism (§5.6); the address is written in full."""
    try:
        if name == "ip4" and _IP4.fullmatch(address):
            return ipaddress.IPv4Network((address, _prefix(length if slash else None, 32)), False)
        if name == "ip6" and _IP6.fullmatch(address):
            return ipaddress.IPv6Network((address, _prefix(length if slash else None, 128)), False)
    except ValueError:  # Python's own check: octets over 255, leading zeros, bad IPv6 forms
        pass
    raise _SyntaxError(f"bad {name} network {address + slash + length!r}")


# --- evaluation ---------------------------------------------------------------------------------

_VERBS = {
    SPFResult.PASS: "is permitted by",
    SPFResult.FAIL: "is not permitted by",
    SPFResult.SOFTFAIL: "is probably not permitted by",
    SPFResult.NEUTRAL: "is neither permitted nor denied by",
}


class _Evaluation:
    """One check_host() run with all its includes and redirects: the inputs, and the counts
    that §4.6.4 limits across the whole of it."""

    def __init__(self, query: DNSQuery, ip: IPAddress, sender: str, helo: str, domain: str) -> None:
        self._query = query
        self._ip = ip
        self._sender = sender
        self._local, _, self._sender_domain = sender.rpartition("@")
        self._helo = helo
        self._domain = domain  # the first <domain>, which the verdict names
        self._address_kind = dns.A if ip.version == 4 else dns.AAAA  # §5: A for IPv4, AAAA for v6
        self._terms = 0
        self._voids = 0

    async def check_host(self, domain: str) -> _Outcome:
        """§4.4 to §4.7 for a well-formed ``domain``; PERMERROR and TEMPERROR come as _Abort."""
        try:
            texts = await self._query.texts(domain)  # none for NXDOMAIN (§4.3)
        except LookupFailed as failure:
            raise self._temperror(failure, dns.TXT, domain) from None  # §4.4
        records = [text for text in texts if _VERSION.match(text)]
        if not records:
            return _Outcome(SPFResult.NONE, f"no SPF record at {domain}")  # §4.5
        if len(records) > 1:
            raise _permerror(f"{domain} has {len(records)} SPF records")  # §4.5
        try:
            record = _parse_record(records[0].decode("ascii"))
        except UnicodeDecodeError:
            raise _permerror(f"the SPF record of {domain} is not ASCII") from None  # §12
        except _SyntaxError as error:
            raise _permerror(f"syntax error in the SPF record of {domain}: {error}") from None
        for directive in record.directives:  # §4.6.2: left to right, the first match decides
            if await self._matches(directive, domain):
                verb = _VERBS[directive.result]
                where = "" if domain == self._domain else f" at {domain}"
                return _Outcome(directive.result, f"{self._ip} {verb} {directive.text}{where}")
        # §4.6.3: a record with "all" never gets here, so its redirect is ignored, as required.
        if record.redirect is not None:
            return await self._redirect(record.redirect, domain)
        return _Outcome(SPFResult.NEUTRAL, f"{self._ip} matches nothing at {domain}")  # §4.7

    async def _redirect(self, spec: _MacroString, domain: str) -> _Outcome:
        """§6.1: the policy of another domain takes the place of this one's."""
        self._count("redirect", domain)
        target = _policy_domain(_target_name(await self._expand(spec, domain)))
        # §6.1: "if no SPF record is found, or if the <target-name> is malformed, the result is
        # a "permerror" rather than "none"."
        if target is None:
            raise _permerror(f"the redirect of {domain} names no domain")
        outcome = await self.check_host(target)
        if outcome.result is SPFResult.NONE:
            raise _permerror(f"{domain} redirects to {target}, which has no SPF record")
        return outcome

    async def _matches(self, directive: _Directive, domain: str) -> bool:
        if directive.mechanism == "all":
            return True  # §5.1
        if directive.network is not None:
            return self._ip in directive.network  # §5.6; never across address families
        self._count(directive.text, domain)  # §4.6.4: each of the others asks DNS
        target = await self._target(directive, domain)
        if directive.mechanism == "include":
            return await self._include(directive, domain, target)
        if directive.mechanism == "a":
            return self._in_cidr(await self._addresses(target, void=True), directive)
        if directive.mechanism == "mx":
            return await self._mx(directive, domain, target)
        if directive.mechanism == "ptr":
            return await self._ptr(target)
        # §5.7: exists asks for A records whatever the client's address family.
        return bool(await self._lookup(dns.A, target, void=True))

    async def _include(self, directive: _Directive, domain: str, target: str | None) -> bool:
        """§5.2: the included policy's pass is a match; its fail, softfail and neutral are
        not; its temperror and permerror are ours (they arrive as _Abort); none is permerror."""
        name = _policy_domain(target)
        if name is None:
            raise _permerror(f"{directive.text} at {domain} names no domain")
        outcome = await self.check_host(name)
        if outcome.result is SPFResult.NONE:
            raise _permerror(f"{directive.text} at {domain}: {name} has no SPF record")
        return outcome.result is SPFResult.PASS

    async def _mx(self, directive: _Directive, domain: str, target: str | None) -> bool:
        """§5.4: the client is one of the target's MX hosts (no implicit MX)."""
        records = await self._lookup(dns.MX, target, void=True)
        if len(records) > MAX_MX_NAMES:
            # §4.6.4: more MX records than this "MUST produce a "permerror" result".
            raise _permerror(f"{directive.text} at {domain} finds {len(records)} MX records")
        for record in records:
            host = name_text(record.name)
            if host and self._in_cidr(await self._addresses(host, void=False), directive):
                return True
        return False

    async def _ptr(self, target: str | None) -> bool:
        """§5.5: a validated name of the client is the target or below it."""
        names = await self._reverse_names(void=True)
        if target is None:
            return False
        for name in names:
            if (name == target or name.endswith("." + target)) and await self._validated(name):
                return True
        return False

    async def _target(self, directive: _Directive, domain: str) -> str | None:
        """The <target-name> of a mechanism (§4.8): its domain-spec expanded, or <domain>;
        None for a name that no DNS query can carry."""
        if directive.target is None:
            return domain
        return _target_name(await self._expand(directive.target, domain))

    async def _expand(self, spec: _MacroString, domain: str) -> str:
        validated = await self._validated_name(domain) if spec.uses("p") else "unknown"
        values = {
            "s": self._sender,
            "l": self._local,
            "o": self._sender_domain,
            "d": domain,
            "i": _dotted(self._ip),
            "p": validated,
            "v": "in-addr" if self._ip.version == 4 else "ip6",
            "h": self._helo,
        }
        return spec.expand(values)

    async def _validated_name(self, domain: str) -> str:
        """The "p" macro (§7.3): a validated name of the client, <domain> itself if it is one,
        else one below it, else any; "unknown" when there is none or DNS fails."""

        def preference(name: str) -> int:
            return 0 if name == domain else 1 if name.endswith("." + domain) else 2

        for name in sorted(await self._reverse_names(void=False), key=preference):
            if await self._validated(name):
                return name
        return "unknown"

    async def _reverse_names(self, void: bool) -> list[str]:
        """The client's PTR names, the first MAX_PTR_NAMES of them (§4.6.4); none if the
        look-up fails (§5.5: "If a DNS error occurs while doing the PTR RR lookup, then this
        mechanism fails to match")."""
        try:
            records = await self._query.records(dns.PTR, self._ip.reverse_pointer)
        except NoSuchName:
            records = []
        except LookupFailed:
            return []
        if void and not records:
            self._void(self._ip.reverse_pointer)
        names = (name_text(record.name) for record in records[:MAX_PTR_NAMES])
        return [name for name in names if name]

    async def _validated(self, name: str) -> bool:
        """§5.5: ``name`` has the client's address. "If a DNS error occurs while doing an A RR
        lookup, then that domain name is skipped"."""
        try:
            records = await self._query.records(self._address_kind, name)
        except (NoSuchName, LookupFailed):
            return False
        return any(ipaddress.ip_address(record.address) == self._ip for record in records)

    async def _addresses(self, name: str | None, void: bool) -> list[IPAddress]:
        records = await self._lookup(self._address_kind, name, void)
        return [ipaddress.ip_address(record.address) for record in records]

    def _in_cidr(self, addresses: Sequence[IPAddress], directive: _Directive) -> bool:
        prefix = directive.cidr4 if self._ip.version == 4 else directive.cidr6
        network = ipaddress.ip_network((self._ip, prefix), strict=False)
        return any(address in network for address in addresses)

    async def _lookup(self, kind: int, name: str | None, void: bool) -> list[Any]:
        """The records of a term's query; a name no query can carry has none. A failure that
        may pass is TEMPERROR (§2.6.6)."""
        records: list[Any] = []
        if name is not None:
            try:
                records = await self._query.records(kind, name)
            except NoSuchName:
                pass
            except LookupFailed as failure:
                raise self._temperror(failure, kind, name) from None
        if void and not records:
            self._void(name or "a malformed name")
        return records

    def _count(self, term: str, domain: str) -> None:
        self._terms += 1
        if self._terms > MAX_DNS_TERMS:
            # §4.6.4: "If this limit is exceeded, the implementation MUST return "permerror"."
            raise _permerror(f"more than {MAX_DNS_TERMS} DNS-querying terms, at {term} at {domain}")

    def _void(self, name: str) -> None:
        self._voids += 1
        if self._voids > MAX_VOID_LOOKUPS:
            # §4.6.4: "Exceeding the limit produces a "permerror" result."
            raise _permerror(f"more than {MAX_VOID_LOOKUPS} void DNS lookups, the last for {name}")

    @staticmethod
    def _temperror(failure: LookupFailed, kind: int, name: str) -> _Abort:
        kind_name = dns.QUERY_TYPES.get(kind, str(kind))
        return _Abort(SPFResult.TEMPERROR, f"DNS {failure.reason} looking up {kind_name} {name}")
