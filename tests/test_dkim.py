"""DKIM on streamed messages: body hashes equal dkimpy's whole-message ones however the
content is cut, our signatures verify with dkimpy's own whole-message verifier, and our
verifier agrees with dkimpy on signatures dkimpy made."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from typing import Any

import dkim
import pytest
from dkim.canonicalization import Relaxed, Simple
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from mailserver.dkim import (
    MAX_HEADER,
    BodyHasher,
    DKIMResult,
    Signer,
    SigningIdentity,
    SigningTable,
    Verifier,
    parse_header_fields,
)
from mailserver.dkimkeys import SigningKey, generate, parse_key
from mailserver.dnsquery import LookupFailed
from tests.fake_dns import FakeTexts

RSA = parse_key(generate("rsa"))
ED25519 = parse_key(generate("ed25519"))
MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Hello\r\n"
    b"\tfolded\r\n"
    b"Date: Tue, 01 Dec 2026 06:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"Hello  Bob, \r\n"
    b".leading dot\r\n"
    b"\r\n"
    b"\tlast line\r\n"
    b"\r\n"
    b"\r\n"
)

lines = st.lists(
    st.sampled_from([b"", b" ", b"\t", b"a", b"b c", b"  x  ", b"y\t \t", b".", b"\r"]),
    max_size=12,
).map(lambda parts: b"".join(parts))
bodies = st.lists(lines, max_size=12).map(lambda ls: b"\r\n".join(ls)) | st.lists(
    lines, max_size=12
).map(lambda ls: b"".join(line + b"\r\n" for line in ls))


def chunked(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def whole_body_hash(body: bytes, canonicalization: Any, limit: int | None = None) -> bytes:
    canonical = canonicalization.canonicalize_body(body)
    if limit is not None:
        canonical = canonical[:limit]
    return hashlib.sha256(canonical).digest()


@given(body=bodies, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_body_hash_equals_dkimpy_whole_body(body: bytes, cuts: list[int]) -> None:
    """Fed in any pieces, the simple and relaxed body hashes equal dkimpy's canonicalisation
    of the whole body, trailing empty lines, whitespace-only lines and a missing final CRLF
    included."""
    for name, canonicalization in ((b"simple", Simple), (b"relaxed", Relaxed)):
        hasher = BodyHasher(name)
        for piece in chunked(body, cuts):
            hasher.feed(piece)
        assert hasher.digest() == whole_body_hash(body, canonicalization), name


@given(body=bodies, limit=st.integers(min_value=0, max_value=40))
def test_body_length_limit(body: bytes, limit: int) -> None:
    """With l=, only that many octets of the canonical body are hashed."""
    hasher = BodyHasher(b"relaxed", limit=limit)
    hasher.feed(body)
    assert hasher.digest() == whole_body_hash(body, Relaxed, limit)


def test_many_blank_lines_before_text_count() -> None:
    """Empty lines held back are hashed once text follows them, however many there are."""
    body = b"a\r\n" + b"\r\n" * 10000 + b"b\r\n"
    hasher = BodyHasher(b"simple")
    for i in range(0, len(body), 7):
        hasher.feed(body[i : i + 7])
    assert hasher.digest() == whole_body_hash(body, Simple)


def test_overlong_line_gives_no_hash() -> None:
    """A line longer than the limit stops hashing: no hash rather than a wrong one."""
    hasher = BodyHasher(b"relaxed")
    for _ in range(20):
        hasher.feed(b"x" * 65536)
    assert hasher.digest() is None


def identities(*keys: SigningKey) -> list[SigningIdentity]:
    return [SigningIdentity("example.org", f"s{index}", key) for index, key in enumerate(keys)]


def sign(message: bytes, cuts: Sequence[int] = (), keys: Sequence[SigningKey] = (RSA,)) -> bytes:
    signer = Signer(lambda header: identities(*keys))
    for piece in chunked(message, cuts):
        signer.feed(piece)
    return signer.signature_fields(now=1796100000)


def dns_for(keys: Sequence[SigningKey]) -> dict[bytes, bytes]:
    return {
        f"s{index}._domainkey.example.org.".encode(): key.dns_record().encode()
        for index, key in enumerate(keys)
    }


@pytest.mark.parametrize("key", [RSA, ED25519], ids=["rsa", "ed25519"])
@pytest.mark.parametrize("cuts", [(), (1, 50, 51, 52, 160, 161, 170), (140, 141, 142)])
def test_our_signature_verifies_with_dkimpy(key: SigningKey, cuts: tuple[int, ...]) -> None:
    """A message we sign, cut anywhere on its way in, verifies with dkimpy's whole-message
    verifier (RSA-SHA256 and Ed25519-SHA256, RFC 8463)."""
    fields = sign(MESSAGE, cuts, [key])
    assert fields.startswith(b"DKIM-Signature: v=1; a=" + key.algorithm)
    records = dns_for([key])
    assert dkim.verify(fields + MESSAGE, dnsfunc=lambda name, timeout=5: records[name])


def test_dual_signature_each_verifies() -> None:
    """With an RSA and an Ed25519 key, both signatures are given and both verify."""
    fields = sign(MESSAGE, keys=[RSA, ED25519])
    records = dns_for([RSA, ED25519])
    signed = dkim.DKIM(fields + MESSAGE)
    dnsfunc = lambda name, timeout=5: records[name]  # noqa: E731
    assert signed.verify(0, dnsfunc=dnsfunc)
    assert signed.verify(1, dnsfunc=dnsfunc)


def test_signature_covers_from_and_cannot_have_one_added() -> None:
    """From, To, Subject, Date and Message-ID are signed once more than they occur, so a
    second From or Subject breaks the signature (RFC 6376 §8.15)."""
    fields = sign(MESSAGE)
    found = re.search(rb"h=([^;]*);", fields.replace(b"\r\n ", b""))
    assert found is not None
    signed = [name.strip() for name in found[1].split(b":")]
    for name in (b"from", b"to", b"subject", b"date", b"message-id"):
        assert signed.count(name) == 2, name
    records = dns_for([RSA])
    for added in (b"From: mallory@example.com\r\n", b"Subject: Pay now\r\n"):
        forged = fields + added + MESSAGE
        assert not dkim.verify(forged, dnsfunc=lambda name, timeout=5: records[name])


def test_many_signed_fields_fold_only_around_colons() -> None:
    """A long h= list is folded at its colons, never inside a field name (RFC 6376 §3.5),
    so a message with a mail program's dozen fields still verifies."""
    message = (
        b"Message-ID: <1@example.org>\r\nDate: Tue, 01 Dec 2026 06:00:00 +0000\r\n"
        b"MIME-Version: 1.0\r\nUser-Agent: Mozilla Thunderbird\r\nContent-Language: en-US\r\n"
        b"To: bob@example.net\r\nCc: carol@example.net\r\nReply-To: alice@example.org\r\n"
        b"From: Alice <alice@example.org>\r\nSubject: Long header list\r\n"
        b"Content-Type: text/plain; charset=UTF-8; format=flowed\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\nHi.\r\n"
    )
    fields = sign(message)
    found = re.search(rb"h=([^;]*);", fields.replace(b"\r\n", b""))
    assert found is not None
    names = [name.strip() for name in found[1].split(b":")]
    assert b"content-transfer-encoding" in names
    assert all(re.fullmatch(rb"[a-z-]+", name) for name in names), names
    records = dns_for([RSA])
    assert dkim.verify(fields + message, dnsfunc=lambda name, timeout=5: records[name])


