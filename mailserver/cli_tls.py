"""``mailserver tls self-signed``: a certificate to try TLS with before a real one is at hand.

It prints the ``[tls]`` lines that point the configuration at the new files. Refusals (a file
that exists, a missing directory, a bad hostname) are reported in one line and exit with 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mailserver.address import AddressError, normalize_domain, parse_domain
from mailserver.cli import CommandError
from mailserver.tls import write_self_signed

__all__ = ["register"]

MAX_DAYS = 36500  # far enough; a certificate cannot end after the year 9999


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``tls`` command group."""
    help = "manage the server's TLS certificate"
    parser = subparsers.add_parser("tls", help=help, description=_sentence(help))
    group = parser.add_subparsers(dest="tls_command", required=True, metavar="COMMAND")
    help = "write a self-signed certificate and key for testing"
    parser = group.add_parser("self-signed", help=help, description=_sentence(help))
    parser.add_argument("hostname", metavar="HOSTNAME", help="the name clients connect to")
    parser.add_argument(
        "--certificate", metavar="PATH", help="where to write the certificate (HOSTNAME.crt)"
    )
    parser.add_argument(
        "--private-key", metavar="PATH", help="where to write the private key (HOSTNAME.key)"
    )
    # A string, checked in run_self_signed: argparse's own refusal would not be one line.
    parser.add_argument("--days", metavar="N", default="365", help="days of validity (365)")
    parser.set_defaults(run=run_self_signed)


def _sentence(help: str) -> str:
    return help[0].upper() + help[1:] + "."


def _hostname(text: str) -> str:
    """The ASCII form of a domain name, as a certificate's subjectAltName needs it."""
    try:
        return normalize_domain(parse_domain(text))
    except AddressError as error:
        raise CommandError(f"not a hostname: {error}") from None


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:
        raise CommandError(f"--days: expected a whole number from 1 to {MAX_DAYS}, got {text!r}")
    return days


def _toml_string(path: str) -> str:
    # JSON string escapes are valid in a TOML basic string.
    return json.dumps(path, ensure_ascii=False)


def run_self_signed(args: argparse.Namespace) -> int:
    hostname = _hostname(args.hostname)
    days = _days(args.days)
    certificate = Path(os.path.abspath(args.certificate or f"{hostname}.crt"))
    private_key = Path(os.path.abspath(args.private_key or f"{hostname}.key"))
    try:
        write_self_signed(hostname, certificate, private_key, days)
    except FileExistsError as error:
        raise CommandError(f'"{error.filename}" already exists; remove it first') from None
    except FileNotFoundError as error:
        directory = Path(error.filename or certificate).parent
        raise CommandError(f'cannot write "{error.filename}": no directory "{directory}"') from None
    except OSError as error:
        raise CommandError(f'cannot write "{error.filename}": {error.strerror}') from None
    except ValueError as error:
        raise CommandError(str(error)) from None
    print(f"wrote the certificate {certificate} ({hostname}, valid for {days} days)")
    print(f"wrote the private key {private_key} (readable only by its owner)")
    print()
    print("Put these lines in the configuration file:")
    print()
    print("[tls]")
    print(f"certificate = {_toml_string(str(certificate))}")
    print(f"private_key = {_toml_string(str(private_key))}")
    print(
        "warning: clients will not trust a self-signed certificate: fine for testing; for real "
        "use, get one from a certificate authority such as Let's Encrypt",
        file=sys.stderr,
    )
    return 0
