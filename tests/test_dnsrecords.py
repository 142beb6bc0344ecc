"""Tests for mailserver.dnsrecords: the records a domain should publish, and their zone text."""

from __future__ import annotations

import functools
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest

from mailserver.config import EMBEDDED_DEFAULT, Config, load_config, parse_config
from mailserver.dkimkeys import KeyFileError, generate
from mailserver.dnsrecords import Record, admin_command, plan, render, render_record, shown_path


@functools.cache
def key_pem(name: str, algorithm: str) -> bytes:
    """A key made once per test run (RSA keys take a while to make)."""
    return generate(algorithm)


def write_config(directory: Path, extra: str = "", hostname: str = "mail.example.org") -> Config:
    """A configuration in ``directory`` with an RSA and an Ed25519 key for example.org and an
    RSA key for example.net."""
    for name, algorithm in (
        ("example.org.rsa2026", "rsa"),
        ("example.org.ed2026", "ed25519"),
        ("example.net.rsa2026", "rsa"),
    ):
        path = directory / "dkim" / f"{name}.pem"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(key_pem(name, algorithm))
    keys = "".join(
        f'[[dkim.keys]]\ndomain = "{domain}"\nselector = "{selector}"\n'
        f'private_key = "dkim/{domain}.{selector}.pem"\n'
        for domain, selector in (
            ("example.org", "rsa2026"),
            ("example.org", "ed2026"),
            ("example.net", "rsa2026"),
        )
    )
    path = directory / "mailserver.toml"
    path.write_text(f'{extra}\n[server]\nhostname = "{hostname}"\n{keys}')
    return load_config(path)


def parse_zone(text: str) -> dict[tuple[str, str], list[str]]:
    """The snippet read by dnspython's zone parser: (owner, type) -> record texts, TXT strings
    joined as receivers join them."""
    zone = dns.zone.from_text(text, origin=".", check_origin=False, relativize=False)
    found: dict[tuple[str, str], list[str]] = {}
    for name, node in zone.nodes.items():
        for rdataset in node.rdatasets:
            assert rdataset.ttl == 3600
            kind = dns.rdatatype.to_text(rdataset.rdtype)
            for rdata in rdataset:
                value = b"".join(rdata.strings).decode() if kind == "TXT" else rdata.to_text()
                found.setdefault((name.to_text(), kind), []).append(value)
    return found


def test_records_of_a_domain(tmp_path: Path) -> None:
    """MX to server.hostname, SPF "mx -all", one DKIM record per key of that domain only (not
    example.net's), and DMARC quarantine with reports to the domain's postmaster."""
    config = write_config(tmp_path)
    records = plan(config, "example.org")
    assert records.mx == Record("example.org", "MX", "10 mail.example.org.", records.mx.purpose)
    assert (records.spf.name, records.spf.type, records.spf.value) == (
        "example.org",
        "TXT",
        "v=spf1 mx -all",
    )
    assert [published.record.name for published in records.dkim] == [
        "rsa2026._domainkey.example.org",
        "ed2026._domainkey.example.org",
    ]
    assert records.dkim[0].record.value.startswith("v=DKIM1; k=rsa; p=MII")
    assert records.dkim[1].record.value.startswith("v=DKIM1; k=ed25519; p=")
    assert records.dkim[1].file == "dkim/example.org.ed2026.pem"
    assert (records.dmarc.name, records.dmarc.value) == (
        "_dmarc.example.org",
        "v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@example.org",
    )
    assert all(record.purpose and "\n" not in record.purpose for record in records.records())


def test_address_records_are_placeholders(tmp_path: Path) -> None:
    """The host's A and AAAA records are reminders with placeholder values, since we cannot
    know our public addresses."""
    records = plan(write_config(tmp_path), "example.org")
    assert [(record.name, record.type, record.placeholder) for record in records.addresses] == [
        ("mail.example.org", "A", True),
        ("mail.example.org", "AAAA", True),
    ]
    assert "<" in records.addresses[0].value


