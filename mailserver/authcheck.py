"""Whether mail from another server comes from whom it says: SPF, DKIM and DMARC for one
message, and the Authentication-Results field that records them (RFC 8601).

The checks run beside the transfer: SPF starts when the content does (it needs only the
envelope), the DKIM body hashes are computed as the content streams past and the key records
are asked for as soon as the header section is complete. Only DMARC, which needs the outcome
of both, waits for the end of the data. The verdict says what to add to the message and
whether to refuse it; a DNS failure never refuses it for good (RFC 7208 §8.6, RFC 7489 §6.6.3
step 3): the message is accepted with temperror recorded, or deferred with 451 if so set.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime

from mailserver.address import AddressError, normalize_domain
from mailserver.authresults import (
    ForgedResultsFilter,
    MethodResult,
    header_field,
    without_comments,
    without_quoted_strings,
)
from mailserver.dkim import DKIMResult, Verifier, parse_header_fields
from mailserver.dmarc import Authenticated, DMARCVerdict, TextLookup, evaluate
from mailserver.dnsquery import DNSQuery
from mailserver.smtp import replies
from mailserver.smtp.replies import Reply
from mailserver.spf import SPFResult, SPFVerdict, check_spf

SPF_TIME_LIMIT = 20.0  # seconds for one whole SPF evaluation (RFC 7208 §4.6.4: at least 20)
DMARC_TIME_LIMIT = 20.0  # seconds to find one domain's policy
_SEVERITY = {"pass": 0, "none": 1, "permerror": 2, "temperror": 3, "fail": 4}
_DISPOSITIONS = ("none", "quarantine", "reject")
# From addresses as any reader would find them: "@" then a domain, outside quoted strings
# and comments (removed first). Display names cannot hide one.
_AUTHOR_DOMAIN = re.compile(r"@\s*(\[[^\]]*\]|[^\s<>,;:\"()\[\]@\\]+)")


@dataclass(frozen=True)
class CheckPolicy:
    """What the operator chose: our authserv-id, and when to refuse."""

    authserv_id: str
    dmarc_reject: bool = True
    spf_reject: bool = False
    defer_on_dns_failure: bool = False


@dataclass(frozen=True)
class Verdict:
    """The outcome for one message: the field to add, and the refusal if any."""

    header: bytes
    refusal: Reply | None
    spf: SPFVerdict
    dkim: Sequence[DKIMResult]
    dmarc: DMARCVerdict | None

    def summary(self) -> str:
        """A short line for the log: ``spf=pass dkim=pass dmarc=pass``."""
        dkim = ",".join(result.result for result in self.dkim) or "none"
        dmarc = self.dmarc.result if self.dmarc else "none"
        return f"spf={self.spf.result.value} dkim={dkim} dmarc={dmarc}"


class InboundChecks:
    """The checks of one listener set: the DNS to ask, the policy and the clock."""

    def __init__(self, query: DNSQuery, policy: CheckPolicy, clock: IReactorTime) -> None:
        self.query = query
        self.policy = policy
        self.clock = clock

    def start(self, client_address: str, helo: str, sender: str) -> InboundCheck:
        """The checks of one message, from its envelope; SPF starts at once."""
        return InboundCheck(self.query, self.policy, self.clock, client_address, helo, sender)

    def results_filter(self, sink: Callable[[bytes], None]) -> ForgedResultsFilter:
        """What removes Authentication-Results fields forged in our name (RFC 8601 §5)."""
        return ForgedResultsFilter(self.policy.authserv_id, sink)


class InboundCheck:
    """The checks of one message; see the module docstring. Feed it the content as it
    arrives, then ask for :meth:`verdict`; :meth:`cancel` if the message is abandoned."""

    def __init__(
        self,
        query: DNSQuery,
        policy: CheckPolicy,
        clock: IReactorTime,
        client_address: str,
        helo: str,
        sender: str,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._query = query
        self._policy = policy
        self._draw = draw
        self._sender = sender
        self._spf: Deferred[SPFVerdict] = Deferred.fromCoroutine(
            check_spf(query, client_address, sender, helo, policy.authserv_id)
        )
        self._spf.addTimeout(SPF_TIME_LIMIT, clock)
        self._clock = clock
        self._helo = helo
        self._verifier = Verifier(query, clock)

    def feed(self, data: bytes) -> None:
        self._verifier.feed(data)

    def cancel(self) -> None:
        self._spf.cancel()
        self._spf.addErrback(lambda _: None)  # nobody will wait for it now
        self._verifier.cancel()

    async def verdict(self) -> Verdict:
        if self._verifier.header_too_large:
            # Neither DKIM nor DMARC can be judged on a header we did not keep; a forger must
            # not escape the policy that way. RFC 5322 sets no limit, real mail is far below.
            self.cancel()
            return Verdict(b"", replies.HEADER_TOO_LARGE, _UNCHECKED, (), None)
        spf = await self._spf_verdict()
        dkim = await self._verifier.results()
        dmarc = await self._dmarc(spf, dkim)
        results = [self._spf_result(spf)]
        results += [_dkim_result(result) for result in dkim] or [MethodResult("dkim", "none")]
        results.append(_dmarc_result(dmarc))
        return Verdict(
            header_field(self._policy.authserv_id, results),
            self._refusal(spf, dkim, dmarc),
            spf,
            dkim,
            dmarc,
        )

    async def _spf_verdict(self) -> SPFVerdict:
        try:
            return await self._spf
        except (TimeoutError, CancelledError):
            domain = self._sender.rpartition("@")[2] or self._helo
            identity = "mailfrom" if self._sender else "helo"
            return SPFVerdict(SPFResult.TEMPERROR, domain, identity, "SPF check took too long")

    async def _dmarc(self, spf: SPFVerdict, dkim: Sequence[DKIMResult]) -> DMARCVerdict:
        """The strictest verdict over every domain in every From field (RFC 7489 §6.6.1),
        read leniently: a From that a strict parser would refuse must not escape the
        policy of the domain it names."""
        fields = parse_header_fields(self._verifier.header or b"")
        domains = author_domains(fields or [])
        if not domains:
            return DMARCVerdict("permerror", "", reason="no From domain to check")
        authenticated = Authenticated(
            spf.domain if spf.result is SPFResult.PASS else None,
            [result.domain for result in dkim if result.result == "pass"],
            incomplete=spf.result is SPFResult.TEMPERROR or self._verifier.incomplete,
        )
        verdicts = [await self._evaluate(domain, authenticated) for domain in domains]
        return max(verdicts, key=_severity)

    async def _evaluate(self, domain: str, authenticated: Authenticated) -> DMARCVerdict:
        query: TextLookup = self._query
        evaluation = Deferred.fromCoroutine(evaluate(query, domain, authenticated, self._draw))
        try:
            return await evaluation.addTimeout(DMARC_TIME_LIMIT, self._clock)
        except TimeoutError:
            return DMARCVerdict("temperror", domain, reason="DMARC look-up took too long")

    def _spf_result(self, spf: SPFVerdict) -> MethodResult:
        if spf.identity == "mailfrom":
            identity = ("smtp.mailfrom", self._sender)
        else:
            identity = ("smtp.helo", self._helo)
        return MethodResult("spf", spf.result.value, spf.reason, [identity])

    def _refusal(
        self, spf: SPFVerdict, dkim: Sequence[DKIMResult], dmarc: DMARCVerdict | None
    ) -> Reply | None:
        policy = self._policy
        if (
            dmarc is not None
            and dmarc.result == "fail"
            and dmarc.disposition == "reject"
            and policy.dmarc_reject
        ):
            return replies.DMARC_REJECTED.with_text(
                f"Message refused: it fails the DMARC policy of {dmarc.author_domain}"
            )
        if spf.result is SPFResult.FAIL and policy.spf_reject:
            return replies.SPF_REJECTED.with_text(
                f"Message refused: the SPF record of {spf.domain} does not allow it"
            )
        failed_dns = (
            spf.result is SPFResult.TEMPERROR
            or any(result.result == "temperror" for result in dkim)
            or (dmarc is not None and dmarc.result == "temperror")
        )
        if failed_dns and policy.defer_on_dns_failure:
            return replies.CHECKS_DEFERRED
        return None


def author_domains(fields: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """Every domain of every From field, A-labels, without repeats; address literals and
    names that are no domain are left out (no DNS policy can exist for them)."""
    found: dict[str, None] = {}
    for name, value in fields:
        if name.lower() != b"from":
            continue
        text = value.decode("utf-8", "replace").replace("\r\n", "")
        text = without_comments(without_quoted_strings(text))
        for match in _AUTHOR_DOMAIN.finditer(text):
            domain = match[1].rstrip(".")
            if domain.startswith("["):
                continue
            try:
                found.setdefault(normalize_domain(domain), None)
            except AddressError:
                continue
    return list(found)


def _severity(verdict: DMARCVerdict) -> tuple[int, int]:
    return _SEVERITY.get(verdict.result, 0), _DISPOSITIONS.index(verdict.disposition)


_UNCHECKED = SPFVerdict(SPFResult.NONE, "", "mailfrom", "not checked")


def _dkim_result(result: DKIMResult) -> MethodResult:
    return MethodResult(
        "dkim",
        result.result,
        result.reason,
        [
            ("header.d", result.domain),
            ("header.s", result.selector),
            ("header.b", result.signature_prefix),
        ],
    )


def _dmarc_result(verdict: DMARCVerdict) -> MethodResult:
    comment = verdict.reason
    if verdict.result in ("pass", "fail"):
        comment = f"p={verdict.policy} dis={verdict.disposition}"
    properties = [("header.from", verdict.author_domain)] if verdict.author_domain else []
    return MethodResult("dmarc", verdict.result, comment, properties)
