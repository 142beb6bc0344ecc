"""DMARC (RFC 7489): does the domain in From stand behind this message, and what does it ask a
receiver to do when it does not?

The policy record is found at ``_dmarc.`` + the From domain, else at ``_dmarc.`` + its
organizational domain (§6.6.3), which the Public Suffix List gives (§3.2; the
``publicsuffixlist`` package keeps a current copy). The message passes when SPF or DKIM passed
for a domain aligned with From (§3.1): the same domain in strict mode, the same organizational
domain in relaxed mode. The evaluation is ours: it is a page of rules, and the libraries that
offer it do their own blocking DNS look-ups, which the reactor cannot wait on.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from publicsuffixlist import PublicSuffixList

from mailserver.dnsquery import LookupFailed

POLICIES = ("none", "quarantine", "reject")


@functools.cache
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The registered domain under its public suffix (RFC 7489 §3.2): ``mail.example.co.uk``
    gives ``example.co.uk``; a public suffix itself stays as it is."""
    domain = domain.lower().rstrip(".")
    return _suffixes().privatesuffix(domain) or domain


def aligned(identifier: str, author_domain: str, strict: bool) -> bool:
    """Whether an authenticated domain (SPF's or DKIM's d=) aligns with From's (§3.1)."""
    identifier, author_domain = identifier.lower().rstrip("."), author_domain.lower().rstrip(".")
    if strict:
        return identifier == author_domain
    return organizational_domain(identifier) == organizational_domain(author_domain)


@dataclass(frozen=True)
class Policy:
    """A parsed DMARC record (§6.3); only what evaluation needs."""

    p: str
    sp: str
    adkim_strict: bool
    aspf_strict: bool
    pct: int


class RecordError(ValueError):
    """The TXT record is not a usable DMARC record."""


def parse_record(text: str) -> Policy:
    """Parse ``v=DMARC1; p=...`` (§6.4). Unknown tags are ignored; a bad p= with a valid rua=
    is read as p=none (§6.6.3 step 6), any other bad value makes the record unusable."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, equals, value = part.partition("=")
        if not equals:
            raise RecordError(f"{part!r} is not a tag=value pair")
        tags.setdefault(name.strip().lower(), value.strip())
    if list(tags)[:1] != ["v"] or tags["v"] != "DMARC1":
        raise RecordError("it does not start with v=DMARC1")
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        if "rua" not in tags:
            raise RecordError(f"p={tags.get('p', '')!r} is not none, quarantine or reject")
        p = "none"
    sp = tags.get("sp", p).lower()
    if sp not in POLICIES:
        sp = p
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return Policy(
        p=p,
        sp=sp,
        adkim_strict=tags.get("adkim", "r").lower() == "s",
        aspf_strict=tags.get("aspf", "r").lower() == "s",
        pct=min(100, max(0, pct)),
    )


@dataclass(frozen=True)
class DMARCVerdict:
    """The outcome, in RFC 8601 §2.7.1 terms (pass, fail, none, temperror, permerror), with
    what the policy asks (``disposition``: none, quarantine or reject) after pct sampling."""

    result: str
    author_domain: str
    policy: str = "none"  # the policy that applied: p, or sp for a subdomain
    disposition: str = "none"
    reason: str = ""


class TextLookup(Protocol):
    def texts(self, name: str) -> Any: ...  # a coroutine giving list[bytes]


@dataclass(frozen=True)
class Authenticated:
    """The domains SPF and DKIM vouched for (``pass`` results only); ``incomplete`` when a
    DNS failure kept SPF or a signature from being checked, so a pass may have been missed."""

    spf_domain: str | None
    dkim_domains: Sequence[str]
    incomplete: bool = False


async def find_policy(query: TextLookup, author_domain: str) -> tuple[Policy | None, bool, str]:
    """The policy for ``author_domain``: (policy or None, found at the organizational domain
    rather than the domain itself, why none). Raises LookupFailed."""
    organization = organizational_domain(author_domain)
    for domain in dict.fromkeys((author_domain, organization)):
        records = [
            text.decode("utf-8", "replace")
            for text in await query.texts(f"_dmarc.{domain}")
            if text[:8].upper().startswith(b"V=DMARC1")
        ]
        if len(records) > 1:
            # §6.6.3 step 5: more than one record, no policy.
            return None, False, f"_dmarc.{domain} has {len(records)} DMARC records"
        if records:
            try:
                return parse_record(records[0]), domain != author_domain, ""
            except RecordError as error:
                return None, False, f"_dmarc.{domain}: {error}"
    return None, False, "no DMARC record"


async def evaluate(
    query: TextLookup,
    author_domain: str,
    authenticated: Authenticated,
    draw: Callable[[], float] = random.random,
) -> DMARCVerdict:
    """The DMARC result for a message whose From domain is ``author_domain``; ``draw`` picks
    the messages a pct= below 100 applies to."""
    author_domain = author_domain.lower().rstrip(".")
    try:
        policy, inherited, why = await find_policy(query, author_domain)
    except LookupFailed as failure:
        return DMARCVerdict("temperror", author_domain, reason=f"DNS: {failure.reason}")
    if policy is None:
        result = "permerror" if why != "no DMARC record" else "none"
        return DMARCVerdict(result, author_domain, reason=why)
    applied = policy.sp if inherited else policy.p
    spf = authenticated.spf_domain
    if spf is not None and aligned(spf, author_domain, policy.aspf_strict):
        return DMARCVerdict("pass", author_domain, applied, reason=f"SPF aligned ({spf})")
    for domain in authenticated.dkim_domains:
        if aligned(domain, author_domain, policy.adkim_strict):
            return DMARCVerdict("pass", author_domain, applied, reason=f"DKIM aligned ({domain})")
    if authenticated.incomplete:
        # Not a failure the domain's policy speaks of: a check that could not run may have
        # passed. Like a failed policy look-up, this is temporary (§6.6.3 step 3's spirit).
        return DMARCVerdict(
            "temperror", author_domain, applied, reason="SPF or DKIM could not be checked"
        )
    disposition = applied
    if policy.pct < 100 and draw() * 100 >= policy.pct:
        # §6.6.4: a message outside the sample gets the next policy down.
        disposition = {"reject": "quarantine", "quarantine": "none"}.get(applied, "none")
    return DMARCVerdict("fail", author_domain, applied, disposition, "no aligned SPF or DKIM pass")