def test_snippet_parses_as_a_zone(tmp_path: Path) -> None:
    """The rendered snippet is valid zone-file syntax: absolute names, TTL 3600, the 400-octet
    RSA record split into strings that join back to the value, placeholders left out as
    comments."""
    records = plan(write_config(tmp_path), "example.org")
    text = render(records)
    parsed = parse_zone(text)
    assert parsed == {
        ("example.org.", "MX"): ["10 mail.example.org."],
        ("example.org.", "TXT"): ["v=spf1 mx -all"],
        ("mail.example.org.", "TXT"): ["v=spf1 a -all"],
        ("rsa2026._domainkey.example.org.", "TXT"): [records.dkim[0].record.value],
        ("ed2026._domainkey.example.org.", "TXT"): [records.dkim[1].record.value],
        ("_dmarc.example.org.", "TXT"): [records.dmarc.value],
    }
    assert len(records.dkim[0].record.value) > 255
    assert ";mail.example.org." in text and "IN A " in text


def test_snippet_explains_each_record_and_reverse_dns(tmp_path: Path) -> None:
    """Each record has a comment line above it, and the reverse-DNS advice says the PTR must
    name the host and resolve back."""
    records = plan(write_config(tmp_path), "example.org")
    text = render(records)
    blocks = [block.split("\n", 1) for block in text.split("\n\n")]
    explained = {" ".join(body.split()): comment for comment, body in blocks}
    for record in records.records():
        assert explained[" ".join(render_record(record).split())] == f"; {record.purpose}"
    assert "PTR record of each of this server's addresses must name mail.example.org" in text
    assert "resolve back" in text


def test_long_and_quoted_text(tmp_path: Path) -> None:
    """TXT text is cut into strings of at most 255 octets inside parentheses, and quotes and
    backslashes are escaped (RFC 1035 §5.1)."""
    value = 'a"b\\c' + "x" * 600
    text = render_record(Record("t.example.org", "TXT", value, "test"))
    assert text.count('"') - text.count('\\"') == 6  # three strings
    assert text.startswith("t.example.org. 3600 IN TXT  (") and text.endswith(")")
    assert parse_zone(text) == {("t.example.org.", "TXT"): [value]}


def test_host_outside_the_domain(tmp_path: Path) -> None:
    """A server named in another domain: the address reminder says which zone holds it."""
    config = write_config(tmp_path, hostname="mx.provider.example")
    records = plan(config, "example.org")
    assert "in the zone that holds mx.provider.example" in records.addresses[0].purpose
    assert parse_zone(render(records))[("example.org.", "MX")] == ["10 mx.provider.example."]


def test_domain_without_keys_and_smarthost(tmp_path: Path) -> None:
    """A domain with no DKIM key gets no DKIM record but the command that makes one; with a
    smarthost, the SPF advice says to add the relay."""
    config = write_config(tmp_path, extra='[outbound]\nsmarthost = "relay.isp.example:587"')
    records = plan(config, "example.com")
    assert records.dkim == ()
    text = render(records)
    assert f"mailserver --config {tmp_path}/mailserver.toml dkim keygen example.com" in text
    assert "relay.isp.example" in text and "include:" in text


def test_unreadable_key(tmp_path: Path) -> None:
    """A key file that went missing after the configuration was loaded is a KeyFileError."""
    config = write_config(tmp_path)
    (tmp_path / "dkim" / "example.org.ed2026.pem").unlink()
    with pytest.raises(KeyFileError):
        plan(config, "example.org")


def test_shown_path(tmp_path: Path) -> None:
    """Key files inside the configuration's directory are shown relative to it, others as
    they are."""
    config = write_config(tmp_path)
    assert shown_path(config, tmp_path / "dkim" / "k.pem") == "dkim/k.pem"
    assert shown_path(config, Path("/etc/k.pem")) == "/etc/k.pem"


def test_hints_name_the_configuration_file(tmp_path: Path) -> None:
    """The commands the snippet suggests name the configuration file by absolute path (and
    quoted for the shell), so they act on this server's configuration from any directory;
    the embedded default needs no --config."""
    config = write_config(tmp_path)
    assert render(plan(config, "example.org")).splitlines()[1] == (
        f"; Check them once published with: mailserver --config {tmp_path}/mailserver.toml "
        "dns-check example.org"
    )
    assert admin_command("my dir/m.toml") == (f"mailserver --config '{Path.cwd()}/my dir/m.toml'")
    assert admin_command(None) == "mailserver"
    embedded = parse_config('[server]\nhostname = "mail.example.org"\n', EMBEDDED_DEFAULT, tmp_path)
    assert "with: mailserver dns-check example.org" in render(plan(embedded, "example.org"))
