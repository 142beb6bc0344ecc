"""The embedded user database: domains, users and aliases in one SQLite file.

The file is ``<data_dir>/users.sqlite3`` (WAL mode, so the admin command can write while the
server reads). Its schema is created on first open and versioned with SQLite's
``user_version`` pragma for future migrations. Every lookup reads the file afresh, so a change
made with ``mailserver user|alias|domain`` takes effect in a running server at once.

How a recipient is resolved (:func:`resolve`, shared with the in-memory twin):

1. The address is normalised (:meth:`mailserver.address.Mailbox.normalized`: domain in
   lower-case IDNA A-label form, local part casefolded, needless quoting removed). An address
   literal (``bob@[192.0.2.1]``) is never one of our domains.
2. A domain that is not in the domain list is not ours: ``NOT_OUR_DOMAIN``.
3. An exact user receives the mail in its own mailbox. An exact alias is expanded (below).
4. Otherwise, when a recipient delimiter is configured (``+`` by default) and occurs in the
   local part, step 3 is tried again with the part before its first occurrence:
   ``bob+lists@example.org`` goes to ``bob@example.org``. An exact user or alias named
   ``bob+lists`` wins over this rule.
5. Otherwise a catch-all alias ``@example.org``, if there is one, is expanded.
6. Otherwise the domain has nobody by that name: ``NO_SUCH_USER``.

Alias expansion: an alias has one or more targets, each an address in one of our domains.
A target is looked up exactly (no subaddress or catch-all rule applies to it): a user is a
mailbox reached; another alias is expanded in turn, up to :data:`MAX_ALIAS_DEPTH` aliases
deep. Each address is expanded at most once; the result is every mailbox reached, each once,
sorted. When no mailbox at all is reached, the answer is ``ALIAS_LOOP`` if some alias led back
to one of its own ancestors (or the chain was too deep), otherwise ``NO_SUCH_USER`` (the
targets no longer exist).

Passwords are stored as argon2id hashes (:mod:`mailserver.passwords`); a hash made with older
parameters is replaced at the next successful login.

Concurrency: :class:`SQLiteAccounts` is synchronous and blocking, for the admin command.
:class:`SQLiteUserDatabase` adds the :class:`~mailserver.interfaces.IUserDatabase` methods,
which run the blocking work on a thread pool; each worker thread keeps its own connection.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailserver import durable
from mailserver.address import (
    AddressError,
    Mailbox,
    normalize_domain,
    normalize_local_part,
    parse_address,
    parse_domain,
)
from mailserver.interfaces import IUserDatabase, Lookup, RecipientLookup
from mailserver.maildir import create_maildir, maildir_path
from mailserver.passwords import Passwords

__all__ = [
    "DATABASE_NAME",
    "MAX_ALIAS_DEPTH",
    "SCHEMA_VERSION",
    "AccountError",
    "AccountLookups",
    "SQLiteAccounts",
    "SQLiteUserDatabase",
    "database_path",
    "parse_login",
    "resolve",
]

DATABASE_NAME = "users.sqlite3"
SCHEMA_VERSION = 1
MAX_ALIAS_DEPTH = 20  # aliases followed in one chain before giving up (answered as a loop)
RECIPIENT_CACHE_SIZE = 10_000  # cached recipient look-ups, at most
RECIPIENT_CACHE_TTL = 30.0  # seconds a cached look-up is trusted, at most
BUSY_TIMEOUT = 10.0  # seconds to wait for another writer (the admin command, a rehash)

_log = Logger()


class AccountError(Exception):
    """An administrative change was refused; the message says why in one line."""


# --- Resolution rules, shared by every backend -------------------------------------------


class AccountLookups(Protocol):
    """The three exact lookups the resolution rules need; all keys are normalised."""

    def is_our_domain(self, domain: str) -> bool: ...

    def is_user(self, address: str) -> bool: ...

    def alias_targets(self, source: str) -> Sequence[str]:
        """Targets of the alias ``source`` (an address, or ``@domain`` for a catch-all)."""
        ...


def resolve(address: Mailbox, lookups: AccountLookups, delimiter: str) -> RecipientLookup:
    """Apply the resolution rules of the module docstring to one envelope recipient."""
    if address.is_address_literal:
        return RecipientLookup(Lookup.NOT_OUR_DOMAIN)
    try:
        normalized = address.normalized()
    except AddressError:
        return RecipientLookup(Lookup.NOT_OUR_DOMAIN)  # cannot be one of our (valid) domains
    local_part, _, domain = normalized.rpartition("@")
    if not lookups.is_our_domain(domain):
        return RecipientLookup(Lookup.NOT_OUR_DOMAIN)
    found = _exact(normalized, lookups)
    if found is None and delimiter:
        base, separator, _ = local_part.partition(normalize_local_part(delimiter))
        if separator and base:
            found = _exact(f"{base}@{domain}", lookups)
    if found is None:
        catch_all = f"@{domain}"
        targets = lookups.alias_targets(catch_all)
        if targets:
            found = _expand(catch_all, targets, lookups)
    return found if found is not None else RecipientLookup(Lookup.NO_SUCH_USER)


def _exact(address: str, lookups: AccountLookups) -> RecipientLookup | None:
    if lookups.is_user(address):
        return RecipientLookup(Lookup.DELIVER, (address,))
    targets = lookups.alias_targets(address)
    if targets:
        return _expand(address, targets, lookups)
    return None


def _expand(source: str, targets: Sequence[str], lookups: AccountLookups) -> RecipientLookup:
    reached: set[str] = set()
    visited = {source}
    looped = False

    def walk(targets: Sequence[str], path: tuple[str, ...]) -> None:
        nonlocal looped
        for target in targets:
            if target in path:
                looped = True  # back to an ancestor: a cycle
                continue
            if target in visited:
                continue  # reached before along another branch; its mailboxes are counted
            visited.add(target)
            if lookups.is_user(target):
                reached.add(target)
                continue
            further = lookups.alias_targets(target)
            if not further:
                continue  # dangling: the target no longer exists
            if len(path) >= MAX_ALIAS_DEPTH:
                looped = True
                continue
            walk(further, (*path, target))

    walk(targets, (source,))
    if reached:
        return RecipientLookup(Lookup.DELIVER, tuple(sorted(reached)))
    return RecipientLookup(Lookup.ALIAS_LOOP if looped else Lookup.NO_SUCH_USER)


def parse_login(login: str) -> str | None:
    """The lookup key for a login: a normalised address, or a casefolded bare local part.

    A login with an ``@`` is an address; one without is a bare local part, which matches a
    user only when exactly one user in any domain has it. Returns None for an invalid login.
    """
    login = login.strip()
    if not login:
        return None
    if "@" in login:
        try:
            mailbox = parse_address(login)
            return None if mailbox.is_address_literal else mailbox.normalized()
        except AddressError:
            return None
    return normalize_local_part(login)


# --- Files on disk --------------------------------------------------------------------------


def database_path(data_dir: Path) -> Path:
    """Where the user database of ``data_dir`` lives."""
    return data_dir / DATABASE_NAME


# --- The SQLite backend ---------------------------------------------------------------------

_SCHEMA = (
    """CREATE TABLE domains (
        name TEXT PRIMARY KEY NOT NULL          -- lower-case A-label
    ) WITHOUT ROWID""",
    """CREATE TABLE users (
        address TEXT PRIMARY KEY NOT NULL,      -- normalised local@domain
        local_part TEXT NOT NULL,               -- normalised, for bare local-part logins
        domain TEXT NOT NULL REFERENCES domains (name),
        password_hash TEXT NOT NULL             -- argon2id PHC string
    )""",
    """CREATE INDEX users_by_local_part ON users (local_part)""",
    """CREATE INDEX users_by_domain ON users (domain)""",
    """CREATE TABLE aliases (
        source TEXT NOT NULL,                   -- normalised local@domain, or @domain (catch-all)
        domain TEXT NOT NULL REFERENCES domains (name),
        target TEXT NOT NULL,                   -- normalised local@domain
        PRIMARY KEY (source, target)
    ) WITHOUT ROWID""",
    """CREATE INDEX aliases_by_domain ON aliases (domain)""",
)


class _ConnectionLookups:
    """:class:`AccountLookups` over one connection, inside the caller's read transaction."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def is_our_domain(self, domain: str) -> bool:
        query = "SELECT 1 FROM domains WHERE name = ?"
        return self._connection.execute(query, (domain,)).fetchone() is not None

    def is_user(self, address: str) -> bool:
        query = "SELECT 1 FROM users WHERE address = ?"
        return self._connection.execute(query, (address,)).fetchone() is not None

    def alias_targets(self, source: str) -> list[str]:
        query = "SELECT target FROM aliases WHERE source = ? ORDER BY target"
        return [row[0] for row in self._connection.execute(query, (source,))]


