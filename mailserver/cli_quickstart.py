"""``mailserver quickstart ADDRESS``: from nothing to a configured server in one command.

It writes a commented configuration for ADDRESS's domain (the five standard listeners, on IPv4
and IPv6, a certificate, an RSA and an Ed25519 DKIM key), creates the domain and the user with
a generated password, and prints the password once, the DNS records to publish and the command
that starts the server.

Everything that can be refused is checked before anything is written, and an existing
configuration file is never touched: running it twice changes nothing the second time. Should
writing fail half-way (a full disk), what this run wrote is removed again.
"""

from __future__ import annotations

import argparse
import errno
import grp
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from mailserver import dnsrecords, durable
from mailserver.address import (
    AddressError,
    normalize,
    normalize_domain,
    parse_address,
    parse_domain,
)
from mailserver.cli import CommandError
from mailserver.cli_dkim import default_selector, key_file_name, key_table, toml_string
from mailserver.config import Config, ConfigError, parse_config
from mailserver.dkimkeys import write_new_key
from mailserver.maildir import maildir_path
from mailserver.tls import TLSFileError, TLSFiles, load_context, write_self_signed
from mailserver.userdb import AccountError, SQLiteAccounts, database_path

__all__ = ["register"]

DEFAULT_CONFIG = "mailserver.toml"
DEFAULT_PORTS = (25, 587, 465, 110, 995)
PORT_NAMES = ("MX", "SUBMISSION", "SUBMISSIONS", "POP3", "POP3S")
# No 0/O, 1/l/I: the password is read off a screen and typed into a mail program.
PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
PASSWORD_GROUPS = 4  # of 5 characters: about 115 bits


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``quickstart`` subcommand."""
    help = "write a configuration, keys and a first user for a new mail domain"
    parser = subparsers.add_parser(
        "quickstart",
        help=help,
        description=help[0].upper()
        + help[1:]
        + ", then print the DNS records to publish and the command that starts the server.",
    )
    parser.add_argument("address", metavar="ADDRESS", help="your address, as in you@example.org")
    parser.add_argument(
        "--config",
        dest="quickstart_config",
        metavar="FILE",
        help=f"the configuration file to write (default: ./{DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--hostname", metavar="NAME", help="this server's name (default: mail.DOMAIN)"
    )
    parser.add_argument(
        "--certificate",
        metavar="FILE",
        help="the TLS certificate chain to use (PEM, e.g. certbot's fullchain.pem); default: "
        "write a self-signed one",
    )
    parser.add_argument(
        "--private-key", metavar="FILE", help="the certificate's private key (privkey.pem)"
    )
    parser.add_argument(
        "--loopback",
        action="store_true",
        help="listen on 127.0.0.1 only (for trying it out) instead of every interface",
    )
    parser.add_argument(
        "--ports",
        metavar=",".join(PORT_NAMES),
        help="the five port numbers, comma-separated (default: "
        + ",".join(map(str, DEFAULT_PORTS))
        + ")",
    )
    parser.set_defaults(run=run_quickstart)


@dataclass(frozen=True)
class _Setup:
    """What the run will write, decided and checked before anything is written."""

    address: str
    domain: str
    hostname: str
    config: Path
    data_dir: Path
    ports: tuple[int, int, int, int, int]
    loopback: bool
    interfaces: tuple[str, ...]  # the addresses every listener binds (listen_addresses)
    certificate: Path
    private_key: Path
    self_signed: bool
    dkim: tuple[tuple[str, str, Path], ...]  # (algorithm, selector, key file)
    warnings: tuple[str, ...] = ()  # about a given certificate, one line each

    @property
    def directory(self) -> Path:
        return self.config.parent


# --- Checking the arguments (no writes) -----------------------------------------------------


def _not_public(name: str) -> str | None:
    """Why other servers cannot look ``name`` (an A-label name) up as a mail domain or host,
    or None: one label (localhost), or a last label that is a number, which makes it an IP
    address (RFC 1123 §2.1: the top-level label is alphabetic)."""
    labels = name.split(".")
    if len(labels) < 2:
        return "it has no dot"
    if labels[-1].isascii() and labels[-1].isdigit():
        return "its last label is a number, so it reads as an IP address (RFC 1123 §2.1)"
    return None


def _address(text: str) -> tuple[str, str]:
    shown = text.strip()
    try:
        mailbox = parse_address(shown)
    except AddressError as error:
        raise CommandError(f"{shown!r}: {error}") from None
    if mailbox.is_address_literal:
        raise CommandError(f"{shown}: give an address in a domain, not an IP address")
    address = mailbox.normalized()
    try:
        # As the configuration will read it back (accounts.postmaster): a local part that
        # needs its quotes does not survive normalisation.
        normalize(address)
    except AddressError as error:
        raise CommandError(
            f"{shown}: a local part that needs quotes cannot be used here ({error} without "
            "them); choose an address that needs none"
        ) from None
    domain = address.rpartition("@")[2]
    if reason := _not_public(domain):
        raise CommandError(
            f"{shown}: {domain} is not a domain other servers can look up: {reason}; give "
            "an address in your own domain"
        )
    return address, domain


def _hostname(text: str) -> str:
    try:
        hostname = normalize_domain(parse_domain(text.strip()))
    except AddressError as error:
        raise CommandError(f"--hostname: {error}") from None
    if reason := _not_public(hostname):
        raise CommandError(
            f"--hostname: {hostname} is not a name other servers can look up: {reason}"
        )
    return hostname


def _ports(text: str | None) -> tuple[int, int, int, int, int]:
    if text is None:
        return DEFAULT_PORTS
    what = f"--ports: expected five port numbers as {','.join(PORT_NAMES)}, got {text!r}"
    parts = [part.strip() for part in text.split(",")]
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if len(parts) != 5 or not all(
        re.fullmatch(r"[0-9]{1,5}", part) and 0 < int(part) < 65536 for part in parts
    ):
        raise CommandError(what)
    mx, submission, submissions, pop3, pop3s = (int(part) for part in parts)
    ports = (mx, submission, submissions, pop3, pop3s)
    if len(set(ports)) != len(ports):
        raise CommandError(f"--ports: each service needs a port of its own, got {text!r}")
    return ports


def _config_path(args: argparse.Namespace) -> Path:
    ours, general = args.quickstart_config, getattr(args, "config", None)
    if ours and general and os.path.abspath(ours) != os.path.abspath(general):
        raise CommandError(f"two configuration files given: {general} and {ours}")
    return Path(os.path.abspath(ours or general or DEFAULT_CONFIG))


def _must_be_new(path: Path, what: str) -> None:
    if os.path.lexists(path):
        raise CommandError(f'{what} "{path}" already exists; nothing changed')


def _prepare(args: argparse.Namespace) -> _Setup:
    """Every check that can refuse the run, before anything is written."""
    address, domain = _address(args.address)
    hostname = _hostname(args.hostname if args.hostname is not None else f"mail.{domain}")
    ports = _ports(args.ports)
    config = _config_path(args)
    if os.path.lexists(config):
        raise CommandError(
            f'"{config}" already exists; quickstart only writes a new configuration '
            "(nothing changed)"
        )
    directory = config.parent
    if not directory.is_dir():
        raise CommandError(f'no directory "{directory}" to write the configuration in')
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CommandError(f'cannot write in "{directory}"; nothing changed')
    data_dir = directory / "var"
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise CommandError(
            f'"{data_dir}" already exists and is not empty: is a server set up here already? '
            "nothing changed"
        )
    try:
        maildir_path(data_dir, address)
    except ValueError:
        raise CommandError(f"{address}: this local part cannot name a mailbox directory") from None
    if (args.certificate is None) != (args.private_key is None):
        raise CommandError("--certificate and --private-key go together")
    now = datetime.now(UTC)
    warnings: list[str] = []
    if args.certificate is not None:
        certificate = Path(os.path.abspath(args.certificate))
        private_key = Path(os.path.abspath(args.private_key))
        try:
            load_context(TLSFiles(certificate, private_key))
        except TLSFileError as error:
            raise CommandError(str(error)) from None
        warnings = _certificate_warnings(certificate, hostname, now)
        self_signed = False
    else:
        certificate, private_key = directory / f"{hostname}.crt", directory / f"{hostname}.key"
        _must_be_new(certificate, "the certificate")
        _must_be_new(private_key, "the private key")
        self_signed = True
    interfaces = listen_addresses(args.loopback)
    _check_ports_free(interfaces, ports)
    dkim = []
    for algorithm in ("rsa", "ed25519"):
        selector = default_selector(algorithm, now)
        path = directory / "dkim" / key_file_name(domain, selector)
        _must_be_new(path, "the DKIM key")
        dkim.append((algorithm, selector, path))
    return _Setup(
        address,
        domain,
        hostname,
        config,
        data_dir,
        ports,
        args.loopback,
        interfaces,
        certificate,
        private_key,
        self_signed,
        tuple(dkim),
        tuple(warnings),
    )


# --- The certificate given ----------------------------------------------------------------


def _certificate_warnings(path: Path, hostname: str, now: datetime) -> list[str]:
    """What makes a given certificate fail clients that check it, though it loads: another
    name, or a validity period that excludes ``now``. Warnings, not refusals: a certificate
    for the right name may be on its way, and the files are replaced in place."""
    try:
        leaf = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError):
        return []  # load_context has just read it; reported there if it were unreadable
    warnings = []
    names = _certificate_names(leaf)
    if not any(_name_matches(name, hostname) for name in names):
        warnings.append(
            f"WARNING: the certificate {path} is for {', '.join(names) or 'no name'}, not "
            f"for {hostname}: mail programs and servers that check it will refuse it"
        )
    if now > leaf.not_valid_after_utc:
        warnings.append(
            f"WARNING: the certificate {path} expired on {leaf.not_valid_after_utc:%Y-%m-%d}: "
            "mail programs will refuse it until it is renewed"
        )
    elif now < leaf.not_valid_before_utc:
        warnings.append(
            f"WARNING: the certificate {path} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: is this machine's clock right?"
        )
    return warnings


def _certificate_names(leaf: x509.Certificate) -> list[str]:
    """The names a client checks (RFC 6125 §6.4.4): the subjectAltName's DNS names, and the
    subject's CN only where there are none."""
    try:
        extension = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = extension.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [
            attribute.value
            for attribute in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if isinstance(attribute.value, str)
        ]
    return [name.lower().rstrip(".") for name in names]


