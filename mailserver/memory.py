"""In-memory twins of the contracts in :mod:`mailserver.interfaces`, for tests.

Each twin passes ``verifyObject`` for its interface and answers with already-fired Deferreds,
so protocol tests need no reactor, thread or file. The twins follow the same rules as the real
backends by sharing their code (the user database twin uses :func:`mailserver.userdb.resolve`).
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from mailserver.address import Mailbox, normalize, normalize_domain
from mailserver.interfaces import (
    IMailbox,
    IMailboxStore,
    IMailStore,
    IUserDatabase,
    MailboxInUse,
    MailboxUnavailable,
    MessageGone,
    MessageInfo,
    RecipientLookup,
)
from mailserver.queue.record import QueueRecord
from mailserver.spool import Spool
from mailserver.userdb import parse_login, resolve

__all__ = ["MemoryMailStore", "MemoryMailboxStore", "MemoryUserDatabase"]


def _alias_key(source: str) -> str:
    source = source.strip()
    if source.startswith("@"):
        return f"@{normalize_domain(source[1:])}"
    return normalize(source)


@implementer(IUserDatabase)
class MemoryUserDatabase:
    """Domains, users with plaintext passwords, and aliases, in dictionaries.

    Setting it up normalises addresses but checks nothing else (unlike the SQLite backend's
    administration methods), so a test can build any state, broken ones included::

        users = MemoryUserDatabase(
            domains=["example.org"],
            users={"bob@example.org": "secret"},
            aliases={"postmaster@example.org": ["bob@example.org"]},
        )
    """

    def __init__(
        self,
        *,
        domains: Iterable[str] = (),
        users: Mapping[str, str] | None = None,
        aliases: Mapping[str, Sequence[str]] | None = None,
        recipient_delimiter: str = "+",
    ) -> None:
        self.recipient_delimiter = recipient_delimiter
        self.domains: set[str] = set()
        self.passwords: dict[str, str] = {}  # normalised address -> plaintext password
        self.aliases: dict[str, list[str]] = {}  # normalised source -> normalised targets
        for domain in domains:
            self.add_domain(domain)
        for address, password in (users or {}).items():
            self.add_user(address, password)
        for source, targets in (aliases or {}).items():
            self.add_alias(source, targets)

    # Setting up (same names as the SQLite backend's administration methods).

    def add_domain(self, domain: str) -> str:
        name = normalize_domain(domain.strip())
        self.domains.add(name)
        return name

    def add_user(self, address: str, password: str) -> str:
        normalized = normalize(address)
        self.passwords[normalized] = password
        return normalized

    set_password = add_user

    def remove_user(self, address: str) -> str:
        normalized = normalize(address)
        del self.passwords[normalized]
        return normalized

    def add_alias(self, source: str, targets: Sequence[str]) -> tuple[str, list[str]]:
        key = _alias_key(source)
        added = [normalize(target) for target in targets]
        existing = self.aliases.setdefault(key, [])
        existing.extend(target for target in added if target not in existing)
        return key, added

    def remove_alias(self, source: str, target: str | None = None) -> tuple[str, list[str]]:
        key = _alias_key(source)
        if target is None:
            return key, sorted(self.aliases.pop(key, []))
        normalized = normalize(target)
        self.aliases[key].remove(normalized)
        if not self.aliases[key]:
            del self.aliases[key]
        return key, [normalized]

    # AccountLookups, for mailserver.userdb.resolve.

    def is_our_domain(self, domain: str) -> bool:
        return domain in self.domains

    def is_user(self, address: str) -> bool:
        return address in self.passwords

    def alias_targets(self, source: str) -> list[str]:
        return sorted(self.aliases.get(source, ()))

    # IUserDatabase.

    def resolve_recipient(self, address: Mailbox) -> Deferred[RecipientLookup]:
        return defer.succeed(resolve(address, self, self.recipient_delimiter))

    def authenticate(self, login: str, password: str) -> Deferred[str | None]:
        key = parse_login(login)
        if key is None:
            candidates = []
        elif "@" in key:
            candidates = [key] if key in self.passwords else []
        else:
            candidates = [a for a in self.passwords if a.rpartition("@")[0] == key]
        if len(candidates) == 1 and hmac.compare_digest(
            self.passwords[candidates[0]].encode("utf-8"), password.encode("utf-8")
        ):
            return defer.succeed(candidates[0])
        return defer.succeed(None)


# --- Received mail, for the SMTP server -----------------------------------------------------


@implementer(IMailStore)
class MemoryMailStore:
    """Delivered messages as bytes per mailbox; the next delivery can be made to fail or wait.

    Like the Maildir store it reads the spooled bytes (``spool.finish()`` gives the file) and
    discards the spool whatever the outcome, so tests can check that no spool file stays
    behind. The trace headers are part of what is stored::

        store = MemoryMailStore()
        store.fail_next(StorageFull("disk full"))  # the next delivery fails with this error
        store.hold_next()  # the next delivery waits: its Deferred fires at store.release()
        store.mailboxes["bob@example.org"]  # [b"Return-Path: <...>\\r\\n...", ...]
    """

    def __init__(self) -> None:
        self.mailboxes: dict[str, list[bytes]] = {}  # normalised address -> messages, in order
        self.names: list[str] = []  # the name of each delivered message, in order
        self.queued: list[tuple[QueueRecord, bytes]] = []  # queued for other servers, in order
        self._next_error: BaseException | None = None
        self._hold_next = False
        self._held: (
            tuple[Spool, tuple[str, ...], QueueRecord | None, BaseException | None, Deferred[str]]
            | None
        )
        self._held = None
        self._count = 0

    def fail_next(self, error: BaseException) -> None:
        """Make the next delivery fail with ``error`` (and store nothing)."""
        self._next_error = error

    def hold_next(self) -> None:
        """Make the next delivery wait until :meth:`release` is called."""
        self._hold_next = True

    @property
    def holding(self) -> bool:
        """Whether a delivery is waiting for :meth:`release`."""
        return self._held is not None

    def release(self, error: BaseException | None = None) -> None:
        """Carry out the held delivery and fire its Deferred; with ``error``, fail it instead."""
        assert self._held is not None, "no delivery is held"
        spool, mailboxes, queued, planned_error, waiting = self._held
        self._held = None
        if error is None:
            error = planned_error
        self._finish(spool, mailboxes, queued, error).chainDeferred(waiting)

    def deliver(
        self, spool: Spool, mailboxes: Sequence[str], queued: QueueRecord | None = None
    ) -> Deferred[str]:
        error, self._next_error = self._next_error, None
        if self._hold_next:
            self._hold_next = False
            waiting: Deferred[str] = Deferred()
            self._held = (spool, tuple(mailboxes), queued, error, waiting)
            return waiting
        return self._finish(spool, tuple(mailboxes), queued, error)

    def _finish(
        self,
        spool: Spool,
        mailboxes: tuple[str, ...],
        queued: QueueRecord | None,
        error: BaseException | None,
    ) -> Deferred[str]:
        try:
            if error is not None:
                return defer.fail(error)
            data = spool.finish()[0].read_bytes()
        except Exception:
            return defer.fail()
        finally:
            spool.discard()
        self._count += 1
        name = f"memory{self._count},S={len(data)}"
        for mailbox in mailboxes:
            self.mailboxes.setdefault(mailbox, []).append(data)
        if queued is not None:
            self.queued.append((queued, data))
        self.names.append(name)
        return defer.succeed(name)


# --- Mailboxes for POP3 ---------------------------------------------------------------------


@dataclass
class MemoryMessage:
    uid: str
    data: bytes
    seen: bool = False


@implementer(IMailbox)
class MemoryMailbox:
    """A locked mailbox of a :class:`MemoryMailboxStore` and its snapshot."""

    def __init__(self, store: MemoryMailboxStore, address: str) -> None:
        self._store = store
        self.address = address
        self._snapshot = list(store.mailboxes.get(address, []))
        self.messages: Sequence[MessageInfo] = [
            MessageInfo(message.uid, len(message.data)) for message in self._snapshot
        ]
        self.closed = False
        self.reads = 0  # read_message calls, for tests that check streaming

    def read_message(self, index: int, offset: int, size: int) -> Deferred[bytes]:
        message = self._snapshot[index]
        if not any(stored is message for stored in self._store.mailboxes.get(self.address, [])):
            return defer.fail(MessageGone(message.uid))
        self.reads += 1
        return defer.succeed(message.data[offset : offset + size])

    def commit(self, deleted: Sequence[int], seen: Sequence[int]) -> Deferred[None]:
        if self._store.fail_commits:
            return defer.fail(OSError("commit refused by the test"))
        for index in seen:
            self._snapshot[index].seen = True
        doomed = {id(self._snapshot[index]) for index in deleted}
        messages = self._store.mailboxes.get(self.address, [])
        messages[:] = [message for message in messages if id(message) not in doomed]
        return defer.succeed(None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._store.locked.discard(self.address)


@implementer(IMailboxStore)
class MemoryMailboxStore:
    """Mailboxes as lists of messages; one session at a time per mailbox, like the Maildir
    store's lock::

        store = MemoryMailboxStore()
        store.deliver_bytes("bob@example.org", b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
    """

    def __init__(self) -> None:
        self.mailboxes: dict[str, list[MemoryMessage]] = {}
        self.locked: set[str] = set()
        self.unavailable: set[str] = set()  # addresses whose mailbox cannot be opened for good
        self.fail_commits = False
        self.opened: list[MemoryMailbox] = []  # every mailbox handed out, for inspection
        self._counter = itertools.count(1)

    def deliver_bytes(self, address: str, data: bytes) -> str:
        """Add a message; returns its unique-id."""
        uid = f"uid{next(self._counter)}"
        self.mailboxes.setdefault(address, []).append(MemoryMessage(uid, data))
        return uid

    def open_mailbox(self, address: str) -> Deferred[IMailbox]:
        if address in self.unavailable:
            return defer.fail(MailboxUnavailable(address))
        if address in self.locked:
            return defer.fail(MailboxInUse(address))
        self.locked.add(address)
        mailbox = MemoryMailbox(self, address)
        self.opened.append(mailbox)
        return defer.succeed(mailbox)