class SQLiteAccounts:
    """The user database file, with blocking methods: for the admin command and worker threads.

    ``path`` is the SQLite file (see :func:`database_path`); Maildirs are created under
    ``data_dir``, which defaults to the file's directory. Each thread that calls a method
    gets its own connection. ``passwords`` defaults to argon2id with the library's default
    parameters.
    """

    def __init__(
        self,
        path: Path,
        recipient_delimiter: str = "+",
        *,
        data_dir: Path | None = None,
        passwords: Passwords | None = None,
        open_now: bool = True,
    ) -> None:
        self.path = Path(path)
        self.data_dir = Path(data_dir) if data_dir is not None else self.path.parent
        self.recipient_delimiter = recipient_delimiter
        self._passwords = passwords if passwords is not None else Passwords()
        self._local = threading.local()
        if open_now:
            self.open()

    # Connections and transactions.

    def open(self) -> None:
        """Create the file (private to us) and its schema if needed; check the version.

        The server calls this when it starts, after twistd has dropped privileges, so the
        file belongs to the user the server runs as.
        """
        durable.ensure_directory(self.path.parent)
        if not self.path.exists():
            # The hashes are secret: the file, and the -wal/-shm files SQLite derives from
            # its mode, are readable by the server's user only.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        connection = self._connect()
        try:
            version = self._schema_version(connection)
            if version == 0:
                # Persistent in the file; must run outside a transaction.
                connection.execute("PRAGMA journal_mode = WAL")
                # IMMEDIATE, then look again: two processes opening a new file at once
                # create the schema once.
                connection.execute("BEGIN IMMEDIATE")
                try:
                    version = self._schema_version(connection)
                    if version == 0:
                        for statement in _SCHEMA:
                            connection.execute(statement)
                        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                        version = SCHEMA_VERSION
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
            # Migrations from older versions will go here.
            if version > SCHEMA_VERSION:
                raise AccountError(
                    f"{self.path} has schema version {version}, newer than this program's "
                    f"{SCHEMA_VERSION}: upgrade the mail server"
                )
        finally:
            connection.close()

    @staticmethod
    def _schema_version(connection: sqlite3.Connection) -> int:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=True
        )
        connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        connection.execute("PRAGMA foreign_keys = ON")
        return connection

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
        return connection

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction: a consistent snapshot to read, or the write lock to change."""
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the calling thread's connection (others close when their thread ends)."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            connection.close()

    # Lookups (blocking; the server calls them through SQLiteUserDatabase's thread pool).

    def resolve_recipient_sync(self, address: Mailbox) -> RecipientLookup:
        """:func:`resolve` against the current contents of the file, in one snapshot."""
        with self._transaction() as connection:
            return resolve(address, _ConnectionLookups(connection), self.recipient_delimiter)

    def authenticate_sync(self, login: str, password: str) -> str | None:
        """The user's normalised address if ``password`` is right, else None.

        Unknown, ambiguous and invalid logins cost one argon2 verification too (against a
        dummy hash), like a wrong password. A hash with outdated parameters is replaced.
        """
        address, stored_hash = self._find_login(login)
        if not self._passwords.verify(stored_hash, password):
            return None
        if address is None or stored_hash is None:
            return None  # unreachable: verify() refuses a missing hash; this tells mypy
        if self._passwords.needs_rehash(stored_hash):
            self._rehash(address, stored_hash, password)
        return address

    def _find_login(self, login: str) -> tuple[str | None, str | None]:
        key = parse_login(login)
        if key is None:
            return None, None
        with self._transaction() as connection:
            if "@" in key:
                query = "SELECT address, password_hash FROM users WHERE address = ?"
            else:
                query = "SELECT address, password_hash FROM users WHERE local_part = ? LIMIT 2"
            rows = connection.execute(query, (key,)).fetchall()
        if len(rows) != 1:
            return None, None  # unknown, or a bare local part that several users share
        return rows[0][0], rows[0][1]

    def _rehash(self, address: str, old_hash: str, password: str) -> None:
        new_hash = self._passwords.hash(password)
        try:
            with self._transaction(write=True) as connection:
                # Only if unchanged meanwhile: a password set by the admin command wins.
                connection.execute(
                    "UPDATE users SET password_hash = ? WHERE address = ? AND password_hash = ?",
                    (new_hash, address, old_hash),
                )
        except sqlite3.Error:
            # The login itself succeeded; the rehash waits for the next one.
            _log.failure("could not store the rehashed password of {address}", address=address)

    # Administration (blocking; for the admin command). Each refusal raises AccountError.

    def add_domain(self, domain: str) -> str:
        """Add one of our domains; returns its normalised (A-label) name."""
        name = _parse_domain(domain)
        with self._transaction(write=True) as connection:
            if _exists(connection, "SELECT 1 FROM domains WHERE name = ?", name):
                raise AccountError(f"domain {name} already exists")
            connection.execute("INSERT INTO domains (name) VALUES (?)", (name,))
        return name

    def remove_domain(self, domain: str) -> str:
        """Remove a domain that has no users and no aliases left; returns its name."""
        name = _parse_domain(domain)
        with self._transaction(write=True) as connection:
            if not _exists(connection, "SELECT 1 FROM domains WHERE name = ?", name):
                raise AccountError(f"no such domain: {name}")
            users = _count(connection, "SELECT count(*) FROM users WHERE domain = ?", name)
            aliases = _count(
                connection, "SELECT count(DISTINCT source) FROM aliases WHERE domain = ?", name
            )
            if users or aliases:
                left = " and ".join(
                    _plural(count, word)
                    for count, word in ((users, "user"), (aliases, "alias"))
                    if count
                )
                raise AccountError(f"domain {name} still has {left}: remove them first")
            connection.execute("DELETE FROM domains WHERE name = ?", (name,))
        return name

    def list_domains(self) -> list[str]:
        with self._transaction() as connection:
            return [row[0] for row in connection.execute("SELECT name FROM domains ORDER BY 1")]

    def add_user(self, address: str, password: str) -> str:
        """Add a user in an existing domain and create its Maildir; returns its address.

        An existing Maildir (left by a removed user of the same name) is kept and reused.
        """
        normalized, local_part, domain = _parse_account(address)
        try:
            maildir = maildir_path(self.data_dir, normalized)
        except ValueError:
            raise AccountError(
                f"{normalized}: this local part cannot name a mailbox directory"
            ) from None
        _check_password(password)
        # Hash before taking the write lock: it is the slow part.
        password_hash = self._passwords.hash(password)
        with self._transaction(write=True) as connection:
            self._check_domain(connection, domain, normalized)
            if _exists(connection, "SELECT 1 FROM users WHERE address = ?", normalized):
                raise AccountError(f"user {normalized} already exists")
            if _exists(connection, "SELECT 1 FROM aliases WHERE source = ?", normalized):
                raise AccountError(f"{normalized} is an alias: remove the alias first")
            connection.execute(
                "INSERT INTO users (address, local_part, domain, password_hash)"
                " VALUES (?, ?, ?, ?)",
                (normalized, local_part, domain, password_hash),
            )
            # Inside the transaction: if the Maildir cannot be made, the user is not added.
            create_maildir(maildir)
        return normalized

    def remove_user(self, address: str) -> str:
        """Remove a user; its Maildir stays on disk (see :func:`maildir_path`)."""
        normalized = _parse_account(address)[0]
        with self._transaction(write=True) as connection:
            cursor = connection.execute("DELETE FROM users WHERE address = ?", (normalized,))
            if cursor.rowcount == 0:
                raise AccountError(f"no such user: {normalized}")
        return normalized

    def set_password(self, address: str, password: str) -> str:
        """Replace a user's password; returns its address."""
        normalized = _parse_account(address)[0]
        _check_password(password)
        password_hash = self._passwords.hash(password)
        with self._transaction(write=True) as connection:
            cursor = connection.execute(
                "UPDATE users SET password_hash = ? WHERE address = ?", (password_hash, normalized)
            )
            if cursor.rowcount == 0:
                raise AccountError(f"no such user: {normalized}")
        return normalized

    def list_users(self) -> list[str]:
        with self._transaction() as connection:
            return [row[0] for row in connection.execute("SELECT address FROM users ORDER BY 1")]

    def is_user(self, address: str) -> bool:
        """Whether the (normalised) address is a user."""
        with self._transaction() as connection:
            return _ConnectionLookups(connection).is_user(address)

    def is_alias(self, source: str) -> bool:
        """Whether the (normalised) address or ``@domain`` is the source of an alias."""
        with self._transaction() as connection:
            return bool(_ConnectionLookups(connection).alias_targets(source))

    def add_alias(self, source: str, targets: Sequence[str]) -> tuple[str, list[str]]:
        """Add ``source`` → each target; returns the normalised source and targets.

        ``source`` is an address or ``@domain`` (catch-all) in one of our domains and must
        not be a user. Targets are addresses in our domains (forwarding elsewhere needs
        outbound delivery, which does not exist yet); they need not exist yet. All or
        nothing: one bad target refuses the whole command.
        """
        key, domain = _parse_alias_source(source)
        if not targets:
            raise AccountError(f"alias {key}: give at least one target")
        normalized_targets = list(dict.fromkeys(_parse_target(target) for target in targets))
        with self._transaction(write=True) as connection:
            self._check_domain(connection, domain, key)
            if _exists(connection, "SELECT 1 FROM users WHERE address = ?", key):
                raise AccountError(f"{key} is a user: an alias cannot have a user's name")
            for target in normalized_targets:
                if target == key:
                    raise AccountError(f"alias {key} cannot point to itself")
                target_domain = target.rpartition("@")[2]
                if not _exists(connection, "SELECT 1 FROM domains WHERE name = ?", target_domain):
                    raise AccountError(
                        f"target {target} is not in one of our domains: forwarding to other "
                        "domains is not supported yet"
                    )
                if _exists(
                    connection,
                    "SELECT 1 FROM aliases WHERE source = ? AND target = ?",
                    key,
                    target,
                ):
                    raise AccountError(f"alias {key} -> {target} already exists")
            connection.executemany(
                "INSERT INTO aliases (source, domain, target) VALUES (?, ?, ?)",
                [(key, domain, target) for target in normalized_targets],
            )
        return key, normalized_targets

    def remove_alias(self, source: str, target: str | None = None) -> tuple[str, list[str]]:
        """Remove one target of an alias, or all of them; returns the source and those removed."""
        key, _ = _parse_alias_source(source)
        with self._transaction(write=True) as connection:
            if target is None:
                removed = _ConnectionLookups(connection).alias_targets(key)
                if not removed:
                    raise AccountError(f"no such alias: {key}")
                connection.execute("DELETE FROM aliases WHERE source = ?", (key,))
            else:
                normalized_target = _parse_target(target)
                cursor = connection.execute(
                    "DELETE FROM aliases WHERE source = ? AND target = ?", (key, normalized_target)
                )
                if cursor.rowcount == 0:
                    raise AccountError(f"no such alias: {key} -> {normalized_target}")
                removed = [normalized_target]
        return key, sorted(removed)

    def list_aliases(self) -> list[tuple[str, str]]:
        """Every ``(source, target)`` pair, sorted."""
        with self._transaction() as connection:
            query = "SELECT source, target FROM aliases ORDER BY source, target"
            return [(row[0], row[1]) for row in connection.execute(query)]

    def _check_domain(self, connection: sqlite3.Connection, domain: str, subject: str) -> None:
        if not _exists(connection, "SELECT 1 FROM domains WHERE name = ?", domain):
            raise AccountError(f"{subject}: {domain} is not one of our domains")