def _name_matches(pattern: str, hostname: str) -> bool:
    """RFC 6125 §6.4.3: a wildcard only as the whole left-most label, for exactly one label."""
    if pattern.startswith("*."):
        first, dot, rest = hostname.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return pattern == hostname


# --- Where to listen ----------------------------------------------------------------------


def _ipv6_binds(address: str) -> bool:
    """Whether an IPv6 socket can be bound to ``address`` here: IPv6 may be missing, or
    switched off in a container."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def _dual_stack() -> bool:
    """Whether an IPv6 socket takes IPv4 connections too, as Twisted leaves it: the default on
    Linux (net.ipv6.bindv6only = 0), not on every system."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        return probe.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def listen_addresses(loopback: bool) -> tuple[str, ...]:
    """The addresses every listener binds: IPv4 and IPv6 wherever the machine has IPv6, as
    the DNS records we print ask for an AAAA record. On every interface that is one socket
    on "::" where it takes IPv4 too, else one per family; with ``loopback``, 127.0.0.1 and
    ::1. (service.py counts each of them, "::" as every local address, as ours when it
    detects an MX that points back at us.)"""
    if loopback:
        return ("127.0.0.1", "::1") if _ipv6_binds("::1") else ("127.0.0.1",)
    if not _ipv6_binds("::"):
        return ("0.0.0.0",)
    return ("::",) if _dual_stack() else ("0.0.0.0", "::")


