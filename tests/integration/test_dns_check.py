"""``mailserver dns-check`` as a real command against a loopback DNS server.

The server's directory comes from ``server_factory`` (mx.example.org, with ``[dns] resolver``
pointing at the loopback DNS server); its two DKIM keys come from ``mailserver dkim keygen``,
whose printed ``[[dkim.keys]]`` lines are appended to the configuration. The zone publishes
everything right except the Ed25519 key: its record holds another key, which the check must
explain. No mail server process is started; the check only reads the configuration and asks DNS.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
from collections.abc import Iterator

import pytest

from mailserver.dkimkeys import generate, load_key, parse_key
from tests.integration.conftest import PASSWORD
from tests.integration.dns import MX, PTR, TXT, A, LoopbackDNS, Record
from tests.integration.server import MAILSERVER, RunningServer, free_port

pytestmark = pytest.mark.integration

HOST = "mx.example.org"  # the hostname server_factory's configurations give the server
ADDRESS = "192.0.2.25"


def dns_check(server: RunningServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAILSERVER, "--config", str(server.config), "dns-check"],
        capture_output=True,
        text=True,
        cwd=server.directory,
        timeout=60,
    )


def add_key(server: RunningServer, selector: str, algorithm: str) -> None:
    """Make a key with the admin command and add the lines it prints to the configuration."""
    result = server.admin(
        "dkim", "keygen", "example.org", "--selector", selector, "--algorithm", algorithm
    )
    table = result.stdout[result.stdout.index("[[dkim.keys]]") :]
    with server.config.open("a") as file:
        file.write("\n" + table)


@pytest.fixture
def configured(server_factory) -> RunningServer:  # type: ignore[no-untyped-def]
    """A server directory for example.org (user alice) with an RSA and an Ed25519 key; the
    [dns] section is added by each test."""
    server: RunningServer = server_factory()
    server.admin("user", "add", "alice@example.org", password=PASSWORD)
    return server


@pytest.fixture
def zone(configured: RunningServer) -> Iterator[LoopbackDNS]:
    """The loopback DNS server with example.org's records, the Ed25519 one broken."""
    add_key(configured, "rsa1", "rsa")
    add_key(configured, "ed1", "ed25519")
    rsa = load_key(configured.directory / "dkim" / "example.org.rsa1.pem")
    impostor = parse_key(generate("ed25519"))
    records: dict[str, list[Record]] = {
        "example.org": [MX(10, HOST), TXT("v=spf1 mx -all")],
        HOST: [A(ADDRESS), TXT("v=spf1 a -all")],
        ipaddress.ip_address(ADDRESS).reverse_pointer: [PTR(HOST)],
        "rsa1._domainkey.example.org": [TXT(rsa.dns_record())],
        "ed1._domainkey.example.org": [TXT(impostor.dns_record())],
        "_dmarc.example.org": [
            TXT("v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@example.org")
        ],
    }
    server = LoopbackDNS(records, zones=["example.org", "in-addr.arpa"])
    server.start()
    yield server
    server.stop()


def test_explains_the_broken_key(configured: RunningServer, zone: LoopbackDNS) -> None:
    """Every record is found right but the Ed25519 key, which is explained by its file; the
    command exits with 1."""
    with configured.config.open("a") as file:
        file.write(f'\n[dns]\nresolver = ["{zone.address}"]\ntimeout = "10s"\n')
    result = dns_check(configured)
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "example.org:",
        f"  ok       MX: example.org -> {HOST} (preference 10)",
        f"  ok       MX host {HOST} has the address {ADDRESS}",
        f"  ok       reverse DNS: {ADDRESS} -> {HOST} -> {ADDRESS}",
        f'  ok       SPF: "v=spf1 mx -all" allows {HOST} (mx)',
        f'  ok       SPF: "v=spf1 a -all" allows {HOST} (a)',
        "  ok       DKIM rsa1._domainkey.example.org: publishes the key in "
        "dkim/example.org.rsa1.pem",
        "  WRONG    DKIM ed1._domainkey.example.org: the published key is not the one in "
        "dkim/example.org.ed1.pem",
        "  ok       DMARC: p=quarantine at _dmarc.example.org",
        f"  1 wrong: see what to publish with: mailserver --config {configured.config} "
        "dns-records example.org",
    ]


def test_timeouts_are_not_wrong(configured: RunningServer) -> None:
    """A resolver that never answers: every look-up "could not check (timeout)", and exit
    status 3 rather than 1."""
    with configured.config.open("a") as file:
        file.write(f'\n[dns]\nresolver = ["127.0.0.1:{free_port()}"]\ntimeout = "1s"\n')
    result = dns_check(configured)
    assert result.returncode == 3, result.stderr
    assert "could not check (timeout)" in result.stdout
    assert "WRONG" not in result.stdout and "MISSING" not in result.stdout


def test_a_new_key_checked_with_the_command_keygen_prints(
    configured: RunningServer, zone: LoopbackDNS
) -> None:
    """keygen's step 2 is a command that runs as printed: it checks the new key, which is not
    configured yet, and nothing else; MISSING (exit 1) before the record is published, ok
    (exit 0) once DNS serves it."""
    with configured.config.open("a") as file:
        file.write(f'\n[dns]\nresolver = ["{zone.address}"]\ntimeout = "10s"\n')
    made = configured.admin(
        "dkim", "keygen", "example.org", "--selector", "new1", "--algorithm", "ed25519"
    )
    step = made.stdout.split("2. ", 1)[1].split("\n\n")[1].strip()
    assert step.startswith(f"mailserver --config {configured.config} dns-check example.org --key")
    command = [*MAILSERVER, *shlex.split(step)[1:]]

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    result = check()
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "example.org:" and len(lines) == 3
    assert lines[1].startswith("  MISSING  DKIM new1._domainkey.example.org: no key published yet")

    key = load_key(configured.directory / "dkim" / "example.org.new1.pem")
    before = zone.address
    zone.stop()
    zone.records["new1._domainkey.example.org"] = [TXT(key.dns_record())]
    zone.start()
    text = configured.config.read_text()  # the restarted DNS server has a new port
    configured.config.write_text(text.replace(before, zone.address))
    result = check()
    assert (result.returncode, result.stderr) == (0, ""), result.stdout
    assert result.stdout.splitlines() == [
        "example.org:",
        "  ok       DKIM new1._domainkey.example.org: publishes the key in "
        "dkim/example.org.new1.pem",
        "  every record is right",
    ]