@implementer(IUserDatabase)
class SQLiteUserDatabase(SQLiteAccounts):
    """:class:`~mailserver.interfaces.IUserDatabase` over the SQLite file.

    Lookups and password checks run on ``threadpool`` and fire their Deferreds in the
    reactor thread. The administration methods inherited from :class:`SQLiteAccounts` block.
    The file is opened by :meth:`open`, which the server calls at start-up.

    Recipient look-ups are cached in memory, keyed by the address as given, for at most
    :data:`RECIPIENT_CACHE_TTL` seconds and only while the database files are unchanged:
    every change (even by the admin command in another process) rewrites the ``-wal`` file
    or the database file, so a ``stat`` of both tells whether a cached answer still holds.
    A hit answers without a trip to the thread pool.
    """

    def __init__(
        self,
        path: Path,
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
        recipient_delimiter: str = "+",
        *,
        data_dir: Path | None = None,
        passwords: Passwords | None = None,
    ) -> None:
        super().__init__(
            path, recipient_delimiter, data_dir=data_dir, passwords=passwords, open_now=False
        )
        self._reactor = reactor
        self._threadpool = threadpool
        self._recipients: dict[Mailbox, tuple[float, object, RecipientLookup]] = {}

    def resolve_recipient(self, address: Mailbox) -> Deferred[RecipientLookup]:
        now = time.monotonic()
        version = self._files_version()
        cached = self._recipients.get(address)
        if cached is not None and cached[1] == version and now - cached[0] < RECIPIENT_CACHE_TTL:
            return succeed(cached[2])

        def remember(lookup: RecipientLookup) -> RecipientLookup:
            if len(self._recipients) >= RECIPIENT_CACHE_SIZE:
                self._recipients.clear()
            # The version read before the query: a change made meanwhile invalidates it.
            self._recipients[address] = (now, version, lookup)
            return lookup

        return deferToThreadPool(
            self._reactor, self._threadpool, self.resolve_recipient_sync, address
        ).addCallback(remember)

    def authenticate(self, login: str, password: str) -> Deferred[str | None]:
        return deferToThreadPool(
            self._reactor, self._threadpool, self.authenticate_sync, login, password
        )

    def _files_version(self) -> object:
        version: list[tuple[int, int, int] | None] = []
        for path in (self.path, self._wal_path):
            try:
                status = os.stat(path)
            except FileNotFoundError:
                version.append(None)
            else:
                version.append((status.st_mtime_ns, status.st_size, status.st_ino))
        return tuple(version)

    @property
    def _wal_path(self) -> str:
        return f"{self.path}-wal"