def _port_taken(interface: str, port: int) -> bool:
    """Whether something listens on ``port`` at ``interface`` already. A port we may not bind
    (below 1024, without root) is not taken: the server binds it as root."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's listeners
        try:
            probe.bind((interface, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def _check_ports_free(interfaces: tuple[str, ...], ports: tuple[int, ...]) -> None:
    """Refuse ports in use now, rather than write a setup whose server fails to start."""
    for port, name in zip(ports, PORT_NAMES, strict=True):
        for interface in interfaces:
            if _port_taken(interface, port):
                raise CommandError(
                    f"port {port} ({name}) is in use on {interface} already: is another mail "
                    "server running? Stop it, or choose other ports with --ports; nothing "
                    "changed"
                )


# --- The configuration file -----------------------------------------------------------------


def _relative(path: Path, directory: Path) -> str:
    try:
        return path.relative_to(directory).as_posix()
    except ValueError:
        return str(path)


def _listen(kind: str, port: int, interface: str) -> str:
    """A tcp or ssl listener on ``port`` at ``interface``: an IPv6 tcp one is written tcp6:
    (the same socket, but the name says it), with the colons escaped as Twisted's endpoint
    syntax wants them."""
    if interface == "0.0.0.0":
        return f"{kind}:{port}"
    if ":" in interface:
        kind = "tcp6" if kind == "tcp" else kind
        interface = interface.replace(":", "\\:")
    return f"{kind}:{port}:interface={interface}"


def _listeners(setup: _Setup, *ports: tuple[str, int]) -> str:
    """Each (kind, port) at each of the setup's addresses, as a TOML list of literal strings
    (the backslashes of an IPv6 address stay as they are), one a line when there are many."""
    items = [
        f"'{_listen(kind, port, interface)}'"
        for kind, port in ports
        for interface in setup.interfaces
    ]
    line = "[" + ", ".join(items) + "]"
    if len(line) <= 80:
        return line
    return "[\n" + "".join(f"    {item},\n" for item in items) + "]"


def _where(setup: _Setup) -> str:
    """Where the listeners are, for the configuration's comments."""
    if setup.loopback:
        return f"on this machine only ({' and '.join(setup.interfaces)}, --loopback)"
    if setup.interfaces == ("::",):
        return 'on every interface, IPv4 and IPv6 (one socket on "::" takes both)'
    if "::" in setup.interfaces:
        return "on every interface, IPv4 and IPv6"
    return "on every IPv4 interface (IPv6 could not be used on this machine)"