def test_no_identities_no_signature() -> None:
    """A message whose From domain has no key is not signed."""
    signer = Signer(lambda header: [])
    signer.feed(MESSAGE)
    assert signer.signature_fields(now=0) == b""


def test_signer_sees_the_header_section() -> None:
    """The identities are chosen from the complete header section, whatever the cuts."""
    seen: list[bytes] = []

    def choose(header: bytes) -> list[SigningIdentity]:
        seen.append(header)
        return []

    signer = Signer(choose)
    for piece in chunked(MESSAGE, [3, 40, 141, 142, 143]):
        signer.feed(piece)
    signer.signature_fields(now=0)
    assert seen == [MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 2]]


def test_message_without_body_is_signed() -> None:
    """A message that is all header (no blank line) is signed with the empty body's hash."""
    message = b"From: alice@example.org\r\nSubject: x\r\n"
    fields = sign(message)
    records = dns_for([RSA])
    assert dkim.verify(fields + message, dnsfunc=lambda name, timeout=5: records[name])


def verify(message: bytes, keys: FakeTexts, cuts: Sequence[int] = ()) -> list[DKIMResult]:
    verifier = Verifier(keys, MemoryReactorClock())
    for piece in chunked(message, cuts):
        verifier.feed(piece)
    results: list[DKIMResult] = []
    Deferred.fromCoroutine(verifier.results()).addCallback(results.extend)
    return results


