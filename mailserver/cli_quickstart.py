"""``mailserver quickstart ADDRESS``: from nothing to a configured server in one command.

It writes a commented configuration for ADDRESS's domain (the five standard listeners, a
certificate, an RSA and an Ed25519 DKIM key), creates the domain and the user with a generated
password, and prints the password once, the DNS records to publish and the command that starts
the server.

Everything that can be refused is checked before anything is written, and an existing
configuration file is never touched: running it twice changes nothing the second time. Should
writing fail half-way (a full disk), what this run wrote is removed again.
"""

from __future__ import annotations

import argparse
import getpass
import grp
import os
import secrets
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailserver import dnsrecords, durable
from mailserver.address import AddressError, normalize_domain, parse_address, parse_domain
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
    certificate: Path
    private_key: Path
    self_signed: bool
    dkim: tuple[tuple[str, str, Path], ...]  # (algorithm, selector, key file)

    @property
    def directory(self) -> Path:
        return self.config.parent


# --- Checking the arguments (no writes) -----------------------------------------------------


def _address(text: str) -> tuple[str, str]:
    try:
        mailbox = parse_address(text.strip())
    except AddressError as error:
        raise CommandError(f"{text.strip()!r}: {error}") from None
    if mailbox.is_address_literal:
        raise CommandError(f"{text.strip()}: give an address in a domain, not an IP address")
    address = mailbox.normalized()
    return address, address.rpartition("@")[2]


def _hostname(text: str) -> str:
    try:
        hostname = normalize_domain(parse_domain(text.strip()))
    except AddressError as error:
        raise CommandError(f"--hostname: {error}") from None
    if "." not in hostname:
        raise CommandError(f"--hostname: {hostname} is not a name other servers can look up")
    return hostname


def _ports(text: str | None) -> tuple[int, int, int, int, int]:
    if text is None:
        return DEFAULT_PORTS
    what = f"--ports: expected five port numbers as {','.join(PORT_NAMES)}, got {text!r}"
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 5 or not all(part.isdigit() and 0 < int(part) < 65536 for part in parts):
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
    if args.certificate is not None:
        certificate = Path(os.path.abspath(args.certificate))
        private_key = Path(os.path.abspath(args.private_key))
        try:
            load_context(TLSFiles(certificate, private_key))
        except TLSFileError as error:
            raise CommandError(str(error)) from None
        self_signed = False
    else:
        certificate, private_key = directory / f"{hostname}.crt", directory / f"{hostname}.key"
        _must_be_new(certificate, "the certificate")
        _must_be_new(private_key, "the private key")
        self_signed = True
    now = datetime.now(UTC)
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
        certificate,
        private_key,
        self_signed,
        tuple(dkim),
    )


# --- The configuration file -----------------------------------------------------------------


def _relative(path: Path, directory: Path) -> str:
    try:
        return path.relative_to(directory).as_posix()
    except ValueError:
        return str(path)


def _listen(kind: str, port: int, loopback: bool) -> str:
    return f"{kind}:{port}:interface=127.0.0.1" if loopback else f"{kind}:{port}"


def _strings(items: list[str]) -> str:
    return "[" + ", ".join(toml_string(item) for item in items) + "]"


def config_text(setup: _Setup, today: str) -> str:
    """The configuration file: the choices made for this server, each with a comment."""
    mx, submission, submissions, pop3, pop3s = setup.ports
    smtp_listen = _strings([_listen("tcp", mx, setup.loopback)])
    submission_listen = _strings(
        [_listen("tcp", submission, setup.loopback), _listen("ssl", submissions, setup.loopback)]
    )
    pop3_listen = _strings(
        [_listen("tcp", pop3, setup.loopback), _listen("ssl", pop3s, setup.loopback)]
    )
    where = "on 127.0.0.1 only (--loopback)" if setup.loopback else "on every interface"
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

# Mail from other servers for {setup.domain} (the MX), {where}.
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
        raise CommandError(f"the configuration would not load: {error.problems[0]}") from None
    except AccountError as error:
        raise CommandError(f"{error}; nothing changed") from None
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
    command = f"twistd -n mailserver --config {setup.config}"
    if min(setup.ports) >= 1024 or os.geteuid() == 0:
        return command
    # Ports below 1024 need root; twistd binds them, then runs as the files' owner.
    group = grp.getgrgid(os.getgid()).gr_name
    user = getpass.getuser()
    return f"sudo twistd -n --uid {user} --gid {group} mailserver --config {setup.config}"


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
