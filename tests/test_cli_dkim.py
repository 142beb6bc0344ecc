"""Tests for ``mailserver dkim keygen`` (mailserver.cli_dkim), run through cli.main."""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dns.zone

from mailserver.cli_dkim import default_selector
from mailserver.config import load_config
from mailserver.dkimkeys import load_key

Run = Callable[..., tuple[int, str, str]]
YEAR = datetime.now(UTC).year


def key_table(out: str) -> dict[str, str]:
    """The [[dkim.keys]] table the command printed."""
    tables: list[dict[str, str]] = tomllib.loads(out[out.index("[[dkim.keys]]") :])["dkim"]["keys"]
    assert len(tables) == 1
    return tables[0]


def published(out: str) -> dict[str, str]:
    """The DNS record the command printed, read by a zone parser: owner -> joined text."""
    start = out.index("._domainkey.")
    start = out.rindex("\n", 0, start) + 1
    end = out.index("\n\n", start)
    zone = dns.zone.from_text(out[start:end], origin=".", check_origin=False, relativize=False)
    return {
        name.to_text(): b"".join(b"".join(rdata.strings) for rdata in rdataset).decode()
        for name, node in zone.nodes.items()
        for rdataset in node.rdatasets
    }


def test_rsa_key_next_to_the_configuration(run: Run, tmp_path: Path) -> None:
    """With --config, the key goes to dkim/ beside it, private, named DOMAIN.SELECTOR.pem with
    the default selector rsaYEAR; the printed table names it relative to the file, and the
    printed record publishes its public key."""
    config = tmp_path / "etc" / "mailserver.toml"
    config.parent.mkdir()
    config.write_text('[server]\nhostname = "mail.example.org"\n')
    status, out, err = run("--config", str(config), "dkim", "keygen", "Example.ORG")
    assert (status, err) == (0, "")
    path = tmp_path / "etc" / "dkim" / f"example.org.rsa{YEAR}.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_table(out) == {
        "domain": "example.org",
        "selector": f"rsa{YEAR}",
        "private_key": f"dkim/example.org.rsa{YEAR}.pem",
    }
    key = load_key(path)
    assert key.algorithm == b"rsa-sha256"
    assert published(out) == {f"rsa{YEAR}._domainkey.example.org.": key.dns_record()}


def test_printed_lines_load(run: Run, tmp_path: Path) -> None:
    """The printed table, appended to the configuration, loads."""
    config = tmp_path / "mailserver.toml"
    config.write_text('[server]\nhostname = "mail.example.org"\n')
    _, out, _ = run(
        "--config", str(config), "dkim", "keygen", "example.org", "--algorithm", "ed25519"
    )
    with config.open("a") as file:
        file.write(out[out.index("[[dkim.keys]]") :])
    (key,) = load_config(config).dkim.keys
    assert (key.domain, key.selector) == ("example.org", f"ed{YEAR}")


def test_ed25519_chosen_selector_and_directory(run: Run, tmp_path: Path) -> None:
    """--algorithm ed25519, --selector and --directory are honoured; a directory outside the
    configuration's is named by absolute path."""
    status, out, _ = run(
        "dkim",
        "keygen",
        "example.org",
        "--algorithm",
        "ed25519",
        "--selector",
        "Mail.2026",
        "--directory",
        "keys",
    )
    assert status == 0
    path = tmp_path / "keys" / "example.org.mail.2026.pem"
    assert load_key(path).algorithm == b"ed25519-sha256"
    assert key_table(out)["private_key"] == str(path)
    assert key_table(out)["selector"] == "mail.2026"
    assert published(out) == {"mail.2026._domainkey.example.org.": load_key(path).dns_record()}


def test_embedded_default_writes_in_the_current_directory(run: Run, tmp_path: Path) -> None:
    """Without --config the key goes to ./dkim/."""
    assert run("dkim", "keygen", "example.org", "--algorithm", "ed25519")[0] == 0
    assert (tmp_path / "dkim" / f"example.org.ed{YEAR}.pem").is_file()


def test_never_overwrites(run: Run, tmp_path: Path) -> None:
    """A second key under the same selector is refused in one line; the first stays."""
    run("dkim", "keygen", "example.org", "--algorithm", "ed25519")
    path = tmp_path / "dkim" / f"example.org.ed{YEAR}.pem"
    before = path.read_bytes()
    status, out, err = run("dkim", "keygen", "example.org", "--algorithm", "ed25519")
    assert (status, out) == (1, "")
    assert err == f'mailserver: "{path}" already exists; choose another --selector\n'
    assert path.read_bytes() == before


def test_refusals(run: Run) -> None:
    """A bad domain, selector or algorithm is one line and exit 1."""
    status, _, err = run("dkim", "keygen", "not a domain")
    assert status == 1 and err.startswith("mailserver: 'not a domain': ")
    status, _, err = run("dkim", "keygen", "example.org", "--selector", "bad_one")
    assert status == 1 and err.startswith("mailserver: --selector: 'bad_one' is not a selector")
    assert err.count("\n") == 1
    status, _, err = run("dkim", "keygen", "example.org", "--algorithm", "dsa")
    assert (status, err) == (1, "mailserver: --algorithm: expected rsa or ed25519, got 'dsa'\n")


def test_default_selector() -> None:
    """rsa or ed, and the year."""
    assert default_selector("rsa", datetime(2031, 5, 1, tzinfo=UTC)) == "rsa2031"
    assert default_selector("ed25519", datetime(2031, 5, 1, tzinfo=UTC)) == "ed2031"


def test_steps_name_the_exact_check(run: Run, tmp_path: Path) -> None:
    """Step 2 is the dns-check command that checks this very key before it is configured,
    with --config when one was given, the key file quoted for the shell."""
    config = tmp_path / "my etc" / "mailserver.toml"
    config.parent.mkdir()
    status, out, _ = run("--config", str(config), "dkim", "keygen", "example.org")
    assert status == 0
    key = f"'{tmp_path}/my etc/dkim/example.org.rsa{YEAR}.pem'"
    assert (
        "2. Wait until this says ok for it (a new record can take a while to be seen):\n\n"
        f"    mailserver --config '{config}' dns-check example.org --key rsa{YEAR}={key}\n\n"
        "3. Then add these lines to the configuration file and restart the server:\n"
    ) in out
    _, out, _ = run("dkim", "keygen", "example.org", "--algorithm", "ed25519")
    key = f"{tmp_path}/dkim/example.org.ed{YEAR}.pem"
    assert f"    mailserver dns-check example.org --key ed{YEAR}={key}\n" in out


def test_directory_that_is_a_file(run: Run, tmp_path: Path) -> None:
    """--directory naming a file, or something under one, is refused as not a directory
    (rather than as a key file that "already exists")."""
    (tmp_path / "file").write_text("x")
    for directory in ("file", "file/sub"):
        status, out, err = run("dkim", "keygen", "example.org", "--directory", directory)
        assert (status, out) == (1, "")
        assert err == f"mailserver: {tmp_path}/file is not a directory\n"


def test_new_directories_are_private(run: Run, tmp_path: Path) -> None:
    """Directories made for the key are the owner's alone (0700), even under umask 000."""
    old = os.umask(0)
    try:
        assert run("dkim", "keygen", "example.org", "--directory", "keys/dkim")[0] == 0
    finally:
        os.umask(old)
    for directory in (tmp_path / "keys", tmp_path / "keys" / "dkim"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