def config_text(setup: _Setup, today: str) -> str:
    """The configuration file: the choices made for this server, each with a comment."""
    mx, submission, submissions, pop3, pop3s = setup.ports
    smtp_listen = _listeners(setup, ("tcp", mx))
    submission_listen = _listeners(setup, ("tcp", submission), ("ssl", submissions))
    pop3_listen = _listeners(setup, ("tcp", pop3), ("ssl", pop3s))
    where = _where(setup)
    tls_note = (
        "# A self-signed certificate, which mail programs do not trust: replace it with one\n"
        "# from a certificate authority (e.g. certbot's fullchain.pem and privkey.pem).\n"
        if setup.self_signed
        else ""
    )
    keys = "\n".join(
        key_table(setup.domain, selector, _relative(path, setup.directory))
        for _, selector, path in setup.dkim
    )
    command = dnsrecords.admin_command(str(setup.config))
    config = shlex.quote(str(setup.config))
    return f"""\
# Mail server for {setup.domain}, written by "mailserver quickstart" on {today}.
#
# Only the choices made for this server are here; every other setting keeps the default that
# the reference configuration (conf/mailserver.toml in the source) documents. Relative paths
# are taken from this file's directory. Check the file after a change with
#     mailserver check-config {config}
# and start the server with
#     twistd -n mailserver --config {config}


[server]

# The name this server greets with; {setup.domain}'s MX record points at it, and the TLS
# certificate must name it.
hostname = {toml_string(setup.hostname)}

# Mailboxes, the outbound queue and the user database (users.sqlite3).
data_dir = {toml_string(_relative(setup.data_dir, setup.directory))}


[smtp]

# Mail from other servers for {setup.domain} (the MX). This and every other listener is
# {where}.
listen = {smtp_listen}


[submission]

# Where mail programs hand in the mail they send, after logging in: STARTTLS on the first
# port (RFC 6409), TLS from the first byte on the second (RFC 8314).
listen = {submission_listen}

# Passwords only inside TLS, or from this machine itself.
plaintext_auth = "loopback"


[pop3]

# Where mail programs collect mail: STLS on the first port, TLS from the first byte on the
# second.
listen = {pop3_listen}
plaintext_auth = "loopback"


[tls]

{tls_note}certificate = {toml_string(_relative(setup.certificate, setup.directory))}
private_key = {toml_string(_relative(setup.private_key, setup.directory))}


[accounts]

# Mail to plain <Postmaster> reaches this address.
postmaster = {toml_string(setup.address)}


[dkim]

# Our users' mail from {setup.domain} is signed with both keys: RSA, which every verifier
# checks, and Ed25519 beside it (RFC 8463). Publish each key's DNS record, as
#     {command} dns-records {setup.domain}
# prints it, before the first message goes out.
{keys}"""