# --- Helpers for the administration methods -------------------------------------------------


def _exists(connection: sqlite3.Connection, query: str, *parameters: str) -> bool:
    return connection.execute(query, parameters).fetchone() is not None


def _count(connection: sqlite3.Connection, query: str, *parameters: str) -> int:
    return int(connection.execute(query, parameters).fetchone()[0])


def _plural(count: int, word: str) -> str:
    if count == 1:
        return f"{count} {word}"
    return f"{count} {word}es" if word.endswith("s") else f"{count} {word}s"


def _parse_domain(text: str) -> str:
    text = text.strip()
    if text.startswith("["):
        raise AccountError(f"{text}: an address literal cannot be one of our domains")
    try:
        return normalize_domain(parse_domain(text))
    except AddressError as error:
        raise AccountError(f"{text!r}: {error}") from None


def _parse_account(text: str) -> tuple[str, str, str]:
    """``(address, local part, domain)`` of an address naming a user or an alias, normalised."""
    try:
        mailbox = parse_address(text)
    except AddressError as error:
        raise AccountError(f"{text.strip()!r}: {error}") from None
    if mailbox.is_address_literal:
        raise AccountError(f"{text.strip()}: an address literal cannot be one of our domains")
    normalized = mailbox.normalized()
    local_part, _, domain = normalized.rpartition("@")
    return normalized, local_part, domain


def _parse_alias_source(text: str) -> tuple[str, str]:
    """``(source key, domain)``: a normalised address, or ``@domain`` for a catch-all."""
    text = text.strip()
    if text.startswith("@"):
        domain = _parse_domain(text[1:])
        return f"@{domain}", domain
    normalized, _, domain = _parse_account(text)
    return normalized, domain


def _parse_target(text: str) -> str:
    if text.strip().startswith("@"):
        raise AccountError(f"{text.strip()}: a target must be an address, not a catch-all")
    return _parse_account(text)[0]


def _check_password(password: str) -> None:
    if not password:
        raise AccountError("empty password refused")
    if "\n" in password or "\r" in password or "\0" in password:
        # POP3 and SMTP AUTH could never send it.
        raise AccountError("a password cannot contain line breaks or NUL characters")
