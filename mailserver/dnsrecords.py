"""The DNS records a domain needs so that its mail reaches us and the mail we send is trusted.

Pure: from the configuration and one domain, the records to publish, each with the reason it is
there, and a zone-file snippet of them. Nothing here asks DNS (:mod:`mailserver.dnscheck` compares
these records with what is published); the only I/O is reading the DKIM key files.

The choices, which ``dns-check`` holds published records to:

- **MX** ``DOMAIN. MX 10 HOSTNAME.``: one host, this server (RFC 5321 §5.1).
- **A/AAAA** for HOSTNAME: we cannot know our public addresses from inside (NAT, several
  interfaces), so these are commented-out reminders with placeholder values.
- **SPF** ``v=spf1 mx -all`` (RFC 7208): our users' mail always leaves from this server, which is
  the domain's MX host, so ``mx`` covers all of it and nothing else may send. ``-all`` rather
  than ``~all``: DMARC needs an aligned pass and treats softfail like fail anyway, while ``-all``
  lets receivers without DMARC refuse forgeries outright; mail forwarded elsewhere loses its SPF
  pass either way and keeps its DKIM signature, which carries DMARC.
- **DKIM** ``SELECTOR._domainkey.DOMAIN TXT`` for each configured key of the domain (RFC 6376
  §3.6.2.1; RSA and Ed25519 side by side, RFC 8463).
- **DMARC** ``_dmarc.DOMAIN TXT "v=DMARC1; p=quarantine; adkim=r; aspf=r;
  rua=mailto:postmaster@DOMAIN"`` (RFC 7489): ``p=none`` would protect nothing; ``quarantine``
  rather than ``reject`` because a mailing list or forwarder that breaks our signature then sends
  the message to spam, where it can still be found, instead of bouncing it. Relaxed alignment
  (the default, written out) lets mail from subdomains align. Aggregate reports go to the
  postmaster of the domain itself, an address that must exist anyway (RFC 5321 §4.5.1) and needs
  no authorisation record (RFC 7489 §7.1).
- **Reverse DNS** is not in the domain's zone but with whoever gives out the server's addresses:
  advice only, as a comment.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailserver.config import EMBEDDED_DEFAULT, Config, DKIMKey
from mailserver.dkimkeys import SigningKey, load_key

__all__ = [
    "TTL",
    "DomainRecords",
    "PublishedKey",
    "Record",
    "admin_command",
    "plan",
    "published_key",
    "render",
    "render_record",
    "shown_path",
]

TTL = 3600  # an hour: short enough to correct a mistake the same day
MX_PREFERENCE = 10
MAX_STRING = 255  # octets in one <character-string> (RFC 1035 §3.3)


@dataclass(frozen=True)
class Record:
    """One resource record to publish.

    ``value`` is the record data in zone-file form, except for TXT records, where it is the
    text itself (unquoted, not split). A ``placeholder`` record's value describes what to put
    there; it is rendered commented out.
    """

    name: str  # the owner name: lower case, no trailing dot
    type: str
    value: str
    purpose: str  # one line for the comment above the record
    placeholder: bool = False


@dataclass(frozen=True)
class PublishedKey:
    """A configured DKIM key and the TXT record that publishes it."""

    key: DKIMKey
    signing: SigningKey
    file: str  # the key file as the operator knows it (see shown_path)
    record: Record


@dataclass(frozen=True)
class DomainRecords:
    """Everything ``domain`` should publish for mail handled by ``hostname``."""

    domain: str
    hostname: str
    mx: Record
    addresses: tuple[Record, ...]
    spf: Record
    helo_spf: Record  # for the server's own name, which bounces are checked against
    dkim: tuple[PublishedKey, ...]
    dmarc: Record
    advice: tuple[str, ...]  # what no record of the zone can say, one comment line each
    command: str = "mailserver"  # the admin command for this configuration (admin_command)

    def records(self) -> tuple[Record, ...]:
        return (
            self.mx,
            *self.addresses,
            self.spf,
            self.helo_spf,
            *(published.record for published in self.dkim),
            self.dmarc,
        )


def admin_command(source: str | None) -> str:
    """The admin command as the hints we print must spell it to act on the configuration
    file ``source``: with ``--config`` and the file's absolute path, so that it works when
    copied into any shell in any directory; plain ``mailserver`` for the embedded default."""
    if source is None or source == EMBEDDED_DEFAULT:
        return "mailserver"
    return f"mailserver --config {shlex.quote(os.path.abspath(source))}"


def shown_path(config: Config, path: Path) -> str:
    """``path`` relative to the configuration file's directory when it lies inside it (as the
    file most likely names it), else as it is."""
    if config.source == EMBEDDED_DEFAULT:
        return str(path)
    base = Path(os.path.abspath(config.source)).parent
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _in_zone(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


def plan(config: Config, domain: str) -> DomainRecords:
    """The records for ``domain`` (an A-label name, lower case) under ``config``.

    Reads the domain's DKIM key files; raises :class:`~mailserver.dkimkeys.KeyFileError` when
    one cannot be used.
    """
    hostname = config.server.hostname
    command = admin_command(config.source)
    mx = Record(
        domain,
        "MX",
        f"{MX_PREFERENCE} {hostname}.",
        f"mail for {domain} goes to this server, {hostname}",
    )
    where = "" if _in_zone(hostname, domain) else f" (in the zone that holds {hostname})"
    addresses = (
        Record(
            hostname,
            "A",
            "<this server's public IPv4 address>",
            f"{hostname} needs its address records{where}: fill in this server's public "
            "addresses and uncomment",
            placeholder=True,
        ),
        Record(
            hostname,
            "AAAA",
            "<this server's public IPv6 address, if it has one>",
            f"{hostname}'s IPv6 address, if it has one",
            placeholder=True,
        ),
    )
    spf = Record(
        domain,
        "TXT",
        "v=spf1 mx -all",
        f"SPF: only {domain}'s MX host ({hostname}) sends its mail",
    )
    helo_spf = Record(
        hostname,
        "TXT",
        "v=spf1 a -all",
        f"SPF for {hostname} itself{where}: bounces and delivery notices leave with an empty "
        "envelope sender and are checked against it (RFC 7208 section 2.3)",
    )
    dkim = tuple(
        published_key(config, key, load_key(key.private_key))
        for key in config.dkim.keys
        if key.domain == domain
    )
    dmarc = Record(
        f"_dmarc.{domain}",
        "TXT",
        f"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@{domain}",
        f"DMARC: mail in {domain}'s name that fails SPF and DKIM goes to spam; "
        f"reports to postmaster@{domain}",
    )
    advice = [
        f"Reverse DNS: the PTR record of each of this server's addresses must name {hostname},",
        "which must resolve back to that address; many receivers refuse mail without it.",
        "Whoever gives out the addresses (the hosting provider) sets PTR records, not this zone.",
    ]
    if config.outbound.smarthost is not None:
        advice += [
            f"outbound.smarthost is set: mail leaves through {config.outbound.smarthost.host},",
            "not from this server; add what its operator asks for (often an include:) to the",
            "SPF record, before -all.",
        ]
    if not dkim:
        advice += [
            f"{domain} has no DKIM key: make one with: {command} dkim keygen {domain}",
        ]
    return DomainRecords(
        domain, hostname, mx, addresses, spf, helo_spf, dkim, dmarc, tuple(advice), command
    )


def published_key(config: Config, key: DKIMKey, signing: SigningKey) -> PublishedKey:
    """``key`` with its record; its file named as the operator knows it (shown_path)."""
    file = shown_path(config, key.private_key)
    record = Record(
        f"{key.selector}._domainkey.{key.domain}",
        "TXT",
        signing.dns_record(),
        f"DKIM: the public half of {file} ({signing.key_type}), selector {key.selector}",
    )
    return PublishedKey(key, signing, file, record)


# --- Zone-file text (RFC 1035 §5.1) -------------------------------------------------------


def _character_strings(text: str) -> list[str]:
    """``text`` as quoted <character-string>s of at most 255 octets each (RFC 1035 §3.3.14;
    RFC 7208 §3.3 and RFC 6376 §3.6.2.2 join them back without spaces)."""
    data = text.encode("utf-8")
    chunks = [data[start : start + MAX_STRING] for start in range(0, len(data), MAX_STRING)]
    return ['"' + "".join(_escape(octet) for octet in chunk) + '"' for chunk in chunks or [b""]]


def _escape(octet: int) -> str:
    if octet in b'"\\':
        return "\\" + chr(octet)
    if 0x20 <= octet < 0x7F:
        return chr(octet)
    return f"\\{octet:03d}"  # RFC 1035 §5.1: \DDD


def render_record(record: Record, width: int = 0) -> str:
    """One record in zone-file syntax (a TXT value over 255 octets split inside parentheses),
    commented out when it is a placeholder; ``width`` pads the owner name to align columns."""
    owner = f"{record.name}.".ljust(width)
    head = f"{owner} {TTL} IN {record.type:<4}"
    if record.type == "TXT":
        strings = _character_strings(record.value)
        if len(strings) == 1:
            line = f"{head} {strings[0]}"
        else:
            indent = " " * (len(head) + 3)
            rest = "".join(f"\n{indent}{string}" for string in strings[1:])
            line = f"{head} ( {strings[0]}{rest} )"
    else:
        line = f"{head} {record.value}"
    if record.placeholder:
        return "\n".join(";" + part for part in line.split("\n"))
    return line


def _comment(lines: Iterable[str]) -> list[str]:
    return [f"; {line}" for line in lines]


def render(records: DomainRecords) -> str:
    """A zone-file snippet for the domain: every record with a comment saying why, absolute
    names, TTL 3600, and the advice that has no record as comments. Ends with a newline."""
    width = max(len(record.name) + 1 for record in records.records())
    lines = [
        f"; DNS records for {records.domain}, mail server {records.hostname}.",
        f"; Check them once published with: {records.command} dns-check {records.domain}",
    ]
    for record in records.records():
        lines += ["", *_comment([record.purpose]), render_record(record, width)]
    lines += ["", *_comment(records.advice)]
    return "\n".join(lines) + "\n"