# --- Writing, with undo -----------------------------------------------------------------------


@dataclass
class _Undo:
    """What this run created, to remove again if a later step fails."""

    files: list[Path] = field(default_factory=list)
    trees: list[Path] = field(default_factory=list)

    emptied: list[Path] = field(default_factory=list)  # existing directories to empty again

    def directory(self, path: Path, *, fill: bool = False) -> None:
        """Create ``path`` if missing, noting it for removal; with ``fill``, an existing
        (empty) directory is noted to be emptied again."""
        missing = [parent for parent in (path, *path.parents) if not parent.exists()]
        durable.ensure_directory(path)
        if missing:
            self.trees.append(missing[-1])
        elif fill:
            self.emptied.append(path)

    def undo(self) -> None:
        for path in reversed(self.files):
            durable.remove_quietly(path)
        for directory in self.emptied:
            for child in directory.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    durable.remove_quietly(child)
        for tree in reversed(self.trees):
            shutil.rmtree(tree, ignore_errors=True)


@contextmanager
def _undo_on_failure() -> Iterator[_Undo]:
    undo = _Undo()
    try:
        yield undo
    except BaseException:
        undo.undo()
        raise


def _write_new_file(path: Path, text: str) -> None:
    """``text`` as a new file: written and flushed under a temporary name, then linked into
    place, which fails (FileExistsError) rather than replace a file created meanwhile."""
    temporary, fd = durable.write_temporary(path, text.encode("utf-8"))
    try:
        try:
            os.fchmod(fd, 0o644)
            durable.fsync_file(fd)
        finally:
            os.close(fd)
        durable.link(temporary, path)
    finally:
        durable.remove_quietly(temporary)
    durable.fsync_directory(path.parent)


def _write_key(path: Path, algorithm: str) -> None:
    """A new DKIM key at ``path``; a file left half-written by a failure is removed."""
    try:
        write_new_key(path, algorithm)
    except FileExistsError:
        raise  # someone else's file
    except BaseException:
        durable.remove_quietly(path)
        raise


def _make_password() -> str:
    groups = (
        "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(5)) for _ in range(PASSWORD_GROUPS)
    )
    return "-".join(groups)


def _create_accounts(setup: _Setup, password: str, delimiter: str) -> list[str]:
    """The domain, the user and postmaster@DOMAIN; what was added, for the summary."""
    accounts = SQLiteAccounts(database_path(setup.data_dir), delimiter, data_dir=setup.data_dir)
    try:
        added = [f"the domain {accounts.add_domain(setup.domain)}"]
        added.append(f"the user {accounts.add_user(setup.address, password)}")
        postmaster = f"postmaster@{setup.domain}"
        if setup.address != postmaster:
            # RFC 5321 §4.5.1: postmaster@ every domain must reach someone; DMARC reports
            # are addressed there too.
            accounts.add_alias(postmaster, [setup.address])
            added.append(f"the alias {postmaster} -> {setup.address}")
    finally:
        accounts.close()
    return added


