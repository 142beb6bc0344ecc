"""Tests for ``mailserver quickstart`` (mailserver.cli_quickstart), run through cli.main.

tests/integration/test_quickstart.py starts the real server on what it writes.
"""

from __future__ import annotations

import errno
import re
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailserver.config import Config, load_config
from mailserver.dkimkeys import load_key
from mailserver.dnsrecords import plan, render
from mailserver.tls import write_self_signed
from mailserver.userdb import SQLiteAccounts, database_path

CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
YEAR = datetime.now(UTC).year
PORTS = "2525,5587,5465,1110,1995"

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command hashes with library defaults (tested in test_passwords); here, cheaply."""
    monkeypatch.setattr("mailserver.passwords.PasswordHasher", lambda: CHEAP_HASHER)


def password_in(out: str) -> str:
    match = re.search(r"\(it will not be shown again\):\n\n    (\S+)\n", out)
    assert match, out
    return match[1]


def files_in(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


def test_writes_a_complete_setup(run: Run, tmp_path: Path) -> None:
    """./mailserver.toml loads and passes check-config: the standard ports on every interface,
    the data directory, the self-signed certificate and both DKIM keys beside it, the address
    as postmaster."""
    status, _, _ = run("quickstart", "you@example.org")
    assert status == 0
    config = load_config(tmp_path / "mailserver.toml")
    assert config.server.hostname == "mail.example.org"
    assert config.server.data_dir == tmp_path / "var"
    assert config.smtp.listen == ("tcp:25",)
    assert config.submission.listen == ("tcp:587", "ssl:465")
    assert config.pop3.listen == ("tcp:110", "ssl:995")
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
    """--loopback binds 127.0.0.1, --ports sets the five ports in order, --hostname the name
    (and the certificate's)."""
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
    assert config.smtp.listen == ("tcp:2525:interface=127.0.0.1",)
    assert config.submission.listen == (
        "tcp:5587:interface=127.0.0.1",
        "ssl:5465:interface=127.0.0.1",
    )
    assert config.pop3.listen == ("tcp:1110:interface=127.0.0.1", "ssl:1995:interface=127.0.0.1")
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
