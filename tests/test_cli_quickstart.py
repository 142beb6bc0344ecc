"""Tests for ``mailserver quickstart`` (mailserver.cli_quickstart), run through cli.main.

tests/integration/test_quickstart.py starts the real server on what it writes.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import socket
import sqlite3
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailserver import cli_quickstart, service
from mailserver.config import Config, load_config
from mailserver.dkimkeys import load_key
from mailserver.dnsrecords import plan, render
from mailserver.tls import write_self_signed
from mailserver.userdb import SQLiteAccounts, database_path

CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
YEAR = datetime.now(UTC).year
PORTS = "2525,5587,5465,1110,1995"

Run = Callable[..., tuple[int, str, str]]


REAL_PORT_TAKEN = cli_quickstart._port_taken
DUAL = "tcp6:{}:interface=\\:\\:"  # the listener on "::", for IPv4 and IPv6


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command hashes with library defaults (tested in test_passwords); here, cheaply."""
    monkeypatch.setattr("mailserver.passwords.PasswordHasher", lambda: CHEAP_HASHER)


@pytest.fixture(autouse=True)
def network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same machine for every test: IPv6 with dual-stack sockets, every port free (the
    real probes are tested below, and by the scenario test that starts the server)."""
    monkeypatch.setattr(cli_quickstart, "_ipv6_binds", lambda address: True)
    monkeypatch.setattr(cli_quickstart, "_dual_stack", lambda: True)
    monkeypatch.setattr(cli_quickstart, "_port_taken", lambda interface, port: False)


def password_in(out: str) -> str:
    match = re.search(r"\(it will not be shown again\):\n\n    (\S+)\n", out)
    assert match, out
    return match[1]


def files_in(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


def test_writes_a_complete_setup(run: Run, tmp_path: Path) -> None:
    """./mailserver.toml loads and passes check-config: the standard ports on every interface
    (IPv4 and IPv6, one socket for both), the data directory, the self-signed certificate and
    both DKIM keys beside it, the address as postmaster."""
    status, _, _ = run("quickstart", "you@example.org")
    assert status == 0
    config = load_config(tmp_path / "mailserver.toml")
    assert config.server.hostname == "mail.example.org"
    assert config.server.data_dir == tmp_path / "var"
    assert config.smtp.listen == (DUAL.format(25),)
    assert config.submission.listen == (DUAL.format(587), "ssl:465:interface=\\:\\:")
    assert config.pop3.listen == (DUAL.format(110), "ssl:995:interface=\\:\\:")
    assert config.tls.certificate == tmp_path / "mail.example.org.crt"
    assert config.tls.private_key == tmp_path / "mail.example.org.key"
    assert config.accounts.postmaster == "you@example.org"
    keys = {key.selector: key for key in config.dkim.keys}
    assert set(keys) == {f"rsa{YEAR}", f"ed{YEAR}"}
    assert load_key(keys[f"rsa{YEAR}"].private_key).algorithm == b"rsa-sha256"
    assert load_key(keys[f"ed{YEAR}"].private_key).algorithm == b"ed25519-sha256"
    assert keys[f"ed{YEAR}"].private_key == tmp_path / "dkim" / f"example.org.ed{YEAR}.pem"
    for key in keys.values():
        assert stat.S_IMODE(key.private_key.stat().st_mode) == 0o600
    assert run("check-config", "mailserver.toml")[:2] == (0, "mailserver.toml: configuration OK\n")


def test_configuration_is_commented(run: Run, tmp_path: Path) -> None:
    """The file says what wrote it and explains each section."""
    run("quickstart", "you@example.org")
    text = (tmp_path / "mailserver.toml").read_text()
    assert text.startswith('# Mail server for example.org, written by "mailserver quickstart"')
    for section in ("[server]", "[smtp]", "[submission]", "[pop3]", "[tls]", "[accounts]"):
        after = text.split(f"\n{section}\n", 1)[1]
        assert after.lstrip("\n").startswith("#"), section


def test_creates_the_user(run: Run, tmp_path: Path) -> None:
    """The domain, the user with the printed password, and postmaster@ as an alias to it."""
    _, out, _ = run("quickstart", "You@Example.org")
    password = password_in(out)
    assert len(password) >= 20
    data_dir = tmp_path / "var"
    accounts = SQLiteAccounts(database_path(data_dir), data_dir=data_dir)
    try:
        assert accounts.list_domains() == ["example.org"]
        assert accounts.list_users() == ["you@example.org"]
        assert accounts.authenticate_sync("you@example.org", password) == "you@example.org"
        assert accounts.list_aliases() == [("postmaster@example.org", "you@example.org")]
    finally:
        accounts.close()
    assert (data_dir / "mail" / "example.org" / "you" / "new").is_dir()
    assert "added the domain example.org, the user you@example.org, the alias " in out


def test_passwords_differ(run: Run, tmp_path: Path) -> None:
    """Each run makes a new password."""
    first = password_in(run("quickstart", "you@example.org")[1])
    (tmp_path / "b").mkdir()
    second = password_in(run("quickstart", "you@example.org", "--config", "b/m.toml")[1])
    assert first != second


def test_prints_the_dns_records_and_how_to_start(run: Run, tmp_path: Path) -> None:
    """The output ends with the DNS snippet of dns-records and the twistd command; the
    password comes with the notice that it is shown only once."""
    _, out, _ = run("quickstart", "you@example.org", "--ports", PORTS)
    config: Config = load_config(tmp_path / "mailserver.toml")
    assert render(plan(config, "example.org")) in out
    assert "it will not be shown again" in out
    assert out.endswith(
        f"Start the server:\n\n    twistd -n mailserver --config {tmp_path}/mailserver.toml\n"
    )


def test_hints_name_the_configuration(run: Run, tmp_path: Path) -> None:
    """Every command the output and the written file suggest runs on the new configuration:
    --config with its absolute path."""
    _, out, _ = run("quickstart", "you@example.org")
    command = f"mailserver --config {tmp_path}/mailserver.toml"
    assert f"Check them once published with: {command} dns-check example.org\n" in out
    assert f"Change it with: {command} user passwd you@example.org\n" in out
    text = (tmp_path / "mailserver.toml").read_text()
    assert f"#     {command} dns-records example.org\n# prints it" in text


def test_warns_about_the_self_signed_certificate(run: Run) -> None:
    """A WARNING says clients will not trust the certificate and how to get a real one."""
    _, _, err = run("quickstart", "you@example.org")
    assert "WARNING: the certificate is self-signed" in err
    assert "certbot certonly --standalone -d mail.example.org" in err
    assert "/etc/letsencrypt/live/mail.example.org/fullchain.pem" in err


def test_loopback_ports_and_hostname(run: Run, tmp_path: Path) -> None:
    """--loopback binds 127.0.0.1 and ::1, --ports sets the five ports in order, --hostname the
    name (and the certificate's)."""
    status, _, _ = run(
        "quickstart",
        "you@example.org",
        "--loopback",
        "--ports",
        PORTS,
        "--hostname",
        "MX.example.net",
    )
    assert status == 0
    config = load_config(tmp_path / "mailserver.toml")
    assert config.server.hostname == "mx.example.net"
    assert config.smtp.listen == (
        "tcp:2525:interface=127.0.0.1",
        "tcp6:2525:interface=\\:\\:1",
    )
    assert config.submission.listen == (
        "tcp:5587:interface=127.0.0.1",
        "tcp6:5587:interface=\\:\\:1",
        "ssl:5465:interface=127.0.0.1",
        "ssl:5465:interface=\\:\\:1",
    )
    assert config.pop3.listen[2:] == (
        "ssl:1995:interface=127.0.0.1",
        "ssl:1995:interface=\\:\\:1",
    )
    assert service._our_addresses(config.smtp.listen, 2525) == ["127.0.0.1", "::1"]
    assert config.tls.certificate == tmp_path / "mx.example.net.crt"


def test_given_certificate(run: Run, tmp_path: Path) -> None:
    """--certificate and --private-key are used as they are (by absolute path), no certificate
    is written and there is no warning."""
    (tmp_path / "certs").mkdir()
    write_self_signed("mail.example.org", tmp_path / "certs/c.pem", tmp_path / "certs/k.pem")
    status, _, err = run(
        "quickstart",
        "you@example.org",
        "--certificate",
        "certs/c.pem",
        "--private-key",
        "certs/k.pem",
    )
    assert (status, err) == (0, "")
    config = load_config(tmp_path / "mailserver.toml")
    assert config.tls.certificate == tmp_path / "certs" / "c.pem"
    assert not list(tmp_path.glob("*.crt"))


def test_global_config_option(run: Run, tmp_path: Path) -> None:
    """``mailserver --config FILE quickstart`` writes FILE too; two different files are
    refused."""
    (tmp_path / "etc").mkdir()
    assert run("--config", "etc/m.toml", "quickstart", "you@example.org")[0] == 0
    assert (tmp_path / "etc" / "m.toml").is_file() and (tmp_path / "etc" / "var").is_dir()
    status, _, err = run(
        "--config", "a.toml", "quickstart", "you@example.org", "--config", "b.toml"
    )
    assert status == 1 and "two configuration files given" in err


def test_second_run_changes_nothing(run: Run, tmp_path: Path) -> None:
    """With the configuration file there, a second run refuses in one line and writes nothing."""
    run("quickstart", "you@example.org")
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")}
    status, out, err = run("quickstart", "other@example.net")
    assert (status, out) == (1, "")
    assert err == (
        f'mailserver: "{tmp_path}/mailserver.toml" already exists; quickstart only writes a new '
        "configuration (nothing changed)\n"
    )
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")} == before


@pytest.mark.parametrize(
    ("prepare", "args", "message"),
    [
        (lambda d: (d / "mail.example.org.key").write_text("x"), (), "already exists"),
        (
            lambda d: (d / "dkim").mkdir() or (d / "dkim" / f"example.org.ed{YEAR}.pem").touch(),
            (),
            "the DKIM key",
        ),
        (lambda d: (d / "var").mkdir() or (d / "var" / "x").touch(), (), "is not empty"),
        (lambda d: None, ("--certificate", "c.pem"), "go together"),
        (
            lambda d: (d / "c.pem").write_text("x") or (d / "k.pem").write_text("x"),
            ("--certificate", "c.pem", "--private-key", "k.pem"),
            "holds no PEM certificate",
        ),
        (lambda d: None, ("--ports", "25,587,465"), "expected five port numbers"),
        (lambda d: None, ("--ports", "25,25,465,110,995"), "a port of its own"),
        (lambda d: None, ("--ports", "25,587,465,110,99999"), "expected five port numbers"),
        (lambda d: None, ("--hostname", "mail"), "not a name other servers can look up"),
        (lambda d: None, ("--config", "missing/m.toml"), "no directory"),
    ],
)
def test_refusals_write_nothing(
    run: Run,
    tmp_path: Path,
    prepare: Callable[[Path], object],
    args: tuple[str, ...],
    message: str,
) -> None:
    """Whatever is refused is refused in one line before anything is written."""
    prepare(tmp_path)
    before = files_in(tmp_path)
    status, out, err = run("quickstart", "you@example.org", *args)
    assert (status, out) == (1, "")
    assert message in err and err.count("\n") == 1, err
    assert files_in(tmp_path) == before


def test_bad_address(run: Run, tmp_path: Path) -> None:
    """An address that is not one, or an address literal, is refused."""
    status, _, err = run("quickstart", "not-an-address")
    assert status == 1 and err.startswith("mailserver: 'not-an-address': ")
    status, _, err = run("quickstart", "you@[192.0.2.1]")
    assert status == 1 and "not an IP address" in err
    assert files_in(tmp_path) == []


def test_failure_half_way_leaves_nothing(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a write fails after the keys and certificate are written (a full disk), they and
    the data directory are removed again and the error is one line."""

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "var"))

    monkeypatch.setattr("mailserver.cli_quickstart._create_accounts", full)
    status, out, err = run("quickstart", "you@example.org")
    assert (status, out) == (1, "")
    assert err == (
        f'mailserver: cannot write "{tmp_path}/var": No space left on device; nothing changed\n'
    )
    assert files_in(tmp_path) == []


# --- listeners --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ipv6", "dual", "mx", "ours"),
    [
        (True, True, [DUAL.format(25)], ["::"]),
        (True, False, ["tcp:25", DUAL.format(25)], ["0.0.0.0", "::"]),
        (False, False, ["tcp:25"], ["0.0.0.0"]),
    ],
)
def test_listeners_cover_ipv4_and_ipv6(
    run: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ipv6: bool,
    dual: bool,
    mx: list[str],
    ours: list[str],
) -> None:
    """The DNS records ask for AAAA, so the listeners take IPv6 as well as IPv4: one socket on
    "::" where it takes both, one per family where IPv6 sockets are IPv6 only, IPv4 alone
    without IPv6. MX loop detection counts them as every local address."""
    monkeypatch.setattr(cli_quickstart, "_ipv6_binds", lambda address: ipv6)
    monkeypatch.setattr(cli_quickstart, "_dual_stack", lambda: dual)
    assert run("quickstart", "you@example.org")[0] == 0
    config = load_config(tmp_path / "mailserver.toml")
    assert list(config.smtp.listen) == mx
    assert service._our_addresses(config.smtp.listen, 25) == ours
    assert run("check-config", "mailserver.toml")[0] == 0


def test_loopback_without_ipv6(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--loopback on a machine where ::1 cannot be bound listens on 127.0.0.1 alone."""
    monkeypatch.setattr(cli_quickstart, "_ipv6_binds", lambda address: False)
    assert run("quickstart", "you@example.org", "--loopback", "--ports", PORTS)[0] == 0
    config = load_config(tmp_path / "mailserver.toml")
    assert config.smtp.listen == ("tcp:2525:interface=127.0.0.1",)


def test_port_in_use_is_refused(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port something listens on already is refused before anything is written, rather
    than left for the server to fail on."""
    monkeypatch.setattr(cli_quickstart, "_ipv6_binds", lambda address: False)
    monkeypatch.setattr(cli_quickstart, "_port_taken", REAL_PORT_TAKEN)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, out, err = run(
            "quickstart", "you@example.org", "--loopback", "--ports", f"{port},5587,5465,1110,1995"
        )
    assert (status, out) == (1, "")
    assert err == (
        f"mailserver: port {port} (MX) is in use on 127.0.0.1 already: is another mail server "
        "running? Stop it, or choose other ports with --ports; nothing changed\n"
    )
    assert files_in(tmp_path) == []


def test_port_probe() -> None:
    """The probe finds a listening socket, and calls a free port free."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert REAL_PORT_TAKEN("127.0.0.1", port)
    assert not REAL_PORT_TAKEN("127.0.0.1", port)


# --- the user database ----------------------------------------------------------------------


def test_database_error_is_one_line(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite failing to write the user database (a full or failing disk) is one line naming
    the file, and what was written is removed again."""

    def failing(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(cli_quickstart, "SQLiteAccounts", failing)
    status, out, err = run("quickstart", "you@example.org")
    assert (status, out) == (1, "")
    assert err == (
        f'mailserver: cannot write "{tmp_path}/var/users.sqlite3": disk I/O error; '
        "nothing changed\n"
    )
    assert files_in(tmp_path) == []


# --- arguments refused before anything is written -----------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("user@123.123.123.123",),
            "user@123.123.123.123: 123.123.123.123 is not a domain other servers can look up: "
            "its last label is a number, so it reads as an IP address (RFC 1123 §2.1); give an "
            "address in your own domain",
        ),
        (
            ("user@localhost",),
            "user@localhost: localhost is not a domain other servers can look up: it has no "
            "dot; give an address in your own domain",
        ),
        (
            ("you@example.org", "--hostname", "1.2.3.4"),
            "--hostname: 1.2.3.4 is not a name other servers can look up: its last label is a "
            "number, so it reads as an IP address (RFC 1123 §2.1)",
        ),
        (
            ('"quoted local"@example.org',),
            '"quoted local"@example.org: a local part that needs quotes cannot be used here '
            "(invalid local part 'quoted local' without them); choose an address that needs "
            "none",
        ),
        (
            ("you@example.org", "--ports", "²,587,465,110,995"),
            "--ports: expected five port numbers as MX,SUBMISSION,SUBMISSIONS,POP3,POP3S, got "
            "'²,587,465,110,995'",
        ),
    ],
)
def test_refused_up_front(run: Run, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    """Names others cannot look up (no dot, a number as last label), an address the
    configuration could not read back, and ports that are not ASCII digits are refused in one
    line, before any key or certificate is made."""
    status, out, err = run("quickstart", *args)
    assert (status, out, err) == (1, "", f"mailserver: {message}\n")
    assert files_in(tmp_path) == []


def test_configuration_that_would_not_load(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the text written not load after all, the error names the key, not the file
    that was never written, and nothing is left behind."""
    real = cli_quickstart.config_text
    monkeypatch.setattr(
        cli_quickstart, "config_text", lambda *args: real(*args) + "\n[dns]\ntimeout = 0\n"
    )
    status, out, err = run("quickstart", "you@example.org")
    assert (status, out) == (1, "")
    assert err.startswith("mailserver: the configuration would not load (dns.timeout: ")
    assert err.endswith("); nothing changed\n") and "mailserver.toml" not in err
    assert files_in(tmp_path) == []


# --- the start command --------------------------------------------------------------------------


def test_start_command_for_ids_without_names(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Run without root for ports below 1024, the start command names the user and group by
    number when they have no name (as in containers)."""

    def nameless(number: int) -> object:
        raise KeyError(number)

    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    monkeypatch.setattr(os, "getegid", lambda: 8765)
    monkeypatch.setattr(pwd, "getpwuid", nameless)
    monkeypatch.setattr(grp, "getgrgid", nameless)
    status, out, _ = run("quickstart", "you@example.org")
    assert status == 0
    assert out.endswith(
        f"    sudo twistd -n --uid 4321 --gid 8765 mailserver --config {tmp_path}/mailserver.toml\n"
    )


# --- a given certificate ------------------------------------------------------------------------


def certificate_for(
    directory: Path, names: list[str], not_before: datetime, not_after: datetime
) -> tuple[str, str]:
    """A certificate for ``names`` (subjectAltName) valid between the two times, and its key
    (relative file names in ``directory``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    (directory / "c.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return "c.pem", "k.pem"


NOW = datetime.now(UTC)


def test_given_certificate_for_the_name_by_wildcard(run: Run, tmp_path: Path) -> None:
    """A wildcard certificate covers the hostname: no warning; the summary says which
    certificate is used."""
    certificate, key = certificate_for(
        tmp_path, ["*.example.org"], NOW - timedelta(days=1), NOW + timedelta(days=60)
    )
    status, out, err = run(
        "quickstart", "you@example.org", "--certificate", certificate, "--private-key", key
    )
    assert (status, err) == (0, "")
    assert f"using the certificate {tmp_path}/c.pem\n" in out


def test_given_certificate_warnings(run: Run, tmp_path: Path) -> None:
    """A certificate for other names, or expired, is used but warned about, one line each."""
    certificate, key = certificate_for(
        tmp_path,
        ["www.example.org", "*.mail.example.org"],
        NOW - timedelta(days=90),
        NOW - timedelta(days=1),
    )
    status, _, err = run(
        "quickstart", "you@example.org", "--certificate", certificate, "--private-key", key
    )
    assert status == 0
    expired = (NOW - timedelta(days=1)).date().isoformat()
    assert err.splitlines() == [
        f"WARNING: the certificate {tmp_path}/c.pem is for www.example.org, "
        "*.mail.example.org, not for mail.example.org: mail programs and servers that check "
        "it will refuse it",
        f"WARNING: the certificate {tmp_path}/c.pem expired on {expired}: mail programs will "
        "refuse it until it is renewed",
    ]


def test_given_certificate_not_yet_valid(run: Run, tmp_path: Path) -> None:
    """A certificate whose validity starts later is warned about too."""
    certificate, key = certificate_for(
        tmp_path, ["mail.example.org"], NOW + timedelta(days=2), NOW + timedelta(days=90)
    )
    _, _, err = run(
        "quickstart", "you@example.org", "--certificate", certificate, "--private-key", key
    )
    assert err.startswith(f"WARNING: the certificate {tmp_path}/c.pem is not valid before ")
    assert err.endswith("UTC: is this machine's clock right?\n") and err.count("\n") == 1
