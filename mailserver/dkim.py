"""DKIM (RFC 6376) for messages that stream past: signing our users' mail, verifying the rest.

dkimpy does the canonicalisation, header selection, tag parsing and key-record parsing, and
verifies signatures; we never write our own. But dkimpy wants the whole message in memory, and
a message here is never held whole: it streams to disk. So the body goes through
:class:`BodyHasher` as it arrives, one chunk of complete lines at a time, through dkimpy's own
body canonicalisation; only the header section (bounded) is kept. At the end dkimpy is given the
header section alone, with the body hash already known. Signing itself goes through OpenSSL
(:meth:`SigningKey.sign`): dkimpy's pure-Python RSA takes ten times as long, in the reactor.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import dkim
from dkim.canonicalization import (
    CanonicalizationPolicy,
    Relaxed,
    Simple,
)
from dkim.util import parse_tag_value
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from mailserver.address import AddressError, normalize_domain
from mailserver.dkimkeys import SigningKey
from mailserver.dnsquery import LookupFailed
from mailserver.smtp.data import AuthorError, authors_of

MAX_HEADER = 256 * 1024  # octets of header section kept; a larger one is neither signed nor checked
MAX_LINE = 1024 * 1024  # a longer line stops the body hash (RFC 5322 §2.1.1 allows 998 octets)
MAX_SIGNATURES = 5  # checked per message; more is a way to make us work, not a real need
HEADER_NAME = b"DKIM-Signature"
# Signed once more than they occur, so none can be added without breaking the signature
# (RFC 6376 §5.4.2, §8.15): the fields a reader sees and trusts.
OVERSIGNED = (
    b"from",
    b"sender",
    b"reply-to",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
)
MAX_RSA_BITS = 4096  # RFC 8301 §3.2: verifiers need not take larger keys; they cost seconds
_SENTINEL = b"x\r\n"  # a non-empty last line, so dkimpy keeps the empty lines before it
_BLANKS = b"\r\n" * 4096

# Quiet: outcomes are reported through results, not through dkimpy's log lines.
_log = logging.getLogger("mailserver.dkim")
_log.addHandler(logging.NullHandler())
_log.propagate = False


class _Canonicalization(Protocol):
    @staticmethod
    def canonicalize_body(body: bytes) -> bytes: ...


_BODY_ALGORITHMS: Mapping[bytes, type[_Canonicalization]] = {b"simple": Simple, b"relaxed": Relaxed}


class BodyHasher:
    """The body hash (``bh=``) of a body fed in chunks cut anywhere, equal to what dkimpy
    computes on the whole body: complete lines go through dkimpy's canonicalisation at once;
    an unfinished line waits for its end; empty lines wait until a later line shows they are
    not the trailing ones that canonicalisation drops (RFC 6376 §3.4.3, §3.4.4)."""

    def __init__(
        self,
        canonicalization: bytes = b"relaxed",
        hash_factory: Callable[[], Any] = hashlib.sha256,
        limit: int | None = None,
    ) -> None:
        self._canonicalize = _BODY_ALGORITHMS[canonicalization].canonicalize_body
        self._hash = hash_factory()
        self._limit = limit  # the l= tag: octets of canonical body to hash
        self._partial = b""
        self._blank_lines = 0
        self.hashed = 0
        self.broken = False  # a line over MAX_LINE: no hash can be given

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        data = self._partial + data
        cut = data.rfind(b"\r\n") + 2 if b"\r\n" in data else 0
        self._partial = data[cut:]
        if len(self._partial) > MAX_LINE:
            self.broken = True
            self._partial = b""
            return
        if cut:
            canonical = self._canonicalize(data[:cut] + _SENTINEL)[: -len(_SENTINEL)]
            self._add_lines(canonical)

    def digest(self) -> bytes | None:
        """The hash once everything is fed; None if a line was too long."""
        if self.broken:
            return None
        if self._partial:
            # The body ends without CRLF: dkimpy's canonicalisation adds it.
            self._add_lines(self._canonicalize(self._partial))
            self._partial = b""
        if self.hashed == 0:
            # RFC 6376 §3.4.3: an empty simple body is one CRLF; §3.4.4: a relaxed one is empty.
            self._emit(self._canonicalize(b""))
        return bytes(self._hash.digest())

    def _add_lines(self, canonical: bytes) -> None:
        end = len(canonical)
        while end >= 2 and canonical[end - 2 : end] == b"\r\n":
            end -= 2
        trailing = (len(canonical) - end) // 2
        if end == 0:
            self._blank_lines += trailing
            return
        while self._blank_lines:
            count = min(self._blank_lines, len(_BLANKS) // 2)
            self._emit(_BLANKS[: 2 * count])
            self._blank_lines -= count
        self._emit(canonical[: end + 2])
        self._blank_lines = trailing - 1

    def _emit(self, data: bytes) -> None:
        if self._limit is not None:
            data = data[: max(0, self._limit - self.hashed)]
        self.hashed += len(data)
        self._hash.update(data)


class MessageTap:
    """Content of one message as it streams past: keeps the header section (up to
    :data:`MAX_HEADER`) and, once it is complete, feeds the body to the hashers that
    :meth:`header_complete` asks for."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._in_header = True
        self._hashers: list[BodyHasher] = []
        self.header: bytes | None = None  # once complete: the fields, each ending in CRLF
        self.header_too_large = False

    def feed(self, data: bytes) -> None:
        if self._in_header:
            data = self._take_header(data)
        for hasher in self._hashers:
            hasher.feed(data)

    def end(self) -> None:
        """The message is complete; one without a blank line is all header (RFC 5322 §2.1)."""
        if self._in_header and not self.header_too_large:
            header = bytes(self._header)
            if header and not header.endswith(b"\r\n"):
                header += b"\r\n"
            self._finish_header(header)

    def header_complete(self, header: bytes) -> list[BodyHasher]:
        """Override: the hashers the body must go through."""
        return []

    def _take_header(self, data: bytes) -> bytes:
        """Add to the header section; returns the body octets in ``data``, if any."""
        if self.header_too_large:
            return b""
        start = max(0, len(self._header) - 3)
        self._header += data
        if self._header.startswith(b"\r\n"):
            end, body_start = 0, 2  # no header fields at all
        else:
            found = self._header.find(b"\r\n\r\n", start)
            end, body_start = found + 2, found + 4
            if found < 0:
                if len(self._header) > MAX_HEADER:
                    self.header_too_large = True
                    self._in_header = False
                    self._header.clear()
                return b""
        if end > MAX_HEADER:
            self.header_too_large = True
            self._in_header = False
            self._header.clear()
            return b""
        body = bytes(self._header[body_start:])
        self._finish_header(bytes(self._header[:end]))
        return body

    def _finish_header(self, header: bytes) -> None:
        self._in_header = False
        self._header.clear()
        self.header = header
        self._hashers = self.header_complete(header)


