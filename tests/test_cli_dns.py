"""Tests for ``mailserver dns-records`` and the reporting of ``dns-check`` (mailserver.cli_dns).

``dns-check`` itself runs the reactor, so it is run as a real command in
tests/integration/test_dns_check.py; here its report and exit status are tested directly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mailserver.cli import main
from mailserver.cli_dns import UNCHECKED_EXIT, exit_status, report
from mailserver.dkimkeys import write_new_key
from mailserver.dnscheck import Finding, Status
from mailserver.userdb import SQLiteAccounts, database_path

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A configuration with an Ed25519 key for example.org and no user database yet."""
    write_new_key(tmp_path / "dkim" / "example.org.ed2026.pem", "ed25519")
    path = tmp_path / "mailserver.toml"
    path.write_text(
        '[server]\nhostname = "mail.example.org"\ndata_dir = "var"\n'
        '[[dkim.keys]]\ndomain = "example.org"\nselector = "ed2026"\n'
        'private_key = "dkim/example.org.ed2026.pem"\n'
    )
    return path


@pytest.fixture
def run(config: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``mailserver --config FILE ARGS...``; returns (status, out, err)."""

    def run(*args: str) -> tuple[int, str, str]:
        status = main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def add_domains(config: Path, *domains: str) -> None:
    data_dir = config.parent / "var"
    accounts = SQLiteAccounts(database_path(data_dir), data_dir=data_dir)
    for domain in domains:
        accounts.add_domain(domain)
    accounts.close()


def test_records_of_every_domain(run: Run, config: Path) -> None:
    """Without DOMAIN: every domain of the user database and of the DKIM keys, sorted, each
    with its own snippet."""
    add_domains(config, "example.com")
    status, out, err = run("dns-records")
    assert (status, err) == (0, "")
    first, second = out.split("\n; DNS records for ")
    assert first.startswith("; DNS records for example.com, mail server mail.example.org.")
    assert f"mailserver --config {config} dkim keygen example.com" in first
    assert second.startswith("example.org,")
    assert "ed2026._domainkey.example.org. 3600 IN TXT" in second


def test_records_of_one_domain(run: Run, config: Path) -> None:
    """DOMAIN, in any case, picks that domain only."""
    add_domains(config, "example.com")
    status, out, _ = run("dns-records", "Example.ORG")
    assert status == 0
    assert out.count("; DNS records for ") == 1 and "example.org.  " in out


def test_does_not_create_the_database(run: Run, config: Path) -> None:
    """Listing domains does not create a user database that is not there."""
    status, _, _ = run("dns-records")
    assert status == 0
    assert not (config.parent / "var").exists()


def test_unknown_domain(run: Run, config: Path) -> None:
    """A domain we know nothing of is refused in one line, with the command that adds it to
    this configuration."""
    status, out, err = run("dns-records", "other.example")
    assert (status, out) == (1, "")
    assert err == (
        "mailserver: unknown domain other.example: it is not in the user database and has no "
        f"[[dkim.keys]] (add it with: mailserver --config {config} domain add other.example)\n"
    )


def test_no_domains_at_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without any domain, the error says how to add one."""
    config = tmp_path / "mailserver.toml"
    config.write_text('[server]\nhostname = "mail.example.org"\n')
    assert main(["--config", str(config), "dns-check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mailserver: no domains yet") and err.count("\n") == 1


def test_hostname_others_cannot_look_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A single-label server.hostname (the embedded default's "localhost") cannot be an MX
    host: one line saying to set server.hostname."""
    config = tmp_path / "mailserver.toml"
    config.write_text('[server]\nhostname = "localhost"\n')
    add_domains(config, "example.org")
    assert main(["--config", str(config), "dns-records"]) == 1
    err = capsys.readouterr().err
    assert 'server.hostname is "localhost"' in err and err.count("\n") == 1


def test_hostname_of_the_embedded_default_with_a_configuration_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --config, where ./mailserver.toml exists (as quickstart leaves it), the
    refusal of the embedded default's "localhost" asks whether --config was meant."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mailserver.toml").write_text('[server]\nhostname = "mail.example.org"\n')
    add_domains(tmp_path / "mailserver.toml", "example.org")  # ./var, as the default has it
    assert main(["dns-records"]) == 1
    err = capsys.readouterr().err
    assert err.endswith("; did you mean --config ./mailserver.toml?\n") and err.count("\n") == 1


def test_key_option_refusals(run: Run, config: Path) -> None:
    """--key needs DOMAIN, SELECTOR=FILE, a selector and a readable key: one line each."""
    key = config.parent / "dkim" / "example.org.ed2026.pem"
    cases = [
        (("--key", f"ed2026={key}"), "--key: give the DOMAIN the key is for"),
        (("example.org", "--key", str(key)), "--key: expected SELECTOR=FILE"),
        (("example.org", "--key", f"bad_one={key}"), "--key: 'bad_one' is not a selector"),
        (("example.org", "--key", "ed2026=missing.pem"), "--key: cannot read"),
    ]
    for args, message in cases:
        status, out, err = run("dns-check", *args)
        assert (status, out) == (1, ""), args
        assert err.startswith(f"mailserver: {message}") and err.count("\n") == 1, err


def test_report_lines() -> None:
    """One line per finding with its status, then a summary that counts what to fix, with
    the command for this configuration."""
    findings = [
        Finding(Status.OK, "MX: fine"),
        Finding(Status.MISSING, "SPF: none"),
        Finding(Status.WRONG, "DKIM x: bad"),
        Finding(Status.NOTE, "DMARC: p=none"),
    ]
    assert report("example.org", findings, "mailserver --config /etc/m.toml") == [
        "example.org:",
        "  ok       MX: fine",
        "  MISSING  SPF: none",
        "  WRONG    DKIM x: bad",
        "  note     DMARC: p=none",
        "  1 missing, 1 wrong: see what to publish with: mailserver --config /etc/m.toml "
        "dns-records example.org",
    ]
    assert report("example.org", findings[:1])[-1] == "  every record is right"
    assert report("example.org", [findings[0], findings[3]])[-1] == (
        "  nothing missing or wrong; 1 note"
    )
    unchecked = [Finding(Status.UNCHECKED, "MX: could not check (timeout)")]
    assert report("example.org", unchecked)[-1] == (
        "  nothing wrong found, but 1 not checked: try again later"
    )


def test_exit_status() -> None:
    """1 for anything missing or wrong; 3 when only look-ups failed; notes do not count."""
    assert exit_status({Status.OK, Status.NOTE}) == 0
    assert exit_status({Status.OK, Status.MISSING}) == 1
    assert exit_status({Status.WRONG, Status.UNCHECKED}) == 1
    assert exit_status({Status.OK, Status.UNCHECKED}) == UNCHECKED_EXIT == 3