def run_quickstart(args: argparse.Namespace) -> int:
    setup = _prepare(args)
    password = _make_password()
    text = config_text(setup, datetime.now(UTC).date().isoformat())
    try:
        with _undo_on_failure() as undo:
            undo.directory(setup.directory / "dkim")
            for algorithm, _, path in setup.dkim:
                _write_key(path, algorithm)
                undo.files.append(path)
            if setup.self_signed:
                write_self_signed(setup.hostname, setup.certificate, setup.private_key)
                undo.files += [setup.certificate, setup.private_key]
            # The file as the server will read it, keys and certificate included.
            config = parse_config(text, str(setup.config), setup.directory)
            undo.directory(setup.data_dir, fill=True)
            added = _create_accounts(setup, password, config.accounts.recipient_delimiter)
            _write_new_file(setup.config, text)  # last: nothing after it can fail
    except FileExistsError as error:
        raise CommandError(f'"{error.filename}" appeared meanwhile; nothing changed') from None
    except ConfigError as error:
        # The file is not written (nor will it be): name the key, not the file.
        problem = error.problems[0].removeprefix(f"{setup.config}: ")
        raise CommandError(
            f"the configuration would not load ({problem}); nothing changed"
        ) from None
    except AccountError as error:
        raise CommandError(f"{error}; nothing changed") from None
    except sqlite3.Error as error:  # "disk I/O error", "database or disk is full", ...
        raise CommandError(
            f'cannot write "{database_path(setup.data_dir)}": {error}; nothing changed'
        ) from None
    except OSError as error:
        raise CommandError(
            f'cannot write "{error.filename or setup.directory}": {error.strerror or error}; '
            "nothing changed"
        ) from None
    _print_summary(setup, config, password, added)
    return 0


# --- What to do next ----------------------------------------------------------------------------


def _print_summary(setup: _Setup, config: Config, password: str, added: list[str]) -> None:
    print(f"wrote the configuration {setup.config}")
    print(f"wrote the DKIM keys {' and '.join(str(path) for _, _, path in setup.dkim)}")
    if setup.self_signed:
        print(
            f"wrote a self-signed certificate {setup.certificate} and its key {setup.private_key}"
        )
    else:
        print(f"using the certificate {setup.certificate}")
        for warning in setup.warnings:
            print(warning, file=sys.stderr)
    print(f"added {', '.join(added)}")
    print()
    print(f"The password of {setup.address} (it will not be shown again):")
    print()
    print(f"    {password}")
    print()
    command = dnsrecords.admin_command(str(setup.config))
    print(f"Change it with: {command} user passwd {setup.address}")
    print()
    print(f"Publish these DNS records for {setup.domain}:")
    print()
    print(dnsrecords.render(dnsrecords.plan(config, setup.domain)), end="")
    print()
    print("Start the server:")
    print()
    print(f"    {_start_command(setup)}")
    if setup.self_signed:
        _warn_self_signed(setup)


def _start_command(setup: _Setup) -> str:
    config = shlex.quote(str(setup.config))
    command = f"twistd -n mailserver --config {config}"
    if min(setup.ports) >= 1024 or os.geteuid() == 0:
        return command
    # Ports below 1024 need root; twistd binds them, then runs as the files' owner.
    user, group = _owner()
    return f"sudo twistd -n --uid {user} --gid {group} mailserver --config {config}"


def _owner() -> tuple[str, str]:
    """The user and group that own what this run wrote, as twistd's --uid and --gid take
    them: by name, or by number where the id has no name (as in many containers)."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return user, group


def _warn_self_signed(setup: _Setup) -> None:
    live = f"/etc/letsencrypt/live/{setup.hostname}"
    lines = [
        "",
        "WARNING: the certificate is self-signed. Mail programs will not trust it: they warn, or",
        "refuse to connect until each user accepts it by hand. Replace it with one from a",
        "certificate authority, for instance Let's Encrypt's with certbot:",
        f"    certbot certonly --standalone -d {setup.hostname}",
        f"then set these in the [tls] section of {setup.config}",
        f'    certificate = "{live}/fullchain.pem"',
        f'    private_key = "{live}/privkey.pem"',
        "and restart the server (later renewals are picked up without a restart).",
    ]
    print("\n".join(lines), file=sys.stderr)