_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")


def parse_header_fields(header: bytes) -> list[tuple[bytes, bytes]] | None:
    """The header section as the (name, value) pairs dkimpy works on (the value is all after
    the colon, continuation lines and CRLFs included); None if a line is neither a field nor
    a continuation. Linear in the size of the header: dkimpy's own parser is not."""
    pieces: list[tuple[bytes, list[bytes]]] = []
    for line in header.removesuffix(b"\r\n").split(b"\r\n") if header else []:
        if line[:1] in (b" ", b"\t"):
            if not pieces:
                return None
            pieces[-1][1].append(line + b"\r\n")
            continue
        match = _FIELD_NAME.match(line)
        if match is None:
            return None
        pieces.append((match[1], [line[match.end() :] + b"\r\n"]))
    return [(name, b"".join(value)) for name, value in pieces]


# --- Signing ---------------------------------------------------------------------------------


def signature_field(
    fields: list[tuple[bytes, bytes]],
    body_hash: bytes,
    key: SigningKey,
    domain: str,
    selector: str,
    now: int,
) -> bytes:
    """A ``DKIM-Signature`` header field (ending in CRLF) for a message with these header
    fields and body hash: relaxed/relaxed canonicalisation, the header fields RFC 6376 §5.4.1
    recommends (From signed once more than it occurs, so none can be added)."""
    signer = dkim.DKIM(logger=_log)
    signer.headers = fields
    signer.add_frozen(OVERSIGNED)
    include = tuple(name.lower() for name in signer.default_sign_headers())
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    tags = [
        (b"v", b"1"),
        (b"a", key.algorithm),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain.encode("ascii")),
        (b"s", selector.encode("ascii")),
        (b"t", str(now).encode("ascii")),
        (b"h", b" : ".join(include)),  # RFC 6376 §3.5: folding only around the colons
        (b"bh", base64.b64encode(body_hash)),
        (b"b", b""),
    ]
    unsigned = dkim.fold(b"; ".join(b"=".join(tag) for tag in tags), namelen=len(HEADER_NAME))
    hasher = hashlib.sha256()
    dkim.hash_headers(
        hasher,
        policy,
        policy.canonicalize_headers(fields),
        include,
        (HEADER_NAME, b" " + unsigned),
        dict(tags),
    )
    signature = base64.b64encode(key.sign(hasher.digest()))
    # The b= value on lines of its own; FWS inside it is ignored (RFC 6376 §3.5).
    pieces = [signature[i : i + 72] for i in range(0, len(signature), 72)]
    return HEADER_NAME + b": " + unsigned + b"\r\n " + b"\r\n ".join(pieces) + b"\r\n"