def dkimpy_signed(key: SigningKey, message: bytes = MESSAGE, **options: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if key is ED25519:
        raw = key.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        private = base64.b64encode(raw)
    else:
        private = key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    signature: bytes = dkim.sign(
        message,
        b"sel",
        b"example.net",
        private,
        signature_algorithm=key.algorithm,
        **options,
    )
    return signature + message


@pytest.mark.parametrize("key", [RSA, ED25519], ids=["rsa", "ed25519"])
@pytest.mark.parametrize(
    "canonicalize", [(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")]
)
def test_verifies_what_dkimpy_signed(key: SigningKey, canonicalize: tuple[bytes, bytes]) -> None:
    """Signatures made by dkimpy pass, in every canonicalisation, fed in pieces."""
    message = dkimpy_signed(key, canonicalize=canonicalize)
    keys = FakeTexts({"sel._domainkey.example.net": [key.dns_record().encode()]})
    results = verify(message, keys, cuts=[10, 200, 300, 301, 302])
    assert [(r.result, r.domain, r.selector) for r in results] == [("pass", "example.net", "sel")]
    assert keys.asked == ["sel._domainkey.example.net"]


def test_body_change_fails() -> None:
    """A changed body fails on its body hash."""
    message = dkimpy_signed(RSA).replace(b"Hello  Bob", b"Hello Eve")
    keys = FakeTexts({"sel._domainkey.example.net": [RSA.dns_record().encode()]})
    assert [(r.result, r.reason) for r in verify(message, keys)] == [("fail", "body hash mismatch")]


def test_header_change_fails() -> None:
    """A changed signed header field fails the signature."""
    message = dkimpy_signed(RSA).replace(b"Subject: Hello", b"Subject: Pay now")
    keys = FakeTexts({"sel._domainkey.example.net": [RSA.dns_record().encode()]})
    assert [(r.result, r.reason) for r in verify(message, keys)] == [
        ("fail", "signature does not verify")
    ]


def test_length_tag_allows_appended_text() -> None:
    """With l=, text appended after the signed length still passes (RFC 6376 §3.5)."""
    message = dkimpy_signed(RSA, length=True) + b"appended by a list\r\n"
    keys = FakeTexts({"sel._domainkey.example.net": [RSA.dns_record().encode()]})
    assert [r.result for r in verify(message, keys)] == ["pass"]


def test_missing_key_is_permerror_and_dns_failure_temperror() -> None:
    """No key record is a permanent error; a failed look-up a temporary one."""
    message = dkimpy_signed(RSA)
    assert [r.result for r in verify(message, FakeTexts({}))] == ["permerror"]
    failing = FakeTexts({"sel._domainkey.example.net": LookupFailed("SERVFAIL")})
    assert [(r.result, r.reason) for r in verify(message, failing)] == [
        ("temperror", "key look-up failed: SERVFAIL")
    ]


def test_wrong_key_fails() -> None:
    """A published key that is not the signer's fails the signature."""
    other = parse_key(generate("rsa"))
    keys = FakeTexts({"sel._domainkey.example.net": [other.dns_record().encode()]})
    assert [r.result for r in verify(dkimpy_signed(RSA), keys)] == ["fail"]


def test_rsa_sha1_is_not_accepted() -> None:
    """RFC 8301 §3.1: rsa-sha1 signatures are never valid."""
    message = dkimpy_signed(RSA).replace(b"a=rsa-sha256", b"a=rsa-sha1")
    keys = FakeTexts({"sel._domainkey.example.net": [RSA.dns_record().encode()]})
    assert [(r.result, r.reason) for r in verify(message, keys)] == [
        ("neutral", "rsa-sha1 signatures are not accepted")
    ]
    assert keys.asked == []


def test_broken_signature_field_is_neutral() -> None:
    """A signature field without its required tags cannot be processed: neutral."""
    message = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.net\r\n" + MESSAGE
    assert [r.result for r in verify(message, FakeTexts({}))] == ["neutral"]


def test_unsigned_message_has_no_results() -> None:
    """No signature, no result and no look-up."""
    keys = FakeTexts({})
    assert verify(MESSAGE, keys) == []
    assert keys.asked == []


def test_header_prefix_tells_signatures_apart() -> None:
    """Each result carries the first eight characters of its b= value (RFC 6008)."""
    message = dkimpy_signed(RSA)
    keys = FakeTexts({"sel._domainkey.example.net": [RSA.dns_record().encode()]})
    (result,) = verify(message, keys)
    unfolded = message.replace(b"\r\n ", b"").replace(b"\r\n\t", b"")
    found = re.search(rb"[;\s]b=([A-Za-z0-9+/]{8})", unfolded)
    assert found is not None
    assert result.signature_prefix == found[1].decode()


def test_oversized_header_section_is_not_checked() -> None:
    """A header section over the limit is neither kept nor checked."""
    message = dkimpy_signed(RSA)
    huge = b"X-Filler: " + b"a" * 100 + b"\r\n"
    padding = huge * (MAX_HEADER // len(huge) + 1)
    keys = FakeTexts({"sel._domainkey.example.net": [RSA.dns_record().encode()]})
    assert verify(padding + message, keys) == []


def test_hostile_signature_fields_never_raise() -> None:
    """Fields that make dkimpy itself fail (empty l=, i= without "@", non-ASCII b=, d= with
    an over-long label) and a header section starting with a continuation line give results
    or no signatures, never an exception."""
    base = dkimpy_signed(RSA)
    cases = [
        base.replace(b"; d=example.net", b"; l=; d=example.net", 1),
        base.replace(b"; d=example.net", b"; i=example.net; d=example.net", 1),
        base.replace(b" b=", b" b=\xff\xfe", 1),
        base.replace(b"d=example.net", b"d=" + b"x" * 70 + b".example", 1),
        b" folded first line\r\n" + base,
    ]
    keys = FakeTexts({"sel._domainkey.example.net": [RSA.dns_record().encode()]})
    for message in cases:
        results = verify(message, keys)
        assert all(result.result in ("neutral", "fail", "permerror") for result in results)


def test_signature_without_from_is_ignored() -> None:
    """RFC 6376 §6.1.1: a signature whose h= leaves From out cannot vouch for it."""
    unsigned_from = b"Subject: hello\r\n\r\nbody\r\n"
    signature = dkim.sign(
        unsigned_from, b"sel", b"example.net", pkcs1_pem(RSA), include_headers=[b"subject", b"from"]
    )
    signature = signature.replace(b"h=subject : from", b"h=subject")
    keys = FakeTexts({"sel._domainkey.example.net": [RSA.dns_record().encode()]})
    forged = signature + b"From: CEO <ceo@example.net>\r\n" + unsigned_from
    assert [(r.result, r.reason) for r in verify(forged, keys)] == [
        ("neutral", "From is not signed")
    ]


def test_oversized_rsa_key_is_refused_unread() -> None:
    """RFC 8301 §3.2: keys over 4096 bits are refused before any arithmetic on them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    big = rsa.generate_private_key(public_exponent=65537, key_size=4160)
    public = big.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    keys = FakeTexts({"sel._domainkey.example.net": [record]})
    (result,) = verify(dkimpy_signed(RSA), keys)
    assert (result.result, result.reason) == ("permerror", "RSA key of 4160 bits is too large")


def test_two_signatures_share_one_failed_key_lookup() -> None:
    """Two signatures under one key name both see the failed look-up as temperror."""
    once = dkimpy_signed(RSA)
    twice = once[: once.index(b"From:")] + once
    failing = FakeTexts({"sel._domainkey.example.net": LookupFailed("SERVFAIL")})
    assert [r.result for r in verify(twice, failing)] == ["temperror", "temperror"]
    assert failing.asked == ["sel._domainkey.example.net"]


def test_cancelled_lookups_leave_no_unhandled_errors() -> None:
    """A message abandoned while its key look-up is pending cancels it quietly."""
    import gc

    pending: Deferred[list[bytes]] = Deferred()

    class Waiting:
        async def texts(self, name: str) -> list[bytes]:
            return await pending

    verifier = Verifier(Waiting(), MemoryReactorClock())
    verifier.feed(dkimpy_signed(RSA))
    verifier.cancel()
    del verifier
    gc.collect()
    assert pending.called


def pkcs1_pem(key: SigningKey) -> bytes:
    """The key in the PKCS#1 PEM form dkimpy signs with."""
    from cryptography.hazmat.primitives import serialization

    pem: bytes = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return pem


def test_signing_table_matches_the_from_domain_in_any_form() -> None:
    """Upper case and U-labels find the key configured under the A-label."""
    table = SigningTable(
        [
            SigningIdentity("example.org", "s1", RSA),
            SigningIdentity("xn--bcher-kva.example", "s1", RSA),
        ]
    )
    assert table.for_header(b"From: alice@Example.ORG\r\n")
    assert table.for_header("From: alice@bücher.example\r\n".encode())
    assert not table.for_header(b"From: alice@example.net\r\n")


def test_header_parser_keeps_continuations_and_refuses_strays() -> None:
    """Continuation lines stay with their field, CRLFs included, as dkimpy reads them; a
    first line that continues nothing is refused."""
    header = b"X: a\r\n" + b" \r\n" * 80000 + b"From: b@c\r\n"
    fields = parse_header_fields(header)
    assert fields == [(b"X", b" a\r\n" + b" \r\n" * 80000), (b"From", b" b@c\r\n")]
    assert parse_header_fields(b" x\r\nFrom: a@b\r\n") is None
