"""``mailserver user|alias|domain``: managing the accounts in the user database.

The commands change ``<data_dir>/users.sqlite3`` directly; a running server sees each change
at its next lookup, without a restart. Refusals are reported in one line and exit with 1.
"""

from __future__ import annotations

import argparse
import getpass
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import idna

from mailserver.address import AddressError, normalize
from mailserver.cli import CommandError
from mailserver.cli_config import load_config_for
from mailserver.config import Config
from mailserver.maildir import maildir_path
from mailserver.userdb import AccountError, SQLiteAccounts, database_path

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``user``, ``alias`` and ``domain`` command groups."""
    _register_users(subparsers)
    _register_aliases(subparsers)
    _register_domains(subparsers)


def _group(
    subparsers: argparse._SubParsersAction[Any], name: str, help: str
) -> argparse._SubParsersAction[Any]:
    parser = subparsers.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def _command(
    group: argparse._SubParsersAction[Any], name: str, help: str, run: Handler
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help, description=help + ".")
    parser.set_defaults(run=run)
    return parser


def _add_password_stdin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of prompting",
    )


def _register_users(subparsers: argparse._SubParsersAction[Any]) -> None:
    group = _group(subparsers, "user", "manage users (mailboxes that can log in)")
    parser = _command(
        group, "add", "add a user and create its Maildir (and its domain if new)", run_user_add
    )
    parser.add_argument("address", metavar="ADDRESS")
    _add_password_stdin(parser)
    parser = _command(group, "remove", "remove a user, keeping its Maildir", run_user_remove)
    parser.add_argument("address", metavar="ADDRESS")
    parser = _command(group, "passwd", "change a user's password", run_user_passwd)
    parser.add_argument("address", metavar="ADDRESS")
    _add_password_stdin(parser)
    _command(group, "list", "list the users", run_user_list)


def _register_aliases(subparsers: argparse._SubParsersAction[Any]) -> None:
    group = _group(subparsers, "alias", "manage aliases (addresses that forward to others)")
    parser = _command(
        group,
        "add",
        "make SOURCE (an address, or @DOMAIN for a catch-all) deliver to TARGETs",
        run_alias_add,
    )
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("targets", metavar="TARGET", nargs="+")
    parser = _command(
        group, "remove", "remove one TARGET of an alias, or the whole alias", run_alias_remove
    )
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("target", metavar="TARGET", nargs="?")
    _command(group, "list", "list the aliases, one SOURCE -> TARGET per line", run_alias_list)


def _register_domains(subparsers: argparse._SubParsersAction[Any]) -> None:
    group = _group(subparsers, "domain", "manage the domains we receive mail for")
    parser = _command(group, "add", "add a domain", run_domain_add)
    parser.add_argument("domain", metavar="DOMAIN")
    parser = _command(
        group, "remove", "remove a domain that has no users or aliases", run_domain_remove
    )
    parser.add_argument("domain", metavar="DOMAIN")
    _command(group, "list", "list the domains", run_domain_list)


# --- Opening the database and reporting refusals ------------------------------------------


def _accounts(args: argparse.Namespace) -> AbstractContextManager[SQLiteAccounts]:
    """The user database of the configuration the command line names."""
    return open_accounts(load_config_for(args))


@contextmanager
def open_accounts(config: Config) -> Iterator[SQLiteAccounts]:
    """The user database of the configured data directory; refusals become CommandErrors."""
    data_dir = config.server.data_dir
    path = database_path(data_dir)
    try:
        accounts = SQLiteAccounts(path, config.accounts.recipient_delimiter, data_dir=data_dir)
        try:
            yield accounts
        finally:
            accounts.close()
    except AccountError as error:
        raise CommandError(str(error)) from None
    except sqlite3.Error as error:
        raise CommandError(f"{path}: {error}") from None
    except OSError as error:
        raise CommandError(f"{error.filename or path}: {error.strerror or error}") from None


def _normalize(address: str) -> str:
    try:
        return normalize(address)
    except AddressError as error:
        raise CommandError(f"{address.strip()!r}: {error}") from None


def _read_password(args: argparse.Namespace, address: str) -> str:
    """The new password: one line of standard input, or typed twice at a prompt."""
    if args.password_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        try:
            password = getpass.getpass(f"New password for {address}: ")
            if password and getpass.getpass("Repeat the password: ") != password:
                raise CommandError("the two passwords differ; nothing changed")
        except EOFError:
            raise CommandError("no password given; nothing changed") from None
    if not password:
        raise CommandError("empty password refused; nothing changed")
    return password


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _show_domain(name: str) -> str:
    """``xn--bcher-kva.example (bücher.example)`` for an internationalised domain."""
    if "xn--" not in name:
        return name
    try:
        return f"{name} ({idna.decode(name)})"  # IDNA 2008, as the domain was encoded
    except idna.IDNAError:
        return name


# --- user -----------------------------------------------------------------------------------


def run_user_add(args: argparse.Namespace) -> int:
    address = _normalize(args.address)
    domain = address.rpartition("@")[2]
    with _accounts(args) as accounts:
        # Refuse what we can before asking for a password.
        if accounts.is_user(address):
            raise CommandError(f"user {address} already exists")
        if accounts.is_alias(address):
            raise CommandError(f"{address} is an alias: remove the alias first")
        password = _read_password(args, address)
        new_domain = domain not in accounts.list_domains()
        if new_domain:
            accounts.add_domain(domain)
        try:
            accounts.add_user(address, password)
        except AccountError:
            if new_domain:
                accounts.remove_domain(domain)
            raise
        if new_domain:
            print(f"added domain {_show_domain(domain)}")
        print(f"added user {address}")
    return 0


def run_user_remove(args: argparse.Namespace) -> int:
    with _accounts(args) as accounts:
        address = accounts.remove_user(args.address)
        print(f"removed user {address}")
        print(f"kept its Maildir {maildir_path(accounts.data_dir, address)}")
        for source, target in accounts.list_aliases():
            if target == address:
                _warn(
                    f"alias {source} -> {address} remains (remove it with: "
                    f"mailserver alias remove {source} {address})"
                )
    return 0


def run_user_passwd(args: argparse.Namespace) -> int:
    address = _normalize(args.address)
    with _accounts(args) as accounts:
        if not accounts.is_user(address):
            raise CommandError(f"no such user: {address}")
        accounts.set_password(address, _read_password(args, address))
        print(f"changed the password of {address}")
    return 0


def run_user_list(args: argparse.Namespace) -> int:
    with _accounts(args) as accounts:
        for address in accounts.list_users():
            print(address)
    return 0


# --- alias ----------------------------------------------------------------------------------


def run_alias_add(args: argparse.Namespace) -> int:
    with _accounts(args) as accounts:
        source, targets = accounts.add_alias(args.source, args.targets)
        for target in targets:
            print(f"added alias {source} -> {target}")
        for target in targets:
            if not (accounts.is_user(target) or accounts.is_alias(target)):
                _warn(f"{target} is neither a user nor an alias yet")
    return 0


def run_alias_remove(args: argparse.Namespace) -> int:
    with _accounts(args) as accounts:
        source, removed = accounts.remove_alias(args.source, args.target)
        for target in removed:
            print(f"removed alias {source} -> {target}")
    return 0


def run_alias_list(args: argparse.Namespace) -> int:
    with _accounts(args) as accounts:
        for source, target in accounts.list_aliases():
            print(f"{source} -> {target}")
    return 0


# --- domain ---------------------------------------------------------------------------------


def run_domain_add(args: argparse.Namespace) -> int:
    with _accounts(args) as accounts:
        print(f"added domain {_show_domain(accounts.add_domain(args.domain))}")
    return 0


def run_domain_remove(args: argparse.Namespace) -> int:
    with _accounts(args) as accounts:
        print(f"removed domain {_show_domain(accounts.remove_domain(args.domain))}")
    return 0


def run_domain_list(args: argparse.Namespace) -> int:
    with _accounts(args) as accounts:
        for domain in accounts.list_domains():
            print(domain)
    return 0