@dataclass(frozen=True)
class SigningIdentity:
    """A key and where DNS publishes it."""

    domain: str
    selector: str
    key: SigningKey


class SigningTable:
    """The keys of each of our domains. A message is signed for the one domain of its From
    field, read as strictly as the submission From check reads it."""

    def __init__(self, identities: Sequence[SigningIdentity]) -> None:
        self._by_domain: dict[str, list[SigningIdentity]] = {}
        for identity in identities:
            self._by_domain.setdefault(identity.domain, []).append(identity)

    def __bool__(self) -> bool:
        return bool(self._by_domain)

    def signer(self) -> Signer:
        """A signer for one message."""
        return Signer(self.for_header)

    def for_header(self, header: bytes) -> Sequence[SigningIdentity]:
        try:
            authors = authors_of(header, whole_message=True)
        except AuthorError:
            return ()
        domains = {_normalized(author.domain) for author in authors}
        if len(domains) != 1:
            return ()
        return self._by_domain.get(domains.pop() or "", ())


def _normalized(domain: str) -> str | None:
    try:
        return normalize_domain(domain)
    except AddressError:
        return None


class Signer(MessageTap):
    """Signs a message with every key of its From domain. ``identities_for`` gives the
    identities for the header section, or none when the message is not ours to sign."""

    def __init__(self, identities_for: Callable[[bytes], Sequence[SigningIdentity]]) -> None:
        super().__init__()
        self._identities_for = identities_for
        self._identities: Sequence[SigningIdentity] = ()
        self._hasher: BodyHasher | None = None

    def header_complete(self, header: bytes) -> list[BodyHasher]:
        self._identities = self._identities_for(header)
        if not self._identities:
            return []
        self._hasher = BodyHasher(b"relaxed")
        return [self._hasher]

    def signature_fields(self, now: int) -> bytes:
        """The DKIM-Signature fields to put on top of the message: empty when it has no key,
        or cannot be signed (no parsable header section, or a line too long)."""
        self.end()
        if self._hasher is None or self.header is None:
            return b""
        body_hash = self._hasher.digest()
        fields = parse_header_fields(self.header)
        if body_hash is None or fields is None:
            return b""
        return b"".join(
            signature_field(fields, body_hash, item.key, item.domain, item.selector, now)
            for item in self._identities
        )


# --- Verifying -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DKIMResult:
    """The outcome for one signature, in RFC 8601 §2.7.1 terms: pass, fail, neutral (the
    signature cannot be processed), temperror or permerror (no usable key)."""

    result: str
    domain: str  # d=, lower case
    selector: str
    signature_prefix: str  # the start of b=, telling signatures apart (RFC 6008)
    reason: str = ""


_HOST_LABELS = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")


