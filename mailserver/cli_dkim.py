"""``mailserver dkim keygen``: a new DKIM signing key, with the configuration lines and the DNS
record that go with it.

The key file is never overwritten: a selector names one key for good (verifiers fetch the key by
selector, and mail signed with the old key is still being checked after a change), so a new key
takes a new selector. The configuration file is not read, so a key can be made while the
configuration names a key that does not exist yet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailserver import durable
from mailserver.address import AddressError, normalize_domain, parse_domain
from mailserver.cli import CommandError
from mailserver.dkimkeys import ALGORITHMS, write_new_key
from mailserver.dnsrecords import Record, admin_command, render_record

__all__ = [
    "default_selector",
    "key_file_name",
    "key_table",
    "parse_domain_argument",
    "parse_selector",
    "register",
]

# RFC 6376 §3.1: a selector is one or more dot-separated labels (as config.py accepts them).
_SELECTOR = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
_SHORT_NAMES = {"rsa": "rsa", "ed25519": "ed"}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``dkim`` command group."""
    help = "manage DKIM signing keys"
    parser = subparsers.add_parser("dkim", help=help, description=help[0].upper() + help[1:] + ".")
    group = parser.add_subparsers(dest="dkim_command", required=True, metavar="COMMAND")
    help = "write a new signing key and print its configuration lines and DNS record"
    parser = group.add_parser("keygen", help=help, description=help[0].upper() + help[1:] + ".")
    parser.add_argument("domain", metavar="DOMAIN", help="the domain whose mail the key signs")
    parser.add_argument(
        "--selector",
        metavar="S",
        help="the selector, published as S._domainkey.DOMAIN (default: rsa or ed and the year, "
        "as in rsa2026)",
    )
    # A string, checked in run_keygen: argparse's own refusal would not be one line.
    parser.add_argument(
        "--algorithm",
        metavar="rsa|ed25519",
        default="rsa",
        help="rsa (2048 bits, what every verifier checks) or ed25519 (RFC 8463, to add beside "
        "an RSA key); default rsa",
    )
    parser.add_argument(
        "--directory",
        metavar="DIR",
        help="where to write the key (default: dkim/ beside the configuration file, or in the "
        "current directory)",
    )
    parser.set_defaults(run=run_keygen)


def default_selector(algorithm: str, now: datetime | None = None) -> str:
    """``rsa2026`` or ``ed2026``: the algorithm and the year say which key it is at a glance."""
    year = (now or datetime.now(UTC)).year
    return f"{_SHORT_NAMES[algorithm]}{year}"


def key_file_name(domain: str, selector: str) -> str:
    return f"{domain}.{selector}.pem"


def toml_string(text: str) -> str:
    # JSON string escapes are valid in a TOML basic string.
    return json.dumps(text, ensure_ascii=False)


def key_table(domain: str, selector: str, private_key: str) -> str:
    """The ``[[dkim.keys]]`` table for one key, as it goes in the configuration file."""
    return (
        "[[dkim.keys]]\n"
        f"domain = {toml_string(domain)}\n"
        f"selector = {toml_string(selector)}\n"
        f"private_key = {toml_string(private_key)}\n"
    )


def parse_domain_argument(text: str) -> str:
    """The ASCII (A-label) form of a domain given on the command line."""
    try:
        return normalize_domain(parse_domain(text.strip()))
    except AddressError as error:
        raise CommandError(f"{text.strip()!r}: {error}") from None


def parse_selector(text: str, option: str = "--selector") -> str:
    """A selector given with ``option``, in lower case."""
    selector = text.strip().lower()
    if not _SELECTOR.fullmatch(selector):
        raise CommandError(
            f"{option}: {text!r} is not a selector (letters, digits and hyphens, in labels "
            "separated by dots)"
        )
    return selector


def _directory(args: argparse.Namespace) -> Path:
    if args.directory is not None:
        return Path(os.path.abspath(args.directory))
    config = getattr(args, "config", None)
    base = Path(os.path.abspath(config)).parent if config else Path.cwd()
    return base / "dkim"


def _shown(path: Path, args: argparse.Namespace) -> str:
    """The key's path as the configuration file should name it: relative to the file's
    directory when it is inside it (configurations move with their keys), else absolute."""
    config = getattr(args, "config", None)
    if config:
        try:
            return path.relative_to(Path(os.path.abspath(config)).parent).as_posix()
        except ValueError:
            pass
    return str(path)


def _algorithm(text: str) -> str:
    algorithm = text.strip().lower()
    if algorithm not in ALGORITHMS:
        raise CommandError(f"--algorithm: expected rsa or ed25519, got {text!r}")
    return algorithm


def _check_directory(directory: Path) -> None:
    """Refuse a --directory that is, or lies under, something other than a directory (which
    would otherwise be reported as a key file that "already exists")."""
    for path in (directory, *directory.parents):
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise CommandError(f"{path} is not a directory")
            return


def run_keygen(args: argparse.Namespace) -> int:
    domain = parse_domain_argument(args.domain)
    algorithm = _algorithm(args.algorithm)
    selector = parse_selector(args.selector) if args.selector else default_selector(algorithm)
    directory = _directory(args)
    _check_directory(directory)
    path = directory / key_file_name(domain, selector)
    if os.path.lexists(path):
        raise CommandError(f'"{path}" already exists; choose another --selector')
    try:
        # Private keys live here: the directory is the owner's alone, whatever the umask.
        durable.ensure_directory(directory, 0o700)
        signing = write_new_key(path, algorithm)
    except FileExistsError:
        raise CommandError(f'"{path}" already exists; choose another --selector') from None
    except OSError as error:
        raise CommandError(f'cannot write "{error.filename or path}": {error.strerror}') from None
    print(f"wrote the {algorithm} key {path} (readable only by its owner)")
    _print_steps(args, domain, selector, path, signing.dns_record())
    return 0


def _print_steps(
    args: argparse.Namespace, domain: str, selector: str, path: Path, dns_record: str
) -> None:
    """The key's record to publish, the exact command that says when DNS serves it, then the
    lines that make the server sign with it: in that order, so that no message is signed
    with a key verifiers cannot find."""
    record = Record(f"{selector}._domainkey.{domain}", "TXT", dns_record, "DKIM")
    command = admin_command(getattr(args, "config", None))
    check = f"{command} dns-check {domain} --key {selector}={shlex.quote(str(path))}"
    print()
    print("1. Publish this DNS record:")
    print()
    print(render_record(record))
    print()
    print("2. Wait until this says ok for it (a new record can take a while to be seen):")
    print()
    print(f"    {check}")
    print()
    print("3. Then add these lines to the configuration file and restart the server:")
    print()
    print(key_table(domain, selector, _shown(path, args)), end="")
