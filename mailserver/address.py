"""Mail addresses: RFC 5321 paths, RFC 6531 internationalised forms, and our normalisation.

Pure functions, no I/O. The SMTP session parses MAIL and RCPT arguments here; the user
database and the CLI use :func:`parse_address` and :func:`normalize` so that every part of the
server compares addresses the same way.

Normalisation (documented in the README): the domain is compared case-insensitively and in
its IDNA 2008 A-label form (RFC 5891, with the UTS #46 mapping, non-transitional); the local
part is compared case-insensitively (Unicode ``casefold``) after removing the quoting
(``"bob"`` equals ``bob``). The normalised form is a key for comparison and storage, not an
address to write into a message: ``"a b"@example.org`` becomes ``a b@example.org``, which
stays unambiguous because the domain never contains ``@``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2
MAX_PATH = 256  # RFC 5321 §4.5.3.1.3

# RFC 5322 atext, extended by RFC 6531 §3.3 with any non-ASCII character.
# Written as "anything but" so the class stays small when compiled.
_ATEXT = r"[^\x00-\x20\x22\x28\x29\x2c\x2e\x3a-\x3c\x3e\x40\x5b-\x5d\x7f]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
# RFC 5321 qtextSMTP and quoted-pairSMTP, plus non-ASCII (RFC 6531).
_QUOTED_STRING = re.compile(r'"(?:[^\x00-\x1f\x22\x5c\x7f]|\\[\x20-\x7e])*"')
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class AddressError(ValueError):
    """The text is not a valid address; the message says why, for a 501 reply or a CLI error."""


@dataclass(frozen=True)
class Mailbox:
    """An RFC 5321 Mailbox: ``local_part`` unquoted (its meaning), ``domain`` as given."""

    local_part: str
    domain: str

    @property
    def is_address_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def is_ascii(self) -> bool:
        return self.local_part.isascii() and self.domain.isascii()

    def __str__(self) -> str:
        return f"{quote_local_part(self.local_part)}@{self.domain}"

    def normalized(self) -> str:
        """The form used for every comparison and database key (see the module docstring)."""
        return f"{normalize_local_part(self.local_part)}@{normalize_domain(self.domain)}"


def quote_local_part(local_part: str) -> str:
    """Write a local part in its shortest valid form: bare when a dot-string, else quoted."""
    if _DOT_STRING.fullmatch(local_part):
        return local_part
    escaped = local_part.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def normalize_local_part(local_part: str) -> str:
    return local_part.casefold()


def normalize_domain(domain: str) -> str:
    """Lower-case A-label form of a domain; address literals are returned lower-cased.

    U-labels are converted by IDNA 2008 (RFC 5891 §4), not by Python's ``"idna"`` codec,
    which is IDNA 2003: it maps ``ß`` to ``ss`` and drops ZWNJ/ZWJ, so ``straße.example``
    would become ``strasse.example``, another registrable domain with another owner. UTS #46
    non-transitional processing maps case and width first (``BÜCHER`` is ``bücher``) and
    keeps ``ß`` and the joiners where RFC 5892's contextual rules allow them; a name it
    refuses (an emoji, a joiner out of context, a bad A-label among U-labels) raises
    :class:`AddressError` with idna's reason. An ASCII name is only lower-cased.
    """
    if domain.startswith("["):
        return domain.lower()
    if domain.isascii():
        return domain.lower()
    try:
        # The result is already lower case: UTS #46 maps case before encoding.
        return idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except UnicodeError as error:  # idna.IDNAError and its InvalidCodepoint are ones
        raise AddressError(f"invalid internationalised domain {domain!r}: {error}") from error


def parse_domain(text: str) -> str:
    """Check an RFC 5321 Domain (or RFC 6531 U-label domain) and return it unchanged."""
    if not text:
        raise AddressError("empty domain")
    if len(text.encode("utf-8")) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if text.endswith("."):
        raise AddressError("domain must not end with a dot")
    ascii_form = normalize_domain(text)
    labels = ascii_form.split(".")
    if not all(_LDH_LABEL.fullmatch(label) for label in labels):
        raise AddressError(f"invalid domain {text!r}")
    return text


def parse_address_literal(text: str) -> str:
    """Check an RFC 5321 §4.1.3 address literal such as ``[192.0.2.1]`` or ``[IPv6:::1]``."""
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            # RFC 5321 §4.1.3 IPv6-addr has no zone: Python accepts "%zone" with any text in it.
            if ipaddress.IPv6Address(inner[5:]).scope_id is not None:
                raise ValueError("zone identifier")
        else:
            ipaddress.IPv4Address(inner)
    except ValueError as error:
        raise AddressError(f"invalid address literal {text!r}") from error
    return text


def parse_mailbox(text: str) -> Mailbox:
    """Parse ``local@domain`` (RFC 5321 Mailbox, with RFC 6531 UTF-8 allowed)."""
    if text.startswith('"'):
        match = _QUOTED_STRING.match(text)
        if match is None:
            raise AddressError("unterminated or invalid quoted local part")
        raw_local = match.group(0)
        local_part = re.sub(r"\\(.)", r"\1", raw_local[1:-1])
        rest = text[match.end() :]
    else:
        raw_local, at, domain_part = text.rpartition("@")
        if not at:
            raise AddressError("address has no domain")
        if not _DOT_STRING.fullmatch(raw_local):
            raise AddressError(f"invalid local part {raw_local!r}")
        local_part = raw_local
        rest = "@" + domain_part
    if not rest.startswith("@"):
        raise AddressError("address has no domain")
    if len(raw_local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    if not local_part:
        raise AddressError("empty local part")
    domain = rest[1:]
    if domain.startswith("[") and domain.endswith("]"):
        parse_address_literal(domain)
    else:
        parse_domain(domain)
    return Mailbox(local_part, domain)


def parse_address(text: str) -> Mailbox:
    """Parse an address typed by an administrator or written in configuration."""
    return parse_mailbox(text.strip())


def normalize(text: str) -> str:
    """Normalise an address typed by an administrator; raises :class:`AddressError`."""
    return parse_address(text).normalized()


def parse_path(text: str, *, allow_null: bool) -> Mailbox | None:
    """Parse an RFC 5321 Path as found after ``MAIL FROM:`` or ``RCPT TO:``.

    Returns None for the null reverse-path ``<>``. A source route (``<@a,@b:user@c>``) is
    accepted and ignored, as RFC 5321 §4.1.1.3 and Appendix C require. Angle brackets are
    expected; a bare address is tolerated since old clients still send them.
    """
    if len(text.encode("utf-8")) > MAX_PATH:
        raise AddressError("path too long")
    if text.startswith("<"):
        if not text.endswith(">"):
            raise AddressError("missing closing angle bracket")
        inner = text[1:-1]
    else:
        inner = text
    if inner == "":
        if allow_null:
            return None
        raise AddressError("empty path")
    if inner.startswith("@"):
        route, colon, inner = inner.partition(":")
        if not colon:
            raise AddressError("invalid source route")
        for hop in route.split(","):
            if not hop.startswith("@"):
                raise AddressError("invalid source route")
            parse_domain(hop[1:])
    return parse_mailbox(inner)