class _Signature:
    """One DKIM-Signature field under check; ``error`` says why it cannot be checked."""

    def __init__(self, field: tuple[bytes, bytes]) -> None:
        self.field = field
        self.tags: dict[bytes, bytes] = {}
        self.error = ""
        self.hasher: BodyHasher | None = None
        self.key_record: Deferred[list[bytes] | LookupFailed] | None = None
        try:
            self.tags = parse_tag_value(field[1])
            dkim.validate_signature_fields(self.tags)
            self.policy = CanonicalizationPolicy.from_c_value(self.tags.get(b"c", b"simple"))
        except Exception as error:  # dkimpy fails in assorted ways on hostile fields
            self.error = f"bad signature field: {error}"
            return
        self.error = self._unusable()

    def _unusable(self) -> str:
        tags = self.tags
        if tags[b"a"] == b"rsa-sha1":
            # RFC 8301 §3.1: verifiers must not consider rsa-sha1 signatures valid.
            return "rsa-sha1 signatures are not accepted"
        if b"l" in tags and not tags[b"l"].isdigit():
            return "bad l= tag"
        if not _HOST_LABELS.fullmatch(self.key_name):
            return "d= or s= is not a domain name"
        included = [name.strip().lower() for name in tags[b"h"].split(b":")]
        if b"from" not in included:
            # RFC 6376 §6.1.1: a signature that does not cover From must be ignored.
            return "From is not signed"
        return ""

    @property
    def domain(self) -> str:
        return self.tags.get(b"d", b"").decode("ascii", "replace").lower()

    @property
    def selector(self) -> str:
        return self.tags.get(b"s", b"").decode("ascii", "replace").lower()

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def result(self, result: str, reason: str) -> DKIMResult:
        prefix = re.sub(rb"\s+", b"", self.tags.get(b"b", b""))[:8]
        return DKIMResult(
            result, self.domain, self.selector, prefix.decode("ascii", "replace"), reason
        )


class KeyLookup(Protocol):
    def texts(self, name: str) -> Any: ...  # a coroutine giving list[bytes]


KEY_TIME_LIMIT = 20.0  # seconds for one key record, CNAMEs and retries included


