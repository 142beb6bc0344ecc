"""Tests for ``mailserver tls self-signed`` (mailserver.cli_tls), run through cli.main."""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from mailserver.tls import TLSFiles, load_context

Run = Callable[..., tuple[int, str, str]]


def tls_section(out: str) -> dict[str, str]:
    """The ``[tls]`` table of the configuration lines the command printed."""
    start = out.index("[tls]\n")
    table: dict[str, str] = tomllib.loads(out[start:])["tls"]
    return table


def san(path: Path) -> list[str]:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return extension.value.get_values_for_type(x509.DNSName)


def test_writes_files_in_the_current_directory(run: Run, tmp_path: Path) -> None:
    """By default HOSTNAME.crt and HOSTNAME.key land in the current directory, the key private,
    and the printed [tls] lines name them by absolute path."""
    status, out, _ = run("tls", "self-signed", "mx.example.org")
    assert status == 0
    certificate, key = tmp_path / "mx.example.org.crt", tmp_path / "mx.example.org.key"
    assert f"wrote the certificate {certificate}" in out
    assert f"wrote the private key {key}" in out
    assert tls_section(out) == {"certificate": str(certificate), "private_key": str(key)}
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert san(certificate) == ["mx.example.org"]
    load_context(TLSFiles(certificate, key))


def test_warns_about_trust(run: Run) -> None:
    """A one-line warning says clients will not trust the certificate and where to get one."""
    _, _, err = run("tls", "self-signed", "mx.example.org")
    assert err.count("\n") == 1 and err.startswith("warning: ")
    assert "will not trust a self-signed certificate" in err and "Let's Encrypt" in err


def test_chosen_paths_and_days(run: Run, tmp_path: Path) -> None:
    """--certificate, --private-key and --days are honoured; relative paths become absolute
    (and a path with a quote in it is quoted correctly for TOML)."""
    (tmp_path / 'my "tls"').mkdir()
    status, out, _ = run(
        "tls",
        "self-signed",
        "mx.example.org",
        "--certificate",
        'my "tls"/cert.pem',
        "--private-key",
        'my "tls"/key.pem',
        "--days",
        "7",
    )
    assert status == 0
    section = tls_section(out)
    assert section == {
        "certificate": str(tmp_path / 'my "tls"' / "cert.pem"),
        "private_key": str(tmp_path / 'my "tls"' / "key.pem"),
    }
    certificate = x509.load_pem_x509_certificate(Path(section["certificate"]).read_bytes())
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime == timedelta(days=7, hours=1)


def test_internationalised_hostname(run: Run, tmp_path: Path) -> None:
    """An IDN hostname is written in its A-label form, in the names and in the certificate."""
    status, _, _ = run("tls", "self-signed", "Bücher.Example")
    assert status == 0
    assert san(tmp_path / "xn--bcher-kva.example.crt") == ["xn--bcher-kva.example"]
    assert (tmp_path / "xn--bcher-kva.example.key").exists()


def test_existing_file_refused(run: Run, tmp_path: Path) -> None:
    """An existing key is not overwritten: one line, status 1, nothing written."""
    key = tmp_path / "mx.example.org.key"
    key.write_text("precious")
    status, out, err = run("tls", "self-signed", "mx.example.org")
    assert (status, out) == (1, "")
    assert err == f'mailserver: "{key}" already exists; remove it first\n'
    assert key.read_text() == "precious"
    assert not (tmp_path / "mx.example.org.crt").exists()


def test_missing_directory(run: Run, tmp_path: Path) -> None:
    """A --certificate in a directory that does not exist is one line naming the directory."""
    status, out, err = run(
        "tls", "self-signed", "mx.example.org", "--certificate", "missing/cert.pem"
    )
    assert (status, out) == (1, "")
    assert err == (
        f'mailserver: cannot write "{tmp_path / "missing" / "cert.pem"}": '
        f'no directory "{tmp_path / "missing"}"\n'
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad host"], "not a hostname: invalid domain 'bad host'"),
        (["mx.example.org."], "not a hostname: domain must not end with a dot"),
        (["[192.0.2.1]"], "not a hostname: invalid domain '[192.0.2.1]'"),
        (["mx.example.org", "--days", "0"], "--days: expected a whole number from 1 to 36500"),
        (["mx.example.org", "--days", "ten"], "--days: expected a whole number from 1 to 36500"),
        (["mx.example.org", "--days", "36501"], "--days: expected a whole number from 1 to"),
        (
            ["mx.example.org", "--certificate", "same.pem", "--private-key", "same.pem"],
            "the certificate and the private key need two different files",
        ),
    ],
)
def test_refusals(run: Run, tmp_path: Path, args: list[str], message: str) -> None:
    """A bad hostname, a bad --days or one file for both is one line, status 1, nothing
    written."""
    status, out, err = run("tls", "self-signed", *args)
    assert (status, out) == (1, "")
    assert err.startswith(f"mailserver: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