class Verifier(MessageTap):
    """Checks the DKIM signatures of a message (at most :data:`MAX_SIGNATURES`): the body
    hashes as the content streams past, the key records looked up as soon as the header
    section is complete, the header signatures at :meth:`results`.

    ``incomplete`` says that a signature went unchecked for a reason of ours (one signature
    too many, a line too long to hash, a key look-up that failed): it might have passed.
    """

    def __init__(self, query: KeyLookup, clock: IReactorTime) -> None:
        super().__init__()
        self._query = query
        self._clock = clock
        self._signatures: list[_Signature] = []
        self._fields: list[tuple[bytes, bytes]] | None = None
        self._lookups: list[Deferred[list[bytes] | LookupFailed]] = []
        self.incomplete = False

    def header_complete(self, header: bytes) -> list[BodyHasher]:
        self._fields = parse_header_fields(header)
        if self._fields is None:
            return []
        found = [f for f in self._fields if f[0].lower() == HEADER_NAME.lower()]
        self.incomplete = len(found) > MAX_SIGNATURES
        self._signatures = [_Signature(field) for field in found[:MAX_SIGNATURES]]
        hashers: dict[tuple[bytes, bytes, int | None], BodyHasher] = {}
        lookups: dict[str, Deferred[list[bytes] | LookupFailed]] = {}
        for signature in self._signatures:
            if signature.error:
                continue
            tags = signature.tags
            limit = int(tags[b"l"]) if b"l" in tags else None
            body = signature.policy.body_algorithm.name
            shared = (body, tags[b"a"].split(b"-")[-1], limit)
            if shared not in hashers:
                hashers[shared] = BodyHasher(body, hashlib.sha256, limit)
            signature.hasher = hashers[shared]
            name = signature.key_name
            if name not in lookups:
                lookups[name] = self._look_up(name)
            signature.key_record = _copy(lookups[name])
        return list(hashers.values())

    def _look_up(self, name: str) -> Deferred[list[bytes] | LookupFailed]:
        """The key records of ``name``, or the failure; never fails itself."""

        async def look_up() -> list[bytes] | LookupFailed:
            try:
                records: list[bytes] = await self._query.texts(name)
            except LookupFailed as failure:
                return failure
            return records

        def timed_out(failure: Failure) -> LookupFailed:
            failure.trap(TimeoutError)
            return LookupFailed("timeout")

        lookup = Deferred.fromCoroutine(look_up())
        self._lookups.append(lookup)
        return lookup.addTimeout(KEY_TIME_LIMIT, self._clock).addErrback(timed_out)

    @property
    def signed(self) -> bool:
        return bool(self._signatures)

    def cancel(self) -> None:
        """Stop the key look-ups (the message will not be accepted)."""
        waiting = [s.key_record for s in self._signatures if s.key_record is not None]
        for deferred in [*self._lookups, *waiting]:
            deferred.cancel()
            deferred.addErrback(lambda _: None)  # nobody will wait for it now

    async def results(self) -> list[DKIMResult]:
        """One result per signature checked, in header order; none when the message is
        unsigned (or its header section too large to look at)."""
        self.end()
        results = []
        for signature in self._signatures:
            result = await self._check(signature)
            if result.result == "temperror" or result.reason == LINE_TOO_LONG:
                self.incomplete = True
            results.append(result)
        return results

    async def _check(self, signature: _Signature) -> DKIMResult:
        if signature.error or signature.hasher is None or signature.key_record is None:
            return signature.result("neutral", signature.error or "cannot be checked")
        records = await signature.key_record
        body_hash = signature.hasher.digest()
        if body_hash is None:
            return signature.result("neutral", LINE_TOO_LONG)
        try:
            expected = base64.b64decode(re.sub(rb"\s+", b"", signature.tags[b"bh"]))
        except ValueError:
            return signature.result("neutral", "bad bh= tag")
        if body_hash != expected:
            # RFC 6376 §6.1.3: the body hash does not verify.
            return signature.result("fail", "body hash mismatch")
        if isinstance(records, LookupFailed):
            return signature.result("temperror", f"key look-up failed: {records.reason}")
        return self._verify_header(signature, records)

    def _verify_header(self, signature: _Signature, records: list[bytes]) -> DKIMResult:
        keys = [r for r in records if r.lstrip().startswith(b"v=DKIM1")] or records
        if not keys:
            return signature.result("permerror", f"no key at {signature.key_name}")
        verifier = dkim.DKIM(logger=_log)
        assert self._fields is not None
        verifier.headers = self._fields
        try:
            key, size, kind, tlsrpt = dkim.evaluate_pk(signature.key_name.encode(), keys[0])
        except Exception as error:  # dkimpy fails in assorted ways on hostile records
            return signature.result("permerror", f"unusable key: {error}")
        if kind == b"rsa" and (size > MAX_RSA_BITS or key["publicExponent"] > 2**32):
            return signature.result("permerror", f"RSA key of {size} bits is too large")
        verifier.pk, verifier.keysize, verifier.ktag, verifier.seqtlsrpt = key, size, kind, tlsrpt
        include = [name.strip().lower() for name in signature.tags[b"h"].split(b":")]
        tags = {name: value for name, value in signature.tags.items() if name != b"bh"}
        try:
            valid = verifier.verify_sig_process(tags, include, signature.field, None)
        except dkim.KeyFormatError as error:
            return signature.result("permerror", f"unusable key: {error}")
        except Exception as error:  # a malformed b= and the like
            return signature.result("neutral", str(error) or type(error).__name__)
        if not valid:
            return signature.result("fail", "signature does not verify")
        return signature.result("pass", "")


LINE_TOO_LONG = "a body line is too long to check"


def _copy(source: Deferred[Any]) -> Deferred[Any]:
    """A Deferred that fires with ``source``'s result, leaving ``source`` as it is (two
    signatures may wait for one key record)."""
    copy: Deferred[Any] = Deferred()

    def pass_on(result: object) -> object:
        if not copy.called:  # unless cancelled meanwhile
            copy.callback(result)
        return result

    source.addCallback(pass_on)
    return copy
